// The NCCL communicator (comm_nccl.hpp): point-to-point transfers between
// device buffers, queued and launched as one NCCL group when first waited for,
// on a communication stream of its own; collectives staged through a device
// buffer. Built only where NCCL was found (nccl_stub.cpp otherwise).
#include <cuda_runtime.h>
#include <fmt/format.h>
#include <nccl.h>

#include <cstdlib>
#include <cstring>
#include <vector>

#include "cuda/check.hpp"
#include "ringattn/comm_nccl.hpp"
#include "ringattn/error.hpp"

namespace ringattn {
namespace {

using cuda::check;

void check_nccl(ncclResult_t r, const char* what) {
  if (r != ncclSuccess) throw Error(fmt::format("nccl: {}: {}", what, ncclGetErrorString(r)));
}

// The transfers posted since the last launch, and the event that completes them.
struct Batch {
  struct Op {
    bool send;
    void* buf;
    std::size_t bytes;
    int peer;
  };
  Batch() = default;
  Batch(const Batch&) = delete;
  Batch& operator=(const Batch&) = delete;
  ~Batch() {
    if (done != nullptr) cudaEventDestroy(done);
  }
  std::vector<Op> ops;
  cudaEvent_t done = nullptr;
  bool launched = false;
};

class NcclComm;

class NcclRequest final : public Request::Impl {
 public:
  NcclRequest(NcclComm& c, std::shared_ptr<Batch> b) : comm_(c), batch_(std::move(b)) {}
  void wait() override;
  bool test() override;

 private:
  NcclComm& comm_;
  std::shared_ptr<Batch> batch_;
};

class NcclComm final : public Communicator {
 public:
  NcclComm(Communicator& bootstrap, int device)
      : boot_(bootstrap), device_(device), rank_(bootstrap.rank()), size_(bootstrap.size()) {
    check(cudaSetDevice(device), "cudaSetDevice");
    ncclUniqueId id{};
    if (rank_ == 0) check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
    const std::vector<char> shared = share_from_root(boot_, &id, sizeof(id));
    std::memcpy(&id, shared.data(), sizeof(id));
    check_nccl(ncclCommInitRank(&comm_, size_, id, rank_), "ncclCommInitRank");
    check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
  }
  NcclComm(const NcclComm&) = delete;
  NcclComm& operator=(const NcclComm&) = delete;
  ~NcclComm() override {
    cudaSetDevice(device_);
    if (scratch_ != nullptr) cudaFree(scratch_);
    cudaStreamSynchronize(stream_);
    cudaStreamDestroy(stream_);
    ncclCommDestroy(comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "nccl"; }

  Request isend(const void* buf, std::size_t bytes, int dest, int tag) override {
    return post(true, const_cast<void*>(buf), bytes, dest, tag);
  }
  Request irecv(void* buf, std::size_t bytes, int src, int tag) override {
    return post(false, buf, bytes, src, tag);
  }

  // Launches the pending transfers as one group and records their event.
  void flush() {
    if (!pending_ || pending_->launched) return;
    std::shared_ptr<Batch> b = std::move(pending_);
    check(cudaSetDevice(device_), "cudaSetDevice");
    check_nccl(ncclGroupStart(), "ncclGroupStart");
    for (const Batch::Op& op : b->ops) {
      if (op.send)
        check_nccl(ncclSend(op.buf, op.bytes, ncclUint8, op.peer, comm_, stream_), "ncclSend");
      else
        check_nccl(ncclRecv(op.buf, op.bytes, ncclUint8, op.peer, comm_, stream_), "ncclRecv");
    }
    check_nccl(ncclGroupEnd(), "ncclGroupEnd");
    check(cudaEventCreateWithFlags(&b->done, cudaEventDisableTiming), "cudaEventCreate");
    check(cudaEventRecord(b->done, stream_), "cudaEventRecord");
    b->launched = true;
  }

  void allreduce(double* data, std::size_t n, ReduceOp op) override {
    reduce(data, n * sizeof(double), n, ncclFloat64, op);
  }
  void allreduce(int64_t* data, std::size_t n, ReduceOp op) override {
    reduce(data, n * sizeof(int64_t), n, ncclInt64, op);
  }

  void allgather(const void* in, std::size_t bytes, void* out) override {
    allgatherv(in, std::vector<std::size_t>(static_cast<std::size_t>(size_), bytes), out);
  }

  void allgatherv(const void* in, const std::vector<std::size_t>& counts, void* out) override {
    const std::vector<std::size_t> send(static_cast<std::size_t>(size_),
                                        counts[static_cast<std::size_t>(rank_)]);
    exchange(in, send, false, out, counts);
  }

  void alltoallv(const void* in, const std::vector<std::size_t>& send_counts, void* out,
                 const std::vector<std::size_t>& recv_counts) override {
    exchange(in, send_counts, true, out, recv_counts);
  }
  void barrier() override {
    int64_t one = 1;
    allreduce(&one, 1, ReduceOp::sum);
  }

  [[noreturn]] void abort(const std::string& message, int exit_code) override {
    ncclCommAbort(comm_);
    boot_.abort(message, exit_code);
    std::abort();  // not reached: the bootstrap's abort does not return
  }

 private:
  Request post(bool send, void* buf, std::size_t bytes, int peer, int tag) {
    if (peer < 0 || peer >= size_)
      throw Error(
          fmt::format("nccl comm: {} to rank {} of {}", send ? "isend" : "irecv", peer, size_));
    if (tag < 0) throw Error(fmt::format("nccl comm: tag {} must be >= 0", tag));
    if (!pending_) pending_ = std::make_shared<Batch>();
    if (bytes > 0) pending_->ops.push_back({send, buf, bytes, peer});
    return Request(std::make_unique<NcclRequest>(*this, pending_));
  }

  // Rank x receives send[x] bytes: from `in` at the running offset when
  // `split` (alltoallv), else all of `in` (allgatherv); recv[x] bytes from
  // rank x land in `out` in rank order. Device buffers go to NCCL directly,
  // host buffers through the staging buffer. Complete on return.
  void exchange(const void* in, const std::vector<std::size_t>& send, bool split, void* out,
                const std::vector<std::size_t>& recv) {
    flush();
    check(cudaSetDevice(device_), "cudaSetDevice");
    std::size_t sin = 0, sout = 0;
    for (int x = 0; x < size_; ++x) {
      sin += split ? send[static_cast<std::size_t>(x)] : 0;
      sout += recv[static_cast<std::size_t>(x)];
    }
    if (!split) sin = send[static_cast<std::size_t>(rank_)];
    const bool device = on_device(in) && on_device(out);
    const char* din = static_cast<const char*>(in);
    char* dout = static_cast<char*>(out);
    if (!device) {
      char* d = staging(sin + sout);
      if (sin > 0) check(cudaMemcpy(d, in, sin, cudaMemcpyHostToDevice), "collective staging");
      din = d, dout = d + sin;
    }
    check_nccl(ncclGroupStart(), "ncclGroupStart");
    std::size_t so = 0, ro = 0;
    for (int x = 0; x < size_; ++x) {
      const std::size_t sn = send[static_cast<std::size_t>(x)];
      const std::size_t rn = recv[static_cast<std::size_t>(x)];
      const char* from = din + (split ? so : 0);
      if (x == rank_) {
        if (rn != sn)
          throw Error(fmt::format("nccl comm: rank {} sends itself {} bytes but expects {}", rank_,
                                  sn, rn));
        if (rn > 0)
          check(cudaMemcpyAsync(dout + ro, from, rn, cudaMemcpyDeviceToDevice, stream_),
                "collective self copy");
      } else {
        if (sn > 0) check_nccl(ncclSend(from, sn, ncclUint8, x, comm_, stream_), "ncclSend");
        if (rn > 0) check_nccl(ncclRecv(dout + ro, rn, ncclUint8, x, comm_, stream_), "ncclRecv");
      }
      so += sn, ro += rn;
    }
    check_nccl(ncclGroupEnd(), "ncclGroupEnd");
    check(cudaStreamSynchronize(stream_), "collective");
    if (!device && sout > 0)
      check(cudaMemcpy(out, dout, sout, cudaMemcpyDeviceToHost), "collective staging");
  }

  static bool on_device(const void* p) {
    cudaPointerAttributes attr{};
    if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    return attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged;
  }

  template <class T>
  void reduce(T* data, std::size_t bytes, std::size_t n, ncclDataType_t type, ReduceOp op) {
    flush();
    char* d = staging(bytes);
    check(cudaMemcpy(d, data, bytes, cudaMemcpyHostToDevice), "allreduce staging");
    const ncclRedOp_t o = op == ReduceOp::sum ? ncclSum : op == ReduceOp::max ? ncclMax : ncclMin;
    check_nccl(ncclAllReduce(d, d, n, type, o, comm_, stream_), "ncclAllReduce");
    check(cudaStreamSynchronize(stream_), "allreduce");
    check(cudaMemcpy(data, d, bytes, cudaMemcpyDeviceToHost), "allreduce staging");
  }

  // A device buffer of at least `bytes` bytes for staging collectives.
  char* staging(std::size_t bytes) {
    check(cudaSetDevice(device_), "cudaSetDevice");
    if (bytes > scratch_bytes_) {
      if (scratch_ != nullptr) check(cudaFree(scratch_), "cudaFree");
      scratch_ = nullptr;
      check(cudaMalloc(&scratch_, bytes), "collective staging buffer");
      scratch_bytes_ = bytes;
    }
    return static_cast<char*>(scratch_);
  }

  Communicator& boot_;
  int device_, rank_, size_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  std::shared_ptr<Batch> pending_;
  void* scratch_ = nullptr;
  std::size_t scratch_bytes_ = 0;
};

void NcclRequest::wait() {
  comm_.flush();
  check(cudaEventSynchronize(batch_->done), "waiting for an NCCL transfer");
}

bool NcclRequest::test() {
  comm_.flush();
  const cudaError_t e = cudaEventQuery(batch_->done);
  if (e == cudaErrorNotReady) return false;
  check(e, "testing an NCCL transfer");
  return true;
}

}  // namespace

bool nccl_built() {
  return true;
}

std::unique_ptr<Communicator> make_nccl(Communicator& bootstrap, int device) {
  return std::make_unique<NcclComm>(bootstrap, device);
}

}  // namespace ringattn
