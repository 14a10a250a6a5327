// The MoE stage's GEMMs on OpenBLAS (stages/moe_ffn.hpp).
#include "stages/moe_ffn.hpp"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "ringattn/error.hpp"
#include "ringattn/memory.hpp"

namespace ringattn::moe {
namespace {

// Rows per FFN tile: large enough for the GEMMs to run at the BLAS rate, small
// enough that the two hidden tiles (2 x rows x d_ff floats) stay modest.
constexpr int64_t kFfnTileRows = 1024;

int blas_int(int64_t v) {
  if (v > std::numeric_limits<int>::max())
    throw Error("moe: a GEMM dimension exceeds the BLAS integer range");
  return static_cast<int>(v);
}

}  // namespace

void set_blas_threads(int threads) {
  openblas_set_num_threads(std::max(1, threads));
}

void gemm(const float* a, const float* b, float* c, int64_t m, int64_t n, int64_t k) {
  if (m == 0 || n == 0) return;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, blas_int(m), blas_int(n), blas_int(k),
              1.0f, a, blas_int(k), b, blas_int(n), 0.0f, c, blas_int(n));
}

void expert_ffn(const MoeWeights& w, int e, const float* x, int64_t rows, float* y, Buffer& h1_mem,
                Buffer& h3_mem) {
  const int64_t dm = w.d_model, dff = w.d_ff;
  const int64_t tile = std::min(rows, kFfnTileRows);
  const std::size_t bytes = static_cast<std::size_t>(tile * dff) * sizeof(float);
  auto* h1 = static_cast<float*>(ensure(h1_mem, bytes, "MoE hidden tile"));
  auto* h3 = static_cast<float*>(ensure(h3_mem, bytes, "MoE hidden tile"));
  for (int64_t r0 = 0; r0 < rows; r0 += tile) {
    const int64_t m = std::min(tile, rows - r0);
    const float* xt = x + r0 * dm;
    gemm(xt, w.w1_of(e), h1, m, dff, dm);
    gemm(xt, w.w3_of(e), h3, m, dff, dm);
    const int64_t n = m * dff;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const float a = h1[i];
      h1[i] = a / (1.0f + std::exp(-a)) * h3[i];
    }
    gemm(h1, w.w2_of(e), y + r0 * dm, m, dm, dff);
  }
}

void* ensure(Buffer& p, std::size_t bytes, const char* what) {
  if (p.size() < bytes) p = Buffer(bytes, what);
  return p.data();
}

}  // namespace ringattn::moe
