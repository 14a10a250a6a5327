#include "cli/run_output.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <thread>

#include "ringattn/error.hpp"
#include "ringattn/memory.hpp"

namespace ringattn::cli {
namespace {

// Strided elements at least this large are written with one pwrite each; smaller ones by
// read-modify-write of windows of at most kRmwWindowBytes.
constexpr std::size_t kDirectWriteMinBytes = 512;
constexpr std::size_t kRmwWindowBytes = std::size_t{1} << 20;

// Tags of the gather messages; the ring's own tags are 1 .. P - 1 and all consumed by then.
constexpr int kTagGo = 32760;
constexpr int kTagO = 32761;
constexpr int kTagLse = 32762;
// How often a rank waiting for its turn checks for it. Sleeping instead of blocking keeps
// MPI's busy-polling off the cores while rank 0 runs --verify's single-rank kernel (T1).
constexpr auto kIdlePoll = std::chrono::milliseconds(1);

void wait_idle(Request& r) {
  while (!r.test()) std::this_thread::sleep_for(kIdlePoll);
}

AtomicFile open_atomic(const std::string& path, const std::string& option) {
  try {
    return AtomicFile(path);
  } catch (const Error& e) {
    throw Error(fmt::format("option '--{}': {}", option, e.what()));
  }
}

std::size_t elements(const std::vector<int64_t>& shape) {
  std::size_t n = 1;
  for (const int64_t s : shape) n *= static_cast<std::size_t>(s);
  return n;
}

}  // namespace

NpyOutFile::NpyOutFile(const std::string& path, DType dtype, std::vector<int64_t> shape,
                       const std::string& option)
    : option_(option), dtype_(dtype), file_(open_atomic(path, option)), guard_(file_.temp_path()) {
  const std::string head = npy_header_bytes(dtype, shape);
  file_.write(head.data(), head.size());
  data_offset_ = head.size();
  data_bytes_ = elements(shape) * dtype_size(dtype);
  fd_ = ::open(file_.temp_path().c_str(), O_RDWR | O_CLOEXEC);
  if (fd_ < 0 || ::ftruncate(fd_, static_cast<off_t>(data_offset_ + data_bytes_)) != 0)
    throw Error(fmt::format("option '--{}': cannot write output file '{}': {}", option_, path,
                            std::strerror(errno)));
}

NpyOutFile::~NpyOutFile() {
  if (fd_ >= 0) {  // not committed: remove the temporary before forgetting it
    ::close(fd_);
    ::unlink(file_.temp_path().c_str());
  }
}

void NpyOutFile::pwrite_at(std::size_t offset, const void* data, std::size_t bytes) {
  const char* p = static_cast<const char*>(data);
  while (bytes > 0) {
    const ssize_t w = ::pwrite(fd_, p, bytes, static_cast<off_t>(offset));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0)
      throw Error(fmt::format("option '--{}': cannot write output file '{}': {}", option_,
                              file_.path(), std::strerror(errno)));
    p += w, offset += static_cast<std::size_t>(w), bytes -= static_cast<std::size_t>(w);
  }
}

void NpyOutFile::pread_at(std::size_t offset, void* data, std::size_t bytes) {
  char* p = static_cast<char*>(data);
  while (bytes > 0) {
    const ssize_t r = ::pread(fd_, p, bytes, static_cast<off_t>(offset));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0)
      throw Error(fmt::format("option '--{}': cannot read back output file '{}': {}", option_,
                              file_.path(), r < 0 ? std::strerror(errno) : "short read"));
    p += r, offset += static_cast<std::size_t>(r), bytes -= static_cast<std::size_t>(r);
  }
}

void NpyOutFile::write_strided(std::size_t first, std::size_t stride, std::size_t elem,
                               int64_t count, const void* data) {
  if (count <= 0) return;
  const auto n = static_cast<std::size_t>(count);
  if (first + (n - 1) * stride + elem > data_bytes_ || elem > stride)
    throw std::logic_error("NpyOutFile::write_strided: out of the array's bounds");
  const char* src = static_cast<const char*>(data);
  if (stride == elem) {
    pwrite_at(data_offset_ + first, src, n * elem);
  } else if (elem >= kDirectWriteMinBytes) {
    for (std::size_t i = 0; i < n; ++i)
      pwrite_at(data_offset_ + first + i * stride, src + i * elem, elem);
  } else {
    const std::size_t per_window = std::max<std::size_t>(1, kRmwWindowBytes / stride);
    Buffer window((std::min(per_window, n) - 1) * stride + elem, "output window");
    char* w = window.as<char>();
    for (std::size_t i0 = 0; i0 < n; i0 += per_window) {
      const std::size_t m = std::min(per_window, n - i0);
      const std::size_t span = (m - 1) * stride + elem;
      const std::size_t off = data_offset_ + first + i0 * stride;
      pread_at(off, w, span);
      for (std::size_t j = 0; j < m; ++j) std::memcpy(w + j * stride, src + (i0 + j) * elem, elem);
      pwrite_at(off, w, span);
    }
  }
}

void NpyOutFile::commit() {
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0)
    throw Error(fmt::format("option '--{}': cannot write output file '{}': {}", option_,
                            file_.path(), std::strerror(errno)));
  file_.commit();
  guard_.release();
}

void RunOutputs::check_writable(const RunConfig& cfg) {
  const std::pair<const std::string*, const char*> outs[] = {{&cfg.out_path, "out"},
                                                             {&cfg.lse_path, "lse-out"}};
  for (const auto& [path, option] : outs) {
    if (path->empty()) continue;
    const AtomicFile probe = open_atomic(*path, option);
    TempFileGuard guard(probe.temp_path());
    ::unlink(probe.temp_path().c_str());  // then forgotten; the destructor's unlink finds nothing
    guard.release();
  }
}

RunOutputs::RunOutputs(const RunConfig& cfg) : cfg_(cfg) {
  const bool b = cfg.batched_output();
  if (!cfg.out_path.empty()) {
    std::vector<int64_t> shape = {cfg.nq, cfg.hq, cfg.head_dim};
    if (b) shape.insert(shape.begin(), cfg.batch);
    o_.emplace(cfg.out_path, cfg.dtype, std::move(shape), "out");
  }
  if (!cfg.lse_path.empty()) {
    std::vector<int64_t> shape = {cfg.hq, cfg.nq};
    if (b) shape.insert(shape.begin(), cfg.batch);
    lse_.emplace(cfg.lse_path, DType::f32, std::move(shape), "lse-out");
  }
}

void RunOutputs::write_rank(const Layout& ql, int rank, const float* o, const float* lse) {
  const int64_t n = ql.tokens(rank), row = cfg_.hq * cfg_.head_dim;
  if (o_) {
    const DType dt = o_->dtype();
    const std::size_t esz = dtype_size(dt), row_bytes = static_cast<std::size_t>(row) * esz;
    int64_t max_seg = 0;
    for (const Segment& s : ql.segments(rank)) max_seg = std::max(max_seg, s.count);
    Buffer stage(dt == DType::f32 ? 0 : static_cast<std::size_t>(max_seg) * row_bytes,
                 "output rows");
    for (int64_t b = 0; b < cfg_.batch; ++b)
      for (const Segment& s : ql.segments(rank)) {
        const float* src = o + (b * n + s.local_offset) * row;
        const void* data = src;
        if (dt != DType::f32) {
          for (int64_t i = 0; i < s.count * row; ++i)
            store_from_f32(stage.data(), dt, static_cast<std::size_t>(i), src[i]);
          data = stage.data();
        }
        o_->write_strided(static_cast<std::size_t>(b * cfg_.nq + s.start) * row_bytes,
                          static_cast<std::size_t>(s.stride) * row_bytes, row_bytes, s.count, data);
      }
  }
  if (lse_) {
    for (int64_t b = 0; b < cfg_.batch; ++b)
      for (int64_t h = 0; h < cfg_.hq; ++h)
        for (const Segment& s : ql.segments(rank))
          lse_->write_strided(
              static_cast<std::size_t>((b * cfg_.hq + h) * cfg_.nq + s.start) * sizeof(float),
              static_cast<std::size_t>(s.stride) * sizeof(float), sizeof(float), s.count,
              lse + (b * cfg_.hq + h) * n + s.local_offset);
  }
}

void RunOutputs::commit() {
  if (o_) o_->commit();
  if (lse_) lse_->commit();
}

void gather_rows(Communicator& comm, const Layout& ql, int64_t batch, int64_t hq, int64_t head_dim,
                 const float* o, const float* lse, const RowSink& sink) {
  const auto o_bytes = [&](int r) {
    return static_cast<std::size_t>(batch * ql.tokens(r) * hq * head_dim) * sizeof(float);
  };
  const auto lse_bytes = [&](int r) {
    return static_cast<std::size_t>(batch * hq * ql.tokens(r)) * sizeof(float);
  };
  if (comm.rank() != 0) {
    char go = 0;
    Request turn = comm.irecv(&go, 1, 0, kTagGo);
    wait_idle(turn);
    Request so = comm.isend(o, o_bytes(comm.rank()), 0, kTagO);
    Request sl = comm.isend(lse, lse_bytes(comm.rank()), 0, kTagLse);
    so.wait();
    sl.wait();
    return;
  }
  sink(0, o, lse);
  for (int r = 1; r < comm.size(); ++r) {
    Buffer ro(o_bytes(r), "gathered O"), rl(lse_bytes(r), "gathered LSE");
    Request qo = comm.irecv(ro.data(), o_bytes(r), r, kTagO);
    Request ql_req = comm.irecv(rl.data(), lse_bytes(r), r, kTagLse);
    const char go = 1;
    comm.isend(&go, 1, r, kTagGo).wait();
    qo.wait();
    ql_req.wait();
    sink(r, ro.as<float>(), rl.as<float>());
  }
}

}  // namespace ringattn::cli
