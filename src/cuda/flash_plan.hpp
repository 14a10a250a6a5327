// Host-side planning of the CUDA flash-attention forward kernel: the one
// dispatch switch over head dims, argument checks, the launch grid, and the
// kernel parameter block. Plain C++ (no CUDA headers), so every decision here
// is unit-tested on machines without a GPU (tests/test_cuda_plan.cpp).
//
// Tiling: a thread block of `warps` warps owns block_m = 16 * warps query rows
// of one (batch, query head); each warp owns 16 rows (one m16 MMA tile). It
// streams key tiles of block_n keys of the matching K/V head through shared
// memory (double-buffered: K and V of tile j + 1 load while tile j computes).
// Tiles the mask leaves empty (Mask::classify) are never loaded.
// Grid: x = query blocks (heaviest first under causal), y = query heads,
// z = batch.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ringattn/attention.hpp"

namespace ringattn::cuda {

// Compile-time shape of one kernel instantiation.
struct FlashConfig {
  int head_dim = 0;
  int warps = 0;    // 32 threads each; each warp owns 16 query rows
  int block_n = 0;  // keys per shared-memory tile
  constexpr int block_m() const { return 16 * warps; }
  constexpr int threads() const { return 32 * warps; }
  // Q tile + double-buffered K and V tiles, 16-bit elements.
  constexpr std::size_t smem_bytes() const {
    return static_cast<std::size_t>(block_m() + 4 * block_n) * head_dim * 2;
  }
};

// The supported head dims. Registers per thread grow with D (Q fragments D/4,
// O accumulators D/2), so D = 256 halves the key tile.
inline constexpr FlashConfig kFlashD64{64, 8, 64};
inline constexpr FlashConfig kFlashD128{128, 8, 64};
inline constexpr FlashConfig kFlashD256{256, 4, 32};

// The dispatch switch: the config for a head dim, or throws Error naming the
// supported ones.
FlashConfig flash_config(int64_t head_dim);

// What the kernel's epilogue does with a row's normalised (O, LSE).
enum class FlashOut : int32_t {
  store_dtype = 0,  // O in the input dtype [B, Nq, Hq, D], LSE float32 [B, Hq, Nq]
  store_f32 = 1,    // O float32, LSE float32 (the partial state of state.hpp)
  merge_f32 = 2,    // merged into a float32 running state (same formula as merge_row)
};

// The kernel's parameter block (passed by value). Element strides are in
// elements of the tensor's own type. All pointers are device pointers.
struct FlashParams {
  const void* q;
  const void* k;
  const void* v;
  void* o;     // store_dtype: input dtype; otherwise float
  float* lse;  // float32
  int64_t nq, nk;
  int32_t hq, hkv, group;  // group = hq / hkv
  int32_t out_mode;        // FlashOut
  int64_t q_batch_stride, q_row_stride;
  int64_t k_batch_stride, k_row_stride;  // V has K's strides
  int64_t o_batch_stride, o_row_stride;
  int64_t lse_batch_stride, lse_head_stride;
  float scale_log2;  // softmax scale * log2(e): scores are exponentiated in base 2
  Mask mask;
  Positions qpos, kpos;
};

struct LaunchGrid {
  int64_t x = 0, y = 0, z = 0;
  int threads = 0;
  std::size_t smem_bytes = 0;
};

// Where the epilogue writes: a plain output (o [B, Nq, Hq, D], lse [B, Hq, Nq]),
// or rows row0 .. row0 + Nq of batch `batch_index` of a running state of
// `state_tokens` rows (a.batch must then be 1).
struct FlashTarget {
  void* o = nullptr;
  float* lse = nullptr;
  FlashOut mode = FlashOut::store_dtype;
  int64_t state_tokens = 0;  // merge_f32 / state targets: rows of the whole state
  int64_t batch_index = 0;
  int64_t row0 = 0;
  bool is_state = false;  // true: write into a state view at (batch_index, row0)
};

// Checks the arguments (throws Error naming the field: dtype must be f16 or
// bf16, head dim supported, Hq % Hkv == 0, sizes >= 0, device pointers
// 16-byte aligned) and fills the parameter block.
FlashParams make_flash_params(const AttentionArgs& a, const FlashTarget& out);

// The launch grid for a config and problem (x = 0 when there is nothing to do).
LaunchGrid flash_grid(const FlashConfig& cfg, const AttentionArgs& a);

// What the mask lets the kernel skip, counted exactly as the kernel decides:
// (query block, key tile) pairs over all batches and heads.
KernelStats flash_tile_stats(const FlashConfig& cfg, const AttentionArgs& a);

}  // namespace ringattn::cuda
