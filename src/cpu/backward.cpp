// The CPU attention backward (FlashAttention-2; the formulas and shapes are in
// ringattn/backward.hpp). Two passes over the forward's tiles, recomputing P
// from Q, K and the forward's LSE instead of storing it:
//
//   Delta = rowsum(dO * O)                      prepass, [B, Hq, Nq] float32
//   pass 1, tasks (batch, K/V head, key tile of kBlockK keys):
//     dK_t = dV_t = 0                           [kBlockK][D] per thread
//     for each query head h of the group, each block of kBlockQ query rows:
//       class = mask.classify(block, tile)      empty: skipped
//       S  = Q K_t^T;  P = exp(scale S - LSE)   partial tiles: masked by cpu::mask_row
//       dV_t += P^T dO
//       dP = dO V_t^T;  dS = P * (dP - Delta)
//       dK_t += dS^T Q
//     dk = scale dK_t, dv = dV_t                written once: no atomics
//   pass 2, tasks (batch, query head, block of kBlockQ query rows):
//     dQ_b = 0                                  [kBlockQ][D] per thread
//     for each key tile (same classes): P, dS as above;  dQ_b += dS K_t
//     dq = scale dQ_b
//
// dQ takes the second pass (P and dS recomputed: 7 tile GEMMs instead of 5)
// rather than per-thread dQ copies or atomics: the memory beyond the inputs
// and outputs stays Delta (O(N)) plus one workspace of O(tile x (tile + D))
// floats per thread, and the result does not depend on the thread count
// (every sum runs in a fixed order).
//
// The tiles are the forward's (cpu::kBlockQ x cpu::kBlockK, per query head),
// so pass 1's KernelStats count the same tiles as attention_forward. Every
// product accumulates in float32 whatever the storage dtype (tiles are
// converted as they are loaded). The loops are plain C++ over contiguous rows
// (axpy form), left to the compiler to vectorise.
#include "ringattn/backward.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/kernel_isa.hpp"
#include "ringattn/error.hpp"
#include "ringattn/memory.hpp"

namespace ringattn {
namespace {

using cpu::kBlockK;
using cpu::kBlockQ;

std::size_t at(int64_t i) {
  return static_cast<std::size_t>(i);
}

// Rows [i0, i0 + rows) of head h of batch b of a [B, n, heads, d] tensor in
// dtype dt, as float32 rows [rows][d].
void load_rows(const void* x, DType dt, int64_t b, int64_t n, int64_t heads, int64_t h, int64_t i0,
               int rows, int d, float* __restrict out) {
  for (int r = 0; r < rows; ++r) {
    const std::size_t src = at(((b * n + i0 + r) * heads + h) * d);
    for (int c = 0; c < d; ++c) out[r * d + c] = load_as_f32(x, dt, src + c);
  }
}

// Keys [key0, key0 + kvalid) of K/V head hk of batch b, transposed: xt
// [d][kBlockK], columns >= kvalid zero.
void load_cols(const AttentionArgs& a, const void* x, int64_t b, int64_t hk, int64_t key0,
               int kvalid, float* __restrict xt) {
  const int d = static_cast<int>(a.head_dim);
  std::fill(xt, xt + int64_t{d} * kBlockK, 0.0f);
  for (int j = 0; j < kvalid; ++j) {
    const std::size_t src = at(((b * a.nk + key0 + j) * a.hkv + hk) * d);
    for (int c = 0; c < d; ++c) xt[c * kBlockK + j] = load_as_f32(x, a.dtype, src + c);
  }
}

// One (query block, key tile) pair of one head.
struct TileView {
  const Mask* mask;
  TileClass cls;
  Positions qpos, kpos;  // of the block's first row and the tile's first key
  int rows, kvalid, d;
  float scale;
};

// p [rows][kBlockK] = exp(scale q kt - lse) on visible pairs, 0 elsewhere (and
// 0 on every row with lse = -inf). q [rows][d], kt [d][kBlockK].
void tile_probs(const TileView& t, const float* __restrict q, const float* __restrict kt,
                const float* lse, float* __restrict p) {
  for (int r = 0; r < t.rows; ++r) {
    float* __restrict pr = p + int64_t{r} * kBlockK;
    std::fill(pr, pr + kBlockK, 0.0f);
    const float l = lse[r];
    if (l == -INFINITY) continue;  // sees nothing: P = 0
    for (int c = 0; c < t.d; ++c) {
      const float qc = q[r * t.d + c];
      const float* __restrict kc = kt + int64_t{c} * kBlockK;
      for (int j = 0; j < kBlockK; ++j) pr[j] += qc * kc[j];
    }
    int j0 = 0, j1 = t.kvalid;
    if (t.cls == TileClass::partial)  // the forward's visibility, pair by pair
      cpu::mask_row(*t.mask, t.qpos.at(r), t.kpos, t.kvalid, pr, &j0, &j1);
    for (int j = 0; j < kBlockK; ++j)  // masked scores are -inf: exp gives 0
      pr[j] = j >= j0 && j < j1 ? std::exp(t.scale * pr[j] - l) : 0.0f;
  }
}

// ds [rows][kBlockK] = p * (dO vt - delta). g = dO [rows][d], vt [d][kBlockK].
void tile_dscores(const TileView& t, const float* __restrict g, const float* __restrict vt,
                  const float* delta, const float* __restrict p, float* __restrict ds) {
  for (int r = 0; r < t.rows; ++r) {
    float* __restrict dr = ds + int64_t{r} * kBlockK;
    const float* __restrict pr = p + int64_t{r} * kBlockK;
    std::fill(dr, dr + kBlockK, 0.0f);
    for (int c = 0; c < t.d; ++c) {
      const float gc = g[r * t.d + c];
      const float* __restrict vc = vt + int64_t{c} * kBlockK;
      for (int j = 0; j < kBlockK; ++j) dr[j] += gc * vc[j];
    }
    const float dl = delta[r];
    for (int j = 0; j < kBlockK; ++j) dr[j] = pr[j] * (dr[j] - dl);
  }
}

// acc[j][:] += sum_r w[r][j] x[r][:] for the tile's keys j: dV (w = P, x = dO)
// and dK (w = dS, x = Q).
void add_wt_x(const TileView& t, const float* __restrict w, const float* __restrict x,
              float* __restrict acc) {
  for (int j = 0; j < t.kvalid; ++j) {
    float* __restrict aj = acc + int64_t{j} * t.d;
    for (int r = 0; r < t.rows; ++r) {
      const float wr = w[int64_t{r} * kBlockK + j];
      if (wr == 0.0f) continue;
      const float* __restrict xr = x + int64_t{r} * t.d;
      for (int c = 0; c < t.d; ++c) aj[c] += wr * xr[c];
    }
  }
}

// Per-thread workspace: the largest of the two passes' tiles.
struct Workspace {
  int64_t floats;
  Buffer buf;
  Workspace(int d, int threads)
      : floats(4 * int64_t{kBlockK} * d + 3 * int64_t{kBlockQ} * d +
               2 * int64_t{kBlockQ} * kBlockK),
        buf(static_cast<std::size_t>(floats * threads) * sizeof(float), "backward workspace") {}
  float* of(int tid) { return buf.as<float>() + tid * floats; }
};

void check_call(const AttentionArgs& a, const float* o, const float* lse, const float* dO,
                const float* dq, const float* dk, const float* dv) {
  a.validate_args();
  if (a.hier.on()) throw FieldError("hier", "the backward computes plain attention under its mask");
  if (a.keep.on()) throw FieldError("keep", "the backward does not take kept-key sets yet");
  if (a.quantized()) throw FieldError("kq", "the backward does not take quantized K/V yet");
  if (a.nq > 0 && (o == nullptr || lse == nullptr || dO == nullptr || dq == nullptr))
    throw FieldError("data", "o, lse, dO or dq is null");
  if (a.nk > 0 && (dk == nullptr || dv == nullptr)) throw FieldError("data", "dk or dv is null");
}

}  // namespace

KernelStats attention_backward(const AttentionArgs& a, const float* o, const float* lse,
                               const float* dO, float* dq, float* dk, float* dv,
                               const KernelOptions& opt, GradWrite write) {
  const bool add = write == GradWrite::add;
  check_call(a, o, lse, dO, dq, dk, dv);
  const int d = static_cast<int>(a.head_dim);
  const int64_t group = a.group();
  const int64_t nqb = (a.nq + kBlockQ - 1) / kBlockQ, ntiles = (a.nk + kBlockK - 1) / kBlockK;
  const int64_t tasks1 = a.batch * a.hkv * ntiles, tasks2 = a.batch * a.hq * nqb;
  const int threads = static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>(opt.threads > 0 ? opt.threads : omp_get_max_threads(),
                                             std::max(tasks1, tasks2))));
  const float scale = a.softmax_scale();

  // Delta [B, Hq, Nq] (LSE's layout), summed in double.
  const int64_t nrows = a.batch * a.nq * a.hq;
  Buffer delta_buf(static_cast<std::size_t>(std::max<int64_t>(nrows, 1)) * sizeof(float), "Delta");
  float* delta = delta_buf.as<float>();
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t row = 0; row < nrows; ++row) {  // row = (b Nq + i) Hq + h
    const int64_t h = row % a.hq, i = (row / a.hq) % a.nq, b = row / (a.hq * a.nq);
    double s = 0.0;
    for (int c = 0; c < d; ++c) s += double(dO[row * d + c]) * double(o[row * d + c]);
    delta[(b * a.hq + h) * a.nq + i] = static_cast<float>(s);
  }

  Workspace ws(d, threads);
  std::vector<KernelStats> stats(static_cast<std::size_t>(threads));
#pragma omp parallel num_threads(threads)
  {
    const int tid = omp_get_thread_num();
    KernelStats& my = stats[at(tid)];
    float* const w = ws.of(tid);
    float* const kt = w;                               // [d][kBlockK]
    float* const vt = kt + int64_t{d} * kBlockK;       // [d][kBlockK]
    float* const acc1 = vt + int64_t{d} * kBlockK;     // pass 1: dK [kBlockK][d]; pass 2: K rows
    float* const acc2 = acc1 + int64_t{kBlockK} * d;   // pass 1: dV [kBlockK][d]
    float* const qb = acc2 + int64_t{kBlockK} * d;     // [kBlockQ][d]
    float* const gb = qb + int64_t{kBlockQ} * d;       // dO [kBlockQ][d]
    float* const dqb = gb + int64_t{kBlockQ} * d;      // pass 2: dQ [kBlockQ][d]
    float* const p = dqb + int64_t{kBlockQ} * d;       // [kBlockQ][kBlockK]
    float* const ds = p + int64_t{kBlockQ} * kBlockK;  // [kBlockQ][kBlockK]

    // Pass 1: dK, dV of one key tile of one K/V head.
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks1; ++task) {
      const int64_t kti = task % ntiles, hk = (task / ntiles) % a.hkv, b = task / (ntiles * a.hkv);
      const int64_t key0 = kti * kBlockK;
      TileView t{&a.mask, TileClass::empty,
                 {},      a.kpos.from(key0),
                 0,       static_cast<int>(std::min<int64_t>(kBlockK, a.nk - key0)),
                 d,       scale};
      load_cols(a, a.k, b, hk, key0, t.kvalid, kt);
      load_cols(a, a.v, b, hk, key0, t.kvalid, vt);
      std::fill(acc1, acc1 + int64_t{kBlockK} * d, 0.0f);
      std::fill(acc2, acc2 + int64_t{kBlockK} * d, 0.0f);
      for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
        for (int64_t i0 = 0; i0 < a.nq; i0 += kBlockQ) {
          t.rows = static_cast<int>(std::min<int64_t>(kBlockQ, a.nq - i0));
          t.qpos = a.qpos.from(i0);
          t.cls = a.mask.classify(t.qpos.at(0), t.qpos.at(t.rows - 1), t.kpos.at(0),
                                  t.kpos.at(t.kvalid - 1));
          ++my.tiles_total;
          if (t.cls == TileClass::empty) continue;
          ++my.tiles_computed;
          if (t.cls == TileClass::partial) ++my.tiles_partial;
          const float* lse_r = lse + (b * a.hq + h) * a.nq + i0;
          load_rows(a.q, a.dtype, b, a.nq, a.hq, h, i0, t.rows, d, qb);
          load_rows(dO, DType::f32, b, a.nq, a.hq, h, i0, t.rows, d, gb);
          tile_probs(t, qb, kt, lse_r, p);
          add_wt_x(t, p, gb, acc2);  // dV += P^T dO
          tile_dscores(t, gb, vt, delta + (b * a.hq + h) * a.nq + i0, p, ds);
          add_wt_x(t, ds, qb, acc1);  // dK += dS^T Q
        }
      }
      for (int j = 0; j < t.kvalid; ++j) {
        float* dkj = dk + ((b * a.nk + key0 + j) * a.hkv + hk) * d;
        float* dvj = dv + ((b * a.nk + key0 + j) * a.hkv + hk) * d;
        for (int c = 0; c < d; ++c) {
          dkj[c] = scale * acc1[j * d + c] + (add ? dkj[c] : 0.0f);
          dvj[c] = acc2[j * d + c] + (add ? dvj[c] : 0.0f);
        }
      }
    }

    // Pass 2: dQ of one block of query rows of one query head.
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks2; ++task) {
      const int64_t qbi = task % nqb, h = (task / nqb) % a.hq, b = task / (nqb * a.hq);
      const int64_t i0 = qbi * kBlockQ, hk = h / group;
      TileView t{&a.mask,
                 TileClass::empty,
                 a.qpos.from(i0),
                 {},
                 static_cast<int>(std::min<int64_t>(kBlockQ, a.nq - i0)),
                 0,
                 d,
                 scale};
      const float* lse_r = lse + (b * a.hq + h) * a.nq + i0;
      const float* delta_r = delta + (b * a.hq + h) * a.nq + i0;
      load_rows(a.q, a.dtype, b, a.nq, a.hq, h, i0, t.rows, d, qb);
      load_rows(dO, DType::f32, b, a.nq, a.hq, h, i0, t.rows, d, gb);
      std::fill(dqb, dqb + int64_t{t.rows} * d, 0.0f);
      for (int64_t key0 = 0; key0 < a.nk; key0 += kBlockK) {
        t.kvalid = static_cast<int>(std::min<int64_t>(kBlockK, a.nk - key0));
        t.kpos = a.kpos.from(key0);
        t.cls = a.mask.classify(t.qpos.at(0), t.qpos.at(t.rows - 1), t.kpos.at(0),
                                t.kpos.at(t.kvalid - 1));
        if (t.cls == TileClass::empty) continue;
        load_cols(a, a.k, b, hk, key0, t.kvalid, kt);
        load_cols(a, a.v, b, hk, key0, t.kvalid, vt);
        load_rows(a.k, a.dtype, b, a.nk, a.hkv, hk, key0, t.kvalid, d, acc1);
        tile_probs(t, qb, kt, lse_r, p);
        tile_dscores(t, gb, vt, delta_r, p, ds);
        for (int r = 0; r < t.rows; ++r) {  // dQ += dS K
          float* __restrict qr = dqb + int64_t{r} * d;
          for (int j = 0; j < t.kvalid; ++j) {
            const float sj = ds[int64_t{r} * kBlockK + j];
            if (sj == 0.0f) continue;
            const float* __restrict kj = acc1 + int64_t{j} * d;
            for (int c = 0; c < d; ++c) qr[c] += sj * kj[c];
          }
        }
      }
      for (int r = 0; r < t.rows; ++r) {
        float* out = dq + ((b * a.nq + i0 + r) * a.hq + h) * d;
        for (int c = 0; c < d; ++c) out[c] = scale * dqb[r * d + c] + (add ? out[c] : 0.0f);
      }
    }
  }
  KernelStats total;
  for (const KernelStats& s : stats) total += s;
  return total;
}

}  // namespace ringattn
