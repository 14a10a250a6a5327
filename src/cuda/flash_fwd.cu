// Instantiations of the flash kernel and the one dispatch switch that picks
// one: (dtype, head dim) -> flash_fwd_kernel<T, D, warps, block_n>. The
// configs come from flash_plan.hpp (shared with the host-side planning).
#include <cuda_runtime.h>

#include "cuda/flash_fwd.cuh"
#include "cuda/launch.hpp"
#include "ringattn/error.hpp"

namespace ringattn::cuda {
namespace {

template <class T, int D, int W, int BN>
void launch(const FlashParams& p, const LaunchGrid& g, cudaStream_t stream) {
  auto kernel = flash_fwd_kernel<T, D, W, BN>;
  const int smem = static_cast<int>(g.smem_bytes);
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem),
        "flash kernel: setting its shared memory size");
  const dim3 grid(static_cast<unsigned>(g.x), static_cast<unsigned>(g.y),
                  static_cast<unsigned>(g.z));
  kernel<<<grid, g.threads, smem, stream>>>(p);
  check(cudaGetLastError(), "flash kernel launch");
}

template <class T>
void launch_dtype(const FlashConfig& cfg, const FlashParams& p, const LaunchGrid& g,
                  cudaStream_t stream) {
  switch (cfg.head_dim) {
    case kFlashD64.head_dim:
      return launch<T, kFlashD64.head_dim, kFlashD64.warps, kFlashD64.block_n>(p, g, stream);
    case kFlashD128.head_dim:
      return launch<T, kFlashD128.head_dim, kFlashD128.warps, kFlashD128.block_n>(p, g, stream);
    case kFlashD256.head_dim:
      return launch<T, kFlashD256.head_dim, kFlashD256.warps, kFlashD256.block_n>(p, g, stream);
    default:
      flash_config(cfg.head_dim);  // throws the error naming the supported head dims
  }
}

}  // namespace

void launch_flash(const FlashConfig& cfg, DType dtype, const FlashParams& p, const LaunchGrid& g,
                  void* stream) {
  if (g.x == 0) return;
  const auto s = static_cast<cudaStream_t>(stream);
  if (dtype == DType::bf16) return launch_dtype<__nv_bfloat16>(cfg, p, g, s);
  if (dtype == DType::f16) return launch_dtype<__half>(cfg, p, g, s);
  throw Error("cuda kernel: dtype must be float16 or bfloat16");
}

}  // namespace ringattn::cuda
