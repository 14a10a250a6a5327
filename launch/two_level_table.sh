#!/usr/bin/env bash
# Two-level communication on simulated nodes (a report, not asserted): `ringattn run` with P
# in-process ranks in nodes of w, for each scheme (flat, double-ring, a2a-ring), printing per
# level the bytes all ranks sent and the slowest rank's wait for K/V blocks, the total time,
# and the ratios against the flat ring measured in the same run. In-process ranks share this
# machine's memory, so "inside" and "across" are counted, not timed on different links: the
# times show the schemes' compute and waiting, the bytes what a real cluster's links carry.
# Usage: launch/two_level_table.sh [path/to/ringattn] [N] [P] [w ...]   (a Markdown table)
#   defaults: build/release/src/ringattn 65536 8 2 4
set -euo pipefail
bin=${1:-build/release/src/ringattn}
n=${2:-65536}
p=${3:-8}
shift $(($# < 3 ? $# : 3))
ws=("$@")
((${#ws[@]} > 0)) || ws=(2 4)
common=(run --ranks-local "$p" --seq-len "$n" --heads 8 --kv-heads 2 --head-dim 128 --causal
  --layout zigzag --threads 1 --repeats 1)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
echo "P = $p in-process ranks, N = $n, H = 8/2, D = 128, float32, causal, zigzag; $cpu"
echo
echo "| w | scheme | inside nodes | across nodes | across vs flat | wait inside (ms) | wait across (ms) | all-to-alls (ms) | time (s) | time vs flat |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for w in "${ws[@]}"; do
  for scheme in flat double-ring a2a-ring; do
    "$bin" "${common[@]}" --ranks-per-node "$w" --hierarchy "$scheme" \
      --metrics "$tmp/$w-$scheme.jsonl" >/dev/null
  done
  /usr/bin/python3 - "$tmp" "$w" <<'PY'
import json, sys
tmp, w = sys.argv[1], sys.argv[2]
rows = {}
for scheme in ("flat", "double-ring", "a2a-ring"):
    recs = [json.loads(l) for l in open(f"{tmp}/{w}-{scheme}.jsonl") if l.strip()]
    ranks = [r for r in recs if r["record"] == "rank"]
    summary = [r for r in recs if r["record"] == "summary"][-1]
    rows[scheme] = dict(
        intra=sum(r["intra_bytes"] for r in ranks), inter=sum(r["inter_bytes"] for r in ranks),
        iwait=max(r["intra_wait_ms"] for r in ranks), xwait=max(r["inter_wait_ms"] for r in ranks),
        a2a=max(r["a2a_ms"] for r in ranks), time=summary["time_ms"] / 1e3)
mib = lambda b: f"{b / 2**20:.0f} MiB"
base = rows["flat"]
for scheme, r in rows.items():
    print(f"| {w} | {scheme} | {mib(r['intra'])} | {mib(r['inter'])} | "
          f"{r['inter'] / base['inter']:.2f} | {r['iwait']:.0f} | {r['xwait']:.0f} | {r['a2a']:.0f} | "
          f"{r['time']:.1f} | {r['time'] / base['time']:.2f} |")
PY
done
