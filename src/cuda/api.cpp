// The host API of the GPU path (cuda.hpp): device queries and the kernel and
// merge entry points, which check their arguments, plan (flash_plan.hpp) and
// launch. Host C++ against the CUDA runtime API.
#include <cuda_runtime.h>
#include <fmt/format.h>

#include "cuda/flash_plan.hpp"
#include "cuda/launch.hpp"
#include "ringattn/cuda.hpp"
#include "ringattn/error.hpp"

namespace ringattn {

namespace cuda {
void check(int err, const char* what) {
  if (err == cudaSuccess) return;
  const auto e = static_cast<cudaError_t>(err);
  throw Error(fmt::format("cuda: {}: {} ({})", what, cudaGetErrorString(e), cudaGetErrorName(e)));
}
}  // namespace cuda

bool cuda_built() {
  return true;
}

int cuda_device_count(std::string* why) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    if (why != nullptr)
      *why = fmt::format("cudaGetDeviceCount failed: {} (error {}, {})", cudaGetErrorString(e),
                         static_cast<int>(e), cudaGetErrorName(e));
    cudaGetLastError();  // clear the sticky-free error so later calls start clean
    return 0;
  }
  if (n == 0 && why != nullptr) *why = "no CUDA device";
  return n;
}

CudaDeviceInfo cuda_device_info(int device) {
  cudaDeviceProp prop{};
  cuda::check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  CudaDeviceInfo info;
  info.name = prop.name;
  info.major = prop.major, info.minor = prop.minor;
  info.multiprocessors = prop.multiProcessorCount;
  info.memory_bytes = prop.totalGlobalMem;
  info.peak_bf16_tflops = dense_bf16_peak_tflops(info.name);
  return info;
}

namespace {

KernelStats run(const AttentionArgs& a, const cuda::FlashTarget& t, void* stream) {
  const cuda::FlashParams p = cuda::make_flash_params(a, t);  // checks everything first
  const cuda::FlashConfig cfg = cuda::flash_config(a.head_dim);
  const cuda::LaunchGrid g = cuda::flash_grid(cfg, a);
  cuda::launch_flash(cfg, a.dtype, p, g, stream);
  return cuda::flash_tile_stats(cfg, a);  // host work, overlapping the queued kernel
}

void check_same_shape(const StateView& a, const StateView& b) {
  if (a.batch != b.batch || a.tokens != b.tokens || a.heads != b.heads || a.head_dim != b.head_dim)
    throw Error(fmt::format("cuda merge: state shapes differ: [{}, {}, {}, {}] vs [{}, {}, {}, {}]",
                            a.batch, a.tokens, a.heads, a.head_dim, b.batch, b.tokens, b.heads,
                            b.head_dim));
}

}  // namespace

KernelStats cuda_attention_forward(const AttentionArgs& a, void* o, float* lse, void* stream) {
  cuda::FlashTarget t;
  t.o = o, t.lse = lse, t.mode = cuda::FlashOut::store_dtype;
  return run(a, t, stream);
}

KernelStats cuda_attention_partial(const AttentionArgs& a, float* o, float* lse, void* stream) {
  cuda::FlashTarget t;
  t.o = o, t.lse = lse, t.mode = cuda::FlashOut::store_f32;
  return run(a, t, stream);
}

KernelStats cuda_attention_merge(const AttentionArgs& a, const StateView& acc, int64_t batch_index,
                                 int64_t row0, void* stream) {
  if (acc.heads != a.hq || acc.head_dim != a.head_dim || batch_index < 0 ||
      batch_index >= acc.batch)
    throw Error(
        fmt::format("cuda kernel: state [{}, {}, {}, {}] does not fit Hq {} D {} at batch index {}",
                    acc.batch, acc.tokens, acc.heads, acc.head_dim, a.hq, a.head_dim, batch_index));
  cuda::FlashTarget t;
  t.o = acc.o, t.lse = acc.lse, t.mode = cuda::FlashOut::merge_f32;
  t.is_state = true, t.state_tokens = acc.tokens, t.batch_index = batch_index, t.row0 = row0;
  return run(a, t, stream);
}

double cuda_time_forward(const AttentionArgs& a, void* o, float* lse, void* stream) {
  const auto st = static_cast<cudaStream_t>(stream);
  cudaEvent_t start = nullptr, stop = nullptr;
  cuda::check(cudaEventCreate(&start), "cudaEventCreate");
  cuda::check(cudaEventCreate(&stop), "cudaEventCreate");
  float ms = 0;
  try {
    cuda::check(cudaEventRecord(start, st), "cudaEventRecord");
    cuda_attention_forward(a, o, lse, stream);
    cuda::check(cudaEventRecord(stop, st), "cudaEventRecord");
    cuda::check(cudaEventSynchronize(stop), "timed kernel run");
    cuda::check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
  } catch (...) {
    cudaEventDestroy(start), cudaEventDestroy(stop);
    throw;
  }
  cudaEventDestroy(start), cudaEventDestroy(stop);
  return ms * 1e-3;
}

void cuda_merge_states(const StateView& acc, const StateView& part, void* stream) {
  check_same_shape(acc, part);
  cuda::launch_merge(acc, 0, 0, part, stream);
}

void cuda_merge_rows(const StateView& acc, int64_t batch_index, int64_t row0, const StateView& part,
                     void* stream) {
  if (part.heads != acc.heads || part.head_dim != acc.head_dim || batch_index < 0 ||
      batch_index + part.batch > acc.batch || row0 < 0 || row0 + part.tokens > acc.tokens)
    throw Error(fmt::format(
        "cuda merge: part [{}, {}, {}, {}] does not fit state [{}, {}, {}, {}] at batch {} row {}",
        part.batch, part.tokens, part.heads, part.head_dim, acc.batch, acc.tokens, acc.heads,
        acc.head_dim, batch_index, row0));
  cuda::launch_merge(acc, batch_index, row0, part, stream);
}

void cuda_clear_state(const StateView& s, void* stream) {
  cuda::launch_clear(s, stream);
}

}  // namespace ringattn
