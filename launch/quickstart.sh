#!/usr/bin/env bash
# The README's main job: install what is missing, build the release preset,
# and run ringattn on the default config (generate inputs, run, verify against
# the float64 reference, print the table). Extra arguments go to ringattn.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release -j "$(nproc)" --target ringattn
exec ./build/release/src/ringattn demo --config configs/kernel-demo.ini "$@"
