// The communicator: everything the distributed algorithms need from the
// transport, and nothing more. Algorithms never call MPI or NCCL directly.
//
// Backends:
//   * in-process ("local"): P virtual ranks as threads of one process that
//     share mailboxes; the single-process fallback tests and CI use.
//   * MPI: one rank per process (Open MPI).
//   * NCCL: comes with the GPU path, behind this same interface.
//
// Point-to-point messages are raw bytes, matched by (source, tag) in order.
// Every blocking call gives up with an Error instead of hanging when the job
// is aborted by another rank (in-process), and MPI aborts the whole job.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace ringattn {

class Communicator;

// A pending non-blocking send or receive. wait() completes it (idempotent).
// Destroying a request that was never waited for abandons it: only error paths
// do that, and they end the job (see Communicator::abort).
class Request {
 public:
  struct Impl {
    virtual ~Impl() = default;
    virtual void wait() = 0;
    virtual bool test() = 0;  // true once complete (never blocks)
  };
  Request() = default;
  explicit Request(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
  Request(Request&&) noexcept = default;
  Request& operator=(Request&& o) noexcept;
  ~Request();
  void wait();
  bool test();
  bool pending() const { return impl_ != nullptr; }

 private:
  std::unique_ptr<Impl> impl_;
};

enum class ReduceOp : uint8_t { sum, max, min };

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string backend() const = 0;  // "local", "mpi", ...

  // Non-blocking byte transfers. The buffer must stay valid until the request
  // completes. `tag` >= 0.
  virtual Request isend(const void* buf, std::size_t bytes, int dest, int tag) = 0;
  virtual Request irecv(void* buf, std::size_t bytes, int src, int tag) = 0;

  // Collectives (every rank calls them in the same order).
  virtual void allreduce(double* data, std::size_t n, ReduceOp op) = 0;
  virtual void allreduce(int64_t* data, std::size_t n, ReduceOp op) = 0;
  // Each rank contributes `bytes` bytes; out receives size() * bytes, in rank order.
  virtual void allgather(const void* in, std::size_t bytes, void* out) = 0;
  // Rank r contributes counts[r] bytes; out receives them concatenated in rank order.
  virtual void allgatherv(const void* in, const std::vector<std::size_t>& counts, void* out) = 0;
  // send_counts[r] bytes go to rank r (from in, concatenated in rank order);
  // recv_counts[r] bytes arrive from rank r (into out, likewise).
  virtual void alltoallv(const void* in, const std::vector<std::size_t>& send_counts, void* out,
                         const std::vector<std::size_t>& recv_counts) = 0;
  virtual void barrier() = 0;

  // Ends the whole job: reports `message` (with this rank's number) and makes
  // every other rank stop within seconds. Does not return.
  [[noreturn]] virtual void abort(const std::string& message, int exit_code) = 0;

  // Convenience wrappers.
  double allreduce_one(double v, ReduceOp op) {
    allreduce(&v, 1, op);
    return v;
  }
  int64_t allreduce_one(int64_t v, ReduceOp op) {
    allreduce(&v, 1, op);
    return v;
  }
};

// A communicator over some ranks of `parent` (a level of a two-level scheme:
// the ranks of one node, or one rank per node): members[k] is the parent rank
// of sub-rank k, and this rank must be among them. Point-to-point messages
// travel through the parent with tags shifted by tag_base (give each level its
// own range: user tags must stay below kSubTagSpan - 16); the collectives are
// built on them (reductions combine in sub-rank order, so every member gets the
// same bits). Works over every backend; backend() and abort() are the parent's,
// and a blocking call gives up as the parent's do.
inline constexpr int kSubTagSpan = 4096;
std::unique_ptr<Communicator> make_sub_communicator(Communicator& parent, std::vector<int> members,
                                                    int tag_base);

// Where the in-process backend keeps point-to-point message bytes and how it
// copies them between the ranks' buffers and that storage. The default is
// host memory and memcpy; virtual ranks on one GPU use device memory and
// device copies (ringattn/cuda.hpp: cuda_local_memory), so isend/irecv take
// device pointers. Every copy is complete when `copy` returns. The byte
// collectives (allgather(v), alltoallv) copy with it too, so they take
// buffers of that memory (the ring gathers shared rows in engine buffers);
// `copy` must also handle host-to-host (allreduce works on host values).
struct LocalMemory {
  std::string name;                               // "host", "cuda:0", ...
  std::function<void*(std::size_t bytes)> alloc;  // storage for one message
  std::function<void(void* p, std::size_t bytes)> release;
  std::function<void(void* dst, const void* src, std::size_t bytes)> copy;
};
LocalMemory host_local_memory();

// Runs fn(comm) on `ranks` virtual ranks, each in its own thread of this
// process, sharing one in-process world. An exception thrown on any rank
// aborts the world (the other ranks' blocking calls throw), and is rethrown
// here (the first one, prefixed with its rank) once every thread has ended.
void run_local(int ranks, const std::function<void(Communicator&)>& fn);
// The same, with point-to-point messages in `memory`.
void run_local(int ranks, const std::function<void(Communicator&)>& fn, const LocalMemory& memory);

}  // namespace ringattn
