// Internal interface between the kernel driver (kernel.cpp: validation,
// threading, packing buffers) and the per-ISA compute routines
// (kernel_avx512.cpp, kernel_avx2.cpp, kernel_generic.cpp), which all
// instantiate the one algorithm in kernel_impl.hpp with their own vector type.
//
// This header must stay free of ISA-specific code: it is included before each
// ISA file switches its target on, and by the portable driver.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "cpu/visibility.hpp"
#include "ringattn/attention.hpp"
#include "ringattn/dtype.hpp"
#include "ringattn/kernel.hpp"
#include "ringattn/mask.hpp"

namespace ringattn::cpu {

// Query rows per task and keys per tile. kBlockQ is a multiple of every
// ISA's register-block row counts (12, 6).
inline constexpr int kBlockQ = 96;
inline constexpr int kBlockK = 128;
// Query blocks one task may run together, each key tile for all of them in
// turn (Impl::run_blocks): the tile is read from memory once per task.
inline constexpr int kMaxBlocksPerTask = 4;
inline constexpr double kLog2e = 1.4426950408889634;  // log2(e)
inline constexpr double kLn2 = 0.6931471805599453;    // ln(2)

// 2^f on |f| <= 1/2 as c0 + f (c1 + f (c2 + ...)), highest degree first, with
// the constant term exactly 1 (2^0 = 1): relative error below 2e-7 evaluated in
// float32 (a minimax fit of degree 5). Shared by the vector exp2 of every ISA.
inline constexpr float kExp2Poly[] = {1.326469877035338e-3f, 9.671508817453144e-3f,
                                      5.550733776483381e-2f, 2.402224214535130e-1f,
                                      6.931469776119834e-1f, 1.0f};
inline constexpr int kExp2Terms = static_cast<int>(sizeof(kExp2Poly) / sizeof(float));
// The vector exp2s clamp x to at least this: 2^x is exact to the polynomial's
// error down to 2^-126 (the smallest normal float), below it a subnormal or 0
// (never more than 2^-126), and exactly 0 at the floor itself, so that masked
// scores (-inf) give exactly 0.
inline constexpr float kExp2Floor = -127.0f;

inline int64_t round_up(int64_t x, int64_t m) {
  return (x + m - 1) / m * m;
}

// K and V of one (batch, kv head), packed as float32 for the compute loops:
//   k: panels of `panel` keys, each [dp][panel] (K transposed), nk_pad / panel panels
//   v: tiles of kBlockK keys in column blocks (Impl::v_offset, kernel_impl.hpp)
// dp = head_dim rounded up to the ISA's lane count, nk_pad = nk rounded up to
// `panel`; the padding is zero.
struct PackedKV {
  const float* k = nullptr;
  const float* v = nullptr;
  int64_t nk = 0, nk_pad = 0;
  int dp = 0, panel = 0;
  Positions pos;
};

// One task: a block of up to kBlockQ query rows of one (batch, query head)
// against all keys of one PackedKV.
struct QBlockJob {
  const void* q = nullptr;  // first row, storage dtype
  DType dtype = DType::f32;
  int64_t q_stride = 0;  // elements between consecutive query rows
  int rows = 0;          // 1..kBlockQ
  int d = 0;             // head dim
  Positions qpos;        // global position of each row
  float scale_log2 = 0;  // softmax scale * log2(e)
  Mask mask;
  const PackedKV* kv = nullptr;
  float* o = nullptr;    // first output row, float32
  int64_t o_stride = 0;  // elements between output rows
  float* lse = nullptr;  // rows consecutive
  // Kept keys (AttentionArgs::keep) of this (batch, head), indexed by key
  // position; null: every key the mask allows.
  const uint8_t* keep = nullptr;
  bool keep_invert = false;
};

// One importance task: the column sums of the softmax of every query row of
// one (batch, query head) against one tile of kBlockK keys of a PackedKV:
//   imp[j] += sum_i exp(scale q_i.k_j - lse_i)   over the pairs the mask allows
// (rows with lse = -inf, which see nothing, add nothing). Float32 sums over
// each block of kBlockQ rows, added to the float64 imp.
struct ImportanceJob {
  // This head's queries packed once: [round_up(nq, kBlockQ)][dp] float32, scaled
  // by scale log2(e), zero padded (the kernel's own Q tile layout).
  const float* qs = nullptr;
  int64_t nq = 0;
  Positions qpos;
  Mask mask;
  const PackedKV* kv = nullptr;
  const float* lse = nullptr;  // [nq], natural log
  int64_t tile = 0;            // keys [tile kBlockK, ...)
  double* imp = nullptr;       // [kv->nk] of this head, by local key index
};

// The compute routines of one ISA.
struct IsaKernels {
  Isa isa;
  int lanes;  // float32 lanes per vector: dp is a multiple of it
  int panel;  // keys per K panel
  // Pack keys [j0, j1) of one kv head (j1 <= nk_pad, the packed keys: a multiple
  // of panel) into kp / vp (PackedKV's k and v): k/v point at key j0's row,
  // `stride` elements between keys, and the first n keys exist (the rest are zero).
  void (*pack_kv)(const void* k, const void* v, DType dtype, int64_t stride, int64_t n, int d,
                  int64_t j0, int64_t j1, float* kp, float* vp, int dp, int64_t nk_pad);
  // Floats of per-thread workspace run_blocks needs.
  int64_t (*workspace_floats)(int dp);
  // Computes the n (1..kMaxBlocksPerTask) blocks of jobs, which share their
  // PackedKV; returns their tile counters.
  KernelStats (*run_blocks)(const QBlockJob* jobs, int n, float* workspace);
  // One importance task (same workspace size as run_blocks).
  KernelStats (*run_importance)(const ImportanceJob& job, float* workspace);
  // Independent FMAs in registers, `iters` rounds: the FLOPs done (the peak's probe).
  double (*fma_loop)(int64_t iters, float* sink);
};

// ---- backward (backward_impl.hpp; the driver is backward.cpp) -----------------

// One backward tile: a block of up to kBlockQ query rows of one query head
// against one tile of up to kBlockK keys of its K/V head, everything packed as
// float32 with dp columns (zero padded):
//   S  = Qs Kt^T                     base 2: Qs = Q scale log2(e)
//   P  = 2^(S - lse2)                visible pairs only (partial tiles: mask_row), else 0
//   dS = P (dO Vt^T - delta)
//   dv_part = P^T dO,  dk_part = dS^T Qs     [kvalid][dp], written
//   dq += dS K                                 [rows][dp], accumulated
struct BackwardTileJob {
  const float* qs = nullptr;     // [kBlockQ][dp] Q * scale * log2(e), rows >= rows zero
  const float* g = nullptr;      // [kBlockQ][dp] dO, rows >= rows zero
  const float* lse2 = nullptr;   // [rows] LSE * log2(e); -inf: the row sees nothing
  const float* delta = nullptr;  // [rows] rowsum(dO * O)
  const float* kt = nullptr;     // this tile's K panels, [kBlockK / panel][dp][panel]
  const float* vt = nullptr;     // this tile's V panels, same layout
  const float* krows = nullptr;  // this tile's K rows, [kBlockK][dp]
  int rows = 0, kvalid = 0, dp = 0;
  TileClass cls = TileClass::full;  // never empty here
  Mask mask;
  Positions qpos, kpos;      // of row 0 and key 0
  float* dv_part = nullptr;  // [kBlockK][dp]
  float* dk_part = nullptr;  // [kBlockK][dp]
  float* dq = nullptr;       // [kBlockQ][dp]
};

// The backward routines of one ISA.
struct BackwardKernels {
  Isa isa;
  int lanes, panel;  // as IsaKernels
  // K panels and V rows [j][dp] of keys [j0, j1) (k/v and n as IsaKernels::pack_kv);
  // called with (V, K) it gives V panels and K rows.
  void (*pack_kv)(const void* k, const void* v, DType dtype, int64_t stride, int64_t n, int d,
                  int64_t j0, int64_t j1, float* kp, float* vp, int dp);
  int64_t (*workspace_floats)(int dp);
  void (*run_tile)(const BackwardTileJob& job, float* workspace);
};

const IsaKernels& avx512_kernels();
// The AVX-512 forward for bfloat16 Q and K on VDPBF16PS (kernel_avx512bf16.cpp;
// run_importance is null): for CPUs with AVX512_BF16, else avx512_kernels().
const IsaKernels& avx512_bf16_kernels();
const IsaKernels& avx2_kernels();
const IsaKernels& generic_kernels();
const BackwardKernels& avx512_backward();
const BackwardKernels& avx2_backward();
const BackwardKernels& generic_backward();

}  // namespace ringattn::cpu
