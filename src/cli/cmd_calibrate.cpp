// ringattn calibrate: measures this machine and writes a hardware profile
// (ringattn/hardware.hpp) that `ringattn plan` reads.
//
//   ringattn calibrate --out configs/hardware/mine.ini               (kernel, in-process link)
//   mpirun -np 2 ringattn calibrate --out configs/hardware/mine.ini  (also the MPI link)
//
// It measures the node: its cores are the CPUs this container may use
// (cpu_info.hpp's node_cpus), whatever a launcher bound the rank to (mpirun binds
// each of np <= 2 ranks to one core); rank 0 widens its binding to the node for
// its probes and says which binding every rank had.
// Every probe runs in --repeats rounds of at least --probe-seconds each (links:
// a fifth of it per message size); the best round is kept and the spread of the
// rounds, (slowest - fastest) / fastest, goes into the profile ([probe-spread]),
// with a warning above 10% (other work on the machine).
//   kernel      attention_forward with one thread (a cpu "device" is a core) for every
//               --dtypes x --head-dims, on --probe-tokens x --probe-heads, full mask:
//               GFLOP/s = 4 Hq D N^2 / time; then all cores once: parallel efficiency;
//               then the same problem causal: what a partial tile costs beyond its
//               visible pairs (partial-tile-cost, in whole tiles)
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

#include "cli/calibrate_probes.hpp"
#include "cli/commands.hpp"
#include "cli/harness.hpp"
#include "cli/metrics.hpp"
#include "cli/options.hpp"
#include "cli/problem_options.hpp"
#include "cli/table.hpp"
#include "ringattn/comm.hpp"
#include "ringattn/comm_mpi.hpp"
#include "ringattn/cpu_info.hpp"
#include "ringattn/error.hpp"
#include "ringattn/hardware.hpp"
#include "ringattn/kernel.hpp"
#include "ringattn/npy.hpp"  // AtomicFile

namespace ringattn::cli {
namespace {

constexpr double kGiga = 1e9;
constexpr double kMs = 1e3;
constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
constexpr double kLinkRoundShare = 0.2;  // a link round: this x --probe-seconds
constexpr double kSpreadWarn = 0.10;     // warn above this spread
constexpr int kCausalRounds = 6;         // alternating full/causal rounds, at least
constexpr double kMaxTileCost = 8;       // partial-tile-cost: a sanity bound
constexpr int64_t kProbeHeadDim = 128;   // the all-cores probe's preferred head dim
constexpr int kTagGo = 8;                // calibrate_probes.cpp exchanges with tag 7
constexpr double kBusyLoad = 0.5;        // load average above which calibrate warns
constexpr auto kIdlePoll = std::chrono::milliseconds(20);

CommandSpec calibrate_spec() {
  CommandSpec s;
  s.name = "calibrate";
  s.summary =
      "Measures this node (kernel rate per dtype and head dim on one core, on all cores, and of\n"
      "partial tiles; the merge's memory bandwidth; the in-process and -- under mpirun with >= 2\n"
      "ranks -- the MPI link's latency, bandwidth and overlap) and writes a hardware profile,\n"
      "naming the CPU, that `ringattn plan --hardware FILE` reads. The node's cores count, not\n"
      "the binding a launcher gave the rank. The default run takes about 40 s.";
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
      OptionSpec::integer("repeats", "3",
                          "timed rounds of each probe (the best is kept; their spread is "
                          "written into the profile)")
          .positive(),
      OptionSpec::choice("isa", "auto", {"auto", "avx512", "avx2", "generic"},
                         "kernel instruction set to measure (auto: the best this CPU supports); "
                         "the profile's isa, which plan compares with the job's --isa"),
      OptionSpec::number("probe-seconds", "0.5",
                         "least duration of one round of a kernel or merge probe (a link "
                         "round: a fifth of it per message size)",
                         "s")
          .positive(),
      OptionSpec::integer("devices-per-node", "0",
                          "cores of this node (0: the CPUs this container may use, whatever the "
                          "launcher bound the rank to)")
          .non_negative(),
      OptionSpec::number("memory-gib", "0", "memory of this node (0: physical memory)", "GiB")
          .non_negative(),
  };
  s.epilog =
      "--threads caps the all-cores kernel probe (0: every core).\n"
      "Noise: the figures are the best of --repeats rounds on a machine that may be shared; a\n"
      "spread over 10% is warned about. Rerun calibrate when the machine is quiet for a profile\n"
      "to keep.";
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

// Where a rank runs: its host and the CPUs it is bound to.
struct Binding {
  char host[64] = {};
  CpuSet cpus;
};

Binding my_binding() {
  Binding b;
  gethostname(b.host, sizeof(b.host) - 1);
  b.cpus = bound_cpus();
  return b;
}

// "rank 0: cpus 0 on node01; rank 1: cpus 1 on node01"
std::string bindings_text(const std::vector<Binding>& all) {
  std::string s;
  for (std::size_t r = 0; r < all.size(); ++r)
    s += fmt::format("{}rank {}: cpus {} on {}", r == 0 ? "" : "; ", r, all[r].cpus.text(),
                     all[r].host);
  return s;
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

  const double probe_s = opt->number("probe-seconds");
  const Isa isa = resolve_isa(opt->text("isa"));  // before any output or measurement
  const auto on = [&](int threads) {
    KernelOptions k;
    k.threads = threads;
    k.isa = isa;
    return k;
  };
  // Every rank's binding, before rank 0 measures alone.
  std::vector<Binding> bindings(static_cast<std::size_t>(np));
  const Binding mine = my_binding();
  if (world != nullptr)
    world->allgather(&mine, sizeof(mine), bindings.data());
  else
    bindings[0] = mine;

  HardwareProfile hw;
  double load = -1;  // before calibrating (rank 0)
  std::optional<AtomicFile> file;
  std::optional<MetricsFile> metrics;
  std::vector<std::string> notes;
  const auto spread_of = [&](const std::string& probe, double spread) {
    hw.spread[probe] = spread;
    if (spread > kSpreadWarn)
      notes.push_back(fmt::format("warning: probe {} varied {:.0f}% over {} rounds", probe,
                                  spread * 100, repeats));
  };
  if (rank != 0) {
    idle_until_go(*world);
  } else
    try {
      file.emplace(opt->text("out"));  // an unwritable path fails before measuring
      metrics.emplace(opt->metrics_path());
      // The node, not the binding: mpirun binds each of np <= 2 ranks to one core.
      const CpuSet node = node_cpus(), was = mine.cpus;
      const int cores = opt->integer_int("devices-per-node") > 0
                            ? opt->integer_int("devices-per-node")
                            : std::max(1, node.count());
      hw.kind = DeviceKind::cpu;
      hw.devices_per_node = cores;
      hw.name = opt->has("name") ? opt->text("name") : fmt::format("cpu-{}core", cores);
      hw.description = opt->has("description") ? opt->text("description") : cpu_model();
      hw.cpu = cpu_identity();
      hw.isa = effective_isa_name(isa);
      const double mem = opt->number("memory-gib");
      hw.memory_bytes =
          mem > 0 ? mem * kGiB : double(sysconf(_SC_PHYS_PAGES)) * double(sysconf(_SC_PAGESIZE));
      fmt::print("ringattn calibrate: {} ({} cores: cpus {}), {}, isa {}\n", hw.name, cores,
                 node.text(), hw.cpu, hw.isa);
      fmt::print("binding: {}\n", bindings_text(bindings));
      const bool widened = !was.empty() && was != node && bind_cpus(node);
      if (widened)
        fmt::print(
            "rank 0 was bound to cpus {}: it measures on the node's cpus {} (the other ranks "
            "wait) and goes back to its binding after\n",
            was.text(), node.text());
      else if (!was.empty() && was != node)
        fmt::print(stderr,
                   "ringattn: warning: cannot widen rank 0's binding (cpus {}) to the node's "
                   "cpus {}: the all-cores probe runs on {} only\n",
                   was.text(), node.text(), was.text());
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
      const Table kt({{"dtype", 9, true}, {"D", 4}, {"ms", 8}, {"GFLOP/s", 8}, {"spread", 7}});
      fmt::print("kernel on one thread, {} rounds of >= {} s:\n{}", repeats, probe_s, kt.header());
      for (const std::string& dn : opt->texts("dtypes"))
        for (const int64_t d : opt->integers("head-dims")) {
          probe.head_dim = d;
          probe.dtype = parse_dtype(dn, "option '--dtypes'");
          const RandomProblem prob = make_random_problem(shape, 1);
          const Timing t = kernel_timing(prob, on(1), repeats, probe_s);
          const double rate = attention_flops(prob.args()) / t.seconds;
          hw.kernel_flops[{probe.dtype, d}] = rate;
          const std::string key = fmt::format("{}.d{}", dtype_name(probe.dtype), d);
          spread_of(key, t.spread);
          fmt::print("{}", kt.row({std::string(dtype_name(probe.dtype)), fmt::format("{}", d),
                                   cell_fixed(t.seconds * kMs, 2), cell_fixed(rate / kGiga, 1),
                                   fmt::format("{:.1f}%", t.spread * 100)}));
          metrics->write(shape_record("calibrate", shape)
                             .text("probe", "kernel")
                             .integer("threads", 1)
                             .number("time_ms", t.seconds * kMs)
                             .number("gflops", rate / kGiga)
                             .number("spread", t.spread));
        }
      // All cores at once, then causal, on the first dtype and the head dim closest to 128.
      probe.dtype = parse_dtype(opt->texts("dtypes").front(), "option '--dtypes'");
      const std::vector<int64_t> dims = opt->integers("head-dims");
      probe.head_dim = *std::min_element(dims.begin(), dims.end(), [](int64_t a, int64_t b) {
        return std::abs(a - kProbeHeadDim) < std::abs(b - kProbeHeadDim);
      });
      const double one = hw.kernel_flops.at({probe.dtype, probe.head_dim});
      const int all = opt->threads() > 0 ? std::min(opt->threads(), cores) : cores;
      if (all > 1) {
        const RandomProblem prob = make_random_problem(shape, 1);
        const Timing t = kernel_timing(prob, on(all), repeats, probe_s);
        const double rate = attention_flops(prob.args()) / t.seconds;
        hw.parallel_eff = std::clamp(rate / (one * all), 0.01, 1.0);
        spread_of("all-cores", t.spread);
        fmt::print(
            "kernel on {} threads ({} D={}): {:.1f} GFLOP/s, parallel efficiency {:.3f} (spread "
            "{:.1f}%)\n",
            all, dtype_name(probe.dtype), probe.head_dim, rate / kGiga, hw.parallel_eff,
            t.spread * 100);
      }
      {
        // Causal: its diagonal's partial tiles cost more per visible pair than whole ones.
        // The full and causal calls alternate, round by round (the extra cost is a small
        // difference of two rates: alternating cancels the machine's drift), and more
        // rounds than elsewhere, each of half the time.
        const RandomProblem full = make_random_problem(shape, 1);
        shape.masks.causal = true;
        shape.rebuild_mask();
        const RandomProblem causal = make_random_problem(shape, 1);
        shape.masks.causal = false;
        shape.rebuild_mask();
        KernelStats st;
        Timing tf{std::numeric_limits<double>::infinity(), 0}, tc = tf;
        double worst = 0;
        for (int r = 0; r < std::max(repeats, kCausalRounds); ++r) {
          const Timing a = kernel_timing(full, on(1), 1, probe_s / 2);
          const Timing c = kernel_timing(causal, on(1), 1, probe_s / 2, &st);
          tf.seconds = std::min(tf.seconds, a.seconds);
          tc.seconds = std::min(tc.seconds, c.seconds);
          worst = std::max(worst, c.seconds);
        }
        tc.spread = worst / tc.seconds - 1.0;
        const double full_rate = attention_flops(full.args()) / tf.seconds;
        const double flops = attention_flops(causal.args());
        const double tile_flops = 4.0 * double(probe.head_dim) *
                                  double(kKernelTileRows * kKernelTileCols) *
                                  double(std::max<int64_t>(st.tiles_partial, 1));
        hw.partial_tile_cost =
            std::clamp((full_rate * tc.seconds - flops) / tile_flops, 0.0, kMaxTileCost);
        spread_of("causal", tc.spread);
        fmt::print(
            "kernel causal ({} D={}): {:.1f} GFLOP/s on one thread against {:.1f} full in the "
            "same rounds; {} partial tiles of {} computed: each costs its visible pairs + {:.3f} "
            "of a whole tile (spread {:.1f}%)\n",
            dtype_name(probe.dtype), probe.head_dim, flops / tc.seconds / kGiga, full_rate / kGiga,
            st.tiles_partial, st.tiles_computed, hw.partial_tile_cost, tc.spread * 100);
      }
      const Timing merge = merge_bandwidth(repeats, probe_s);
      hw.memory_bw_bps = merge.seconds;
      spread_of("merge", merge.spread);
      fmt::print("merge: {:.2f} GB/s on one thread (spread {:.1f}%)\n", hw.memory_bw_bps / kGiga,
                 merge.spread * 100);

      LinkProbe local;
      run_local(2, [&](Communicator& c) {
        LinkProbe p = probe_link(c, max_message, repeats, probe_s * kLinkRoundShare);
        if (c.rank() == 0) local = std::move(p);
      });
      hw.in_process = local.fit;
      spread_of("link.in-process", local.spread);
      print_link("in-process", local);
      notes.push_back(link_comment("in-process (2 threads)", local));
      if (widened && !bind_cpus(was))
        fmt::print(stderr, "ringattn: warning: cannot restore rank 0's binding (cpus {})\n",
                   was.text());
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
    const LinkProbe link = probe_link(*world, max_message, repeats, probe_s * kLinkRoundShare);
    if (rank != 0) return kExitOk;
    (one_node ? hw.intra : hw.inter) = link.fit;
    const char* name = one_node ? "intra-node (MPI)" : "inter-node (MPI)";
    spread_of(one_node ? "link.intra-node" : "link.inter-node", link.spread);
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
      "CPU: {}, {} kernel; {} cores (the node's, whatever the launcher bound).\n"
      "Binding: {}.\n"
      "Kernel rates: one thread (a device is a core), {} tokens x {} heads, full mask; best of "
      "{} rounds of >= {} s, spreads in [probe-spread].\n",
      date, np >= 2 ? fmt::format("mpirun -np {}, ", np) : "", opt->command_line(), hw.cpu, hw.isa,
      hw.devices_per_node, bindings_text(bindings), opt->integer("probe-tokens"),
      opt->integer("probe-heads"), repeats, probe_s);
  for (const std::string& n : notes) header += n + "\n";
  if (load >= 0)
    header += fmt::format(
        "1-minute load average before calibrating: {:.2f} (other work on the "
        "machine lowers the rates; {} cores)\n",
        load, hw.devices_per_node);
  for (const auto& [probe, spread] : hw.spread)
    if (spread > kSpreadWarn)
      fmt::print(stderr,
                 "ringattn: warning: probe {} varied {:.0f}% over its {} rounds (> {:.0f}%): "
                 "other work on this machine; rerun calibrate when it is quiet\n",
                 probe, spread * 100, repeats, kSpreadWarn * 100);
  hw.source = opt->text("out");
  const std::string text = hardware_profile_text(hw, header);
  file->write(text.data(), text.size());
  file->commit();
  fmt::print("wrote {}\n", hw.source);
  return kExitOk;
}

}  // namespace ringattn::cli
