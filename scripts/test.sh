#!/usr/bin/env bash
# Builds ringattn and runs every test, as CI does:
#   1. formatting check (clang-format) of src/, include/, tests/
#   2. release build, warnings as errors, full ctest
#   3. Debug -O1 build with AddressSanitizer + UBSan, full ctest
#   4. the tool without MPI (the single-process fallback) and the Python
#      module; the tests of `ringattn run` and the CLI. Every other object is
#      release's, whose ctest ran its tests already.
#   5. the GPU path (preset cuda: nvcc for sm_80, NCCL), warnings as
#      errors: the tool, the GPU bench and the tests of the GPU path (host-side
#      planning, NCCL helpers, pluggable local memory; GPU tests skip without a
#      GPU), and the docker check. Its CPU code is the same sources and flags
#      as the release build, whose ctest ran every other test already.
#   6. the minimal build launch/gpu-check.sh uses on GPU machines (fmt and
#      GoogleTest carried from --pack; nvcc for sm_90, warnings as errors),
#      host-side tests only here
#   7. the libFuzzer targets (.npy reader, config files), 45 s each
# Installs missing Debian packages first. Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/python-env.sh  # .venv: nanobind, pytest, ml_dtypes (the Python module and its tests)

jobs=$(nproc)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

echo "== format check"
mapfile -t files < <(git ls-files 'src/*.cpp' 'src/*.hpp' 'src/*.cu' 'src/*.cuh' 'include/*.hpp' 'tests/*.cpp' 'tests/*.hpp' 'python/*.cpp' 2>/dev/null || find src include tests -name '*.[ch]pp' -o -name '*.cu' -o -name '*.cuh')
clang-format --dry-run -Werror "${files[@]}"

for preset in release asan nompi cuda; do
  echo "== $preset: configure, build, test"
  # release and asan build and run everything. The other two share release's
  # flags, so most of their objects are release's, whose tests ran already:
  #   nompi differs in src/comm/mpi.cpp (mpi_built() false, --backend mpi an error)
  #     and in the MPI tests it leaves out: the tool, the Python module, and the
  #     tests of `ringattn run` and the CLI (labels: their binaries).
  #   cuda adds the GPU kernel, engine and NCCL backend: the tool, the GPU bench
  #     and the tests of the GPU path. Its device code for sm_80 here; the
  #     gpu-check build below compiles it for sm_90, also with warnings as errors.
  targets=() only=() config=()
  case "$preset" in
    nompi)
      targets=(ringattn _core test_run test_run_errors test_cli)
      only=(-L '^(test_run|test_run_errors|test_cli)$') ;;
    cuda)
      targets=(ringattn ringattn-gpu-bench test_cuda_plan test_cuda_kernel test_cuda_ring
               test_run_errors)
      only=(-R 'Cuda|Nccl|LocalMemory|dockerfiles')
      config=(-DCMAKE_CUDA_ARCHITECTURES=80) ;;
  esac
  # The Python module builds against .venv (scripts/python-env.sh) even where an earlier
  # configure (launch/quickstart.sh) cached another interpreter.
  cmake --preset "$preset" -DPython_EXECUTABLE="$PWD/.venv/bin/python" ${config[@]+"${config[@]}"} >/dev/null
  cmake --build --preset "$preset" -j "$jobs" ${targets[@]+--target "${targets[@]}"}
  ctest --test-dir "build/$preset" --output-on-failure -j "$jobs" --timeout 900 "${only[@]}"
done
echo "== gpu-check build (minimal configuration, no GPU here: GPU tests skip)"
bash launch/gpu-check.sh --pack build/gpu-deps
bash launch/gpu-check.sh --deps build/gpu-deps --arch 90 --no-gpu-ok --werror
# The fuzz targets (scripts/fuzz.sh: preset fuzz, clang, ASan + UBSan): 45 s
# each, not the 60 s default, to keep this whole script under ~30 minutes on
# the 2-core CI machine; a target finds its shallow bugs in seconds, and the
# deep search is the long run (scripts/fuzz.sh 600) done by hand.
echo "== fuzz (45 s per target)"
bash scripts/fuzz.sh 45
echo "== all tests passed"
