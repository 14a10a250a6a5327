#include "cli/run_device.hpp"

#include <fmt/format.h>

#include "cli/options.hpp"
#include "cli/run_config.hpp"
#include "ringattn/comm_mpi.hpp"
#include "ringattn/comm_nccl.hpp"
#include "ringattn/cuda.hpp"
#include "ringattn/error.hpp"

namespace ringattn::cli {

void check_device_options(const RunConfig& cfg) {
  if (!cfg.cuda) return;
  if (!cuda_built())
    throw UsageError(
        "option '--device': cuda: this ringattn was built without CUDA (configure with "
        "-DRINGATTN_CUDA=ON, or use --device cpu)");
  if (cfg.dtype != DType::f16 && cfg.dtype != DType::bf16)
    throw UsageError(
        fmt::format("option '--device': cuda computes in float16 or bfloat16; --dtype is {}",
                    dtype_name(cfg.dtype)));
  if (cfg.head_dim != 64 && cfg.head_dim != 128 && cfg.head_dim != 256)
    throw UsageError(
        fmt::format("option '--device': cuda supports head dims 64, 128 and 256; --head-dim is {}",
                    cfg.head_dim));
}

LocalMemory local_memory_for(const RunConfig& cfg) {
  return cfg.cuda ? cuda_local_memory(0) : host_local_memory();
}

namespace {

int pick_device(Communicator& comm) {
  std::string why;
  const int count = cuda_device_count(&why);
  if (count == 0)
    throw Error(fmt::format("option '--device': cuda: no usable CUDA device on rank {} ({})",
                            comm.rank(), why));
  // MPI ranks: one GPU each, by node-local rank; in-process ranks share GPU 0.
  return comm.backend() == "mpi" ? select_device_from_env(mpi_local_rank(), count) : 0;
}

}  // namespace

RankDevice::RankDevice(Communicator& comm, const RunConfig& cfg, const KernelOptions& kopt)
    : comm_(comm), cfg_(cfg) {
  if (!cfg.cuda) {
    engine_ = make_cpu_engine(kopt);
    name_ = "cpu";
    return;
  }
  const int dev = pick_device(comm);
  engine_ = make_cuda_engine(dev);
  if (comm.backend() == "mpi") {
    if (!nccl_built())
      throw Error("option '--device': cuda under MPI needs the NCCL backend, not built in");
    nccl_ = make_nccl(comm, dev);
  }
  name_ = fmt::format("cuda:{}", dev);
}

RankDevice::~RankDevice() = default;

RingMetrics RankDevice::pass(const RingSchedule& sch, const RingProblem& host, float* o,
                             float* lse) {
  Communicator& ring_comm = nccl_ ? *nccl_ : comm_;
  if (!cfg_.cuda) return ring_attention(ring_comm, *engine_, sch, host, o, lse);
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
  if (!cfg_.cuda || !o_) return;
  engine_->to_host(o, o_->data(), o_bytes_);
  engine_->to_host(lse, lse_->data(), lse_bytes_);
}

}  // namespace ringattn::cli
