// The GPU path: the CUDA flash-attention kernel, the state merge on the GPU,
// the CUDA ring engine, and device memory for in-process virtual ranks. This
// header needs no CUDA headers: streams travel as void* (a cudaStream_t;
// nullptr is the legacy default stream), pointers marked "device" are device
// memory. Every entry point takes its stream explicitly: the CUDA engine's
// stream is non-blocking, so work on the default stream is NOT ordered with
// its copies; queue kernels on the stream of the engine that moved the data
// (cuda_engine_stream) and read results after its sync().
//
// Every function exists in every build; where ringattn was built without CUDA
// (cuda_built() false) they throw Error saying so, and cuda_device_count()
// returns 0 with the reason.
//
// Kernel contract: the CPU kernel's (kernel.hpp, on attention.hpp's problem),
// with q, k, v [B, N, H, D] in float16 or bfloat16 (float32 accumulation), head
// dims 64, 128 and 256, GQA/MQA, the full Mask in global positions, LSE float32
// natural log, empty rows O = 0 and LSE = -inf. q, k, v must be 16-byte aligned.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "ringattn/attention.hpp"
#include "ringattn/comm.hpp"
#include "ringattn/ring_engine.hpp"
#include "ringattn/state.hpp"

namespace ringattn {

// Whether this binary has the GPU path.
bool cuda_built();

// Number of CUDA devices this process can use; 0 when there are none or the
// runtime cannot start, with the reason (the CUDA error) in *why.
int cuda_device_count(std::string* why = nullptr);

struct CudaDeviceInfo {
  std::string name;          // e.g. "NVIDIA H200"
  int major = 0, minor = 0;  // compute capability
  int multiprocessors = 0;
  std::size_t memory_bytes = 0;
  double peak_bf16_tflops = 0;  // dense bf16 tensor-core peak from the spec table; 0 if unknown
};
CudaDeviceInfo cuda_device_info(int device);

// The dense (no sparsity) bf16 tensor-core peak of a GPU in TFLOP/s from its
// data sheet, by device name (e.g. "NVIDIA H200" -> 989); 0 when unknown.
double dense_bf16_peak_tflops(const std::string& device_name);

// Attention on device pointers: o [B, Nq, Hq, D] in a.dtype, lse [B, Hq, Nq]
// float32. Queued on `stream`; returns the tile counts the mask allowed.
KernelStats cuda_attention_forward(const AttentionArgs& a, void* o, float* lse, void* stream);
// The same with O in float32: the partial state of state.hpp.
KernelStats cuda_attention_partial(const AttentionArgs& a, float* o, float* lse, void* stream);
// Attention merged into rows row0 .. row0 + a.nq of batch `batch_index` of a
// running float32 state (a.batch must be 1): the fused form of partial + merge.
KernelStats cuda_attention_merge(const AttentionArgs& a, const StateView& acc, int64_t batch_index,
                                 int64_t row0, void* stream);

// Seconds one cuda_attention_forward takes on the device (CUDA events around
// it on `stream`, waited for), for benchmarks.
double cuda_time_forward(const AttentionArgs& a, void* o, float* lse, void* stream);

// acc <- merge(acc, part) on the GPU (state.hpp's merge_row, per row); device
// pointers, shapes must match (throws Error).
void cuda_merge_states(const StateView& acc, const StateView& part, void* stream);
// Rows (b, n) of `part` merge into rows (batch_index + b, row0 + n) of acc
// (same heads and head dim; throws Error when part does not fit).
void cuda_merge_rows(const StateView& acc, int64_t batch_index, int64_t row0, const StateView& part,
                     void* stream);
// Every row empty: O = 0, LSE = -inf.
void cuda_clear_state(const StateView& s, void* stream);

// The CUDA ring engine on `device`: device buffers (cudaMalloc), the kernel
// and merge queued in order on one non-blocking compute stream, copies on
// that stream, sync() = cudaStreamSynchronize. Safe to use from the thread of
// any virtual rank (each call selects the device first).
std::unique_ptr<RingEngine> make_cuda_engine(int device);
// The compute stream (a cudaStream_t) of an engine from make_cuda_engine, to
// queue kernels in order with its copies and sync(); throws Error for any
// other engine.
void* cuda_engine_stream(RingEngine& engine);

// Which copy a byte move between two buffers needs.
enum class CopyKind : uint8_t { host_to_host, host_to_device, device_to_host, device_to_device };
CopyKind copy_kind(bool dst_on_device, bool src_on_device);

// Message storage of the in-process communicator in device memory of
// `device` (a reuse pool, so the ring's repeated sends allocate once), copies
// by cudaMemcpy of the kind copy_kind picks from the pointers: for virtual
// ranks on one GPU, run_local(P, fn, cuda_local_memory(0)).
LocalMemory cuda_local_memory(int device);

}  // namespace ringattn
