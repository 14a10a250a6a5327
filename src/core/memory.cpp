#include "ringattn/memory.hpp"

#include <fmt/format.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <new>

#include "ringattn/error.hpp"

namespace ringattn {
namespace {
std::atomic<std::size_t> g_in_use{0};
std::atomic<std::size_t> g_peak{0};
thread_local int64_t t_in_use = 0;
thread_local int64_t t_peak = 0;

void account(std::size_t add) {
  t_in_use += static_cast<int64_t>(add);
  t_peak = std::max(t_peak, t_in_use);
  const std::size_t now = g_in_use.fetch_add(add) + add;
  std::size_t peak = g_peak.load();
  while (now > peak && !g_peak.compare_exchange_weak(peak, now)) {
  }
}
void release(std::size_t n) {
  g_in_use.fetch_sub(n);
  t_in_use -= static_cast<int64_t>(n);
}
}  // namespace

Buffer::Buffer(std::size_t bytes, const char* what) {
  if (bytes == 0) return;
  const std::size_t rounded = (bytes + kBufferAlign - 1) / kBufferAlign * kBufferAlign;
  p_ = std::aligned_alloc(kBufferAlign, rounded);
  if (p_ == nullptr)
    throw Error(
        fmt::format("out of memory allocating {} for {}", format_bytes(double(bytes)), what));
  n_ = bytes;
  account(bytes);
}

Buffer::~Buffer() {
  if (p_ != nullptr) {
    std::free(p_);
    release(n_);
  }
}

Buffer::Buffer(Buffer&& o) noexcept : p_(o.p_), n_(o.n_) {
  o.p_ = nullptr;
  o.n_ = 0;
}

Buffer& Buffer::operator=(Buffer&& o) noexcept {
  if (this != &o) {
    if (p_ != nullptr) {
      std::free(p_);
      release(n_);
    }
    p_ = o.p_;
    n_ = o.n_;
    o.p_ = nullptr;
    o.n_ = 0;
  }
  return *this;
}

std::size_t memory_in_use() {
  return g_in_use.load();
}
std::size_t memory_peak() {
  return g_peak.load();
}
void memory_reset_peak() {
  g_peak.store(g_in_use.load());
}

std::size_t memory_in_use_thread() {
  return static_cast<std::size_t>(std::max<int64_t>(t_in_use, 0));
}
std::size_t memory_peak_thread() {
  return static_cast<std::size_t>(std::max<int64_t>(t_peak, 0));
}
void memory_reset_peak_thread() {
  t_peak = t_in_use;
}

std::size_t process_peak_rss() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<std::size_t>(ru.ru_maxrss) * 1024;
}

std::string format_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024.0 && u < 4) {
    bytes /= 1024.0;
    ++u;
  }
  return u == 0 ? fmt::format("{:.0f} {}", bytes, units[u])
                : fmt::format("{:.1f} {}", bytes, units[u]);
}

}  // namespace ringattn
