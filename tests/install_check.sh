#!/usr/bin/env bash
# `cmake --install` of a build tree, then a downstream project built against the
# installed tree alone (tests/install_consumer: find_package(ringattn), links
# ringattn::ringattn) and run, and the installed CLI finding its profiles.
#   tests/install_check.sh BUILD_DIR WORK_DIR
set -euo pipefail
build=$1
work=$2
src=$(cd "$(dirname "$0")" && pwd)/install_consumer
rm -rf "$work"
mkdir -p "$work"
cmake --install "$build" --prefix "$work/prefix" >"$work/install.log"
for f in bin/ringattn include/ringattn/job.hpp include/ringattn/kernel.hpp \
         lib/cmake/ringattn/ringattnConfig.cmake share/ringattn/hardware/cpu-icelake-2core.ini; do
  [[ -e "$work/prefix/$f" ]] || { echo "install_check: $f not installed" >&2; exit 1; }
done
ls "$work"/prefix/lib/libringattn_*.a >/dev/null
# Only the installed tree: the build and source trees are not on any search path.
cmake -S "$src" -B "$work/build" -DCMAKE_PREFIX_PATH="$work/prefix" -DCMAKE_BUILD_TYPE=Release \
  >"$work/configure.log"
cmake --build "$work/build" -j "$(nproc)" >"$work/build.log"
OMP_NUM_THREADS=2 "$work/build/consumer"
# The installed CLI resolves a shipped profile by name from outside the source tree.
(cd "$work" && ./prefix/bin/ringattn plan --hardware cpu-icelake-2core --seq-len 16384 --ranks 2 \
  >"$work/plan.txt")
grep -q "cpu-icelake-2core" "$work/plan.txt" || { echo "install_check: plan did not use cpu-icelake-2core" >&2; exit 1; }
echo "install_check: installed tree builds and runs a consumer; the CLI finds its profiles"
