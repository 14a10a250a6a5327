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
constexpr std::size_t kMaxLine = 160;  // the handler's stderr line, newline included

enum SlotState : int { kFree = 0, kClaimed = 1, kLive = 2 };

struct Slot {
  std::atomic<int> state{kFree};
  char path[kMaxPath] = {};
};

Slot g_slots[kMaxTemps];
static_assert(std::atomic<int>::is_always_lock_free, "the signal handler needs lock-free atomics");

// The handler's one stderr line, assembled from pieces formatted before any signal can need
// them (it only copies bytes and calls write(2)):
//   "ringattn: " ["rank R: "] "ended by SIGTERM (signal 15)" [what it means for the outputs]
// The rank is named once set_signal_context ran (one MPI rank per process); in-process ranks
// share one process and name none.
constexpr const char* kTempsRemoved = "; temporary outputs removed";
constexpr const char* kAfterCompletion = "; the job had completed and written its outputs";

struct SignalName {
  int sig;
  const char* text;  // "ended by ..."
};
constexpr SignalName kSignals[] = {{SIGTERM, "ended by SIGTERM (signal 15)"},
                                   {SIGINT, "ended by SIGINT (signal 2)"},
                                   {SIGHUP, "ended by SIGHUP (signal 1)"}};
static_assert(SIGTERM == 15 && SIGINT == 2 && SIGHUP == 1, "the texts above name the numbers");

enum ContextState : int { kNoRank = 0, kWriting = 1, kRankReady = 2 };
std::atomic<int> g_context{kNoRank};
char g_rank_prefix[kMaxLine] = {};  // "ringattn: rank R: ", published by g_context
std::atomic<bool> g_job_completed{false};

// Appends the terminated string `text` to line[*n], truncating at kMaxLine - 1.
void append(char* line, std::size_t* n, const char* text) {
  for (; *text != '\0' && *n + 1 < kMaxLine; ++text) line[(*n)++] = *text;
}

void write_all(const char* p, std::size_t left) {
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
  const int removed = remove_registered_temps();
  char line[kMaxLine];
  std::size_t n = 0;
  append(line, &n,
         g_context.load(std::memory_order_acquire) == kRankReady ? g_rank_prefix : "ringattn: ");
  for (const SignalName& s : kSignals)
    if (s.sig == sig) append(line, &n, s.text);
  if (removed > 0) append(line, &n, kTempsRemoved);
  if (g_job_completed.load(std::memory_order_acquire)) append(line, &n, kAfterCompletion);
  line[n++] = '\n';
  write_all(line, n);  // one write: lines of several ranks do not interleave
  errno = saved_errno;
  _exit(kSignalExitBase + sig);
}

}  // namespace

int remove_registered_temps() {
  int removed = 0;
  for (Slot& s : g_slots)
    if (s.state.load(std::memory_order_acquire) == kLive && ::unlink(s.path) == 0) ++removed;
  return removed;
}

void set_signal_context(int rank) {
  // The first caller wins: later calls (or a second thread) keep the published prefix.
  int expected = kNoRank;
  if (!g_context.compare_exchange_strong(expected, kWriting)) return;
  const std::string prefix = fmt::format("ringattn: rank {}: ", rank);
  const std::size_t n = std::min(prefix.size(), kMaxLine / 2);
  std::memcpy(g_rank_prefix, prefix.data(), n);
  g_rank_prefix[n] = '\0';
  g_context.store(kRankReady, std::memory_order_release);
}

void mark_job_completed() {
  g_job_completed.store(true, std::memory_order_release);
}

namespace {
std::atomic<bool> g_host_signals{false};
}  // namespace

void leave_signals_to_host() {
  g_host_signals.store(true);
}

void install_temp_cleanup_handlers() {
  if (g_host_signals.load()) return;
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
