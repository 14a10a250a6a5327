#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU, builds ringattn's GPU path,
# runs the GPU tests, then prints the kernel's benchmark table. The summary
# (test results, then the table) is printed last.
#
#   launch/gpu-check.sh [--deps DIR] [--arch SM] [--no-gpu-ok] [--werror]  # the check
#   launch/gpu-check.sh --pack [DIR]                              # copy fmt + googletest into DIR
#
# The build is the minimal configuration (RINGATTN_MINIMAL: no Boost, MPI,
# OpenBLAS; fmt header-only; GoogleTest from source), so a GPU machine needs
# only the CUDA toolkit, CMake and a C++ compiler. Where fmt or GoogleTest are
# missing there, run `--pack` on a machine that has them (default DIR:
# .gpu-deps, ignored by git) and bring DIR along; the check looks for DIR/fmt
# and DIR/googletest, then /usr/include/fmt and /usr/src/googletest.
#   --arch SM     CUDA architecture to build for (default: the GPU's, else 80;90)
#   --no-gpu-ok   without a GPU, build and run the host-side tests (GPU tests
#                 skip) and exit 0: how CI checks this configuration builds
#   --werror      warnings are errors (CI; off by default, since a GPU machine's
#                 compiler may warn where CI's does not)
# Steps run under a timeout each, capped by one deadline for the whole check
# (RINGATTN_GPU_CHECK_BUDGET_S, default 470 s on a GPU: < 8 minutes on one
# H200; 1800 s without one), with time kept for the benchmark. A failing or
# timed-out test does not stop the check: the benchmark still runs and its
# table is printed (partial rows if it failed); only a failed configure or
# build ends it early.
# Exit status: 0 all passed, 1 a step failed (named in the summary), 2 bad usage.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

die() { echo "gpu-check: error: $*" >&2; exit 1; }

deps="$root/.gpu-deps"
arch=""
no_gpu_ok=0
werror=OFF
if [[ "${1:-}" == "--pack" ]]; then
  dest="${2:-$deps}"
  [[ -f /usr/include/fmt/format.h ]] || die "--pack: fmt headers not found at /usr/include/fmt (apt-get install libfmt-dev)"
  [[ -f /usr/src/googletest/CMakeLists.txt ]] || die "--pack: GoogleTest sources not found at /usr/src/googletest (apt-get install googletest)"
  rm -rf "$dest" && mkdir -p "$dest/fmt"
  cp -r /usr/include/fmt "$dest/fmt/"
  cp -r /usr/src/googletest "$dest/googletest"
  echo "gpu-check: packed fmt and googletest into $dest ($(du -sh "$dest" | cut -f1))"
  exit 0
fi
while (($#)); do
  case "$1" in
    --deps) deps="$2"; shift 2 ;;
    --arch) arch="$2"; shift 2 ;;
    --no-gpu-ok) no_gpu_ok=1; shift ;;
    --werror) werror=ON; shift ;;
    *) echo "usage: $0 [--deps DIR] [--arch SM] [--no-gpu-ok] [--werror] | --pack [DIR]" >&2; exit 2 ;;
  esac
done

# Tools.
nvcc=$(command -v nvcc || true)
[[ -z "$nvcc" && -x /usr/local/cuda/bin/nvcc ]] && nvcc=/usr/local/cuda/bin/nvcc
[[ -n "$nvcc" ]] || die "nvcc not found (install the CUDA toolkit or put it on PATH)"
command -v cmake >/dev/null || die "cmake not found"
generator=(-G Ninja)
command -v ninja >/dev/null || generator=(-G "Unix Makefiles")
jobs=$(nproc)

# Dependencies carried or installed.
fmt_dir=""
for d in "$deps/fmt" /usr/include; do
  [[ -f "$d/fmt/format.h" ]] && { fmt_dir="$d"; break; }
done
[[ -n "$fmt_dir" ]] || die "fmt headers not found in $deps/fmt or /usr/include: run '$0 --pack' where libfmt-dev is installed and bring .gpu-deps"
gtest_dir=""
for d in "$deps/googletest" /usr/src/googletest; do
  [[ -f "$d/CMakeLists.txt" ]] && { gtest_dir="$d"; break; }
done
[[ -n "$gtest_dir" ]] || die "GoogleTest sources not found in $deps/googletest or /usr/src/googletest: run '$0 --pack'"

# The GPU, if any.
gpu=""
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  gpu=$(nvidia-smi --query-gpu=name,compute_cap --format=csv,noheader | head -1)
  [[ -z "$arch" ]] && arch=$(echo "$gpu" | awk -F', ' '{gsub(/\./, "", $2); print $2}')
fi
if [[ -z "$gpu" && $no_gpu_ok -eq 0 ]]; then
  die "no GPU found (nvidia-smi -L failed); use --no-gpu-ok to build and run the host-side tests only"
fi
[[ -n "$arch" ]] || arch="80;90"
echo "== gpu-check: GPU: ${gpu:-none}; nvcc: $nvcc; CUDA architectures: $arch; fmt: $fmt_dir; googletest: $gtest_dir"

build="$root/build/gpu-check"
log="$build/logs"
mkdir -p "$log"
rm -f "$build/bench-table.txt" "$log"/*.log
# Seconds for the whole check, and kept for the benchmark while tests run.
# Without a GPU (CI: a slower, shared machine; no benchmark) the deadline only
# guards against a hang.
# The build's own limit follows: an H200 host (16 cores, one architecture)
# builds in ~2 minutes; a shared 2-core CI machine needs far longer.
if [[ -n "$gpu" ]]; then
  budget=${RINGATTN_GPU_CHECK_BUDGET_S:-470} bench_reserve=150 build_limit=300
else
  budget=${RINGATTN_GPU_CHECK_BUDGET_S:-1800} bench_reserve=0 build_limit=1500
fi
summary=()
failed=0
step_rc=0
step() {  # step NAME TIMEOUT_S CMD...: runs it (capped by the deadline), logs it, records the result in step_rc
  local name="$1" limit="$2"; shift 2
  local left=$((budget - SECONDS))
  ((limit > left)) && limit=$left
  step_rc=0
  if ((limit < 10)); then
    summary+=("FAIL  $name: not run, out of time (${budget}s for the check, ${bench_reserve}s of it kept for the benchmark)")
    failed=1 step_rc=124
    return 0
  fi
  echo "== $name (timeout ${limit}s)"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$log/$name.log" || step_rc=$?
  local took=$((SECONDS - t0))
  if ((step_rc == 124 || step_rc == 137)); then
    summary+=("FAIL  $name: timed out after ${limit}s (log $log/$name.log)")
    failed=1
  elif ((step_rc != 0)); then
    summary+=("FAIL  $name: exit $step_rc after ${took}s (log $log/$name.log)")
    failed=1
  else
    summary+=("ok    $name (${took}s)")
  fi
  return 0
}
print_summary() {
  echo
  echo "================ gpu-check summary (${SECONDS}s) ================"
  printf '%s\n' "${summary[@]}"
  if [[ -f "$build/bench-table.txt" ]]; then
    echo; cat "$build/bench-table.txt"
  elif [[ -f "$log/bench.log" ]] && grep -Eq '^(N |ring )' "$log/bench.log"; then
    echo; echo "benchmark rows measured before it stopped (no table):"
    grep -E '^(N |ring )' "$log/bench.log"
  fi
  return 0
}
finish() {  # prints the summary last and exits 1 if any step failed
  print_summary
  exit "$failed"
}

step configure 120 cmake -S "$root" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DRINGATTN_MINIMAL=ON -DRINGATTN_CUDA=ON "-DRINGATTN_WERROR=$werror" \
  "-DCMAKE_CUDA_ARCHITECTURES=$arch" "-DCMAKE_CUDA_COMPILER=$nvcc" \
  "-DRINGATTN_FMT_DIR=$fmt_dir" "-DRINGATTN_GTEST_DIR=$gtest_dir"
((step_rc == 0)) || finish
# Only what the check runs, on every core.
step build "$build_limit" cmake --build "$build" -j "$jobs" --target test_cuda_plan test_cuda_kernel \
  test_cuda_ring ringattn-gpu-bench
((step_rc == 0)) || finish

# GPU tests: on a GPU a skipped test is a failure (the device was not usable).
# Each keeps bench_reserve seconds of the budget for the benchmark; a failure
# is recorded and the next step runs.
gtest_step() {
  local name="$1" limit=120
  local left=$((budget - bench_reserve - SECONDS))
  ((left < limit)) && limit=$left
  step "$name" "$limit" "$build/tests/$name"
  [[ -f "$log/$name.log" ]] || return 0
  local skipped passed
  skipped=$(grep -Eo '^\[  SKIPPED \] [0-9]+ test' "$log/$name.log" | grep -Eo '[0-9]+' || echo 0)
  passed=$(grep -Eo '\[  PASSED  \] [0-9]+ test' "$log/$name.log" | grep -Eo '[0-9]+' || echo 0)
  summary[-1]="${summary[-1]}: $passed passed, $skipped skipped"
  if [[ -n "$gpu" ]] && ((skipped > 0)) && [[ "$name" != test_cuda_plan ]]; then
    summary+=("FAIL  $name: $skipped GPU test(s) skipped on a GPU machine (see $log/$name.log)")
    failed=1
  fi
  return 0
}
gtest_step test_cuda_plan
gtest_step test_cuda_kernel
gtest_step test_cuda_ring

# The benchmark always runs on a GPU, whatever the tests said.
if [[ -n "$gpu" ]]; then
  step bench 240 "$build/src/ringattn-gpu-bench" --table "$build/bench-table.txt"
else
  summary+=("skip  bench: no GPU")
fi
finish
