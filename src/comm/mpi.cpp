// MPI backend of the communicator. Messages above kMaxChunk bytes are split
// into several MPI messages on the same tag (MPI keeps their order), so byte
// counts are not limited by MPI's int counts.
#include <cstdlib>

#include "ringattn/comm_mpi.hpp"
#include "ringattn/error.hpp"

#if RINGATTN_HAVE_MPI
#include <fmt/format.h>
#include <mpi.h>

#include <climits>
#include <cstdio>
#include <mutex>
#include <utility>
#include <vector>
#endif

namespace ringattn {

bool launched_by_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK",
                        "MPI_LOCALNRANKS", "MV2_COMM_WORLD_SIZE"})
    if (std::getenv(v) != nullptr) return true;
  return false;
}

#if RINGATTN_HAVE_MPI

namespace {

constexpr std::size_t kMaxChunk = std::size_t{1} << 30;

int as_int(std::size_t n, const char* what) {
  if (n > static_cast<std::size_t>(INT_MAX))
    throw Error(fmt::format("mpi comm: {} of {} bytes exceeds MPI's int count", what, n));
  return static_cast<int>(n);
}

class MpiRequest final : public Request::Impl {
 public:
  std::vector<MPI_Request> reqs;
  void wait() override {
    MPI_Waitall(static_cast<int>(reqs.size()), reqs.data(), MPI_STATUSES_IGNORE);
    reqs.clear();
  }
  bool test() override {
    int done = 0;
    MPI_Testall(static_cast<int>(reqs.size()), reqs.data(), &done, MPI_STATUSES_IGNORE);
    if (done) reqs.clear();
    return done != 0;
  }
};

class MpiComm final : public Communicator {
 public:
  MpiComm() {
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "mpi"; }

  Request isend(const void* buf, std::size_t bytes, int dest, int tag) override {
    auto r = std::make_unique<MpiRequest>();
    const char* p = static_cast<const char*>(buf);
    do {
      const std::size_t n = std::min(bytes, kMaxChunk);
      r->reqs.emplace_back();
      MPI_Isend(p, static_cast<int>(n), MPI_BYTE, dest, tag, MPI_COMM_WORLD, &r->reqs.back());
      p += n;
      bytes -= n;
    } while (bytes > 0);
    return Request(std::move(r));
  }

  Request irecv(void* buf, std::size_t bytes, int src, int tag) override {
    auto r = std::make_unique<MpiRequest>();
    char* p = static_cast<char*>(buf);
    do {
      const std::size_t n = std::min(bytes, kMaxChunk);
      r->reqs.emplace_back();
      MPI_Irecv(p, static_cast<int>(n), MPI_BYTE, src, tag, MPI_COMM_WORLD, &r->reqs.back());
      p += n;
      bytes -= n;
    } while (bytes > 0);
    return Request(std::move(r));
  }

  void allreduce(double* data, std::size_t n, ReduceOp op) override {
    MPI_Allreduce(MPI_IN_PLACE, data, as_int(n, "allreduce"), MPI_DOUBLE, mpi_op(op),
                  MPI_COMM_WORLD);
  }
  void allreduce(int64_t* data, std::size_t n, ReduceOp op) override {
    MPI_Allreduce(MPI_IN_PLACE, data, as_int(n, "allreduce"), MPI_INT64_T, mpi_op(op),
                  MPI_COMM_WORLD);
  }
  void allgather(const void* in, std::size_t bytes, void* out) override {
    const int n = as_int(bytes, "allgather");
    MPI_Allgather(in, n, MPI_BYTE, out, n, MPI_BYTE, MPI_COMM_WORLD);
  }
  void allgatherv(const void* in, const std::vector<std::size_t>& counts, void* out) override {
    std::vector<int> c(counts.size()), displ(counts.size());
    std::size_t off = 0;
    for (std::size_t i = 0; i < counts.size(); ++i) {
      c[i] = as_int(counts[i], "allgatherv");
      displ[i] = as_int(off, "allgatherv");
      off += counts[i];
    }
    MPI_Allgatherv(in, c[static_cast<std::size_t>(rank_)], MPI_BYTE, out, c.data(), displ.data(),
                   MPI_BYTE, MPI_COMM_WORLD);
  }
  void alltoallv(const void* in, const std::vector<std::size_t>& send_counts, void* out,
                 const std::vector<std::size_t>& recv_counts) override {
    std::vector<int> sc(send_counts.size()), sd(send_counts.size()), rc(recv_counts.size()),
        rd(recv_counts.size());
    std::size_t so = 0, ro = 0;
    for (std::size_t i = 0; i < sc.size(); ++i) {
      sc[i] = as_int(send_counts[i], "alltoallv");
      sd[i] = as_int(so, "alltoallv");
      so += send_counts[i];
      rc[i] = as_int(recv_counts[i], "alltoallv");
      rd[i] = as_int(ro, "alltoallv");
      ro += recv_counts[i];
    }
    MPI_Alltoallv(in, sc.data(), sd.data(), MPI_BYTE, out, rc.data(), rd.data(), MPI_BYTE,
                  MPI_COMM_WORLD);
  }
  void barrier() override { MPI_Barrier(MPI_COMM_WORLD); }

  [[noreturn]] void abort(const std::string& message, int exit_code) override {
    std::fprintf(stderr, "ringattn: rank %d: error: %s\n", rank_, message.c_str());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, exit_code);
    std::_Exit(exit_code);
  }

 private:
  static MPI_Op mpi_op(ReduceOp op) {
    return op == ReduceOp::sum ? MPI_SUM : op == ReduceOp::max ? MPI_MAX : MPI_MIN;
  }
  int rank_ = 0, size_ = 1;
};

void finalize_at_exit() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

}  // namespace

bool mpi_built() {
  return true;
}

Communicator& mpi_world() {
  static std::once_flag once;
  std::call_once(once, [] {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (initialized) return;  // by the host program (mpi4py): it finalises MPI, and errors are its
    int provided = 0;
    MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_ARE_FATAL);
    std::atexit(finalize_at_exit);
  });
  static MpiComm comm;
  return comm;
}

namespace {
// This process's node communicator (MPI_COMM_TYPE_SHARED): its rank and size.
std::pair<int, int> node_rank_size() {
  mpi_world();
  static const std::pair<int, int> rs = [] {
    MPI_Comm node;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
    int r = 0, n = 1;
    MPI_Comm_rank(node, &r);
    MPI_Comm_size(node, &n);
    MPI_Comm_free(&node);
    return std::pair<int, int>{r, n};
  }();
  return rs;
}
}  // namespace

int mpi_local_rank() {
  return node_rank_size().first;
}

int mpi_local_size() {
  return node_rank_size().second;
}

#else  // built without MPI

bool mpi_built() {
  return false;
}

Communicator& mpi_world() {
  throw Error(
      "this ringattn was built without MPI (-DRINGATTN_MPI=OFF); rebuild with MPI or use "
      "--ranks-local P for in-process ranks");
}

int mpi_local_rank() {
  return 0;
}

int mpi_local_size() {
  return 1;
}

#endif

}  // namespace ringattn
