// The probes of `ringattn calibrate` (cmd_calibrate.cpp): timed rounds of a
// kernel call, of the state merge and of the ring's exchange over a link.
// Each probe runs `repeats` rounds of at least `min_seconds`; the best round
// is its figure and (slowest - fastest) / fastest its spread.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "cli/harness.hpp"
#include "ringattn/comm.hpp"
#include "ringattn/hardware.hpp"
#include "ringattn/kernel.hpp"

namespace ringattn::cli {

inline constexpr int64_t kMinMessage = 8;  // bytes: the latency probe, the smallest message

using Clock = std::chrono::steady_clock;
inline double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Seconds per call of `f`: one call to warm up, then `repeats` rounds of k
// calls each, k making a round last at least `min_seconds`; the best round and
// the rounds' spread, (slowest - fastest) / fastest.
struct Timing {
  double seconds = 0, spread = 0;
};
template <class F>
inline Timing time_rounds(F&& f, int repeats, double min_seconds) {
  Clock::time_point t0 = Clock::now();
  f();
  const double once = std::max(since(t0), 1e-7);
  const int64_t k =
      std::clamp<int64_t>(static_cast<int64_t>(std::ceil(min_seconds / once)), 1, int64_t{1} << 30);
  double best = std::numeric_limits<double>::infinity(), worst = 0;
  for (int r = 0; r < repeats; ++r) {
    t0 = Clock::now();
    for (int64_t i = 0; i < k; ++i) f();
    const double t = since(t0) / double(k);
    best = std::min(best, t), worst = std::max(worst, t);
  }
  return {best, worst / best - 1.0};
}

// One kernel call's rounds (threads and ISA from `k`); `stats` gets the call's tile counts.
Timing kernel_timing(const RandomProblem& prob, const KernelOptions& k, int repeats,
                     double min_seconds, KernelStats* stats = nullptr);

// Bytes per second merge_states streams on one thread, and the rounds' spread.
Timing merge_bandwidth(int repeats, double min_seconds);

struct LinkProbe {
  std::vector<int64_t> sizes;
  std::vector<double> seconds;  // per size: the best round's mean exchange (slowest rank)
  double overlap = 0;
  double spread = 0;  // of the largest message's rounds
  LinkSpec fit;
};

// The ring's exchange over `comm` for messages of 8 B up to max_message (x8 each),
// every rank the same rounds of `round_seconds`: latency, bandwidth, overlap.
LinkProbe probe_link(Communicator& comm, int64_t max_message, int repeats, double round_seconds);
void print_link(const char* name, const LinkProbe& p);
std::string link_comment(const char* name, const LinkProbe& p);  // the profile's header line

// The CPU's model name from /proc/cpuinfo ("CPU" when it says none).
std::string cpu_model();

}  // namespace ringattn::cli
