#!/usr/bin/env python3
"""The Python call's overhead: ringattn.attention() against the same kernel call
timed inside C++ (`ringattn bench-kernel`), same problem, same threads, best of
--repeats each, alternated --rounds times; and the fixed cost of a tiny call.

    PYTHONPATH=build/release/python .venv/bin/python launch/bench_python.py \\
        build/release/src/ringattn [--seq-len 8192] [--heads 8] [--head-dim 128]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

import ringattn


def best(f, repeats):
    t = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        t = min(t, time.perf_counter() - t0)
    return t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("binary")
    ap.add_argument("--seq-len", type=int, default=8192)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    n, h, d = a.seq_len, a.heads, a.head_dim
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, n, h, d), dtype=np.float32) for _ in range(3))
    print(f"# N = {n}, H = {h}, D = {d}, float32, {a.threads} threads, isa {ringattn.best_isa()}")
    print("| mask | Python attention() ms | C++ kernel call ms | ratio |")
    print("|---|---|---|---|")
    for causal in (False, True):
        py, cc = float("inf"), float("inf")
        ringattn.attention(q, k, v, causal=causal, threads=a.threads)  # warm-up
        for _ in range(a.rounds):
            py = min(py, best(lambda: ringattn.attention(q, k, v, causal=causal,
                                                         threads=a.threads), a.repeats))
            with tempfile.TemporaryDirectory() as tmp:
                m = os.path.join(tmp, "m.jsonl")
                subprocess.run([a.binary, "bench-kernel", f"--seq-len={n}", f"--heads={h}",
                                f"--head-dim={d}", f"--causal={'true' if causal else 'false'}",
                                f"--threads={a.threads}", f"--repeats={a.repeats}",
                                "--baseline=off", "--check-rows=4", f"--metrics={m}"],
                               check=True, capture_output=True)
                with open(m) as f:
                    cc = min(cc, json.loads(f.readline())["time_ms"] / 1e3)
        print(f"| {'causal' if causal else 'full'} | {py * 1e3:.1f} | {cc * 1e3:.1f} | "
              f"{py / cc:.3f} |", flush=True)
    tiny = np.zeros((1, 64, h, d), dtype=np.float32)
    t = sorted(best(lambda: ringattn.attention(tiny, tiny, tiny, threads=1), 1)
               for _ in range(200))
    print(f"# a tiny call (N = 64): median {t[100] * 1e3:.3f} ms, min {t[0] * 1e3:.3f} ms "
          "(option parsing, output allocation, the kernel on 64 tokens)")
    print(f"# reproduce: {' '.join([sys.executable] + sys.argv)}")


if __name__ == "__main__":
    main()
