// The materialised baseline benchmarks run beside the kernel: for each
// (batch, head) and each block of query rows, S = Q K^T with OpenBLAS sgemm,
// a row softmax over the whole materialised score block, then O = P V with
// sgemm. Row blocks keep its memory at O(block_rows * Nk), not Nq x Nk.
// float32 storage only (other dtypes are converted up front).
#pragma once

#include <cstdint>
#include <string>

#include "ringattn/kernel.hpp"

namespace ringattn {

// Same contract and outputs as attention_forward (mask applied elementwise).
void baseline_attention(const AttentionArgs& args, float* o, float* lse, int threads);

// The machine's sgemm rate in GFLOP/s: best of `repeats` runs of an n x n x n
// product on `threads` threads.
double measure_sgemm_gflops(int threads, int n = 2048, int repeats = 3);

// The CPU kernel set OpenBLAS chose ("SkylakeX", "Haswell", ...). Distribution
// builds may not recognise a CPU and fall back to a slow generic core, which
// understates the sgemm rate; OPENBLAS_CORETYPE=SkylakeX (set before the
// program starts) overrides that.
std::string blas_core_name();

}  // namespace ringattn
