// The CUDA ring engine (ring_engine.hpp): device buffers, and the kernel, the
// merge and copies queued in call order on one non-blocking compute stream.
// Nothing here waits except sync() and to_host(), which is what the ring's
// ordering contract needs: transfers are ordered after sync(), and engine work
// queued after a completed transfer sees its bytes (the communicator's copies
// are complete when its requests complete).
#include <cuda_runtime.h>
#include <fmt/format.h>

#include "cuda/launch.hpp"
#include "ringattn/cuda.hpp"
#include "ringattn/error.hpp"

namespace ringattn {
namespace {

using cuda::check;

class DeviceBuffer final : public EngineBuffer {
 public:
  DeviceBuffer(int device, std::size_t bytes, const char* what) : device_(device), bytes_(bytes) {
    check(cudaSetDevice(device), "cudaSetDevice");
    if (bytes == 0) return;
    const cudaError_t e = cudaMalloc(&p_, bytes);
    if (e != cudaSuccess) {
      cudaGetLastError();
      throw Error(
          fmt::format("cuda: out of device memory allocating {} ({} bytes) on device {}: {}", what,
                      bytes, device, cudaGetErrorString(e)));
    }
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() override {
    if (p_ != nullptr) {
      cudaSetDevice(device_);
      cudaFree(p_);  // cannot throw from here; a failed free leaves the error to the next call
    }
  }
  void* data() override { return p_; }
  std::size_t size() const override { return bytes_; }

 private:
  int device_;
  std::size_t bytes_;
  void* p_ = nullptr;
};

class CudaEngine final : public RingEngine {
 public:
  explicit CudaEngine(int device) : device_(device) {
    std::string why;
    const int n = cuda_device_count(&why);
    if (n == 0) throw Error(fmt::format("cuda engine: no usable GPU: {}", why));
    if (device < 0 || device >= n)
      throw Error(fmt::format("cuda engine: device {} does not exist ({} devices)", device, n));
    check(cudaSetDevice(device), "cudaSetDevice");
    check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
  }
  CudaEngine(const CudaEngine&) = delete;
  CudaEngine& operator=(const CudaEngine&) = delete;
  ~CudaEngine() override {
    cudaSetDevice(device_);
    cudaStreamSynchronize(stream_);
    cudaStreamDestroy(stream_);
  }

  std::string name() const override { return "cuda"; }

  std::unique_ptr<EngineBuffer> alloc(std::size_t bytes, const char* what) override {
    return std::make_unique<DeviceBuffer>(device_, bytes, what);
  }

  // The fused form: the kernel merges into acc in its epilogue; `work` is not needed.
  KernelStats attend_merge(const AttentionArgs& a, const StateView& acc, int64_t batch_index,
                           int64_t row0, EngineBuffer& /*work*/) override {
    select();
    return cuda_attention_merge(a, acc, batch_index, row0, stream_);
  }

  KernelStats attend(const AttentionArgs& a, float* o, float* lse) override {
    select();
    return cuda_attention_partial(a, o, lse, stream_);
  }

  void merge_rows(const StateView& acc, int64_t batch_index, int64_t row0,
                  const StateView& part) override {
    select();
    cuda_merge_rows(acc, batch_index, row0, part, stream_);
  }

  void clear(const StateView& s) override {
    select();
    cuda_clear_state(s, stream_);
  }

  void copy(void* dst, const void* src, std::size_t bytes) override {
    if (bytes == 0) return;
    select();
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_), "device copy");
  }

  void to_host(void* host_dst, const void* src, std::size_t bytes) override {
    if (bytes == 0) return;
    select();
    check(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, stream_), "copy to host");
    check(cudaStreamSynchronize(stream_), "copy to host");  // the host reads it next
  }

  void from_host(void* dst, const void* host_src, std::size_t bytes) override {
    if (bytes == 0) return;
    select();
    // Pageable sources are staged before this returns, so the caller may reuse host_src.
    check(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, stream_), "copy to device");
  }

  void sync() override {
    select();
    check(cudaStreamSynchronize(stream_), "compute stream (an earlier kernel or copy failed)");
  }

  cudaStream_t stream() const { return stream_; }

 private:
  void select() const { check(cudaSetDevice(device_), "cudaSetDevice"); }
  int device_;
  cudaStream_t stream_ = nullptr;
};

}  // namespace

std::unique_ptr<RingEngine> make_cuda_engine(int device) {
  return std::make_unique<CudaEngine>(device);
}

void* cuda_engine_stream(RingEngine& engine) {
  auto* e = dynamic_cast<CudaEngine*>(&engine);
  if (e == nullptr)
    throw Error(fmt::format("cuda_engine_stream: the {} engine has no CUDA stream", engine.name()));
  return e->stream();
}

}  // namespace ringattn
