// The materialised OpenBLAS baseline (see ringattn/baseline.hpp).
//
// For each batch b and K/V head hk:
//   pack K, V of head hk into float32 [Nk, D]                  (2 Nk D floats)
//   for each query head h sharing hk, for each block of up to kBlockRows rows:
//     pack Q rows into float32 [rows, D]
//     S = scale * Q K^T                     cblas_sgemm, S [rows, Nk]
//     S[i, j] = -inf where !mask.allows(qpos(i), kpos(j))
//     per row: m = max S, P = exp(S - m), l = sum P, P /= l, LSE = m + log l
//              (no visible key: P = 0, LSE = -inf)
//     O[b, rows, h, :] = P V                cblas_sgemm, written in place (ldc = Hq D)
// Working memory is (kBlockRows (Nk + D) + 2 Nk D) floats, all in Buffers.
#include <cblas.h>
#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <limits>

#include "ringattn/baseline.hpp"
#include "ringattn/error.hpp"
#include "ringattn/memory.hpp"

namespace ringattn {
namespace {

constexpr int64_t kBlockRows = 512;  // query rows per materialised score block
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

void check_args(const AttentionArgs& a) {
  a.validate_args(HeadDims::any);
  constexpr int64_t kIntMax = std::numeric_limits<int>::max();
  if (a.nk > kIntMax || a.hq * a.head_dim > kIntMax || a.hkv * a.head_dim > kIntMax)
    throw Error("baseline: dimensions exceed the BLAS integer range");
}

// Convert rows [r0, r0 + n) of head `head` of a [B, N, H, D] tensor to float32 [n, D].
void pack_rows(const void* src, DType t, int64_t b, int64_t N, int64_t H, int64_t head, int64_t D,
               int64_t r0, int64_t n, float* dst, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t r = 0; r < n; ++r) {
    const std::size_t s = static_cast<std::size_t>(((b * N + r0 + r) * H + head) * D);
    for (int64_t d = 0; d < D; ++d) dst[r * D + d] = load_as_f32(src, t, s + d);
  }
}

}  // namespace

void baseline_attention(const AttentionArgs& args, float* o, float* lse, int threads) {
  check_args(args);
  const int64_t B = args.batch, Nq = args.nq, Nk = args.nk, Hq = args.hq, Hkv = args.hkv;
  const int64_t D = args.head_dim, group = Hq / Hkv;
  const int nt = threads > 0 ? threads : omp_get_max_threads();
  openblas_set_num_threads(nt);
  const float scale = args.scale != 0.0f ? args.scale : 1.0f / std::sqrt(static_cast<float>(D));

  if (Nk == 0) {  // every row is empty
    std::fill(o, o + B * Nq * Hq * D, 0.0f);
    std::fill(lse, lse + B * Hq * Nq, kNegInf);
    return;
  }
  if (Nq == 0) return;

  const int64_t rows_max = std::min(kBlockRows, Nq);
  const auto fbytes = [](int64_t n) { return static_cast<std::size_t>(n) * sizeof(float); };
  Buffer kbuf(fbytes(Nk * D), "baseline K");
  Buffer vbuf(fbytes(Nk * D), "baseline V");
  Buffer qbuf(fbytes(rows_max * D), "baseline Q block");
  Buffer sbuf(fbytes(rows_max * Nk), "baseline score block");
  float* kp = kbuf.as<float>();
  float* vp = vbuf.as<float>();
  float* qp = qbuf.as<float>();
  float* sp = sbuf.as<float>();
  const int ld_o = static_cast<int>(Hq * D);
  const int nk_i = static_cast<int>(Nk), d_i = static_cast<int>(D);
  const bool masked = !args.mask.is_none();

  for (int64_t b = 0; b < B; ++b) {
    for (int64_t hk = 0; hk < Hkv; ++hk) {
      pack_rows(args.k, args.dtype, b, Nk, Hkv, hk, D, 0, Nk, kp, nt);
      pack_rows(args.v, args.dtype, b, Nk, Hkv, hk, D, 0, Nk, vp, nt);
      for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
        for (int64_t r0 = 0; r0 < Nq; r0 += kBlockRows) {
          const int64_t n = std::min(kBlockRows, Nq - r0);
          const int n_i = static_cast<int>(n);
          pack_rows(args.q, args.dtype, b, Nq, Hq, h, D, r0, n, qp, nt);
          // S = scale * Q K^T: [n, D] x [D, Nk]
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n_i, nk_i, d_i, scale, qp, d_i, kp,
                      d_i, 0.0f, sp, nk_i);

          float* lse_row = lse + (b * Hq + h) * Nq + r0;
#pragma omp parallel for num_threads(nt) schedule(static)
          for (int64_t r = 0; r < n; ++r) {
            float* s = sp + r * Nk;
            if (masked) {
              const int64_t qpos = args.qpos.at(r0 + r);
              for (int64_t j = 0; j < Nk; ++j)
                if (!args.mask.allows(qpos, args.kpos.at(j))) s[j] = kNegInf;
            }
            float m = kNegInf;
            for (int64_t j = 0; j < Nk; ++j) m = std::max(m, s[j]);
            if (m == kNegInf) {  // no visible key: P = 0 gives O = 0
              std::fill(s, s + Nk, 0.0f);
              lse_row[r] = kNegInf;
              continue;
            }
            float sum = 0.0f;
            for (int64_t j = 0; j < Nk; ++j) {
              s[j] = std::exp(s[j] - m);
              sum += s[j];
            }
            const float inv = 1.0f / sum;
            for (int64_t j = 0; j < Nk; ++j) s[j] *= inv;
            lse_row[r] = m + std::log(sum);
          }

          // O = P V: [n, Nk] x [Nk, D], written into o[b, r0:r0+n, h, :]
          float* out = o + ((b * Nq + r0) * Hq + h) * D;
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n_i, d_i, nk_i, 1.0f, sp, nk_i, vp,
                      d_i, 0.0f, out, ld_o);
        }
      }
    }
  }
}

double measure_sgemm_gflops(int threads, int n, int repeats) {
  if (n < 1 || repeats < 1)
    throw Error(
        fmt::format("measure_sgemm_gflops: need n >= 1 and repeats >= 1 (got n={}, "
                    "repeats={})",
                    n, repeats));
  openblas_set_num_threads(threads > 0 ? threads : omp_get_max_threads());
  const int64_t nn = static_cast<int64_t>(n) * n;
  const std::size_t bytes = static_cast<std::size_t>(nn) * sizeof(float);
  Buffer abuf(bytes, "sgemm A"), bbuf(bytes, "sgemm B"), cbuf(bytes, "sgemm C");
  float* a = abuf.as<float>();
  float* bm = bbuf.as<float>();
  float* c = cbuf.as<float>();
  for (int64_t i = 0; i < nn; ++i) {  // small deterministic values, no denormals
    a[i] = static_cast<float>(i % 17) * 0.0625f - 0.5f;
    bm[i] = static_cast<float>(i % 13) * 0.0625f - 0.375f;
  }
  const auto run = [&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, bm, n, 0.0f, c, n);
  };
  run();  // warm-up
  double best = std::numeric_limits<double>::infinity();
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    run();
    const auto t1 = std::chrono::steady_clock::now();
    best = std::min(best, std::chrono::duration<double>(t1 - t0).count());
  }
  best = std::max(best, 1e-9);  // a clock too coarse for a tiny n must not divide by zero
  return 2.0 * static_cast<double>(n) * static_cast<double>(nn) / best / 1e9;
}

std::string blas_core_name() {
  const char* name = openblas_get_corename();
  return name != nullptr ? std::string(name) : std::string("unknown");
}

}  // namespace ringattn
