// The ring's compute engine: where K/V blocks and states live, and how one
// (query segment, key segment) pair is attended and merged. The ring loop
// (ring.cpp) is written once against this seam; the CPU engine runs the CPU
// kernel on host memory, the CUDA engine runs the GPU kernel on device memory
// on its compute stream. The communicator moves bytes between buffers of the
// engine's memory space (host pointers for MPI/in-process, device pointers for
// NCCL or for in-process virtual ranks on one GPU).
//
// Ordering contract (what lets a GPU engine run asynchronously):
//   * attend / merge_rows / clear / copy may return before their work is
//     done; they run in call order with respect to each other.
//   * sync() returns once every call before it has finished. The ring calls it
//     before a transfer overwrites or sends a buffer that queued work reads or
//     writes, and before it returns.
//   * Buffers handed to the communicator are complete when its requests have
//     completed (wait()): engine work queued after that may read them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "ringattn/kernel.hpp"
#include "ringattn/state.hpp"

namespace ringattn {

// A buffer in the engine's memory space (owned; freed on destruction).
class EngineBuffer {
 public:
  virtual ~EngineBuffer() = default;
  virtual void* data() = 0;
  virtual std::size_t size() const = 0;
  template <class T>
  T* as() {
    return static_cast<T*>(data());
  }
};

class RingEngine {
 public:
  virtual ~RingEngine() = default;
  virtual std::string name() const = 0;  // "cpu", "cuda"

  // `bytes` bytes in the engine's memory space, uninitialised. `what` names it
  // in out-of-memory errors and memory accounting.
  virtual std::unique_ptr<EngineBuffer> alloc(std::size_t bytes, const char* what) = 0;

  // The partial state of a.q against a.k / a.v: o [a.batch, a.nq, Hq, D],
  // lse [a.batch, Hq, a.nq] (float32, in the engine's memory).
  virtual KernelStats attend(const AttentionArgs& a, float* o, float* lse) = 0;

  // acc rows [row0, row0 + part.tokens) of batch `batch_index` <- merge(acc
  // rows, part); `part` is a batch-1 state of the same heads and head_dim.
  virtual void merge_rows(const StateView& acc, int64_t batch_index, int64_t row0,
                          const StateView& part) = 0;

  // attend() of a batch-1 problem into `work` (at least partial_bytes(a.nq,
  // a.hq, a.head_dim) bytes), then merge_rows() into acc. An engine may fuse them.
  virtual KernelStats attend_merge(const AttentionArgs& a, const StateView& acc,
                                   int64_t batch_index, int64_t row0, EngineBuffer& work);
  static std::size_t partial_bytes(int64_t nq, int64_t hq, int64_t head_dim) {
    return static_cast<std::size_t>(nq * hq * (head_dim + 1)) * sizeof(float);
  }

  // The backward of a batch-1 problem (ringattn/backward.hpp), added to dq, dk
  // and dv (float32): o, dO and dq are the a.nq query rows, lse [Hq, a.nq].
  // Engines without a backward throw (the default).
  virtual KernelStats attend_backward(const AttentionArgs& a, const float* o, const float* lse,
                                      const float* dO, float* dq, float* dk, float* dv);

  // Empty state (O = 0, LSE = -inf).
  virtual void clear(const StateView& s) = 0;

  // Byte copy within the engine's memory space.
  virtual void copy(void* dst, const void* src, std::size_t bytes) = 0;
  // Between host memory and the engine's memory space (plain memcpy on CPU).
  virtual void to_host(void* host_dst, const void* src, std::size_t bytes) = 0;
  virtual void from_host(void* dst, const void* host_src, std::size_t bytes) = 0;

  virtual void sync() = 0;
};

// The CPU engine: attention_forward, merge_row and memcpy on host memory.
std::unique_ptr<RingEngine> make_cpu_engine(const KernelOptions& opt = {});

}  // namespace ringattn
