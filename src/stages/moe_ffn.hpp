// The MoE stage's dense math on the BLAS the project links (OpenBLAS): the
// router's logits and the experts' SwiGLU FFNs. Built without BLAS (the
// minimal configuration) every call throws an Error saying so.
#pragma once

#include <cstdint>

#include "ringattn/memory.hpp"
#include "ringattn/moe.hpp"

namespace ringattn::moe {

// Threads the BLAS calls of this process use (OpenBLAS keeps one setting per
// process: in-process ranks share it, so callers set it only under MPI).
void set_blas_threads(int threads);

// c [m, n] = a [m, k] b [k, n], row-major float32.
void gemm(const float* a, const float* b, float* c, int64_t m, int64_t n, int64_t k);

// y [rows, d_model] = (silu(x W1) * (x W3)) W2 for expert e of w (held here),
// x [rows, d_model]; row tiles bound the hidden buffers to kFfnTileRows x d_ff.
// h1, h3: the hidden tiles, grown as needed.
void expert_ffn(const MoeWeights& w, int e, const float* x, int64_t rows, float* y, Buffer& h1,
                Buffer& h3);

// p with room for `bytes` (reallocated only when smaller); its data.
void* ensure(Buffer& p, std::size_t bytes, const char* what);

// FLOPs of expert_ffn on `rows` rows: three GEMMs of 2 rows d_model d_ff.
inline double ffn_flops(int64_t rows, int64_t d_model, int64_t d_ff) {
  return 6.0 * double(rows) * double(d_model) * double(d_ff);
}

}  // namespace ringattn::moe
