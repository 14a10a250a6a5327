#!/usr/bin/env bash
# Packed documents at scale (a report, not asserted): N tokens packed from seeded long-tailed
# (lognormal) document lengths (launch/make_docs.py), causal inside each document, H = 8/1,
# D = 128, float32. For each launch (`mpirun -np 2`, P in-process ranks) it prints the plan's
# scheduled imbalance and predicted time for the balanced and zigzag layouts, then runs the
# balanced layout: measured imbalance and time against the prediction, bytes sent against a
# full ring, and the error of 64 sampled rows against float64. Takes minutes at 1M tokens.
# Usage: [HW=profile.ini] launch/docs_table.sh [path/to/ringattn] [N] [seed] [P]   (Markdown)
#   HW: the hardware profile the plan uses (default cpu-zen4-2core; measure this machine with
#   `mpirun -np 2 ringattn calibrate --out FILE` and pass HW=FILE)
#   defaults: build/release/src/ringattn 1048576 2 4
set -euo pipefail
bin=${1:-build/release/src/ringattn}
n=${2:-1048576}
seed=${3:-2}
p=${4:-4}
hw=${HW:-cpu-zen4-2core}
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
/usr/bin/python3 "$here/make_docs.py" --tokens "$n" --seed "$seed" --out "$tmp/docs.npy"
problem=(--cu-seqlens "$tmp/docs.npy" --causal --heads 8 --kv-heads 1 --head-dim 128 --threads 1)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
echo "N = $n packed (seed $seed), causal inside documents, H = 8/1, D = 128, float32, 1 thread per rank; $cpu"
echo
echo "| launch | layout | imbalance planned | imbalance measured | predicted (s) | measured (s) | measured / predicted | bytes sent | vs full ring | sampled-row error |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for launch in mpi local; do
  if [[ $launch == mpi ]]; then
    plan_ranks=(--ranks 2)
    run_cmd=(mpirun -np 2 --bind-to none "$bin" run)
    name="mpirun -np 2"
  else
    plan_ranks=(--ranks-local "$p")
    run_cmd=("$bin" run --ranks-local "$p")
    name="$p in-process"
  fi
  for layout in zigzag balanced; do
    "$bin" plan "${plan_ranks[@]}" "${problem[@]}" --layout "$layout" --hardware "$hw" \
      --json --metrics "$tmp/plan-$launch-$layout.jsonl" >/dev/null
  done
  "${run_cmd[@]}" "${problem[@]}" --layout balanced --check-rows 64 \
    --metrics "$tmp/run-$launch.jsonl" >/dev/null
  /usr/bin/python3 - "$tmp" "$launch" "$name" <<'PY'
import json, sys
tmp, launch, name = sys.argv[1:]
def summary(path):
    recs = [json.loads(l) for l in open(path) if l.strip()]
    return recs, [r for r in recs if r.get("record") == "summary"][-1]
_, zig = summary(f"{tmp}/plan-{launch}-zigzag.jsonl")
_, bal = summary(f"{tmp}/plan-{launch}-balanced.jsonl")
recs, run = summary(f"{tmp}/run-{launch}.jsonl")
ranks = [r for r in recs if r.get("record") == "rank"]
sent = sum(r["bytes_sent"] for r in ranks)
full = sum(r["full_ring_bytes"] for r in ranks)
gib = lambda b: f"{b / 2**30:.2f} GiB"
print(f"| {name} | zigzag | {zig['imbalance_scheduled']:.3f} | (not run) | {zig['time_ms'] / 1e3:.1f} | | | | | |")
print(f"| {name} | balanced | {bal['imbalance_scheduled']:.3f} | {run['imbalance_measured']:.3f} | "
      f"{bal['time_ms'] / 1e3:.1f} | {run['time_ms'] / 1e3:.1f} | {run['time_ms'] / bal['time_ms']:.2f} | "
      f"{gib(sent)} | {sent / full:.3f} | {run['ref_o_rel_err']:.1e} |")
PY
done
echo
echo "predicted: ringattn plan --hardware $hw; measured: ringattn run"
