#!/usr/bin/env bash
# The scaling tooling end to end on a tiny problem: launch/sweep.sh (in-process ranks)
# collects run + plan into a CSV with one row per P, then launch/plot.py draws its four
# PNGs with Debian's /usr/bin/python3 (exit 77, ctest's "skipped", when matplotlib is
# missing there). Checks shapes, not speed.
#   tests/sweep_plot_check.sh RINGATTN_BIN WORKDIR
set -euo pipefail
bin=$1
work=$2
src=$(cd "$(dirname "$0")/.." && pwd)
rm -rf "$work" && mkdir -p "$work"
fail() { echo "sweep_plot_check: $*" >&2; exit 1; }

csv=$work/sweep.csv
"$src/launch/sweep.sh" --bin "$bin" --mode strong --ranks "1 2 4" --seq-len 256 \
  --hardware cpu-icelake-2core --out "$csv" -- --heads 2 --head-dim 32 --threads 1 >"$work/sweep.log"
"$src/launch/sweep.sh" --bin "$bin" --mode weak-sqrt --ranks "1 4" --seq-len 128 \
  --hardware cpu-icelake-2core --out "$csv" -- --heads 1 --head-dim 32 --causal --threads 1 >>"$work/sweep.log"
grep -q "measured .* ms, predicted .* ms" "$work/sweep.log" || fail "no progress lines"

# Without --hardware: this machine is calibrated first (short probes here), the profile
# cached per CPU; the next sweep reuses it.
export RINGATTN_CACHE_DIR=$work/cache
quick="--dtypes f32 --head-dims 32 --probe-tokens 256 --probe-heads 1 --probe-seconds 0.01 --max-message 4096"
for round in 1 2; do
  "$src/launch/sweep.sh" --bin "$bin" --mode strong --ranks "1 2" --seq-len 256 \
    --calibrate-args "$quick" --out "$work/own.csv" -- --heads 1 --head-dim 32 --threads 1 \
    >"$work/own$round.log"
done
grep -q "measuring this machine" "$work/own1.log" || fail "no calibration: $(cat "$work/own1.log")"
grep -q "cached profile" "$work/own2.log" || fail "cache not reused: $(cat "$work/own2.log")"
ls "$RINGATTN_CACHE_DIR"/calibrated-*.ini >/dev/null || fail "no cached profile"
grep -q "^cpu = " "$RINGATTN_CACHE_DIR"/calibrated-*.ini || fail "cached profile names no CPU"
[[ $(($(wc -l <"$work/own.csv") - 1)) -eq 4 ]] || fail "own-profile CSV: $(cat "$work/own.csv")"
rows=$(($(wc -l <"$csv") - 1))
[[ $rows -eq 5 ]] || fail "expected 5 CSV rows, got $rows"
head -1 "$csv" | grep -q "measured_ms,predicted_ms,error_pct" || fail "CSV header: $(head -1 "$csv")"
# weak-sqrt: N = 128 sqrt(P) rounded up to 2P -> 256 at P = 4
grep -q "^weak-sqrt,local,4,256," "$csv" || fail "weak-sqrt row for P=4: $(cat "$csv")"

# Schemes over simulated nodes: the CSV carries the scheme and, per level, the bytes run
# counted and plan predicted (equal: the plan's counts are exact).
scsv=$work/schemes.csv
for scheme in flat double-ring a2a-ring; do
  "$src/launch/sweep.sh" --bin "$bin" --mode strong --ranks "4" --seq-len 256 \
    --hardware cpu-icelake-2core --out "$scsv" -- --heads 2 --head-dim 32 --causal --threads 1 \
    --hierarchy "$scheme" --ranks-per-node 2 >>"$work/sweep.log"
done
/usr/bin/python3 - "$scsv" <<'PY' || fail "scheme CSV: $(cat "$scsv")"
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
assert [r["comm_scheme"] for r in rows] == ["flat", "double-ring", "a2a-ring"], rows
for r in rows:
    assert r["ranks_per_node"] == "2", r
    for level in ("intra", "inter"):
        m, p = float(r[f"measured_{level}_bytes"]), float(r[f"predicted_{level}_bytes"])
        assert m == p and m > 0, (r["comm_scheme"], level, m, p)
PY

# Bad input: one clear line, exit 2.
if "$src/launch/sweep.sh" --bin "$bin" --mode sideways >/dev/null 2>"$work/err"; then
  fail "--mode sideways accepted"
fi
grep -q "expected strong, weak or weak-sqrt" "$work/err" || fail "bad --mode message: $(cat "$work/err")"

[[ -x /usr/bin/python3 ]] || { echo "sweep_plot_check: /usr/bin/python3 missing: plot skipped"; exit 77; }
set +e
/usr/bin/python3 "$src/launch/plot.py" "$csv" --out "$work/png" >"$work/plot.log" 2>&1
rc=$?
set -e
if [[ $rc -eq 77 ]]; then cat "$work/plot.log"; exit 77; fi
[[ $rc -eq 0 ]] || { cat "$work/plot.log" >&2; fail "plot.py failed ($rc)"; }
for f in time_vs_p efficiency_vs_p predicted_vs_measured breakdown; do
  png=$work/png/$f.png
  [[ -s "$png" ]] || fail "$f.png missing"
  [[ "$(head -c 4 "$png" | tail -c 3)" == "PNG" ]] || fail "$f.png is not a PNG"
done
echo "sweep_plot_check: ok ($rows rows, 4 PNGs)"
