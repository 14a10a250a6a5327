// The CUDA flash-attention forward kernel (FlashAttention-2 style, sm_80+).
//
// One thread block: 16 * W query rows of one (batch, query head); warp w owns
// rows 16w .. 16w + 15 and keeps everything about them in registers:
//   Q fragments    qf[D/16][4]      (loaded once through shared memory)
//   O accumulator  o[D/8][4]        float32, unnormalised
//   row max m, row sum l            for rows g and g + 8 of the warp (base 2)
// For each key tile j of BN keys that the mask does not leave empty
// (Mask::classify on the block's extreme positions, the same closed form as
// the CPU kernel and the schedule), K_j and V_j are in shared memory (tile
// j+1 is loading meanwhile, cp.async double buffering), and each warp does
//   S = Q K_j^T * scale * log2(e)                 (mma.sync, BN/8 C tiles)
//   S[r][c] = -inf where the mask hides (q_r, k_c)  (partial and ragged tiles only)
//   m' = max(m, rowmax S);  P = 2^(S - m');  l = l 2^(m - m') + rowsum P
//   o = o 2^(m - m') + P V_j                        (P re-packed from C to A fragments)
// and the epilogue writes O = o / l, LSE = (m + log2 l) ln 2 (natural log), or
// merges them into a running float32 state with merge_row's formula. Rows no
// key is visible to end with l = 0: O = 0, LSE = -inf.
#pragma once

#include <cmath>

#include "cuda/flash_plan.hpp"
#include "cuda/mma.cuh"
#include "ringattn/mask.hpp"
#include "ringattn/state.hpp"

namespace ringattn::cuda {

inline constexpr float kLn2 = 0.6931471805599453f;

// Loads rows [0, rows_valid) of a R x D tile from global (row stride in
// elements) into swizzled shared memory; rows beyond are zero-filled.
template <int R, int D, int THREADS, class T>
__device__ __forceinline__ void load_tile(T* s, const T* g, int64_t row_stride, int64_t rows_valid,
                                          int tid) {
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  for (int i = tid; i < R * kChunks; i += THREADS) {
    const int r = i / kChunks, c = (i % kChunks) * 8;
    const bool valid = r < rows_valid;
    const T* src = valid ? g + r * row_stride + c : g;
    cp_async_16(s + swizzled<D>(r, c), src, valid);
  }
}

// Positions of the key tile j: first and last key of the tile.
__device__ __forceinline__ TileClass classify_tile(const FlashParams& p, int64_t q_first,
                                                   int64_t q_last, int64_t j, int bn) {
  const int64_t c0 = j * bn, c1 = min(p.nk, c0 + bn) - 1;
  return p.mask.classify(q_first, q_last, p.kpos.at(c0), p.kpos.at(c1));
}

// The first key tile at or after `from` that is not empty (ntiles if none).
__device__ __forceinline__ int64_t next_tile(const FlashParams& p, int64_t q_first, int64_t q_last,
                                             int64_t from, int64_t ntiles, int bn) {
  for (int64_t j = from; j < ntiles; ++j)
    if (classify_tile(p, q_first, q_last, j, bn) != TileClass::empty) return j;
  return ntiles;
}

template <class T, int D, int W, int BN>
__global__ void __launch_bounds__(32 * W) flash_fwd_kernel(const FlashParams p) {
  constexpr int kThreads = 32 * W, kBM = 16 * W;
  static_assert(D % 16 == 0 && BN % 16 == 0, "MMA tiles are 16 wide");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* s_q = reinterpret_cast<T*>(smem_raw);
  T* s_k = s_q + kBM * D;     // [2][BN][D]
  T* s_v = s_k + 2 * BN * D;  // [2][BN][D]

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane >> 2, t = lane & 3;
  const int64_t mb = static_cast<int64_t>(gridDim.x) - 1 - blockIdx.x;  // heavy (late) rows first
  const int h = blockIdx.y, hk = h / p.group;
  const int64_t b = blockIdx.z;
  const int64_t row0 = mb * kBM;
  const int64_t rows = min(static_cast<int64_t>(kBM), p.nq - row0);
  const int64_t ntiles = (p.nk + BN - 1) / BN;
  const int64_t q_first = p.qpos.at(row0), q_last = p.qpos.at(row0 + rows - 1);

  const T* qg = static_cast<const T*>(p.q) + b * p.q_batch_stride + row0 * p.q_row_stride + h * D;
  const T* kg = static_cast<const T*>(p.k) + b * p.k_batch_stride + static_cast<int64_t>(hk) * D;
  const T* vg = static_cast<const T*>(p.v) + b * p.k_batch_stride + static_cast<int64_t>(hk) * D;

  // Prologue: Q (group 1) and the first non-empty K/V tile (group 2).
  load_tile<kBM, D, kThreads>(s_q, qg, p.q_row_stride, rows, tid);
  cp_async_commit();
  int64_t tile = next_tile(p, q_first, q_last, 0, ntiles, BN);
  if (tile < ntiles) {
    load_tile<BN, D, kThreads>(s_k, kg + tile * BN * p.k_row_stride, p.k_row_stride,
                               p.nk - tile * BN, tid);
    load_tile<BN, D, kThreads>(s_v, vg + tile * BN * p.k_row_stride, p.k_row_stride,
                               p.nk - tile * BN, tid);
  }
  cp_async_commit();
  cp_async_wait<1>();  // Q has landed
  __syncthreads();

  uint32_t qf[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk)
    ldmatrix_x4(qf[kk], s_q + swizzled<D>(warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8,
                                          kk * 16 + (lane >> 4) * 8));

  float o[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  // Global positions of this thread's two rows (rows past nq compute harmlessly, never stored).
  const int64_t r_lo = row0 + warp * 16 + g;
  const int64_t qp[2] = {p.qpos.at(r_lo), p.qpos.at(r_lo + 8)};

  int buf = 0;
  while (tile < ntiles) {
    const int64_t next = next_tile(p, q_first, q_last, tile + 1, ntiles, BN);
    if (next < ntiles) {
      T* dk = s_k + (buf ^ 1) * BN * D;
      T* dv = s_v + (buf ^ 1) * BN * D;
      load_tile<BN, D, kThreads>(dk, kg + next * BN * p.k_row_stride, p.k_row_stride,
                                 p.nk - next * BN, tid);
      load_tile<BN, D, kThreads>(dv, vg + next * BN * p.k_row_stride, p.k_row_stride,
                                 p.nk - next * BN, tid);
    }
    cp_async_commit();
    cp_async_wait<1>();  // this tile's K/V have landed (the next may still be in flight)
    __syncthreads();

    const T* ks = s_k + buf * BN * D;
    const T* vs = s_v + buf * BN * D;
    // S = Q K^T: B fragments are K rows (keys) read without transpose.
    float s[BN / 8][4];
#pragma unroll
    for (int i = 0; i < BN / 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
      for (int nb = 0; nb < BN / 16; ++nb) {
        uint32_t kf[4];
        ldmatrix_x4(kf, ks + swizzled<D>(nb * 16 + (lane & 7) + (lane >> 4) * 8,
                                         kk * 16 + ((lane >> 3) & 1) * 8));
        Elem<T>::mma(s[2 * nb], qf[kk], kf[0], kf[1]);
        Elem<T>::mma(s[2 * nb + 1], qf[kk], kf[2], kf[3]);
      }
    }
    // Scale into base-2 units; hide what the mask hides (and keys past nk).
    const bool masked =
        classify_tile(p, q_first, q_last, tile, BN) != TileClass::full || (tile + 1) * BN > p.nk;
#pragma unroll
    for (int nb = 0; nb < BN / 8; ++nb) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s[nb][e] *= p.scale_log2;
      if (masked) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int64_t col = tile * BN + nb * 8 + 2 * t + e;
          const bool in = col < p.nk;
          const int64_t kp = p.kpos.at(col);
          if (!in || !p.mask.allows(qp[0], kp)) s[nb][e] = -INFINITY;
          if (!in || !p.mask.allows(qp[1], kp)) s[nb][2 + e] = -INFINITY;
        }
      }
    }
    // Online softmax for rows g (i = 0) and g + 8 (i = 1).
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      float mx = m[i];
#pragma unroll
      for (int nb = 0; nb < BN / 8; ++nb) mx = fmaxf(mx, fmaxf(s[nb][2 * i], s[nb][2 * i + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float base = mx == -INFINITY ? 0.0f : mx;  // all hidden so far: keep exp2 finite
      const float alpha = exp2f(m[i] - base);          // m = -inf gives 0
      float sum = 0.0f;
#pragma unroll
      for (int nb = 0; nb < BN / 8; ++nb) {
        s[nb][2 * i] = exp2f(s[nb][2 * i] - base);
        s[nb][2 * i + 1] = exp2f(s[nb][2 * i + 1] - base);
        sum += s[nb][2 * i] + s[nb][2 * i + 1];
      }
      l[i] = l[i] * alpha + sum;  // this thread's columns; the quad is summed at the end
      m[i] = mx;
#pragma unroll
      for (int nd = 0; nd < D / 8; ++nd) o[nd][2 * i] *= alpha, o[nd][2 * i + 1] *= alpha;
    }
    // O += P V: P's C fragments become A fragments; V rows (keys) read transposed.
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      uint32_t pf[4];
      pf[0] = Elem<T>::pack(s[2 * kk][0], s[2 * kk][1]);
      pf[1] = Elem<T>::pack(s[2 * kk][2], s[2 * kk][3]);
      pf[2] = Elem<T>::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      pf[3] = Elem<T>::pack(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
      for (int nd = 0; nd < D / 16; ++nd) {
        uint32_t vf[4];
        ldmatrix_x4_trans(vf, vs + swizzled<D>(kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8,
                                               nd * 16 + (lane >> 4) * 8));
        Elem<T>::mma(o[2 * nd], pf, vf[0], vf[1]);
        Elem<T>::mma(o[2 * nd + 1], pf, vf[2], vf[3]);
      }
    }
    __syncthreads();  // every warp is done with this buffer before it is refilled
    tile = next;
    buf ^= 1;
  }
  cp_async_wait<0>();

  // Epilogue: normalise, then store or merge rows g and g + 8.
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    float sum = l[i];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const int64_t row = r_lo + 8 * i - row0;  // local row in the block's output
    const bool live = row0 + row < p.nq;
    const float lse = sum > 0.0f ? (m[i] + log2f(sum)) * kLn2 : -INFINITY;
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    const int64_t orow = b * p.o_batch_stride + (row0 + row) * p.o_row_stride + h * D;
    float* lse_at = p.lse + b * p.lse_batch_stride + h * p.lse_head_stride + row0 + row;
    if (p.out_mode == static_cast<int32_t>(FlashOut::merge_f32)) {
      // merge_row's formula, each thread on its columns of the row.
      const float la = live ? *lse_at : -INFINITY;
      const MergeCoef c = merge_coefficients(la, lse);
      __syncwarp();  // the quad has read the old LSE before lane t == 0 rewrites it
      if (live && lse != -INFINITY) {
        float* out = static_cast<float*>(p.o) + orow;
#pragma unroll
        for (int nd = 0; nd < D / 8; ++nd) {
          float2* at = reinterpret_cast<float2*>(out + nd * 8 + 2 * t);
          const float2 old = *at;
          const float n0 = o[nd][2 * i] * inv, n1 = o[nd][2 * i + 1] * inv;
          *at = la == -INFINITY ? make_float2(n0, n1)
                                : make_float2(c.ca * old.x + c.cb * n0, c.ca * old.y + c.cb * n1);
        }
        if (t == 0) *lse_at = c.lse;
      }
    } else if (live) {
      if (p.out_mode == static_cast<int32_t>(FlashOut::store_f32)) {
        float* out = static_cast<float*>(p.o) + orow;
#pragma unroll
        for (int nd = 0; nd < D / 8; ++nd)
          *reinterpret_cast<float2*>(out + nd * 8 + 2 * t) =
              make_float2(o[nd][2 * i] * inv, o[nd][2 * i + 1] * inv);
      } else {
        T* out = static_cast<T*>(p.o) + orow;
#pragma unroll
        for (int nd = 0; nd < D / 8; ++nd)
          *reinterpret_cast<uint32_t*>(out + nd * 8 + 2 * t) =
              Elem<T>::pack(o[nd][2 * i] * inv, o[nd][2 * i + 1] * inv);
      }
      if (t == 0) *lse_at = lse;
    }
  }
}

}  // namespace ringattn::cuda
