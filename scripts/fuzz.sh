#!/usr/bin/env bash
# Builds the libFuzzer targets (preset fuzz: clang, ASan + UBSan) and runs each
# for a bounded time on a scratch copy of its seed corpus (tests/fuzz/corpus/,
# which stays unmodified):
#   fuzz_npy      the .npy reader (read_npy_header, read_npy, read_npy_slice)
#   fuzz_config   the config-file parser (`--config FILE`, parse_config_text)
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]     (default 60; `scripts/fuzz.sh 600` for a long run)
#
# Prints per target the executions, the new corpus items and the findings (a
# crash, a sanitizer report, an uncaught exception other than ringattn::Error,
# a leak, a timeout or running out of memory), and exits non-zero on any
# finding, naming the file that reproduces it:
#   build/fuzz/tests/fuzz/fuzz_<target> <file>
# Work files go to build/fuzz/run/<target>/ (corpus, log, crash files).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
[[ "$seconds" =~ ^[1-9][0-9]*$ ]] || { echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET]" >&2; exit 2; }

echo "== fuzz: configure, build (preset fuzz)"
cmake --preset fuzz >/dev/null
cmake --build --preset fuzz -j "$(nproc)"

bin=build/fuzz/tests/fuzz
run=build/fuzz/run
findings=0
for target in npy config; do
  dir="$run/$target"
  rm -rf "$dir"
  mkdir -p "$dir/corpus" "$dir/artifacts"
  cp tests/fuzz/corpus/"$target"/* "$dir/corpus/"
  seeds=$(find "$dir/corpus" -type f | wc -l)
  echo "== fuzz_$target: ${seconds}s on $seeds seed files"
  # One process, so the run stays within the given time on a busy machine. -timeout: an input
  # running 10 s is a hang (a finding); -rss_limit_mb: so is memory growing past 2 GiB.
  rc=0
  "$bin/fuzz_$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$dir/artifacts/" "$dir/corpus" \
    >"$dir/log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/log" | tail -1)
  items=$(find "$dir/corpus" -type f | wc -l)
  mapfile -t crashes < <(find "$dir/artifacts" -type f)
  echo "fuzz_$target: executions ${execs:-?}, new corpus items $((items - seeds)), findings ${#crashes[@]}"
  if ((rc != 0 || ${#crashes[@]} != 0)); then
    findings=$((findings + 1))
    grep -E 'ERROR|SUMMARY|runtime error|uncaught|==[0-9]+==' "$dir/log" | head -20 || true
    for c in "${crashes[@]}"; do echo "  finding: $c (reproduce: $bin/fuzz_$target $c)"; done
    ((${#crashes[@]} != 0)) || echo "  fuzz_$target exited with status $rc (log: $dir/log)"
  fi
done
if ((findings != 0)); then
  echo "== fuzz: findings in $findings target(s)"
  exit 1
fi
echo "== fuzz: no findings"
