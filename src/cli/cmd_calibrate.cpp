// ringattn calibrate: measures this machine and writes a hardware profile
// (ringattn/hardware.hpp) that `ringattn plan` reads.
//
//   ringattn calibrate --out configs/hardware/cpu-2core.ini               (kernel, in-process link)
//   mpirun -np 2 ringattn calibrate --out configs/hardware/cpu-2core.ini  (also the MPI link)
//
// What it measures, each as the best of --repeats:
//   kernel      attention_forward with one thread (a cpu "device" is a core) for every
//               --dtypes x --head-dims, on --probe-tokens x --probe-heads, full mask:
//               GFLOP/s = 4 Hq D N^2 / time; then all cores once: parallel efficiency
//   merge       merge_states (the ring's merge) over a float32 state, one thread:
//               bytes streamed (read O twice, write once) / time
//   links       the ring's exchange: every rank isends --message bytes to rank + 1 and
//               irecvs from rank - 1, both waited; latency = the fastest message <= 4 KiB,
//               bandwidth = 1 / slope of time over the messages >= 1 MiB; overlap = how much
//               of a large exchange completes while both ranks are busy computing
//               (in-process: 2 threads of this process; MPI: every rank of the job)
// Under MPI, rank 0 measures the kernel and in-process link while the other ranks sleep,
// then every rank measures the MPI link; rank 0 writes the profile (atomically).
#include <fmt/format.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>
#include <limits>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "cli/commands.hpp"
#include "cli/harness.hpp"
#include "cli/metrics.hpp"
#include "cli/options.hpp"
#include "cli/problem_options.hpp"
#include "cli/table.hpp"
#include "ringattn/comm.hpp"
#include "ringattn/comm_mpi.hpp"
#include "ringattn/error.hpp"
#include "ringattn/hardware.hpp"
#include "ringattn/memory.hpp"
#include "ringattn/npy.hpp"  // AtomicFile
#include "ringattn/state.hpp"

namespace ringattn::cli {
namespace {

constexpr double kGiga = 1e9;
constexpr double kMs = 1e3;
constexpr double kUs = 1e6;
constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
constexpr int64_t kMinMessage = 8;                   // bytes: the latency probe
constexpr int64_t kMessageStep = 8;                  // sizes grow by this factor
constexpr int64_t kFitFrom = int64_t{1} << 20;       // bandwidth fit over messages >= 1 MiB
constexpr int64_t kLatencyProbeMax = 4096;           // latency: the fastest message up to this
constexpr int kSmallMessageIters = 100;              // exchanges per small message (best of)
constexpr int64_t kSmallMessage = int64_t{1} << 16;  // up to here, kSmallMessageIters
constexpr int64_t kMergeRows = 4096 * 8;             // state rows of the merge probe
constexpr int64_t kMergeDim = 128;
constexpr int64_t kProbeHeadDim = 128;  // the all-cores probe's preferred head dim
constexpr int kTagExchange = 7, kTagGo = 8;
constexpr double kBusyLoad = 0.5;  // load average above which calibrate warns
constexpr auto kIdlePoll = std::chrono::milliseconds(20);

CommandSpec calibrate_spec() {
  CommandSpec s;
  s.name = "calibrate";
  s.summary =
      "Measures this machine (kernel rate per dtype and head dim on one core, the merge's memory\n"
      "bandwidth, the in-process and -- under mpirun with >= 2 ranks -- the MPI link's latency,\n"
      "bandwidth and overlap) and writes a hardware profile that `ringattn plan --hardware FILE`\n"
      "reads. The default run takes about 10-20 s.";
  s.usage = "--out FILE [options]   (or: mpirun -np 2 ringattn calibrate --out FILE)";
  s.options = {
      OptionSpec::text("out", "", "write the profile here (.ini), atomically")
          .as_required()
          .as_output(),
      OptionSpec::text("name", "", "profile name", "NAME").shown_default("cpu-<cores>core"),
      OptionSpec::text("description", "", "one line describing the machine", "TEXT")
          .shown_default("the CPU model"),
      OptionSpec::choice("dtypes", "float32,float16,bfloat16",
                         {"float32", "float16", "bfloat16", "f32", "f16", "bf16"},
                         "kernel dtypes to measure")
          .as_list(),
      OptionSpec::integer("head-dims", "32,64,128,256", "kernel head dims to measure").as_list(),
      OptionSpec::integer("probe-tokens", "2048", "tokens of the kernel probe (queries = keys)",
                          "tokens")
          .positive(),
      OptionSpec::integer("probe-heads", "2", "heads of the kernel probe", "heads").positive(),
      OptionSpec::integer("max-message", "16777216",
                          "largest link probe message (in-process messages over 32 MiB cost "
                          "more: glibc maps fresh pages for each)",
                          "bytes")
          .positive(),
      OptionSpec::integer("repeats", "3", "timed repetitions of each probe (best is kept)")
          .positive(),
      OptionSpec::integer("devices-per-node", "0", "cores of this node (0: all online cores)")
          .non_negative(),
      OptionSpec::number("memory-gib", "0", "memory of this node (0: physical memory)", "GiB")
          .non_negative(),
  };
  s.epilog =
      "--threads caps the all-cores kernel probe (0: every core).\n"
      "Noise: the figures are best-of-N on a machine that may be shared; rerun calibrate when\n"
      "the machine is quiet for a profile to keep.";
  return s;
}

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

void spin_for(double seconds) {
  const Clock::time_point t0 = Clock::now();
  volatile double sink = 0;
  while (since(t0) < seconds) sink = sink + 1.0;
}

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

// Best-of-`repeats` seconds of one kernel call.
double kernel_seconds(const RandomProblem& prob, int threads, int repeats) {
  const AttentionArgs a = prob.args();
  Outputs out(a);
  KernelOptions k;
  k.threads = threads;
  double best = std::numeric_limits<double>::infinity();
  for (int i = 0; i <= repeats; ++i) {  // the first call warms up
    const Clock::time_point t0 = Clock::now();
    attention_forward(a, out.o.as<float>(), out.lse.as<float>(), k);
    if (i > 0) best = std::min(best, since(t0));
  }
  return best;
}

// Bytes per second merge_states streams on one thread.
double merge_bandwidth(int repeats) {
  Buffer oa(kMergeRows * kMergeDim * sizeof(float), "merge probe"),
      ob(kMergeRows * kMergeDim * sizeof(float), "merge probe");
  Buffer la(kMergeRows * sizeof(float), "merge probe"),
      lb(kMergeRows * sizeof(float), "merge probe");
  for (int64_t i = 0; i < kMergeRows * kMergeDim; ++i)
    oa.as<float>()[i] = 0.5f, ob.as<float>()[i] = 0.25f;
  for (int64_t i = 0; i < kMergeRows; ++i)
    la.as<float>()[i] = 1.0f + float(i % 7), lb.as<float>()[i] = 2.0f - float(i % 5);
  const StateView a{oa.as<float>(), la.as<float>(), 1, kMergeRows, 1, kMergeDim};
  const StateView b{ob.as<float>(), lb.as<float>(), 1, kMergeRows, 1, kMergeDim};
  double best = std::numeric_limits<double>::infinity();
  for (int i = 0; i <= repeats; ++i) {
    const Clock::time_point t0 = Clock::now();
    merge_states(a, b);
    if (i > 0) best = std::min(best, since(t0));
  }
  const double bytes = 3.0 * double(kMergeRows) * double(kMergeDim + 1) * sizeof(float);
  return bytes / best;
}

struct LinkProbe {
  std::vector<int64_t> sizes;
  std::vector<double> seconds;  // per size: best over repeats of the slowest rank's exchange
  double overlap = 0;
  LinkSpec fit;
};

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

LinkProbe probe_link(Communicator& comm, int64_t max_message, int repeats) {
  LinkProbe p;
  for (int64_t s = kMinMessage; s <= max_message; s *= kMessageStep) p.sizes.push_back(s);
  if (p.sizes.back() != max_message) p.sizes.push_back(max_message);
  std::vector<char> out(static_cast<std::size_t>(max_message), 1), in(out.size());
  for (const int64_t s : p.sizes) {
    const int iters = s <= kSmallMessage ? kSmallMessageIters : repeats;
    double best = std::numeric_limits<double>::infinity();
    for (int i = 0; i <= iters; ++i) {
      const double t = exchange(comm, out, in, static_cast<std::size_t>(s), 0);
      if (i > 0) best = std::min(best, t);
    }
    p.seconds.push_back(best);
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
  // Latency: the fastest small exchange (a single probe can catch a descheduled rank).
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
  double both = std::numeric_limits<double>::infinity();
  for (int i = 0; i < repeats; ++i)
    both = std::min(both, exchange(comm, out, in, static_cast<std::size_t>(max_message), tx));
  p.overlap = std::clamp((tx + tx - both) / tx, 0.0, 1.0);
  p.fit.overlap = p.overlap;
  return p;
}

void print_link(const char* name, const LinkProbe& p) {
  fmt::print("link {}: latency {:.2f} us, bandwidth {:.2f} GB/s, overlap {:.2f}\n", name,
             p.fit.latency_s * kUs, p.fit.bandwidth_bps / kGiga, p.overlap);
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

// The 1-minute load average (/proc/loadavg), or -1 when unknown.
double load_average() {
  std::FILE* f = std::fopen("/proc/loadavg", "r");
  if (f == nullptr) return -1;
  double l = -1;
  if (std::fscanf(f, "%lf", &l) != 1) l = -1;
  std::fclose(f);
  return l;
}

// Rank != 0 under MPI: wait for rank 0's local probes without spinning on a core.
void idle_until_go(Communicator& comm) {
  char go = 0;
  Request r = comm.irecv(&go, 1, 0, kTagGo);
  while (!r.test()) std::this_thread::sleep_for(kIdlePoll);
}

}  // namespace

int cmd_calibrate(int argc, char** argv) {
  const std::optional<ParsedOptions> opt = parse_options(calibrate_spec(), argc, argv);
  if (!opt) return kExitOk;
  for (const int64_t d : opt->integers("head-dims"))  // before any output or measurement
    if (!head_dim_supported(d))
      throw UsageError(
          fmt::format("option '--head-dims': expected multiples of {} in [{}, {}], got {}",
                      kHeadDimMultiple, kMinHeadDim, kMaxHeadDim, d));
  const bool mpi = launched_by_mpi() && mpi_built();
  Communicator* world = mpi ? &mpi_world() : nullptr;
  const int rank = world != nullptr ? world->rank() : 0;
  const int np = world != nullptr ? world->size() : 1;
  const int repeats = opt->integer_int("repeats");
  const int64_t max_message = opt->integer("max-message");
  if (max_message < kMinMessage)
    throw UsageError(fmt::format("option '--max-message': expected at least {} bytes, got {}",
                                 kMinMessage, max_message));

  HardwareProfile hw;
  double load = -1;  // before calibrating (rank 0)
  std::optional<AtomicFile> file;
  std::optional<MetricsFile> metrics;
  std::vector<std::string> notes;
  if (rank != 0) {
    idle_until_go(*world);
  } else
    try {
      file.emplace(opt->text("out"));  // an unwritable path fails before measuring
      metrics.emplace(opt->metrics_path());
      const int cores = opt->integer_int("devices-per-node") > 0
                            ? opt->integer_int("devices-per-node")
                            : std::max(1, omp_get_num_procs());
      hw.kind = DeviceKind::cpu;
      hw.devices_per_node = cores;
      hw.name = opt->has("name") ? opt->text("name") : fmt::format("cpu-{}core", cores);
      hw.description = opt->has("description") ? opt->text("description") : cpu_model();
      const double mem = opt->number("memory-gib");
      hw.memory_bytes =
          mem > 0 ? mem * kGiB : double(sysconf(_SC_PHYS_PAGES)) * double(sysconf(_SC_PAGESIZE));
      fmt::print("ringattn calibrate: {} ({} cores, {}), isa {}\n", hw.name, cores, hw.description,
                 effective_isa_name(Isa::automatic));
      load = load_average();
      if (load > kBusyLoad)
        fmt::print(stderr,
                   "ringattn: warning: load average {:.2f} before calibrating: other work shares "
                   "this machine, so rates (all-core ones most) come out low\n",
                   load);

      // A probe, not a problem to solve: its sizes are --probe-* (see calibrate_spec).
      ProblemShape shape;
      AttentionProblem& probe = shape.problem;
      probe.nq = probe.nk = opt->integer("probe-tokens");
      probe.hq = probe.hkv = opt->integer("probe-heads");
      const Table kt({{"dtype", 9, true}, {"D", 4}, {"ms", 8}, {"GFLOP/s", 8}});
      fmt::print("{}", kt.header());
      for (const std::string& dn : opt->texts("dtypes"))
        for (const int64_t d : opt->integers("head-dims")) {
          probe.head_dim = d;
          probe.dtype = parse_dtype(dn, "option '--dtypes'");
          const RandomProblem prob = make_random_problem(shape, 1);
          const double t = kernel_seconds(prob, 1, repeats);
          const double rate = attention_flops(prob.args()) / t;
          hw.kernel_flops[{probe.dtype, d}] = rate;
          fmt::print("{}", kt.row({std::string(dtype_name(probe.dtype)), fmt::format("{}", d),
                                   cell_fixed(t * kMs, 2), cell_fixed(rate / kGiga, 1)}));
          metrics->write(shape_record("calibrate", shape)
                             .text("probe", "kernel")
                             .integer("threads", 1)
                             .number("time_ms", t * kMs)
                             .number("gflops", rate / kGiga));
        }
      // All cores at once on the first dtype and the measured head dim closest to 128.
      const int all = opt->threads() > 0 ? std::min(opt->threads(), cores) : cores;
      if (all > 1) {
        probe.dtype = parse_dtype(opt->texts("dtypes").front(), "option '--dtypes'");
        const std::vector<int64_t> dims = opt->integers("head-dims");
        probe.head_dim = *std::min_element(dims.begin(), dims.end(), [](int64_t a, int64_t b) {
          return std::abs(a - kProbeHeadDim) < std::abs(b - kProbeHeadDim);
        });
        const double one = hw.kernel_flops.at({probe.dtype, probe.head_dim});
        const RandomProblem prob = make_random_problem(shape, 1);
        const double rate = attention_flops(prob.args()) / kernel_seconds(prob, all, repeats);
        hw.parallel_eff = std::clamp(rate / (one * all), 0.01, 1.0);
        fmt::print("kernel on {} threads ({} D={}): {:.1f} GFLOP/s, parallel efficiency {:.3f}\n",
                   all, dtype_name(probe.dtype), probe.head_dim, rate / kGiga, hw.parallel_eff);
      }
      hw.memory_bw_bps = merge_bandwidth(repeats);
      fmt::print("merge: {:.2f} GB/s on one thread\n", hw.memory_bw_bps / kGiga);

      LinkProbe local;
      run_local(2, [&](Communicator& c) {
        LinkProbe p = probe_link(c, max_message, repeats);
        if (c.rank() == 0) local = std::move(p);
      });
      hw.in_process = local.fit;
      print_link("in-process", local);
      notes.push_back(link_comment("in-process (2 threads)", local));
    } catch (const std::exception& e) {
      // Under MPI the other ranks wait for rank 0: end the whole job with the message.
      if (world == nullptr) throw;
      std::fflush(stdout);
      world->abort(e.what(), dynamic_cast<const UsageError*>(&e) ? kExitUsage : kExitFailure);
    }

  if (world != nullptr && np >= 2) {
    if (rank == 0) {
      const char go = 1;
      for (int r = 1; r < np; ++r) world->isend(&go, 1, r, kTagGo).wait();
    }
    const int64_t local_max = world->allreduce_one(int64_t{mpi_local_rank()}, ReduceOp::max);
    const bool one_node = local_max + 1 == np;
    const LinkProbe link = probe_link(*world, max_message, repeats);
    if (rank != 0) return kExitOk;
    (one_node ? hw.intra : hw.inter) = link.fit;
    const char* name = one_node ? "intra-node (MPI)" : "inter-node (MPI)";
    print_link(name, link);
    notes.push_back(link_comment(fmt::format("{}, {} ranks", name, np).c_str(), link));
  } else if (rank == 0) {
    fmt::print(
        "MPI link: not measured (run `mpirun -np 2 ringattn calibrate ...` to add "
        "[link.intra-node])\n");
  }

  const std::time_t now = std::time(nullptr);
  char date[32];
  std::strftime(date, sizeof date, "%Y-%m-%d %H:%M", std::localtime(&now));
  std::string header = fmt::format(
      "Written by `ringattn calibrate` on {} ({}{}).\n"
      "Kernel rates: one thread (a device is a core), {} tokens x {} heads, full mask.\n",
      date, np >= 2 ? fmt::format("mpirun -np {}, ", np) : "", opt->command_line(),
      opt->integer("probe-tokens"), opt->integer("probe-heads"));
  for (const std::string& n : notes) header += n + "\n";
  if (load >= 0)
    header += fmt::format(
        "1-minute load average before calibrating: {:.2f} (other work on the "
        "machine lowers the rates; {} cores)\n",
        load, hw.devices_per_node);
  hw.source = opt->text("out");
  const std::string text = hardware_profile_text(hw, header);
  file->write(text.data(), text.size());
  file->commit();
  fmt::print("wrote {}\n", hw.source);
  return kExitOk;
}

}  // namespace ringattn::cli
