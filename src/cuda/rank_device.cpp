#include "ringattn/rank_device.hpp"

#include <fmt/format.h>

#include "ringattn/comm_mpi.hpp"
#include "ringattn/comm_nccl.hpp"
#include "ringattn/cuda.hpp"
#include "ringattn/error.hpp"

namespace ringattn {

const char* device_name(Device d) {
  return d == Device::cuda ? "cuda" : "cpu";
}

void check_device(Device device, const AttentionProblem& p) {
  if (device != Device::cuda) return;
  if (!cuda_built())
    throw FieldError("device",
                     "cuda: this ringattn was built without CUDA (configure with "
                     "-DRINGATTN_CUDA=ON, or use the cpu device)");
  if (p.hier.on())
    throw FieldError("device",
                     "cuda: hierarchical levels and block routing run on the cpu device (the "
                     "GPU kernel takes the aligned exact window, the summary and routing passes "
                     "are CPU code)");
  if (p.dtype != DType::f16 && p.dtype != DType::bf16)
    throw FieldError("device", fmt::format("cuda computes in float16 or bfloat16; the dtype is {}",
                                           dtype_name(p.dtype)));
  if (p.head_dim != 64 && p.head_dim != 128 && p.head_dim != 256)
    throw FieldError("device", fmt::format("cuda supports head dims 64, 128 and 256; the head dim "
                                           "is {}",
                                           p.head_dim));
}

LocalMemory local_memory_for(Device device) {
  return device == Device::cuda ? cuda_local_memory(0) : host_local_memory();
}

namespace {

int pick_device(Communicator& comm) {
  std::string why;
  const int count = cuda_device_count(&why);
  if (count == 0)
    throw FieldError("device",
                     fmt::format("cuda: no usable CUDA device on rank {} ({})", comm.rank(), why));
  // MPI ranks: one GPU each, by node-local rank; in-process ranks share GPU 0.
  return comm.backend() == "mpi" ? select_device_from_env(mpi_local_rank(), count) : 0;
}

}  // namespace

RankDevice::RankDevice(Communicator& comm, Device device, const KernelOptions& kopt)
    : comm_(comm), device_(device) {
  if (device != Device::cuda) {
    engine_ = make_cpu_engine(kopt);
    name_ = "cpu";
    return;
  }
  const int dev = pick_device(comm);
  engine_ = make_cuda_engine(dev);
  if (comm.backend() == "mpi") {
    if (!nccl_built())
      throw FieldError("device", "cuda under MPI needs the NCCL backend, not built in");
    nccl_ = make_nccl(comm, dev);
  }
  name_ = fmt::format("cuda:{}", dev);
}

RankDevice::~RankDevice() = default;

RingMetrics RankDevice::pass(const RingSchedule& sch, const RingProblem& host, float* o,
                             float* lse) {
  Communicator& ring_comm = nccl_ ? *nccl_ : comm_;
  if (device_ != Device::cuda) return ring_attention(ring_comm, *engine_, sch, host, o, lse);
  const int r = comm_.rank();
  const std::size_t esz = dtype_size(host.dtype);
  const int64_t nq = host.q_layout->tokens(r), nk = host.kv_layout->tokens(r);
  if (!q_) {  // first pass: inputs to the device
    const std::size_t qb =
        static_cast<std::size_t>(host.batch * nq * host.hq * host.head_dim) * esz;
    const std::size_t kb =
        static_cast<std::size_t>(host.batch * nk * host.hkv * host.head_dim) * esz;
    o_bytes_ = static_cast<std::size_t>(host.batch * nq * host.hq * host.head_dim) * sizeof(float);
    lse_bytes_ = static_cast<std::size_t>(host.batch * host.hq * nq) * sizeof(float);
    q_ = engine_->alloc(qb + 1, "device q");
    k_ = engine_->alloc(kb + 1, "device k");
    v_ = engine_->alloc(kb + 1, "device v");
    o_ = engine_->alloc(o_bytes_ + 1, "device O");
    lse_ = engine_->alloc(lse_bytes_ + 1, "device LSE");
    engine_->from_host(q_->data(), host.q, qb);
    engine_->from_host(k_->data(), host.k, kb);
    engine_->from_host(v_->data(), host.v, kb);
    engine_->sync();
  }
  RingProblem p = host;
  p.q = q_->data(), p.k = k_->data(), p.v = v_->data();
  return ring_attention(ring_comm, *engine_, sch, p, o_->as<float>(), lse_->as<float>());
}

void RankDevice::finish(float* o, float* lse) {
  if (device_ != Device::cuda || !o_) return;
  engine_->to_host(o, o_->data(), o_bytes_);
  engine_->to_host(lse, lse_->data(), lse_bytes_);
}

}  // namespace ringattn
