// Host-side planning of the CUDA kernel (flash_plan.hpp). Built in every
// configuration, with or without CUDA, so its tests run everywhere.
#include "cuda/flash_plan.hpp"

#include <fmt/format.h>

#include <cmath>

#include "ringattn/error.hpp"

namespace ringattn::cuda {
namespace {

constexpr double kLog2e = 1.4426950408889634;
constexpr std::uintptr_t kLoadAlign = 16;              // cp.async moves 16-byte chunks
constexpr int64_t kMaxGridX = (int64_t{1} << 31) - 1;  // CUDA grid limits
constexpr int64_t kMaxGridYZ = 65535;

void check_aligned(const void* p, const char* what) {
  if (reinterpret_cast<std::uintptr_t>(p) % kLoadAlign != 0)
    throw Error(fmt::format("cuda kernel: {} must be {}-byte aligned (got address {})", what,
                            kLoadAlign, p));
}

}  // namespace

FlashConfig flash_config(int64_t head_dim) {
  switch (head_dim) {
    case 64:
      return kFlashD64;
    case 128:
      return kFlashD128;
    case 256:
      return kFlashD256;
    default:
      throw Error(fmt::format("cuda kernel: head dim {} is not supported (supported: 64, 128, 256)",
                              head_dim));
  }
}

FlashParams make_flash_params(const AttentionArgs& a, const FlashTarget& out) {
  if (a.dtype != DType::f16 && a.dtype != DType::bf16)
    throw Error(fmt::format("cuda kernel: dtype {} is not supported (float16 or bfloat16)",
                            dtype_name(a.dtype)));
  flash_config(a.head_dim);
  if (a.keep.on() || a.quantized())
    throw Error("cuda kernel: kept-key sets and quantized K/V run on the cpu engine");
  if (a.batch < 0 || a.nq < 0 || a.nk < 0)
    throw Error(fmt::format("cuda kernel: sizes must be >= 0 (batch {}, nq {}, nk {})", a.batch,
                            a.nq, a.nk));
  if (a.hq < 1 || a.hkv < 1 || a.hq % a.hkv != 0)
    throw Error(fmt::format(
        "cuda kernel: query heads ({}) must be a multiple of key/value heads ({})", a.hq, a.hkv));
  if (a.qpos.stride < 1 || a.kpos.stride < 1)
    throw Error("cuda kernel: position strides must be >= 1");
  if (a.mask.dilation < 1) throw Error("cuda kernel: mask dilation must be >= 1");
  if (a.mask.docs.on())
    throw Error(
        "cuda kernel: packed documents are not supported on the GPU yet; expected the cpu "
        "device");
  if (out.is_state && a.batch != 1)
    throw Error("cuda kernel: a state target takes one batch index at a time (batch must be 1)");
  if (out.mode == FlashOut::merge_f32 && !out.is_state)
    throw Error("cuda kernel: merging needs a state target");
  if (a.batch * a.nq > 0) check_aligned(a.q, "q");
  if (a.batch * a.nk > 0) check_aligned(a.k, "k"), check_aligned(a.v, "v");

  FlashParams p{};
  p.q = a.q, p.k = a.k, p.v = a.v;
  p.nq = a.nq, p.nk = a.nk;
  p.hq = static_cast<int32_t>(a.hq), p.hkv = static_cast<int32_t>(a.hkv);
  p.group = static_cast<int32_t>(a.hq / a.hkv);
  p.out_mode = static_cast<int32_t>(out.mode);
  const int64_t d = a.head_dim;
  p.q_row_stride = a.hq * d, p.q_batch_stride = a.nq * a.hq * d;
  p.k_row_stride = a.hkv * d, p.k_batch_stride = a.nk * a.hkv * d;
  p.o_row_stride = a.hq * d;
  p.o = out.o, p.lse = out.lse;
  if (out.is_state) {
    if (out.row0 < 0 || out.row0 + a.nq > out.state_tokens)
      throw Error(fmt::format("cuda kernel: rows {}..{} lie outside the state's {} rows", out.row0,
                              out.row0 + a.nq, out.state_tokens));
    // Offset the base pointers to (batch_index, row0); strides span the whole state.
    const std::size_t esz = out.mode == FlashOut::store_dtype ? 2 : 4;
    p.o =
        static_cast<char*>(out.o) +
        static_cast<std::size_t>((out.batch_index * out.state_tokens + out.row0) * a.hq * d) * esz;
    p.lse = out.lse + out.batch_index * a.hq * out.state_tokens + out.row0;
    p.o_batch_stride = out.state_tokens * a.hq * d;
    p.lse_batch_stride = a.hq * out.state_tokens, p.lse_head_stride = out.state_tokens;
  } else {
    p.o_batch_stride = a.nq * a.hq * d;
    p.lse_batch_stride = a.hq * a.nq, p.lse_head_stride = a.nq;
  }
  const double scale = a.scale != 0.0f ? a.scale : 1.0 / std::sqrt(static_cast<double>(d));
  p.scale_log2 = static_cast<float>(scale * kLog2e);
  p.mask = a.mask;
  p.qpos = a.qpos, p.kpos = a.kpos;
  return p;
}

LaunchGrid flash_grid(const FlashConfig& cfg, const AttentionArgs& a) {
  LaunchGrid g;
  g.threads = cfg.threads();
  g.smem_bytes = cfg.smem_bytes();
  if (a.nq <= 0 || a.batch <= 0) return g;
  g.x = (a.nq + cfg.block_m() - 1) / cfg.block_m();
  g.y = a.hq;
  g.z = a.batch;
  if (g.x > kMaxGridX || g.y > kMaxGridYZ || g.z > kMaxGridYZ)
    throw Error(fmt::format(
        "cuda kernel: launch grid {} x {} x {} (query blocks x heads x batch) exceeds CUDA's "
        "limits ({} x {} x {})",
        g.x, g.y, g.z, kMaxGridX, kMaxGridYZ, kMaxGridYZ));
  return g;
}

KernelStats flash_tile_stats(const FlashConfig& cfg, const AttentionArgs& a) {
  KernelStats s;
  if (a.nq <= 0 || a.nk <= 0 || a.batch <= 0) return s;
  const int64_t bm = cfg.block_m(), bn = cfg.block_n;
  const int64_t mblocks = (a.nq + bm - 1) / bm, ntiles = (a.nk + bn - 1) / bn;
  int64_t computed = 0, partial = 0;
  for (int64_t mb = 0; mb < mblocks; ++mb) {
    const int64_t r0 = mb * bm, r1 = std::min(a.nq, r0 + bm) - 1;
    const int64_t q_first = a.qpos.at(r0), q_last = a.qpos.at(r1);
    for (int64_t j = 0; j < ntiles; ++j) {
      const int64_t c1 = std::min(a.nk, (j + 1) * bn) - 1;
      const TileClass c = a.mask.classify(q_first, q_last, a.kpos.at(j * bn), a.kpos.at(c1));
      if (c == TileClass::empty) continue;
      ++computed;
      // The kernel masks elements on partial tiles and on the ragged last tile.
      if (c == TileClass::partial || (j + 1) * bn > a.nk) ++partial;
    }
  }
  const int64_t per = a.batch * a.hq;
  s.tiles_total = mblocks * ntiles * per;
  s.tiles_computed = computed * per;
  s.tiles_partial = partial * per;
  return s;
}

}  // namespace ringattn::cuda
