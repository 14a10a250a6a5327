#include "ringattn/tempfiles.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
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
constexpr std::size_t kMaxLine = 128;  // "ringattn: rank R: ended by ... removed\n"

enum SlotState : int { kFree = 0, kClaimed = 1, kLive = 2 };

struct Slot {
  std::atomic<int> state{kFree};
  char path[kMaxPath] = {};
};

Slot g_slots[kMaxTemps];
static_assert(std::atomic<int>::is_always_lock_free, "the signal handler needs lock-free atomics");

// The line the handler writes, one per handled signal, formatted before any signal can need
// it: the handler only calls write(2). Without a rank (before set_signal_context, or in-process
// ranks sharing one process) the line names no rank.
struct SignalLine {
  int sig;
  const char* name;
  char with_rank[kMaxLine];
  char without_rank[kMaxLine];
};

SignalLine g_lines[] = {
    {SIGTERM, "SIGTERM", {}, {}}, {SIGINT, "SIGINT", {}, {}}, {SIGHUP, "SIGHUP", {}, {}}};

enum ContextState : int { kNoRank = 0, kWriting = 1, kRankReady = 2 };
std::atomic<int> g_context{kNoRank};

void format_line(char (&buf)[kMaxLine], const std::string& who, const SignalLine& l) {
  const std::string line = fmt::format(
      "ringattn: {}ended by {} (signal {}); temporary outputs removed\n", who, l.name, l.sig);
  const std::size_t n = std::min(line.size(), kMaxLine - 1);
  std::memcpy(buf, line.data(), n);
  buf[n] = '\0';
}

void write_all(const char* p) {
  std::size_t left = std::strlen(p);  // async-signal-safe
  while (left > 0) {
    const ssize_t r = ::write(STDERR_FILENO, p, left);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return;
    p += r;
    left -= static_cast<std::size_t>(r);
  }
}

extern "C" void on_fatal_signal(int sig) {
  const int saved_errno = errno;
  remove_registered_temps();
  const bool ranked = g_context.load(std::memory_order_acquire) == kRankReady;
  for (const SignalLine& l : g_lines)
    if (l.sig == sig) write_all(ranked ? l.with_rank : l.without_rank);
  errno = saved_errno;
  _exit(kSignalExitBase + sig);
}

}  // namespace

void remove_registered_temps() {
  for (Slot& s : g_slots)
    if (s.state.load(std::memory_order_acquire) == kLive) ::unlink(s.path);
}

void set_signal_context(int rank) {
  // The first caller wins: later calls (or a second thread) keep the published lines.
  int expected = kNoRank;
  if (!g_context.compare_exchange_strong(expected, kWriting)) return;
  for (SignalLine& l : g_lines) format_line(l.with_rank, fmt::format("rank {}: ", rank), l);
  g_context.store(kRankReady, std::memory_order_release);
}

void install_temp_cleanup_handlers() {
  static std::once_flag once;
  std::call_once(once, [] {
    for (SignalLine& l : g_lines) format_line(l.without_rank, "", l);
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
