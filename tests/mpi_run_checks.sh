#!/usr/bin/env bash
# `ringattn run` under a real MPI launcher (mpiexec --oversubscribe -n 2 and -n 3):
#   * a --verify run passes against the single-rank kernel and, on sampled rows, against the
#     float64 reference (--check-rows; "ok" for both in the summary) and writes its outputs;
#   * hierarchical levels and block routing pass the same checks under MPI (their
#     block means, requests and blocks go through MPI's collectives);
#   * a quantized --kv-wire passes its check (the reference of what travelled) under MPI;
#   * K/V selection passes its check under MPI and keeps the same keys as in-process;
#   * a2a-ring and double-ring over simulated nodes pass verify and the check under MPI, and a failing
#     rank ends it without leftovers;
#   * the MoE stage after attention passes its float64 check under MPI, and its routing
#     output equals the in-process run's byte for byte; `ringattn moe` alone likewise,
#     and its failing rank ends the job without leftovers;
#   * packed documents (--doc-lens, the balanced layout) pass verify and the sampled checks
#     under MPI, forward and backward, with O and dK equal to the in-process run's;
#   * the backward pass (--backward, double ring included) passes verify and the sampled
#     check under MPI, and its dK equals the in-process run's byte for byte; a rank
#     failing after the backward ends it without leftovers;
#   * `mpirun -np 2 ringattn calibrate` under the launcher's binding profiles the node (its
#     cores, its CPU, every rank's binding), and plan reads it for 1 and 2 ranks;
#   * a run whose rank 1 fails (--fail-rank 1) ends the whole job with a non-zero exit
#     within FAIL_LIMIT_S seconds, names "rank 1" on stderr, and leaves neither the
#     output nor a temporary file behind (the SIGTERM handler removes rank 0's).
# Usage: tests/mpi_run_checks.sh path/to/ringattn SCRATCH_DIR
# Prints "N passed, M failed" and exits non-zero if any check failed.
set -uo pipefail

if [[ $# -ne 2 ]]; then
  echo "usage: $0 path/to/ringattn SCRATCH_DIR" >&2
  exit 2
fi
bin=$1
scratch=$2
mpiexec=${MPIEXEC:-mpiexec}
readonly FAIL_LIMIT_S=120  # a hang guard (not a timing): a failing rank must end the job by then
readonly HARD_LIMIT_S=300 # any single launch, as a last resort
# Root-safe Open MPI; one kernel thread per rank; ASan's leak check off (MPI_Abort).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0}

passed=0
failed=0
pass() { echo "PASS: $*"; passed=$((passed + 1)); }
fail() { echo "FAIL: $*"; failed=$((failed + 1)); }

command=run  # the ringattn command launch runs
launch() {  # launch NP DIR ARGS... ; sets rc and elapsed_ms; stdout/stderr in DIR
  local np=$1 dir=$2
  shift 2
  local t0
  t0=$(date +%s%N)
  # mpiexec forwards stdin to rank 0: give it none.
  timeout "$HARD_LIMIT_S" "$mpiexec" --oversubscribe --bind-to none -n "$np" "$bin" "$command" "$@" \
    </dev/null >"$dir/stdout" 2>"$dir/stderr"
  rc=$?
  elapsed_ms=$((($(date +%s%N) - t0) / 1000000))
}

leftovers() {  # leftovers DIR: outputs or temporaries left in DIR
  find "$1" -maxdepth 1 \( -name '*.npy' -o -name '*.tmp*' \) -printf '%f '
}

common=(--seq-len 3000 --heads 4 --kv-heads 2 --head-dim 64 --threads 1)

for np in 2 3; do
  dir="$scratch/np$np-verify"
  rm -rf "$dir" && mkdir -p "$dir"
  launch "$np" "$dir" "${common[@]}" --causal --verify --check-rows 32 --out "$dir/o.npy" \
    --lse-out "$dir/lse.npy"
  if [[ $rc -eq 0 ]] && grep -q "single-rank kernel: ok" "$dir/stdout" &&
    grep -q "vs float64 on 32 sampled query rows x 4 heads: ok" "$dir/stdout" &&
    grep -q "P=$np (mpi)" "$dir/stdout" && [[ -s $dir/o.npy && -s $dir/lse.npy ]] &&
    [[ -z $(find "$dir" -maxdepth 1 -name '*.tmp*') ]]; then
    pass "-n $np --verify ($(grep efficiency "$dir/stdout" | sed 's/^ *//; s/  */ /g'))"
  else
    fail "-n $np --verify: exit $rc"
    cat "$dir/stdout" "$dir/stderr"
  fi

  dir="$scratch/np$np-fail"
  rm -rf "$dir" && mkdir -p "$dir"
  launch "$np" "$dir" "${common[@]}" --repeats 3 --fail-rank 1 --out "$dir/o.npy" \
    --lse-out "$dir/lse.npy"
  left=$(leftovers "$dir")
  if [[ $rc -ne 0 ]] && ((elapsed_ms < FAIL_LIMIT_S * 1000)) &&
    grep -q "rank 1" "$dir/stderr" && [[ -z $left ]]; then
    pass "-n $np --fail-rank 1: exit $rc after ${elapsed_ms} ms, nothing left behind"
  else
    fail "-n $np --fail-rank 1: exit $rc after ${elapsed_ms} ms, left: '${left}'"
    cat "$dir/stderr"
  fi
done

hier_cases=(
  "levels|--causal --window-left 128 --regional-block 32 --regional-window 512 --global-block 128 --sinks 4 --layout striped"
  "routing|--causal --route-block 128 --route-topk 4 --window-left 64 --route-out ROUTE"
)
for np in 2 3; do
  for entry in "${hier_cases[@]}"; do
    name=${entry%%|*}
    dir="$scratch/np$np-$name"
    rm -rf "$dir" && mkdir -p "$dir"
    read -r -a extra <<<"${entry#*|}"
    extra=("${extra[@]/ROUTE/$dir/route.npy}")
    launch "$np" "$dir" "${common[@]}" "${extra[@]}" --verify --check-rows 16 --out "$dir/o.npy"
    if [[ $rc -eq 0 ]] && grep -q "single-rank kernel: ok" "$dir/stdout" &&
      grep -q "vs float64 on 16 sampled query rows x 4 heads: ok" "$dir/stdout" &&
      grep -q "^  hierarchy" "$dir/stdout" && [[ -s $dir/o.npy ]]; then
      pass "-n $np $name ($(grep '^  hierarchy' "$dir/stdout" | sed 's/^ *//; s/  */ /g'))"
    else
      fail "-n $np $name: exit $rc"
      cat "$dir/stdout" "$dir/stderr"
    fi
  done
done

# A quantized wire: codes and scales through MPI, checked against the reference of what travelled.
for np in 2 3; do
  dir="$scratch/np$np-kv-wire"
  rm -rf "$dir" && mkdir -p "$dir"
  command=run
  kivi=()
  [[ $np -eq 3 ]] && kivi=(--kv-kivi)  # KIVI keys: per channel over each rank's token groups
  launch "$np" "$dir" "${common[@]}" --causal --kv-wire int4 --kv-asymmetric "${kivi[@]}" \
    --sinks 4 --check-rows 16 --out "$dir/o.npy"
  if [[ $rc -eq 0 ]] && grep -q "vs float64 on 16 sampled query rows x 4 heads: ok" "$dir/stdout" &&
    grep -q "^  kv wire" "$dir/stdout" && [[ -s $dir/o.npy ]]; then
    pass "-n $np --kv-wire int4 ${kivi[*]} ($(grep '^  bytes sent' "$dir/stdout" | sed 's/^ *//; s/  */ /g'))"
  else
    fail "-n $np --kv-wire int4: exit $rc"
    cat "$dir/stdout" "$dir/stderr"
  fi
done

# Two levels: a2a-ring (sub-communicators on MPI's messages) and the double ring over
# simulated nodes of 2 ranks, their per-level figures, and a failing rank ending the job
# from inside the scheme.
for scheme in a2a-ring double-ring; do
  dir="$scratch/np4-$scheme"
  rm -rf "$dir" && mkdir -p "$dir"
  command=run
  launch 4 "$dir" "${common[@]}" --causal --hierarchy "$scheme" --ranks-per-node 2 --verify \
    --check-rows 16 --out "$dir/o.npy"
  if [[ $rc -eq 0 ]] && grep -q "vs float64 on 16 sampled query rows x 4 heads: ok" "$dir/stdout" &&
    grep -q "vs the single-rank kernel: ok" "$dir/stdout" &&
    grep -q "^  levels *$scheme, 2 nodes x 2 ranks" "$dir/stdout" && [[ -s $dir/o.npy ]]; then
    pass "-n 4 --hierarchy $scheme ($(grep '^  levels' "$dir/stdout" | sed 's/^ *//; s/  */ /g'))"
  else
    fail "-n 4 --hierarchy $scheme: exit $rc"
    cat "$dir/stdout" "$dir/stderr"
  fi
  dir="$scratch/np4-$scheme-fail"
  rm -rf "$dir" && mkdir -p "$dir"
  launch 4 "$dir" "${common[@]}" --causal --hierarchy "$scheme" --ranks-per-node 2 --repeats 3 \
    --fail-rank 1 --out "$dir/o.npy"
  left=$(leftovers "$dir")
  if [[ $rc -ne 0 ]] && ((elapsed_ms < FAIL_LIMIT_S * 1000)) && grep -q "rank 1" "$dir/stderr" &&
    [[ -z $left ]]; then
    pass "-n 4 $scheme --fail-rank 1: exit $rc after ${elapsed_ms} ms, nothing left behind"
  else
    fail "-n 4 $scheme --fail-rank 1: exit $rc after ${elapsed_ms} ms, left: '${left}'"
    cat "$dir/stdout" "$dir/stderr"
  fi
done

# K/V selection: the importance's all-reduce through MPI; the kept set equals the in-process run's.
sel=(--causal --sinks 4 --kv-keep 0.1 --kv-keep-recent 16 --check-rows 16)
for np in 2 3; do
  dir="$scratch/np$np-kv-keep"
  rm -rf "$dir" && mkdir -p "$dir"
  command=run
  launch "$np" "$dir" "${common[@]}" "${sel[@]}" --out "$dir/o.npy" --kv-keep-out "$dir/keep.npy"
  "$bin" run --ranks-local "$np" "${common[@]}" "${sel[@]}" --kv-keep-out "$dir/keep_local.npy" \
    >"$dir/stdout_local" 2>&1
  if [[ $rc -eq 0 ]] && grep -q "vs float64 on 16 sampled query rows x 4 heads: ok" "$dir/stdout" &&
    [[ -s $dir/o.npy ]] && cmp -s "$dir/keep.npy" "$dir/keep_local.npy"; then
    pass "-n $np --kv-keep 0.1 ($(grep '^  kv keep  ' "$dir/stdout" | sed 's/^ *//; s/  */ /g'))"
  else
    fail "-n $np --kv-keep 0.1: exit $rc"
    cat "$dir/stdout" "$dir/stderr"
  fi
done

# MoE: after attention in run, and alone in moe; routing must not depend on the communicator.
moe=(--moe-experts 6 --moe-topk 2 --moe-ffn 96 --check-rows 16)
for np in 2 3; do
  dir="$scratch/np$np-moe-run"
  rm -rf "$dir" && mkdir -p "$dir"
  command=run
  launch "$np" "$dir" "${common[@]}" --causal "${moe[@]}" --moe-out "$dir/y.npy" \
    --moe-routing-out "$dir/r.npy"
  "$bin" run --ranks-local "$np" "${common[@]}" --causal "${moe[@]}" \
    --moe-routing-out "$dir/r_local.npy" >"$dir/stdout_local" 2>&1
  if [[ $rc -eq 0 ]] && grep -q "^  moe check .*: ok" "$dir/stdout" && [[ -s $dir/y.npy ]] &&
    cmp -s "$dir/r.npy" "$dir/r_local.npy"; then
    pass "-n $np run with MoE ($(grep '^  dropped' "$dir/stdout" | sed 's/^ *//; s/  */ /g'))"
  else
    fail "-n $np run with MoE: exit $rc"
    cat "$dir/stdout" "$dir/stderr"
  fi

  dir="$scratch/np$np-moe"
  rm -rf "$dir" && mkdir -p "$dir"
  command=moe
  launch "$np" "$dir" --tokens 600 --d-model 64 "${moe[@]}" --no-baseline --threads 1 \
    --routing-out "$dir/r.npy"
  "$bin" moe --ranks-local "$np" --tokens 600 --d-model 64 "${moe[@]}" --no-baseline \
    --threads 1 --routing-out "$dir/r_local.npy" >"$dir/stdout_local" 2>&1
  if [[ $rc -eq 0 ]] && grep -q "^  moe check .*: ok" "$dir/stdout" &&
    grep -q "P=$np (mpi)" "$dir/stdout" && cmp -s "$dir/r.npy" "$dir/r_local.npy"; then
    pass "-n $np moe"
  else
    fail "-n $np moe: exit $rc"
    cat "$dir/stdout" "$dir/stderr"
  fi

  dir="$scratch/np$np-moe-fail"
  rm -rf "$dir" && mkdir -p "$dir"
  launch "$np" "$dir" --tokens 600 --d-model 64 "${moe[@]}" --no-baseline --threads 1 \
    --repeats 3 --fail-rank 1 --out "$dir/y.npy" --routing-out "$dir/r.npy"
  left=$(leftovers "$dir")
  if [[ $rc -ne 0 ]] && ((elapsed_ms < FAIL_LIMIT_S * 1000)) &&
    grep -q "rank 1" "$dir/stderr" && [[ -z $left ]]; then
    pass "-n $np moe --fail-rank 1: exit $rc after ${elapsed_ms} ms, nothing left behind"
  else
    fail "-n $np moe --fail-rank 1: exit $rc after ${elapsed_ms} ms, left: '${left}'"
    cat "$dir/stderr"
  fi
done

# Backward: the accumulators travel over MPI; the sums follow the same chains, so the
# gradients must equal the in-process run's exactly (one kernel thread per rank in both).
command=run
for np in 2 3; do
  dir="$scratch/np$np-backward"
  rm -rf "$dir" && mkdir -p "$dir"
  launch "$np" "$dir" "${common[@]}" --causal --sinks 2 --backward --verify --check-rows 8 \
    --dk-out "$dir/dk.npy"
  "$bin" run --ranks-local "$np" "${common[@]}" --causal --sinks 2 --backward \
    --dk-out "$dir/dk_local.npy" >"$dir/stdout_local" 2>&1
  if [[ $rc -eq 0 ]] && grep -q "^  grad error .*: ok" "$dir/stdout" &&
    grep -q "^  grad check .*: ok" "$dir/stdout" && cmp -s "$dir/dk.npy" "$dir/dk_local.npy"; then
    pass "-n $np --backward ($(grep '^  backward' "$dir/stdout" | sed 's/^ *//; s/  */ /g'))"
  else
    fail "-n $np --backward: exit $rc"
    cat "$dir/stdout" "$dir/stderr"
  fi
done
# Packed documents (the balanced layout, direct transfers posted at step 0): verify and
# the sampled checks under MPI, and O and dK equal to the in-process run's byte for byte.
dir="$scratch/np3-documents"
rm -rf "$dir" && mkdir -p "$dir"
docs=(--doc-lens 1,700,0,2,1200,97,1000 --causal --sinks 2 --backward)
launch 3 "$dir" "${common[@]}" "${docs[@]}" --verify --check-rows 16 --out "$dir/o.npy" \
  --dk-out "$dir/dk.npy"
"$bin" run --ranks-local 3 "${common[@]}" "${docs[@]}" --out "$dir/o_local.npy" \
  --dk-out "$dir/dk_local.npy" >"$dir/stdout_local" 2>&1
if [[ $rc -eq 0 ]] && grep -q "layout balanced" "$dir/stdout" &&
  grep -q "^  max error .*: ok" "$dir/stdout" && grep -q "^  reference check .*: ok" "$dir/stdout" &&
  grep -q "^  grad error .*: ok" "$dir/stdout" && cmp -s "$dir/o.npy" "$dir/o_local.npy" &&
  cmp -s "$dir/dk.npy" "$dir/dk_local.npy"; then
  pass "-n 3 packed documents (balanced layout)"
else
  fail "-n 3 packed documents: exit $rc"
  cat "$dir/stdout" "$dir/stderr"
fi
dir="$scratch/np4-backward-double-ring"
rm -rf "$dir" && mkdir -p "$dir"
launch 4 "$dir" "${common[@]}" --causal --backward --verify --hierarchy double-ring \
  --ranks-per-node 2
if [[ $rc -eq 0 ]] && grep -q "^  grad error .*: ok" "$dir/stdout"; then
  pass "-n 4 --backward --hierarchy double-ring"
else
  fail "-n 4 --backward --hierarchy double-ring: exit $rc"
  cat "$dir/stdout" "$dir/stderr"
fi
dir="$scratch/np3-backward-fail"
rm -rf "$dir" && mkdir -p "$dir"
launch 3 "$dir" "${common[@]}" --causal --backward --repeats 3 --fail-rank 1 \
  --dq-out "$dir/dq.npy" --out "$dir/o.npy"
left=$(leftovers "$dir")
if [[ $rc -ne 0 ]] && ((elapsed_ms < FAIL_LIMIT_S * 1000)) && grep -q "rank 1" "$dir/stderr" &&
  [[ -z $left ]]; then
  pass "-n 3 --backward --fail-rank 1: exit $rc after ${elapsed_ms} ms, nothing left behind"
else
  fail "-n 3 --backward --fail-rank 1: exit $rc after ${elapsed_ms} ms, left: '${left}'"
  cat "$dir/stderr"
fi

# Threads per rank from the binding: without --threads and OMP_NUM_THREADS, 3
# unbound ranks on this machine share its cores (at least one thread each); the
# header says why. The wall-time breakdown adds up to no more than the command.
dir="$scratch/threads"
rm -rf "$dir" && mkdir -p "$dir"
cores=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # nproc obeys OMP_NUM_THREADS
want=$((cores / 3))
((want >= 1)) || want=1
(unset OMP_NUM_THREADS
  launch 3 "$dir" --seq-len 3000 --heads 4 --kv-heads 2 --head-dim 64 --metrics "$dir/m.jsonl"
  echo "$rc" >"$dir/rc")
rc=$(cat "$dir/rc")
plural=$([[ $want -eq 1 ]] && echo "" || echo "s")
if [[ $rc -eq 0 ]] &&
  grep -q "| $want thread$plural per rank ($cores core.* bound to rank 0, shared by 3 ranks)" "$dir/stdout" &&
  grep -q "wall time .* for the command (rank 0) = set-up" "$dir/stdout" &&
  grep -q '"command_ms"' "$dir/m.jsonl"; then
  pass "-n 3 threads from the binding: $(grep -o '[0-9]* threads* per rank ([^)]*)' "$dir/stdout")"
else
  fail "-n 3 threads from the binding: exit $rc"
  cat "$dir/stdout" "$dir/stderr"
fi

# The README's calibrate-then-plan, as written: `mpirun -np 2 ringattn calibrate --out FILE`
# under the launcher's own binding (Open MPI binds each of np <= 2 ranks to one core)
# writes a profile of the node -- its cores, not one rank's binding -- naming the CPU and
# every rank's binding, which plans 1 and 2 ranks on one node without a CPU warning.
dir="$scratch/calibrate"
rm -rf "$dir" && mkdir -p "$dir"
node_cores=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
timeout "$HARD_LIMIT_S" "$mpiexec" --oversubscribe -n 2 "$bin" calibrate --out "$dir/mine.ini" \
  --dtypes f32 --head-dims 64 --probe-tokens 512 --probe-heads 1 --probe-seconds 0.02 \
  --max-message 65536 </dev/null >"$dir/stdout" 2>"$dir/stderr"
rc=$?
plans=0
config=$(cd "$(dirname "$0")/.." && pwd)/configs/default.ini  # the README's: the quickstart job
for p in 1 2; do
  "$bin" plan --hardware "$dir/mine.ini" --ranks "$p" --config "$config" \
    >"$dir/plan$p" 2>"$dir/plan$p.err" && grep -q "P=$p (mpi, 1 node x $p)" "$dir/plan$p" &&
    [[ ! -s $dir/plan$p.err ]] && plans=$((plans + 1))
done
if [[ $rc -eq 0 ]] && grep -q "^devices-per-node = $node_cores$" "$dir/mine.ini" &&
  grep -q "^name = cpu-${node_cores}core$" "$dir/mine.ini" && grep -q "^cpu = " "$dir/mine.ini" &&
  grep -q "^\[link.intra-node\]" "$dir/mine.ini" && grep -q "^\[probe-spread\]" "$dir/mine.ini" &&
  grep -q "^# Binding: rank 0: cpus .* rank 1: cpus " "$dir/mine.ini" && [[ $plans -eq 2 ]]; then
  pass "-n 2 calibrate then plan P=1, 2: $(grep '^binding' "$dir/stdout")"
else
  fail "-n 2 calibrate then plan: exit $rc, plans $plans of 2"
  cat "$dir/stdout" "$dir/stderr" "$dir/mine.ini" "$dir"/plan*
fi

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
