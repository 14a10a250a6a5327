#!/usr/bin/env bash
# Soak test of failure handling under a real MPI launcher: JOBS (default 30) small
# `ringattn run` jobs of 2-4 ranks (random size, layout, mask, sometimes --verify, ~1-3 s
# each), each with one failure injected at a random moment:
#   kill9  SIGKILL to a random rank process      term   SIGTERM to a random rank process
#   int    SIGINT to mpirun (a user's Ctrl-C)    throw  --fail-rank R (a rank throws)
# Every job must
#   * end within HANG_S seconds (else it is killed with SIGKILL and counted as a failure);
#   * exit non-zero, or 0 only when the injection came after the job had finished; a job
#     that completed (rank 0 printed its report, or the signal's stderr line says so) before
#     the failure ended it must have complete outputs, whatever its exit status ("ok-late");
#   * leave no ringattn process behind;
#   * when it failed: say why on stderr, and leave no final output file; a temporary
#     (o.npy.tmp.*) may outlive a rank killed before its handler ran (SIGKILL, or Open MPI's
#     SIGKILL 1 s after SIGTERM), and the next run writing the same output must remove it.
# Prints one row per job and a closing line "N passed, M failed"; exits non-zero on any failure.
#
# Usage: tests/soak.sh path/to/ringattn SCRATCH [JOBS]
# Environment: SOAK_SEED (default 1; the same seed draws the same jobs and delays),
#              SOAK_HANG_S (default 60), MPIEXEC (default mpiexec).
set -uo pipefail

if [[ $# -lt 2 || $# -gt 3 ]]; then
  echo "usage: $0 path/to/ringattn SCRATCH [JOBS]" >&2
  exit 2
fi
bin=$(readlink -f "$1")
scratch=$2
jobs=${3:-30}
seed=${SOAK_SEED:-1}
readonly HANG_S=${SOAK_HANG_S:-60} # a hang guard, not a timing
readonly STRAY_GRACE_S=5           # ranks still alive this long after mpirun ended are strays
readonly PASS_US_8K=450000         # one full ring pass at N = 8192, H = 2, D = 64 here (~0.45 s)
readonly TARGET_US=1500000         # aim for ~1.5 s of ring passes per job
mpiexec=${MPIEXEC:-mpiexec}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0}

[[ -x $bin ]] || {
  echo "not an executable: $1" >&2
  exit 2
}
mkdir -p "$scratch" || exit 2
scratch=$(readlink -f "$scratch")
out_dir=$scratch/out # every job writes the same outputs: each run cleans up after the last
mkdir -p "$out_dir"
rm -f "$out_dir"/*
o=$out_dir/o.npy
lse=$out_dir/lse.npy
RANDOM=$seed

now_ms() { echo $(($(date +%s%N) / 1000000)); }
alive() { kill -0 "$1" 2>/dev/null; }
# Our rank processes: every one has $out_dir in its command line (nobody else's does).
our_ranks() { pgrep -f -- "--out $o" | grep -vx "$$" || true; }
temps() { find "$out_dir" -maxdepth 1 -name '*.tmp.*' -printf '%f '; }

# npy_data_ok FILE BYTES: FILE is a .npy (version 1 or 2 header) with exactly BYTES of data.
npy_data_ok() {
  local f=$1 want=$2 size hlen
  [[ -f $f ]] || return 1
  size=$(stat -c %s "$f")
  [[ $(head -c 6 "$f" | tail -c 5) == NUMPY ]] || return 1
  if [[ $(od -An -tu1 -j6 -N1 "$f" | tr -d ' ') == 1 ]]; then
    hlen=$((10 + $(od -An -tu2 -j8 -N2 --endian=little "$f" | tr -d ' ')))
  else
    hlen=$((12 + $(od -An -tu4 -j8 -N4 --endian=little "$f" | tr -d ' ')))
  fi
  [[ $((size - hlen)) -eq $want ]]
}

first_line() { # the first line of stderr that says something (not blank, not a rule)
  grep -m1 -v -E '^[[:space:]-]*$' "$1" | cut -c1-60
}

passed=0
failed=0
late=0
max_ms=0
declare -A kind_count kind_failed
kinds=(kill9 term int throw)
printf '%-4s %-2s %-6s %-6s %-4s %-7s %-60s %s\n' job P inject delay rc seconds \
  "stderr (first line)" verdict

for ((j = 1; j <= jobs; j++)); do
  p=$((2 + RANDOM % 3))
  n=$((2000 + RANDOM % 6001))
  layouts=(contiguous zigzag striped)
  layout=${layouts[RANDOM % 3]}
  causal=$((RANDOM % 2))
  verify=$((RANDOM % 3 == 0))
  kind=${kinds[RANDOM % 4]}
  victim=$((RANDOM % p))
  delay_ms=$((RANDOM % 1800))  # jobs last ~2 s: most injections land mid-run
  pass_us=$((PASS_US_8K * n * n / (8192 * 8192)))
  ((causal)) && pass_us=$((pass_us / 2))
  repeats=$(((TARGET_US + pass_us - 1) / pass_us))
  ((repeats > 60)) && repeats=60
  args=(--seq-len "$n" --heads 2 --head-dim 64 --threads 1 --layout "$layout"
    "--causal=$([[ $causal == 1 ]] && echo true || echo false)" --repeats "$repeats"
    --out "$o" --lse-out "$lse")
  ((verify)) && args+=(--verify)
  [[ $kind == throw ]] && args+=(--fail-rank "$victim") && delay_ms=0
  dir=$scratch/job$j
  rm -rf "$dir" && mkdir -p "$dir"
  echo "$mpiexec --oversubscribe --bind-to none -n $p $bin run ${args[*]}" >"$dir/cmd"
  rm -f "$o" "$lse" # the outputs of the last job (temporaries stay: this run must remove them)

  t0=$(now_ms)
  "$mpiexec" --oversubscribe --bind-to none -n "$p" "$bin" run "${args[@]}" \
    </dev/null >"$dir/stdout" 2>"$dir/stderr" &
  mp=$!
  injected=none # none: nothing to do (throw), sent, late (the job had ended)
  [[ $kind == throw ]] || injected=pending
  hung=0
  while alive "$mp"; do
    elapsed=$(($(now_ms) - t0))
    if [[ $injected == pending ]] && ((elapsed >= delay_ms)); then
      # The rank processes are mpirun's children, started in rank order. Every injection
      # waits for all of them: an mpirun interrupted before it started any rank exits 1
      # without a word (Open MPI 4.1), and no ringattn code has run to say why.
      mapfile -t ranks < <(pgrep -P "$mp" | sort -n)
      if ((${#ranks[@]} == p)); then # else not all started yet: try again shortly
        if [[ $kind == int ]]; then
          kill -INT "$mp" 2>/dev/null && injected=sent
        else
          sig=$([[ $kind == kill9 ]] && echo KILL || echo TERM)
          kill -"$sig" "${ranks[victim]}" 2>/dev/null && injected=sent
        fi
      fi
    fi
    if ((elapsed > HANG_S * 1000)); then
      hung=1
      pkill -KILL -P "$mp" 2>/dev/null
      kill -KILL "$mp" 2>/dev/null
      break
    fi
    sleep 0.02
  done
  wait "$mp"
  rc=$?
  ms=$(($(now_ms) - t0))
  ((ms > max_ms)) && max_ms=$ms
  [[ $injected == pending ]] && injected=late

  # Checks.
  why=()
  ((hung)) && why+=("hung (killed after ${HANG_S} s)")
  stray=()
  for ((w = 0; w < STRAY_GRACE_S * 10; w++)); do
    mapfile -t stray < <(our_ranks)
    ((${#stray[@]} == 0)) && break
    sleep 0.1
  done
  if ((${#stray[@]})); then
    why+=("stray ringattn: ${stray[*]}")
    kill -KILL "${stray[@]}" 2>/dev/null # ours: their command line names this job's output
  fi
  verdict=ok
  # The job completed (its outputs written) when rank 0 printed its report, or when a signal
  # that came later says so: then the outputs must be complete, whatever the exit status.
  completed=0
  grep -q '^  outputs ' "$dir/stdout" && completed=1
  grep -q 'the job had completed' "$dir/stderr" && completed=1
  [[ $kind == throw ]] && completed=0 # a rank throws in the first pass: never completes
  if ((rc == 0)) && [[ $injected != late ]]; then
    why+=("exit 0 after $kind was injected")
  elif ((rc == 0 || completed)); then
    verdict=ok-late # the failure came after the job had finished
    npy_data_ok "$o" $((n * 2 * 64 * 4)) || why+=("o.npy missing or incomplete after completion")
    npy_data_ok "$lse" $((n * 2 * 4)) || why+=("lse.npy missing or incomplete after completion")
  fi
  if ((rc != 0)); then
    [[ -s $dir/stderr ]] || why+=("empty stderr")
    if ((!completed)) && [[ -e $o || -e $lse ]]; then
      why+=("failed, yet left $(find "$out_dir" -maxdepth 1 -name '*.npy' -printf '%f ')")
    fi
  fi
  left=$(temps)
  if [[ -n $left ]]; then
    # A SIGKILLed rank 0 cannot clean up, nor can one that Open MPI SIGKILLs 1 s after its
    # SIGTERM before a loaded machine ran its handler: the next run writing the same
    # outputs must remove the temporary.
    if ! "$bin" run --ranks-local 1 --seq-len 64 --heads 1 --head-dim 64 --threads 1 \
      --out "$o" --lse-out "$lse" </dev/null >"$dir/next.out" 2>&1; then
      why+=("the next run failed: $(head -1 "$dir/next.out")")
    fi
    still=$(temps)
    [[ -n $still ]] && why+=("temporary not removed by the next run: $still")
  fi

  kind_count[$kind]=$((${kind_count[$kind]:-0} + 1))
  if ((${#why[@]})); then
    verdict="FAIL: $(
      IFS=';'
      echo "${why[*]}"
    )"
    failed=$((failed + 1))
    kind_failed[$kind]=$((${kind_failed[$kind]:-0} + 1))
  else
    passed=$((passed + 1))
    [[ $verdict == ok-late ]] && late=$((late + 1))
  fi
  inj=$kind
  [[ $kind != int ]] && inj="$kind@$victim"
  printf '%-4s %-2s %-6s %-6s %-4s %-7s %-60s %s\n' "$j" "$p" "$inj" "${delay_ms}ms" "$rc" \
    "$(printf '%d.%02d' $((ms / 1000)) $((ms % 1000 / 10)))" "$(first_line "$dir/stderr")" \
    "$verdict"
done

summary=""
for k in "${kinds[@]}"; do
  summary+="$k ${kind_count[$k]:-0} (${kind_failed[$k]:-0} failed), "
done
echo "seed $seed; ${summary}$late completed before the failure (ok-late); slowest job $((max_ms / 1000)).$(printf '%02d' $((max_ms % 1000 / 10))) s"
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
