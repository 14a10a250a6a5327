// libFuzzer target: the .npy reader (ringattn/npy.hpp) on arbitrary file contents.
//
// Each input is the whole file. It lives in a memfd opened through /proc/self/fd/N, so the
// reader takes its real path (open, fstat, pread) without touching the disk. Every entry point
// runs on it: read_npy_ints (document offsets), read_npy_header, read_npy (then check_finite),
// and read_npy_slice along each axis
// (half the rows, all of them, none) plus out-of-range requests. ringattn::Error is the expected
// rejection of a bad file; anything else (a crash, a sanitizer report, another exception type,
// a leak) is a finding. scripts/fuzz.sh runs it on the seed corpus in tests/fuzz/corpus/npy.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "ringattn/error.hpp"
#include "ringattn/npy.hpp"

namespace {

// Axes sliced besides the last (see below).
constexpr int kMaxAxes = 8;

// The file every input is written to, created once per process.
struct MemFile {
  int fd = -1;
  std::string path;
  MemFile() {
    fd = ::memfd_create("fuzz.npy", MFD_CLOEXEC);
    if (fd < 0) {
      std::perror("fuzz_npy: memfd_create");
      std::abort();
    }
    path = "/proc/self/fd/" + std::to_string(fd);
  }
  void set(const uint8_t* data, std::size_t size) const {
    if (::ftruncate(fd, 0) != 0) std::abort();
    std::size_t done = 0;
    while (done < size) {
      const ssize_t w = ::pwrite(fd, data + done, size - done, static_cast<off_t>(done));
      if (w <= 0) std::abort();
      done += static_cast<std::size_t>(w);
    }
  }
};

// A broken promise of the reader (not a sanitizer report): says which, then aborts.
void check(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "fuzz_npy: %s\n", what);
  std::abort();
}

// A call that may reject the file with ringattn::Error; anything else escapes to libFuzzer.
template <class F>
void expect_ok_or_error(F&& f) {
  try {
    f();
  } catch (const ringattn::Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  static const MemFile file;
  file.set(data, size);
  const std::string& path = file.path;

  // Index files (document offsets): any bytes are read or rejected with an Error.
  expect_ok_or_error([&] {
    const std::vector<int64_t> v = ringattn::read_npy_ints(path);
    check(v.size() <= size, "read_npy_ints returned more values than the file has bytes");
  });

  ringattn::NpyHeader header;
  try {
    header = ringattn::read_npy_header(path);
  } catch (const ringattn::Error&) {
    return 0;  // rejected: read_npy must reject it too
  }
  expect_ok_or_error([&] {
    const ringattn::Tensor t = ringattn::read_npy(path);
    check(t.shape == header.shape && t.dtype == header.dtype, "read_npy disagrees with the header");
    ringattn::check_finite(t, "fuzz");
  });
  // Slices along the first axes and the last (a header may declare thousands of axes: each slice
  // re-reads it), plus the out-of-range axes -1 and ndim; rows in range and out of it, up to
  // the largest int64 (a caller's bad request must be an Error too).
  const int ndim = static_cast<int>(header.shape.size());
  std::vector<int> axes = {-1, ndim};
  for (int a = 0; a < ndim && a < kMaxAxes; ++a) axes.push_back(a);
  if (ndim > kMaxAxes) axes.push_back(ndim - 1);
  for (const int axis : axes) {
    const bool valid = axis >= 0 && axis < ndim;
    const int64_t n = valid ? header.shape[static_cast<std::size_t>(axis)] : 1;
    const int64_t half = n / 2;
    constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
    const int64_t past = n < kMax ? n + 1 : n;
    const int64_t requests[][2] = {{half, n - half}, {0, n},    {n, 0},   {0, past},
                                   {-1, 1},          {1, kMax}, {kMax, 1}};
    for (const auto& request : requests) {
      const int64_t row0 = request[0], rows = request[1];
      expect_ok_or_error([&] {
        const ringattn::Tensor t = ringattn::read_npy_slice(path, axis, row0, rows);
        const bool in_range = valid && row0 >= 0 && rows >= 0 && row0 <= n && rows <= n - row0;
        check(in_range && t.shape.size() == header.shape.size() &&
                  t.shape[static_cast<std::size_t>(axis)] == rows && t.dtype == header.dtype,
              "read_npy_slice returned the wrong shape (or accepted a bad request)");
      });
    }
  }
  return 0;
}
