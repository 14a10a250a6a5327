#include "ringattn/npy_out.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>

#include "ringattn/error.hpp"
#include "ringattn/memory.hpp"

namespace ringattn {
namespace {

// Strided elements at least this large are written with one pwrite each; smaller ones by
// read-modify-write of windows of at most kRmwWindowBytes.
constexpr std::size_t kDirectWriteMinBytes = 512;
constexpr std::size_t kRmwWindowBytes = std::size_t{1} << 20;

AtomicFile open_atomic(const std::string& path, const std::string& field) {
  try {
    return AtomicFile(path);
  } catch (const Error& e) {
    throw FieldError(field, e.what());
  }
}

std::size_t elements(const std::vector<int64_t>& shape) {
  std::size_t n = 1;
  for (const int64_t s : shape) n *= static_cast<std::size_t>(s);
  return n;
}

}  // namespace

NpyOutFile::NpyOutFile(const std::string& path, DType dtype, std::vector<int64_t> shape,
                       const std::string& field)
    : field_(field), dtype_(dtype), file_(open_atomic(path, field)), guard_(file_.temp_path()) {
  open_data(path, npy_header_bytes(dtype, shape), elements(shape) * dtype_size(dtype));
}

NpyOutFile::NpyOutFile(const std::string& path, NpyElem elem, std::vector<int64_t> shape,
                       const std::string& field)
    : field_(field), file_(open_atomic(path, field)), guard_(file_.temp_path()) {
  const bool u8 = elem == NpyElem::u8;
  open_data(path, npy_header_bytes(u8 ? "|u1" : "<i4", shape),
            elements(shape) * (u8 ? sizeof(uint8_t) : sizeof(int32_t)));
}

void NpyOutFile::open_data(const std::string& path, const std::string& head,
                           std::size_t data_bytes) {
  file_.write(head.data(), head.size());
  data_offset_ = head.size();
  data_bytes_ = data_bytes;
  fd_ = ::open(file_.temp_path().c_str(), O_RDWR | O_CLOEXEC);
  if (fd_ < 0 || ::ftruncate(fd_, static_cast<off_t>(data_offset_ + data_bytes_)) != 0)
    throw FieldError(field_,
                     fmt::format("cannot write output file '{}': {}", path, std::strerror(errno)));
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
      throw FieldError(field_, fmt::format("cannot write output file '{}': {}", file_.path(),
                                           std::strerror(errno)));
    p += w, offset += static_cast<std::size_t>(w), bytes -= static_cast<std::size_t>(w);
  }
}

void NpyOutFile::pread_at(std::size_t offset, void* data, std::size_t bytes) {
  char* p = static_cast<char*>(data);
  while (bytes > 0) {
    const ssize_t r = ::pread(fd_, p, bytes, static_cast<off_t>(offset));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0)
      throw FieldError(field_, fmt::format("cannot read back output file '{}': {}", file_.path(),
                                           r < 0 ? std::strerror(errno) : "short read"));
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
    throw FieldError(field_, fmt::format("cannot write output file '{}': {}", file_.path(),
                                         std::strerror(errno)));
  file_.commit();
  guard_.release();
}

void check_output_writable(const std::string& path, const std::string& field) {
  const AtomicFile probe = open_atomic(path, field);
  TempFileGuard guard(probe.temp_path());
  ::unlink(probe.temp_path().c_str());  // then forgotten; the destructor's unlink finds nothing
  guard.release();
}

}  // namespace ringattn
