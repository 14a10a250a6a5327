#!/usr/bin/env bash
# Scaling sweeps: run the ring for several rank counts, plan each run on a hardware
# profile, and collect measurement and prediction side by side in one CSV
# (launch/collect.py); launch/plot.py draws it.
#
#   launch/sweep.sh --mode strong --ranks "1 2 4 8" --seq-len 16384 -- --heads 4
#   launch/sweep.sh --mode weak --tokens-per-rank 4096 --backend mpi --ranks "1 2 4" -- --causal
#   launch/sweep.sh --mode weak-sqrt --seq-len 8192 --ranks "1 4" -- --causal
#   launch/sweep.sh --ranks "4 8" --out schemes.csv -- --causal --hierarchy double-ring --ranks-per-node 2
#     (one sweep per --hierarchy into one CSV: its comm_scheme column and the per-level bytes,
#     measured and predicted, compare the schemes; plot.py draws one series per scheme)
#
# Modes:
#   strong      fixed N (--seq-len) for every P
#   weak        fixed tokens per rank: N = --tokens-per-rank x P (dense work per rank grows as P)
#   weak-sqrt   N = --seq-len x sqrt(P), so N^2 / P (the work per rank) stays constant
# N is rounded to a multiple of 2P so every layout splits it evenly.
#
# Options:
#   --mode strong|weak|weak-sqrt   (default strong)
#   --ranks "P1 P2 ..."            rank counts (default "1 2 4 8")
#   --seq-len N                    strong: N; weak-sqrt: N at P = 1 (default 16384)
#   --tokens-per-rank T            weak (default 4096)
#   --backend local|mpi            in-process ranks (run --ranks-local P) or processes
#                                  (launch/mpirun.sh -np P; --oversubscribe as needed) (default local)
#   --hostfile FILE                mpi: Open MPI hostfile (default: every rank on this machine)
#   --ranks-per-node K             mpi with --hostfile: ranks per node (default: all on one node)
#   --hardware NAME|FILE           profile for the predictions (default: this machine's, from
#                                  `ringattn calibrate`, run first under launch/mpirun.sh -np 2
#                                  and cached per CPU in $RINGATTN_CACHE_DIR, default
#                                  ~/.cache/ringattn; measured again when the binary is newer)
#   --calibrate                    measure this machine again even if a cached profile exists
#   --calibrate-args "..."         extra options for that calibrate (e.g. "--repeats 5")
#   --out FILE.csv                 appended to (default sweep.csv)
#   --run-args "..."               extra options for run only (e.g. "--repeats 3 --warmup 1")
#   --bin PATH                     ringattn binary (default $RINGATTN_BIN or build/release/src/ringattn)
#   -- ARGS                        problem options for both run and plan (--heads, --causal, ...)
# Environment: PYTHON (default python3) runs collect.py (standard library only).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

mode=strong
ranks="1 2 4 8"
seq_len=16384
per_rank=4096
backend=local
hardware=""
recalibrate=0
calibrate_args=""
hostfile=""
per_node=""
out=sweep.csv
run_args=""
bin=${RINGATTN_BIN:-$here/../build/release/src/ringattn}
die() { echo "launch/sweep.sh: $*" >&2; exit 2; }
while (($#)); do
  case "$1" in
    --mode) mode="$2"; shift 2 ;;
    --ranks) ranks="$2"; shift 2 ;;
    --seq-len) seq_len="$2"; shift 2 ;;
    --tokens-per-rank) per_rank="$2"; shift 2 ;;
    --backend) backend="$2"; shift 2 ;;
    --hardware) hardware="$2"; shift 2 ;;
    --calibrate) recalibrate=1; shift ;;
    --calibrate-args) calibrate_args="$2"; shift 2 ;;
    --hostfile) hostfile="$2"; shift 2 ;;
    --ranks-per-node) per_node="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --run-args) run_args="$2"; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    --) shift; break ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option '$1' (see --help); problem options go after --" ;;
  esac
done
case "$mode" in strong | weak | weak-sqrt) ;; *) die "--mode: expected strong, weak or weak-sqrt, got '$mode'" ;; esac
case "$backend" in local | mpi) ;; *) die "--backend: expected local or mpi, got '$backend'" ;; esac
for v in $ranks $seq_len $per_rank; do
  [[ "$v" =~ ^[1-9][0-9]*$ ]] || die "expected positive integers in --ranks, --seq-len, --tokens-per-rank; got '$v'"
done
[[ -x "$bin" ]] || die "--bin: '$bin' is not an executable (build with: cmake --preset release && cmake --build build/release)"
python=${PYTHON:-python3}
problem=("$@")
read -r -a extra <<<"$run_args"

# Predictions need this machine's profile: a shipped one measured on another CPU can be
# off by 2-3x. Calibrate once per CPU (the model name, family and model, as calibrate
# names it, and the core count) and keep the profile; again when the binary changed.
if [[ -z "$hardware" ]]; then
  cpu_id=$(awk -F': *' '/^model name/ && !m {m=$2} /^cpu family/ && !f {f=$2}
    /^model[ \t]*:/ && !n {n=$2} /^$/ {exit} END {printf "%s (family %s, model %s)", m, f, n}' \
    /proc/cpuinfo 2>/dev/null || echo unknown)
  key=$(printf '%s %s' "$cpu_id" "$(nproc)" | cksum | cut -d' ' -f1)
  cache=${RINGATTN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ringattn}
  hardware=$cache/calibrated-$key.ini
  if ((recalibrate)) || [[ ! -s "$hardware" || "$bin" -nt "$hardware" ]]; then
    mkdir -p "$cache" || die "cannot create the profile cache '$cache' (set RINGATTN_CACHE_DIR)"
    echo "launch/sweep.sh: measuring this machine ($cpu_id, $(nproc) cores) for the predictions: $hardware (about 40 s; cached)"
    if command -v mpirun >/dev/null; then
      calib=("$here/mpirun.sh" -np 2 -- "$bin" calibrate)  # with the MPI link
    else
      calib=("$bin" calibrate)
    fi
    read -r -a cargs <<<"$calibrate_args"
    "${calib[@]}" --out "$hardware" "${cargs[@]}" >"$cache/calibrate-$key.log" 2>&1 ||
      { cat "$cache/calibrate-$key.log" >&2; die "calibrate failed (log above)"; }
    grep -h "warning" "$cache/calibrate-$key.log" >&2 || true
  else
    echo "launch/sweep.sh: predictions from this machine's cached profile $hardware (--calibrate to measure again)"
  fi
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ringattn-sweep.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
set -- $ranks
total=$#
i=0
for p in "$@"; do
  i=$((i + 1))
  case "$mode" in
    strong) n=$seq_len ;;
    weak) n=$((per_rank * p)) ;;
    weak-sqrt) n=$(awk -v n="$seq_len" -v p="$p" 'BEGIN { printf "%d", n * sqrt(p) }') ;;
  esac
  n=$(((n + 2 * p - 1) / (2 * p) * 2 * p))
  load=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo nan)  # other work on the machine
  printf '[%d/%d] %s %s P=%d N=%d (load %s): running ...' "$i" "$total" "$mode" "$backend" "$p" "$n" "$load"
  run_json="$tmp/run$i.jsonl" plan_json="$tmp/plan$i.jsonl"
  if [[ $backend == local ]]; then
    "$bin" run --ranks-local "$p" --seq-len "$n" "${problem[@]}" "${extra[@]}" \
      --metrics "$run_json" >"$tmp/run$i.log" 2>&1 </dev/null ||
      { echo; cat "$tmp/run$i.log" >&2; die "run failed (P=$p N=$n)"; }
    "$bin" plan --hardware "$hardware" --ranks-local "$p" --seq-len "$n" "${problem[@]}" \
      "${extra[@]}" --json >"$plan_json" || die "plan failed (P=$p N=$n)"
  else
    # One node unless a hostfile spreads the ranks: tell plan where the ring crosses nodes.
    launch=(-np "$p")
    rpn=$p
    if [[ -n "$hostfile" ]]; then
      launch+=(--hostfile "$hostfile")
      if [[ -n "$per_node" ]]; then launch+=(--ranks-per-node "$per_node"); rpn=$per_node; else rpn=0; fi
    fi
    "$here/mpirun.sh" "${launch[@]}" -- "$bin" run --backend mpi --seq-len "$n" "${problem[@]}" \
      "${extra[@]}" --metrics "$run_json" >"$tmp/run$i.log" 2>&1 ||
      { echo; cat "$tmp/run$i.log" >&2; die "run failed (P=$p N=$n)"; }
    "$bin" plan --hardware "$hardware" --ranks "$p" --ranks-per-node "$rpn" --seq-len "$n" \
      "${problem[@]}" "${extra[@]}" --json >"$plan_json" || die "plan failed (P=$p N=$n)"
  fi
  "$python" "$here/collect.py" "$out" --mode "$mode" --load "$load" "$run_json" "$plan_json"
  tail -n 1 "$out" | "$python" -c '
import csv, sys
r = next(csv.reader(sys.stdin))
print(f"\r\033[K{sys.argv[1]} measured {float(r[14]):.1f} ms, predicted {float(r[15]):.1f} ms ({float(r[16]):+.1f}%)")
' "$(printf '[%d/%d] %s %s P=%d N=%d (load %s):' "$i" "$total" "$mode" "$backend" "$p" "$n" "$load")"
done
echo "launch/sweep.sh: $total rows appended to $out (plot: /usr/bin/python3 $here/plot.py $out)"
