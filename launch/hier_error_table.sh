#!/usr/bin/env bash
# The approximation error of hierarchical aggregation against exact dense attention (not
# asserted: a report). For each setting, `ringattn bench-kernel --vs-dense` runs the problem,
# the kernel on the dense causal problem (the base time), and compares the result with dense
# float64 attention on sampled rows. Inputs with a drifting mean (a query resembles the keys
# near it: what summaries exploit) and plain normal ones.
# Usage: launch/hier_error_table.sh [path/to/ringattn] [N]   (prints a Markdown table)
set -euo pipefail
bin=${1:-build/release/src/ringattn}
n=${2:-32768}
common=(--seq-len "$n" --heads 4 --kv-heads 1 --head-dim 64 --causal --repeats 1 --warmup 0
  --check-rows 64 --threads 1 --vs-dense)
settings=(
  "window 512|--window-left 512"
  "window 512 + L2 32/2048|--window-left 512 --regional-block 32 --regional-window 2048"
  "window 512 + L2 32/4096 + L3 256|--window-left 512 --regional-block 32 --regional-window 4096 --global-block 256"
  "window 512 + L2 64/8192 + L3 1024|--window-left 512 --regional-block 64 --regional-window 8192 --global-block 1024"
  "window 2048 + L2 64/8192 + L3 1024|--window-left 2048 --regional-block 64 --regional-window 8192 --global-block 1024"
  "route 512 top 4|--route-block 512 --route-topk 4"
  "route 512 top 8|--route-block 512 --route-topk 8"
  "route 1024 top 8 + window 512|--route-block 1024 --route-topk 8 --window-left 512"
)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "| setting (N = $n, H = 4/1, D = 64, causal) | mean keys + summaries per query | O error, drift | LSE error, drift | O error, normal | LSE error, normal | time vs dense kernel |"
echo "|---|---|---|---|---|---|---|"
for entry in "${settings[@]}"; do
  name=${entry%%|*}
  read -r -a extra <<<"${entry#*|}"
  for inputs in drift normal; do
    "$bin" bench-kernel "${common[@]}" "${extra[@]}" --inputs "$inputs" \
      --metrics "$tmp/$inputs.jsonl" >/dev/null
  done
  /usr/bin/python3 - "$tmp" "$name" "$n" <<'PY'
import json, sys
tmp, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
row = {}
for inputs in ("drift", "normal"):
    with open(f"{tmp}/{inputs}.jsonl") as f:
        rec = [json.loads(l) for l in f if l.strip()][-1]
    row[inputs] = rec
d = row["drift"]
# Keys or summaries of a late query: the FLOPs of the problem per (query, head) over 4 D.
per_query = d["gflops"] * d["time_ms"] * 1e6 / (4 * 64 * 4 * n)
print(f"| {name} | {per_query:.0f} | {d['baseline_o_rel_err']:.3g} | {d['baseline_lse_max_err']:.3g} | "
      f"{row['normal']['baseline_o_rel_err']:.3g} | {row['normal']['baseline_lse_max_err']:.3g} | "
      f"{d['time_ms'] / d['baseline_ms']:.2f} |")
PY
done
