// The NCCL communicator (comm_nccl.hpp): point-to-point transfers between
// device buffers, queued and launched as one NCCL group when first waited for,
// on a communication stream of its own; collectives staged through a device
// buffer. Built only where NCCL was found (nccl_stub.cpp otherwise).
//
// Ordering: everything of this communicator (staging copies, NCCL calls, the
// copies back) is queued on its one stream, so a copy never races the NCCL
// kernel that reads or writes the same staging bytes.
// Errors: every NCCL and CUDA call goes through ok(), which marks the
// communicator failed before throwing; a failed (or aborted, or unwinding)
// communicator is aborted, not destroyed (nccl_teardown).
#include <cuda_runtime.h>
#include <fmt/format.h>
#include <nccl.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <thread>
#include <vector>

#include "comm/nccl_group.hpp"
#include "cuda/check.hpp"
#include "ringattn/comm_nccl.hpp"
#include "ringattn/error.hpp"

namespace ringattn {
namespace {

using cuda::check;

std::string nccl_error(ncclResult_t r, const char* what) {
  return fmt::format("nccl: {}: {}", what, ncclGetErrorString(r));
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
      : boot_(bootstrap),
        device_(device),
        rank_(bootstrap.rank()),
        size_(bootstrap.size()),
        uncaught_at_construction_(std::uncaught_exceptions()) {
    check(cudaSetDevice(device), "cudaSetDevice");
    // Rank 0's id travels with its status: when ncclGetUniqueId fails there,
    // every rank throws instead of waiting in ncclCommInitRank on a zero id.
    struct IdMessage {
      int32_t status = ncclSuccess;
      ncclUniqueId id{};
    } msg;
    if (rank_ == 0) msg.status = ncclGetUniqueId(&msg.id);
    const std::vector<char> shared = share_from_root(boot_, &msg, sizeof(msg));
    std::memcpy(&msg, shared.data(), sizeof(msg));
    if (msg.status != ncclSuccess)
      throw Error(nccl_error(static_cast<ncclResult_t>(msg.status), "ncclGetUniqueId on rank 0"));
    check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    const ncclResult_t r = ncclCommInitRank(&comm_, size_, msg.id, rank_);
    if (r != ncclSuccess) {
      cudaStreamDestroy(stream_);
      throw Error(nccl_error(r, "ncclCommInitRank"));
    }
  }
  NcclComm(const NcclComm&) = delete;
  NcclComm& operator=(const NcclComm&) = delete;
  ~NcclComm() override {
    cudaSetDevice(device_);
    if (comm_ != nullptr) {
      if (nccl_teardown(failed_, uncaught_at_construction_, std::uncaught_exceptions()) ==
          NcclTeardown::abort) {
        ncclCommAbort(comm_);  // never waits for transfers a failed peer will not match
      } else {
        cudaStreamSynchronize(stream_);
        ncclCommDestroy(comm_);
      }
      comm_ = nullptr;
    }
    // After the communicator: nothing queued on the stream uses the staging buffer any more.
    if (scratch_ != nullptr) cudaFree(scratch_);
    cudaStreamDestroy(stream_);
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

  // Launches the pending transfers as one group and records their event. On
  // an error the batch stays unlaunched (its requests throw when waited for).
  void flush() {
    if (!pending_ || pending_->launched) return;
    std::shared_ptr<Batch> b = std::move(pending_);
    live("launching transfers");
    ok(cudaSetDevice(device_), "cudaSetDevice");
    ok(cudaEventCreateWithFlags(&b->done, cudaEventDisableTiming), "cudaEventCreate");
    {
      Group g(*this);
      for (const Batch::Op& op : b->ops) {
        if (op.send)
          ok(ncclSend(op.buf, op.bytes, ncclUint8, op.peer, comm_, stream_), "ncclSend");
        else
          ok(ncclRecv(op.buf, op.bytes, ncclUint8, op.peer, comm_, stream_), "ncclRecv");
      }
      g.close();
    }
    ok(cudaEventRecord(b->done, stream_), "cudaEventRecord");
    b->launched = true;
  }

  // Completion of a request's batch (NcclRequest).
  void wait(Batch& b) {
    flush();
    if (!b.launched)
      throw Error("nccl comm: a transfer was never launched (an earlier NCCL error on this rank)");
    await([&] { return cudaEventQuery(b.done); }, "waiting for an NCCL transfer");
  }
  bool test(Batch& b) {
    flush();
    if (!b.launched)
      throw Error("nccl comm: a transfer was never launched (an earlier NCCL error on this rank)");
    const cudaError_t e = cudaEventQuery(b.done);
    if (e == cudaErrorNotReady) return false;
    ok(e, "testing an NCCL transfer");
    return true;
  }

  // Waits until query() is no longer cudaErrorNotReady, polling NCCL's
  // asynchronous error meanwhile: a transfer whose peer failed throws here
  // (and marks the communicator failed) instead of blocking forever in
  // cudaEventSynchronize / cudaStreamSynchronize.
  template <class Query>
  void await(Query query, const char* what) {
    live(what);
    for (;;) {
      const cudaError_t e = query();
      if (e != cudaErrorNotReady) return ok(e, what);
      ncclResult_t async = ncclSuccess;
      ok(ncclCommGetAsyncError(comm_, &async), "ncclCommGetAsyncError");
      if (async != ncclSuccess && async != ncclInProgress) ok(async, what);
      std::this_thread::yield();
    }
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

  // Aborts NCCL first (its kernels stop waiting for peers), then the job
  // through the bootstrap communicator (MPI_Abort; in-process: the world).
  [[noreturn]] void abort(const std::string& message, int exit_code) override {
    failed_ = true;
    if (comm_ != nullptr) {
      cudaSetDevice(device_);
      ncclCommAbort(comm_);
      comm_ = nullptr;
    }
    boot_.abort(message, exit_code);
    std::abort();  // not reached: the bootstrap's abort does not return
  }

 private:
  // Checks an NCCL or CUDA result: on an error the communicator is marked
  // failed (so it is aborted, not destroyed) and Error is thrown.
  void ok(ncclResult_t r, const char* what) {
    if (r == ncclSuccess) return;
    failed_ = true;
    throw Error(nccl_error(r, what));
  }
  void ok(cudaError_t e, const char* what) {
    if (e == cudaSuccess) return;
    failed_ = true;
    check(e, what);
  }
  void live(const char* what) const {
    if (comm_ == nullptr)
      throw Error(fmt::format("nccl comm: {} after abort() on rank {}", what, rank_));
  }

  // One NCCL group, ended on every path (nccl_group.hpp).
  struct Group {
    explicit Group(NcclComm& c) : comm(c), scope(&ncclGroupStart, &ncclGroupEnd) {
      comm.ok(scope.started(), "ncclGroupStart");
    }
    ~Group() {
      if (scope.open()) comm.failed_ = true;  // left by an exception
    }
    void close() { comm.ok(scope.close(), "ncclGroupEnd"); }
    NcclComm& comm;
    GroupScope<ncclResult_t> scope;
  };

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
  // host buffers through the staging buffer (copies on the NCCL stream, in
  // order with the transfers). Complete on return.
  void exchange(const void* in, const std::vector<std::size_t>& send, bool split, void* out,
                const std::vector<std::size_t>& recv) {
    flush();
    live("collective");
    if (send.size() != static_cast<std::size_t>(size_) ||
        recv.size() != static_cast<std::size_t>(size_))
      throw Error(fmt::format("nccl comm: {} send and {} receive counts for {} ranks", send.size(),
                              recv.size(), size_));
    const std::size_t me = static_cast<std::size_t>(rank_);
    // Checked before anything is queued: a throw must not leave half a collective behind.
    if (recv[me] != send[me])
      throw Error(fmt::format("nccl comm: rank {} sends itself {} bytes but expects {}", rank_,
                              send[me], recv[me]));
    ok(cudaSetDevice(device_), "cudaSetDevice");
    std::size_t sin = 0, sout = 0;
    for (int x = 0; x < size_; ++x) {
      sin += split ? send[static_cast<std::size_t>(x)] : 0;
      sout += recv[static_cast<std::size_t>(x)];
    }
    if (!split) sin = send[me];
    const bool device = on_device(in) && on_device(out);
    const char* din = static_cast<const char*>(in);
    char* dout = static_cast<char*>(out);
    if (!device) {
      char* d = staging(sin + sout);
      // cudaMemcpyDefault: either side may be a device buffer (UVA tells).
      if (sin > 0)
        ok(cudaMemcpyAsync(d, in, sin, cudaMemcpyDefault, stream_), "collective staging in");
      din = d, dout = d + sin;
    }
    // The self part first, on the same stream, outside the group.
    std::size_t so = 0, ro = 0;
    for (int x = 0; x < rank_; ++x)
      so += split ? send[static_cast<std::size_t>(x)] : 0, ro += recv[static_cast<std::size_t>(x)];
    if (recv[me] > 0)
      ok(cudaMemcpyAsync(dout + ro, din + so, recv[me], cudaMemcpyDeviceToDevice, stream_),
         "collective self copy");
    {
      Group g(*this);
      so = 0, ro = 0;
      for (int x = 0; x < size_; ++x) {
        const std::size_t sn = send[static_cast<std::size_t>(x)];
        const std::size_t rn = recv[static_cast<std::size_t>(x)];
        const char* from = din + (split ? so : 0);
        if (x != rank_) {
          if (sn > 0) ok(ncclSend(from, sn, ncclUint8, x, comm_, stream_), "ncclSend");
          if (rn > 0) ok(ncclRecv(dout + ro, rn, ncclUint8, x, comm_, stream_), "ncclRecv");
        }
        so += sn, ro += rn;
      }
      g.close();
    }
    if (!device && sout > 0)
      ok(cudaMemcpyAsync(out, dout, sout, cudaMemcpyDefault, stream_), "collective staging out");
    await([&] { return cudaStreamQuery(stream_); }, "collective");
  }

  static bool on_device(const void* p) {
    cudaPointerAttributes attr{};
    if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    return attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged;
  }

  // Host values: staged in, reduced and staged out in order on the NCCL stream.
  template <class T>
  void reduce(T* data, std::size_t bytes, std::size_t n, ncclDataType_t type, ReduceOp op) {
    flush();
    live("allreduce");
    if (n == 0) return;
    char* d = staging(bytes);
    ok(cudaMemcpyAsync(d, data, bytes, cudaMemcpyDefault, stream_), "allreduce staging in");
    const ncclRedOp_t o = op == ReduceOp::sum ? ncclSum : op == ReduceOp::max ? ncclMax : ncclMin;
    ok(ncclAllReduce(d, d, n, type, o, comm_, stream_), "ncclAllReduce");
    ok(cudaMemcpyAsync(data, d, bytes, cudaMemcpyDefault, stream_), "allreduce staging out");
    await([&] { return cudaStreamQuery(stream_); }, "allreduce");
  }

  // A device buffer of at least `bytes` bytes for staging collectives. Growing
  // it waits for the stream first (earlier collectives are complete on return
  // anyway; cudaFree must not pull the buffer from under queued work).
  char* staging(std::size_t bytes) {
    ok(cudaSetDevice(device_), "cudaSetDevice");
    if (bytes > scratch_bytes_) {
      ok(cudaStreamSynchronize(stream_), "collective staging buffer");
      if (scratch_ != nullptr) ok(cudaFree(scratch_), "cudaFree");
      scratch_ = nullptr, scratch_bytes_ = 0;
      ok(cudaMalloc(&scratch_, bytes), "collective staging buffer");
      scratch_bytes_ = bytes;
    }
    return static_cast<char*>(scratch_);
  }

  Communicator& boot_;
  int device_, rank_, size_;
  int uncaught_at_construction_;  // std::uncaught_exceptions() then (nccl_teardown)
  bool failed_ = false;           // an NCCL or CUDA call failed, or abort() was called
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  std::shared_ptr<Batch> pending_;
  void* scratch_ = nullptr;
  std::size_t scratch_bytes_ = 0;
};

void NcclRequest::wait() {
  comm_.wait(*batch_);
}

bool NcclRequest::test() {
  return comm_.test(*batch_);
}

}  // namespace

bool nccl_built() {
  return true;
}

std::unique_ptr<Communicator> make_nccl(Communicator& bootstrap, int device) {
  return std::make_unique<NcclComm>(bootstrap, device);
}

}  // namespace ringattn
