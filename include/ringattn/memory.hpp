// Aligned, accounted buffers.
//
// Every large allocation of ringattn (tensors, packed K/V, workspaces) goes
// through Buffer, so the process can report the bytes it holds and their
// high-water mark exactly (peak memory in benchmark tables), independent of
// the allocator. Allocation failure throws Error with the requested size.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace ringattn {

inline constexpr std::size_t kBufferAlign = 64;

class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(std::size_t bytes, const char* what = "buffer");
  ~Buffer();
  Buffer(Buffer&& o) noexcept;
  Buffer& operator=(Buffer&& o) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  void* data() { return p_; }
  const void* data() const { return p_; }
  template <class T>
  T* as() {
    return static_cast<T*>(p_);
  }
  template <class T>
  const T* as() const {
    return static_cast<const T*>(p_);
  }
  std::size_t size() const { return n_; }

 private:
  void* p_ = nullptr;
  std::size_t n_ = 0;
};

// Bytes currently held in Buffers, and the peak since the last reset.
std::size_t memory_in_use();
std::size_t memory_peak();
void memory_reset_peak();  // peak := current
// The same, counting only Buffers allocated by the calling thread: per-rank
// figures for in-process ranks (one thread each) and MPI ranks alike. A Buffer
// freed on another thread than it was allocated on is credited to that thread.
std::size_t memory_in_use_thread();
std::size_t memory_peak_thread();
void memory_reset_peak_thread();
// Process resident-set high-water mark (getrusage), bytes.
std::size_t process_peak_rss();
// "12.0 MiB" style.
std::string format_bytes(double bytes);

}  // namespace ringattn
