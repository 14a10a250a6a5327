#!/usr/bin/env python3
"""64K tokens on four in-process ranks from NumPy, checked against float64
attention on sampled rows (written here, independent of ringattn).

    .venv/bin/python launch/python_ring.py [--seq-len 65536] [--ranks 4] [--rows 16]

(with the build tree's package: PYTHONPATH=build/release/python; after
`pip install .`: any interpreter of that environment). Exits 1 if a sampled
row is off by more than float32 accumulation allows.
"""
import argparse
import sys
import time

import numpy as np

import ringattn


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seq-len", type=int, default=65536)
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--rows", type=int, default=16)
    a = ap.parse_args()
    n, heads, kv_heads, d = a.seq_len, 4, 2, 64
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, n, heads, d), dtype=np.float32)
    k = rng.standard_normal((1, n, kv_heads, d), dtype=np.float32)
    v = rng.standard_normal((1, n, kv_heads, d), dtype=np.float32)

    t0 = time.perf_counter()
    o, lse, stats = ringattn.ring_attention(q, k, v, ranks=a.ranks, causal=True, layout="zigzag")
    wall = time.perf_counter() - t0

    # float64 causal attention on sampled query rows, every head.
    worst_o = worst_lse = 0.0
    for i in rng.choice(n, size=min(a.rows, n), replace=False):
        for h in range(heads):
            g = h // (heads // kv_heads)
            s = k[0, : i + 1, g].astype(np.float64) @ q[0, i, h].astype(np.float64) / np.sqrt(d)
            p = np.exp(s - s.max())
            ref = p @ v[0, : i + 1, g].astype(np.float64) / p.sum()
            worst_o = max(worst_o, np.linalg.norm(o[0, i, h] - ref) / np.linalg.norm(ref))
            worst_lse = max(worst_lse, abs(lse[0, h, i] - (s.max() + np.log(p.sum()))))
    ok = worst_o <= 1e-5 and worst_lse <= 1e-4
    print(f"ringattn: N={n} H={heads}/{kv_heads} D={d} causal, "
          f"{a.ranks} in-process ranks ({stats['layout']}, {stats['isa']})")
    print(f"  ring time    {stats['time_ms']:.1f} ms, {stats['gflops']:.1f} GFLOP/s "
          f"(call {wall * 1e3:.1f} ms)")
    print(f"  bytes sent   {sum(r['bytes_sent'] for r in stats['per_rank'])} in all")
    print(f"  float64 check on {min(a.rows, n)} sampled rows x {heads} heads: max O rel. error "
          f"{worst_o:.2e}, max |dLSE| {worst_lse:.2e}: {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
