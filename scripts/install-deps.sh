#!/usr/bin/env bash
# Installs the Debian packages ringattn builds, tests and runs with, and
# nothing else. Safe to run repeatedly: it only calls apt-get when a package is
# missing. Needs root (or sudo) on a Debian 12 machine.
#
# The package list is the single source of truth: docker files and CI use it.
# clang, libclang-rt-14-dev (libFuzzer and the sanitizer runtimes of Debian's
# clang 14) and libomp-dev (clang's OpenMP) build the fuzz targets
# (scripts/fuzz.sh); libfuzzer-14-dev is not needed: it is the standalone
# libFuzzer.a, and -fsanitize=fuzzer links the one in libclang-rt-14-dev.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build pkg-config git
  libboost-program-options-dev libfmt-dev libgtest-dev googletest
  libopenmpi-dev openmpi-bin
  libopenblas-dev
  clang-format
  clang libclang-rt-14-dev libomp-dev
  python3 python3-numpy python3-matplotlib python3-venv python3-dev python3-mpi4py
)

if [[ "${1:-}" == "--list" ]]; then
  printf '%s\n' "${PACKAGES[@]}"
  exit 0
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
