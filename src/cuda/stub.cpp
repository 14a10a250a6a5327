// The GPU path's entry points in builds without CUDA (RINGATTN_CUDA=OFF or no
// nvcc): cuda_built() is false, cuda_device_count() is 0 with the reason, and
// everything else throws Error saying how to get the GPU path.
#include <string>

#include "ringattn/cuda.hpp"
#include "ringattn/error.hpp"

namespace ringattn {
namespace {

[[noreturn]] void no_cuda(const char* what) {
  throw Error(std::string(what) +
              ": ringattn was built without CUDA (configure with -DRINGATTN_CUDA=ON where nvcc is "
              "installed)");
}

}  // namespace

bool cuda_built() {
  return false;
}

int cuda_device_count(std::string* why) {
  if (why != nullptr) *why = "ringattn was built without CUDA";
  return 0;
}

CudaDeviceInfo cuda_device_info(int) {
  no_cuda("cuda_device_info");
}
KernelStats cuda_attention_forward(const AttentionArgs&, void*, float*, void*) {
  no_cuda("cuda_attention_forward");
}
KernelStats cuda_attention_partial(const AttentionArgs&, float*, float*, void*) {
  no_cuda("cuda_attention_partial");
}
KernelStats cuda_attention_merge(const AttentionArgs&, const StateView&, int64_t, int64_t, void*) {
  no_cuda("cuda_attention_merge");
}
double cuda_time_forward(const AttentionArgs&, void*, float*, void*) {
  no_cuda("cuda_time_forward");
}
void cuda_merge_states(const StateView&, const StateView&, void*) {
  no_cuda("cuda_merge_states");
}
void cuda_merge_rows(const StateView&, int64_t, int64_t, const StateView&, void*) {
  no_cuda("cuda_merge_rows");
}
void cuda_clear_state(const StateView&, void*) {
  no_cuda("cuda_clear_state");
}
std::unique_ptr<RingEngine> make_cuda_engine(int) {
  no_cuda("make_cuda_engine");
}
void* cuda_engine_stream(RingEngine&) {
  no_cuda("cuda_engine_stream");
}
LocalMemory cuda_local_memory(int) {
  no_cuda("cuda_local_memory");
}

}  // namespace ringattn
