#!/usr/bin/env bash
# The README's main job: install what is missing, build the release preset, and
# run ring attention on configs/default.ini as 2 MPI processes on this machine
# (generated inputs, --verify against the single-rank kernel, summary table).
# Extra arguments go to `ringattn run`, e.g. --seq-len 32768 --metrics run.jsonl.
#
# Environment: NP (default 2) ranks. Open MPI binds each of np <= 2 ranks to one
# core, so each runs one kernel thread; for several threads per rank launch with
# `--bind-to none` (or `--bind-to socket`) and set OMP_NUM_THREADS.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release -j "$(nproc)" --target ringattn
# Root-safe Open MPI (containers, CI); --oversubscribe lets NP exceed the cores
# for single-machine simulation.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
exec mpirun -np "${NP:-2}" --oversubscribe ./build/release/src/ringattn run \
  --config configs/default.ini "$@" </dev/null
