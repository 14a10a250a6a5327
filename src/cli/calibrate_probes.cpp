#include "cli/calibrate_probes.hpp"

#include <fmt/format.h>

#include <cstdio>

#include "cli/table.hpp"
#include "ringattn/kernel.hpp"
#include "ringattn/memory.hpp"
#include "ringattn/state.hpp"

namespace ringattn::cli {
namespace {

constexpr double kGiga = 1e9;
constexpr double kUs = 1e6;
constexpr int64_t kMessageStep = 8;             // sizes grow by this factor
constexpr int64_t kFitFrom = int64_t{1} << 20;  // bandwidth fit over messages >= 1 MiB
constexpr int64_t kLatencyProbeMax = 4096;      // latency: the fastest message up to this
constexpr int kSizingExchanges = 3;             // exchanges that size a link round
constexpr int kMaxRoundExchanges = 100000;
constexpr int64_t kMergeRows = 4096 * 8;  // state rows of the merge probe
constexpr int64_t kMergeDim = 128;
constexpr int kTagExchange = 7;

void spin_for(double seconds) {
  const Clock::time_point t0 = Clock::now();
  volatile double sink = 0;
  while (since(t0) < seconds) sink = sink + 1.0;
}

// One ring exchange of `bytes` (send to rank + 1, receive from rank - 1), with `busy`
// seconds of compute between posting and waiting; the slowest rank's time.
double exchange(Communicator& comm, std::vector<char>& out, std::vector<char>& in,
                std::size_t bytes, double busy) {
  const int np = comm.size(), r = comm.rank();
  comm.barrier();
  const Clock::time_point t0 = Clock::now();
  Request rq = comm.irecv(in.data(), bytes, (r - 1 + np) % np, kTagExchange);
  Request sq = comm.isend(out.data(), bytes, (r + 1) % np, kTagExchange);
  if (busy > 0) spin_for(busy);
  rq.wait();
  sq.wait();
  return comm.allreduce_one(since(t0), ReduceOp::max);
}

// Rounds of exchanges as time_rounds does it, every rank the same number of
// them: the counts come from the slowest rank's times, which all ranks share.
Timing exchange_rounds(Communicator& comm, std::vector<char>& out, std::vector<char>& in,
                       std::size_t bytes, double busy, int repeats, double min_seconds) {
  const auto mean = [&](int64_t n) {
    double t = 0;
    for (int64_t i = 0; i < n; ++i) t += exchange(comm, out, in, bytes, busy);
    return t / double(n);
  };
  const double once = std::max(mean(kSizingExchanges), 1e-7);
  const int64_t n = std::clamp<int64_t>(static_cast<int64_t>(std::ceil(min_seconds / once)), 1,
                                        kMaxRoundExchanges);
  double best = std::numeric_limits<double>::infinity(), worst = 0;
  for (int r = 0; r < repeats; ++r) {
    const double t = mean(n);
    best = std::min(best, t), worst = std::max(worst, t);
  }
  return {best, worst / best - 1.0};
}

}  // namespace

std::string cpu_model() {
  std::FILE* f = std::fopen("/proc/cpuinfo", "r");
  if (f == nullptr) return "CPU";
  char line[512];
  std::string model = "CPU";
  while (std::fgets(line, sizeof line, f) != nullptr) {
    std::string l = line;
    if (l.rfind("model name", 0) == 0) {
      model = l.substr(l.find(':') + 2);
      while (!model.empty() && (model.back() == '\n' || model.back() == ' ')) model.pop_back();
      break;
    }
  }
  std::fclose(f);
  return model;
}

// One kernel call's rounds; `stats` gets the call's tile counts.
Timing kernel_timing(const RandomProblem& prob, const KernelOptions& k, int repeats,
                     double min_seconds, KernelStats* stats) {
  const AttentionArgs a = prob.args();
  Outputs out(a);
  KernelStats st;
  const Timing t =
      time_rounds([&] { st = attention_forward(a, out.o.as<float>(), out.lse.as<float>(), k); },
                  repeats, min_seconds);
  if (stats != nullptr) *stats = st;
  return t;
}

// Bytes per second merge_states streams on one thread, and the rounds' spread.
Timing merge_bandwidth(int repeats, double min_seconds) {
  Buffer oa(kMergeRows * kMergeDim * sizeof(float), "merge probe"),
      ob(kMergeRows * kMergeDim * sizeof(float), "merge probe");
  Buffer la(kMergeRows * sizeof(float), "merge probe"),
      lb(kMergeRows * sizeof(float), "merge probe");
  const auto fill = [&] {
    for (int64_t i = 0; i < kMergeRows * kMergeDim; ++i)
      oa.as<float>()[i] = 0.5f, ob.as<float>()[i] = 0.25f;
    for (int64_t i = 0; i < kMergeRows; ++i)
      la.as<float>()[i] = 1.0f + float(i % 7), lb.as<float>()[i] = 2.0f - float(i % 5);
  };
  fill();
  const StateView a{oa.as<float>(), la.as<float>(), 1, kMergeRows, 1, kMergeDim};
  const StateView b{ob.as<float>(), lb.as<float>(), 1, kMergeRows, 1, kMergeDim};
  // Merging into a the same b again keeps a finite (the LSEs grow by at most log 2 a call).
  const Timing t = time_rounds([&] { merge_states(a, b); }, repeats, min_seconds);
  const double bytes = 3.0 * double(kMergeRows) * double(kMergeDim + 1) * sizeof(float);
  return {bytes / t.seconds, t.spread};
}

LinkProbe probe_link(Communicator& comm, int64_t max_message, int repeats, double round_seconds) {
  LinkProbe p;
  for (int64_t s = kMinMessage; s <= max_message; s *= kMessageStep) p.sizes.push_back(s);
  if (p.sizes.back() != max_message) p.sizes.push_back(max_message);
  std::vector<char> out(static_cast<std::size_t>(max_message), 1), in(out.size());
  for (const int64_t s : p.sizes) {
    const Timing t =
        exchange_rounds(comm, out, in, static_cast<std::size_t>(s), 0, repeats, round_seconds);
    p.seconds.push_back(t.seconds);
    p.spread = t.spread;  // the last, largest message's
  }
  // Least squares of t = lat + s / bw over the large messages; latency from the smallest.
  double n = 0, sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (std::size_t i = 0; i < p.sizes.size(); ++i) {
    if (p.sizes[i] < kFitFrom && i + 1 != p.sizes.size()) continue;
    const double x = double(p.sizes[i]), y = p.seconds[i];
    n += 1, sx += x, sy += y, sxx += x * x, sxy += x * y;
  }
  const double var = n * sxx - sx * sx;
  double slope = var > 0 ? (n * sxy - sx * sy) / var : 0;
  double lat = p.seconds.front();
  for (std::size_t i = 0; i < p.sizes.size(); ++i)
    if (p.sizes[i] <= kLatencyProbeMax) lat = std::min(lat, p.seconds[i]);
  if (!(slope > 0)) slope = (p.seconds.back() - lat) / double(p.sizes.back());
  if (!(slope > 0)) slope = p.seconds.back() / double(p.sizes.back());
  p.fit.present = true;
  p.fit.latency_s = lat;
  p.fit.bandwidth_bps = 1.0 / slope;
  // Overlap: the largest exchange while both ranks compute for as long as it takes alone.
  const double tx = p.seconds.back();
  const double both = exchange_rounds(comm, out, in, static_cast<std::size_t>(max_message), tx,
                                      repeats, round_seconds)
                          .seconds;
  p.overlap = std::clamp((tx + tx - both) / tx, 0.0, 1.0);
  p.fit.overlap = p.overlap;
  return p;
}

void print_link(const char* name, const LinkProbe& p) {
  fmt::print("link {}: latency {:.2f} us, bandwidth {:.2f} GB/s, overlap {:.2f} (spread {:.1f}%)\n",
             name, p.fit.latency_s * kUs, p.fit.bandwidth_bps / kGiga, p.overlap, p.spread * 100);
  const Table t({{"bytes", 10}, {"time_us", 10}, {"GB/s", 8}});
  fmt::print("{}", t.header());
  for (std::size_t i = 0; i < p.sizes.size(); ++i)
    fmt::print("{}", t.row({fmt::format("{}", p.sizes[i]), cell_fixed(p.seconds[i] * kUs, 1),
                            cell_fixed(double(p.sizes[i]) / p.seconds[i] / kGiga, 2)}));
}

std::string link_comment(const char* name, const LinkProbe& p) {
  std::string s = fmt::format("{} ring exchange (bytes: us):", name);
  for (std::size_t i = 0; i < p.sizes.size(); ++i)
    s += fmt::format(" {}: {:.1f}", p.sizes[i], p.seconds[i] * kUs);
  return s;
}

}  // namespace ringattn::cli
