#!/usr/bin/env python3
"""Two kernel builds (or two settings of one) side by side on a shared machine.

    launch/bench_pair.py --a "build/base/src/ringattn" --b "build/release/src/ringattn" \
        [--rounds 8] [--cpus 0,1] [-- bench-kernel options, e.g. --isa avx2 --head-dim 128]

A and B are each a binary followed by options of their own (e.g. --a "BIN --dtype f32"
--b "BIN --dtype bf16"); the options after `--` go to both. Each pair runs
`bench-kernel --threads 1` for A on one CPU and B on the other at the same time (taskset),
then with the CPUs swapped, so that a busy spell of the machine, or a slower core, falls
on both sides alike. The rate of each run is read from its --metrics record (GFLOP/s of
its best call). Prints every pair's B/A and their geometric mean with a 95% interval
(mean of the log ratios +- 1.96 standard errors): a difference inside the interval is
not one these runs can tell apart from the machine's noise.

Single-thread runs: what depends on the threads (balance, barriers) needs
`bench-kernel --threads 2` runs of the two alternated instead.
"""
import argparse
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile


def start(side, cpu, common, metrics):
    cmd = shlex.split(side)
    if not cmd:
        sys.exit("bench_pair.py: --a and --b each need a binary")
    cmd = ["taskset", "-c", str(cpu)] + cmd[:1] + ["bench-kernel"] + cmd[1:] + common + [
        "--threads", "1", "--baseline", "off", "--metrics", metrics]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def rate(proc, metrics, side):
    out, _ = proc.communicate()
    if proc.returncode != 0:
        sys.exit(f"bench_pair.py: {side} failed (exit {proc.returncode}):\n{out[-2000:]}")
    with open(metrics) as f:
        records = [json.loads(line) for line in f if line.strip()]
    if len(records) != 1:
        sys.exit(f"bench_pair.py: {side} gave {len(records)} results; pass options that make "
                 "one problem (one --seq-len, --head-dim, --dtype, --causal each)")
    return float(records[0]["gflops"])


def main():
    argv = sys.argv[1:]
    common = []
    if "--" in argv:
        i = argv.index("--")
        argv, common = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", required=True, help='the baseline: "BINARY [options]"')
    ap.add_argument("--b", required=True, help='the candidate: "BINARY [options]"')
    ap.add_argument("--rounds", type=int, default=8, help="pairs per CPU order (default: 8)")
    ap.add_argument("--cpus", default="0,1", help="the two CPUs (default: 0,1)")
    args = ap.parse_args(argv)
    cpus = args.cpus.split(",")
    if len(cpus) != 2 or not all(c.isdigit() for c in cpus) or cpus[0] == cpus[1]:
        sys.exit(f"bench_pair.py: --cpus: expected two different CPU numbers like 0,1, "
                 f"got '{args.cpus}'")
    if args.rounds < 1:
        sys.exit(f"bench_pair.py: --rounds: expected at least 1, got {args.rounds}")
    if shutil.which("taskset") is None:
        sys.exit("bench_pair.py: needs taskset (util-linux)")
    common += ["--repeats", "3", "--check-rows", "8", "--sgemm-size", "256"]
    logs = []
    print(f"A: {args.a}\nB: {args.b}\nboth: {' '.join(common)}\n")
    print("| pair | CPU of A | A GFLOP/s | B GFLOP/s | B/A |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            for swap in (False, True):
                ca, cb = (cpus[1], cpus[0]) if swap else (cpus[0], cpus[1])
                ma, mb = os.path.join(tmp, f"a{i}{swap}"), os.path.join(tmp, f"b{i}{swap}")
                pa = start(args.a, ca, common, ma)
                pb = start(args.b, cb, common, mb)
                ra, rb = rate(pa, ma, "A"), rate(pb, mb, "B")
                logs.append(math.log(rb / ra))
                print(f"| {len(logs)} | {ca} | {ra:.1f} | {rb:.1f} | {rb / ra:.3f} |", flush=True)
    n = len(logs)
    mean = sum(logs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / (n - 1)) if n > 1 else 0.0
    half = 1.96 * sd / math.sqrt(n)
    print(f"\nB/A geometric mean {math.exp(mean):.3f} over {n} pairs, 95% interval "
          f"{math.exp(mean - half):.3f}-{math.exp(mean + half):.3f}")


if __name__ == "__main__":
    main()
