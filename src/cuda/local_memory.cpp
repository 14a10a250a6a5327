// Device memory for the in-process communicator (comm.hpp LocalMemory), so
// virtual ranks on one GPU pass K/V blocks as device buffers: messages live in
// device memory from a small reuse pool (the ring sends same-sized blocks
// every step; cudaMalloc would synchronise the device each time), and copies
// are cudaMemcpy of the kind copy_kind picks from the two pointers.
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <cstring>
#include <map>
#include <memory>
#include <mutex>

#include "cuda/launch.hpp"
#include "ringattn/cuda.hpp"
#include "ringattn/error.hpp"

namespace ringattn {
namespace {

bool on_device(const void* p) {
  cudaPointerAttributes attr{};
  if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
    cudaGetLastError();  // an unregistered host pointer is not an error here
    return false;
  }
  return attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged;
}

cudaMemcpyKind to_cuda(CopyKind k) {
  switch (k) {
    case CopyKind::host_to_host:
      return cudaMemcpyHostToHost;
    case CopyKind::host_to_device:
      return cudaMemcpyHostToDevice;
    case CopyKind::device_to_host:
      return cudaMemcpyDeviceToHost;
    case CopyKind::device_to_device:
      return cudaMemcpyDeviceToDevice;
  }
  return cudaMemcpyDefault;
}

// Freed message buffers by size, reused by later messages of that size.
struct Pool {
  explicit Pool(int d) : device(d) {}
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;
  ~Pool() {
    cudaSetDevice(device);
    for (auto& [bytes, p] : free) cudaFree(p);
  }
  int device;
  std::mutex mu;
  std::multimap<std::size_t, void*> free;
};

}  // namespace

LocalMemory cuda_local_memory(int device) {
  auto pool = std::make_shared<Pool>(device);
  LocalMemory m;
  m.name = fmt::format("cuda:{}", device);
  m.alloc = [pool](std::size_t bytes) -> void* {
    {
      std::lock_guard<std::mutex> lk(pool->mu);
      auto it = pool->free.find(bytes);
      if (it != pool->free.end()) {
        void* p = it->second;
        pool->free.erase(it);
        return p;
      }
    }
    cuda::check(cudaSetDevice(pool->device), "cudaSetDevice");
    void* p = nullptr;
    if (cudaMalloc(&p, bytes) != cudaSuccess) {
      cudaGetLastError();
      return nullptr;  // the communicator reports it, naming the message size
    }
    return p;
  };
  m.release = [pool](void* p, std::size_t bytes) {
    std::lock_guard<std::mutex> lk(pool->mu);
    pool->free.emplace(bytes, p);
  };
  m.copy = [pool](void* dst, const void* src, std::size_t bytes) {
    const CopyKind k = copy_kind(on_device(dst), on_device(src));
    if (k == CopyKind::host_to_host) {
      std::memcpy(dst, src, bytes);
      return;
    }
    cuda::check(cudaSetDevice(pool->device), "cudaSetDevice");
    // Per-thread default stream: each virtual rank's copies are independent of
    // the others' and of the engines' non-blocking compute streams.
    cuda::check(cudaMemcpyAsync(dst, src, bytes, to_cuda(k), cudaStreamPerThread),
                "in-process message copy");
    cuda::check(cudaStreamSynchronize(cudaStreamPerThread), "in-process message copy");
  };
  return m;
}

}  // namespace ringattn
