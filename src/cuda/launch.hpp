// The launchers of the CUDA kernels (implemented in .cu files), for the host
// code of the GPU path. Plain C++; streams are
// cudaStream_t passed as void*. Every launcher throws Error naming the kernel
// and the CUDA error string when a launch fails.
#pragma once

#include "cuda/check.hpp"
#include "cuda/flash_plan.hpp"
#include "ringattn/dtype.hpp"
#include "ringattn/state.hpp"

namespace ringattn::cuda {

// The flash kernel for `cfg` (from flash_config) and dtype f16/bf16.
void launch_flash(const FlashConfig& cfg, DType dtype, const FlashParams& p, const LaunchGrid& g,
                  void* stream);

// Rows (b, n) of part merge into rows (batch0 + b, row0 + n) of acc, one warp
// per row; shapes already checked.
void launch_merge(const StateView& acc, int64_t batch0, int64_t row0, const StateView& part,
                  void* stream);
// O = 0, LSE = -inf.
void launch_clear(const StateView& s, void* stream);

}  // namespace ringattn::cuda
