#!/usr/bin/env python3
"""ringattn's CPU kernel beside PyTorch's scaled_dot_product_attention, in one run.

    launch/bench_sdpa.py build/release/src/ringattn [--isa avx2,avx512] [--seq-len 8192]
        [--heads 8] [--head-dim 64,128] [--dtype f32,bf16,f16] [--threads 2] [--repeats 3]
        [--rounds 2]

For every (ISA, D, dtype, mask) it runs `ringattn bench-kernel` (which measures the
ISA's FMA peak and the sgemm rate in the same process, and checks its output against
float64 on sampled rows) and times torch.nn.functional.scaled_dot_product_attention on
the same shape ([B, H, N, D] tensors, is_causal for the causal rows) with the same
threads, best of --repeats after a warm-up, in a child process whose environment
holds torch to the row's ISA (ATEN_CPU_CAPABILITY, MKL_ENABLE_INSTRUCTIONS,
ONEDNN_MAX_CPU_ISA): an avx2 row compares the two as an AVX2-only CPU runs them.
A row alternates the two --rounds times and keeps each one's best, so that a busy
spell of a shared machine does not fall on one side only. FLOPs follow one convention for both:
4 B H D x visible (query, key) pairs (N^2 full, N (N + 1) / 2 causal). Prints a
markdown table with the CPU's name and the ratio ringattn / SDPA.

Needs torch and numpy in the interpreter that runs it (a virtual environment; the
torch wheel from PyPI runs on CPU once the CUDA libraries it links are installed
beside it, as pip does).
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

DTYPES = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}


def cpu_name():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next((l.split(":", 1)[1].strip() for l in out.splitlines()
                      if l.startswith("Model name")), platform.processor())
        fam = next((l.split(":", 1)[1].strip() for l in out.splitlines()
                    if l.startswith("CPU family")), "?")
        mod = next((l.split(":", 1)[1].strip() for l in out.splitlines()
                    if l.startswith("Model:")), "?")
        flags = next((l for l in out.splitlines() if l.startswith("Flags")), "")
        isa = "AVX-512" if "avx512f" in flags else ("AVX2" if "avx2" in flags else "SSE")
        return f"{model} (family {fam} model {mod}, {isa})"
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown CPU"


def ringattn_row(binary, isa, n, heads, d, dtype, causal, threads, repeats):
    with tempfile.TemporaryDirectory() as tmp:
        metrics = os.path.join(tmp, "m.jsonl")
        cmd = [binary, "bench-kernel", "--isa", isa, "--seq-len", str(n), "--heads", str(heads),
               "--head-dim", str(d), "--dtype", dtype, f"--causal={'true' if causal else 'false'}",
               "--threads", str(threads), "--repeats", str(repeats), "--warmup", "1",
               "--baseline", "off", "--check-rows", "32", "--metrics", metrics]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            sys.exit(f"bench_sdpa: {' '.join(cmd)} failed:\n{run.stdout}{run.stderr}")
        with open(metrics) as f:
            return json.loads(f.readline())


# The instruction set torch may use, per ringattn ISA: ATen's own kernels
# (ATEN_CPU_CAPABILITY), MKL's GEMMs and oneDNN's. An avx2 row runs both
# libraries as they would run on an AVX2-only CPU; avx512 rows leave torch free.
TORCH_ISA_ENV = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
             "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "avx512": {},
    "generic": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
                "ONEDNN_MAX_CPU_ISA": "SSE41"},
}


def sdpa_child(n, heads, d, dtype, causal, repeats, threads):
    """Runs in a child process (its ISA set by the environment): prints JSON."""
    import torch
    torch.set_num_threads(threads)
    tdt = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[dtype]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, n, d, generator=g).to(tdt) for _ in range(3))
    f = torch.nn.functional.scaled_dot_product_attention
    with torch.no_grad():
        f(q, k, v, is_causal=causal)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            f(q, k, v, is_causal=causal)
            best = min(best, time.perf_counter() - t0)
    pairs = n * (n + 1) / 2 if causal else float(n) * n
    print(json.dumps({"gflops": 4.0 * heads * d * pairs / best / 1e9,
                      "capability": torch.backends.cpu.get_cpu_capability(),
                      "threads": torch.get_num_threads()}))


def sdpa_row(isa, n, heads, d, dtype, causal, repeats, threads):
    env = dict(os.environ, **TORCH_ISA_ENV.get(isa, {}))
    cmd = [sys.executable, os.path.abspath(__file__), "--sdpa-child",
           f"{n},{heads},{d},{dtype},{int(causal)},{repeats},{threads}"]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if run.returncode != 0:
        sys.exit(f"bench_sdpa: the SDPA child failed:\n{run.stdout}{run.stderr}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--sdpa-child":
        n, heads, d, dtype, causal, repeats, threads = sys.argv[2].split(",")
        sdpa_child(int(n), int(heads), int(d), dtype, causal == "1", int(repeats), int(threads))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("binary")
    ap.add_argument("--isa", default="")
    ap.add_argument("--seq-len", type=int, default=8192)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", default="64,128")
    ap.add_argument("--dtype", default="f32,bf16,f16")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    if a.rounds < 1 or a.repeats < 1:
        sys.exit("bench_sdpa: --rounds and --repeats must be at least 1")
    try:
        import torch
    except ImportError:
        sys.exit("bench_sdpa: needs torch (pip install torch in a virtual environment)")
    with open("/proc/cpuinfo") as f:
        flags = f.read()
    isas = [x for x in a.isa.split(",") if x] or (["avx512", "avx2"] if "avx512f" in flags
                                                   else ["avx2"])
    print(f"# {cpu_name()}, {a.threads} threads; torch {torch.__version__} on CPU, "
          f"{a.threads} threads, restricted to the row's ISA (ATen, MKL, oneDNN); "
          f"N = {a.seq_len}, H = {a.heads}, B = 1; each side's best of {a.rounds} alternated "
          f"rounds of {a.repeats} calls")
    print("| isa | D | dtype | mask | ringattn GFLOP/s | % FMA peak | SDPA GFLOP/s (torch ISA) | "
          "ratio | O err vs float64 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for isa in isas:
        for d in (int(x) for x in a.head_dim.split(",")):
            for dt in a.dtype.split(","):
                for causal in (False, True):
                    r = s = None
                    for _ in range(a.rounds):
                        ri = ringattn_row(a.binary, isa, a.seq_len, a.heads, d, DTYPES[dt],
                                          causal, a.threads, a.repeats)
                        si = sdpa_row(isa, a.seq_len, a.heads, d, dt, causal, a.repeats,
                                      a.threads)
                        r = ri if r is None or ri["gflops"] > r["gflops"] else r
                        s = si if s is None or si["gflops"] > s["gflops"] else s
                    print(f"| {isa} | {d} | {dt} | {'causal' if causal else 'full'} | "
                          f"{r['gflops']:.1f} | {r['pct_fma']:.0f}% of {r['fma_peak_gflops']:.0f} "
                          f"| {s['gflops']:.1f} ({s['capability']}) | "
                          f"{r['gflops'] / s['gflops']:.2f}x | {r['o_rel_err']:.1e} |", flush=True)
    print(f"# reproduce: {' '.join([sys.executable] + sys.argv)}")


if __name__ == "__main__":
    main()
