#include "ringattn/tempfiles.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstring>
#include <mutex>

#include "ringattn/error.hpp"

namespace ringattn {
namespace {

// A process has at most a handful of outputs (O, LSE) open at once.
constexpr int kMaxTemps = 8;
constexpr std::size_t kMaxPath = 4096;  // PATH_MAX on Linux, terminator included
// Exit status of a process ended by signal `sig`, as shells report it.
constexpr int kSignalExitBase = 128;

enum SlotState : int { kFree = 0, kClaimed = 1, kLive = 2 };

struct Slot {
  std::atomic<int> state{kFree};
  char path[kMaxPath] = {};
};

Slot g_slots[kMaxTemps];
static_assert(std::atomic<int>::is_always_lock_free, "the signal handler needs lock-free atomics");

extern "C" void on_fatal_signal(int sig) {
  remove_registered_temps();
  _exit(kSignalExitBase + sig);
}

}  // namespace

void remove_registered_temps() {
  for (Slot& s : g_slots)
    if (s.state.load(std::memory_order_acquire) == kLive) ::unlink(s.path);
}

void install_temp_cleanup_handlers() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa {};
    sa.sa_handler = on_fatal_signal;
    sigemptyset(&sa.sa_mask);
    for (const int sig : {SIGTERM, SIGINT, SIGHUP}) sigaction(sig, &sa, nullptr);
  });
}

TempFileGuard::TempFileGuard(const std::string& path) {
  if (path.size() >= kMaxPath)
    throw Error(fmt::format("temporary file name too long ({} bytes): {}", path.size(), path));
  for (int i = 0; i < kMaxTemps; ++i) {
    int expected = kFree;
    if (!g_slots[i].state.compare_exchange_strong(expected, kClaimed)) continue;
    std::memcpy(g_slots[i].path, path.c_str(), path.size() + 1);
    g_slots[i].state.store(kLive, std::memory_order_release);
    slot_ = i;
    return;
  }
  throw Error(fmt::format("more than {} temporary output files open at once", kMaxTemps));
}

TempFileGuard::~TempFileGuard() {
  release();
}

void TempFileGuard::release() {
  if (slot_ < 0) return;
  g_slots[slot_].state.store(kFree, std::memory_order_release);
  slot_ = -1;
}

}  // namespace ringattn
