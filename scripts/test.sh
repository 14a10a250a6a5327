#!/usr/bin/env bash
# Builds ringattn and runs every test, as CI does:
#   1. formatting check (clang-format) of src/, include/, tests/
#   2. release build, warnings as errors, full ctest
#   3. Debug -O1 build with AddressSanitizer + UBSan, full ctest
#   4. a build without MPI (the single-process tool), its ctest
# Installs missing Debian packages first. Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh

jobs=$(nproc)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

echo "== format check"
mapfile -t files < <(git ls-files 'src/*.cpp' 'src/*.hpp' 'include/*.hpp' 'tests/*.cpp' 'tests/*.hpp' 2>/dev/null || find src include tests -name '*.[ch]pp')
clang-format --dry-run -Werror "${files[@]}"

for preset in release asan nompi; do
  echo "== $preset: configure, build, test"
  cmake --preset "$preset" >/dev/null
  cmake --build --preset "$preset" -j "$jobs"
  ctest --test-dir "build/$preset" --output-on-failure -j "$jobs" --timeout 900
done
echo "== all tests passed"
