// ringattn moe: the MoE stage alone (ringattn/moe.hpp for its semantics,
// ringattn/moe_job.hpp for the job) on X [T, d_model], over P ranks.
//
//   ringattn moe --ranks-local 2 --tokens 4096 --d-model 512 --check-rows 64
//   mpirun -np 2 --bind-to none ringattn moe --tokens 16384 --d-model 1024 --threads 1
//
// Each rank first measures its sgemm rate on its threads (unless --no-baseline),
// so the table can say how close the experts' GEMMs come to it; the report is in
// cli/moe_report.cpp.
#include <fmt/format.h>

#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "cli/backend.hpp"
#include "cli/commands.hpp"
#include "cli/metrics.hpp"
#include "cli/moe_options.hpp"
#include "cli/moe_report.hpp"
#include "cli/options.hpp"
#include "ringattn/baseline.hpp"
#include "ringattn/comm.hpp"
#include "ringattn/comm_mpi.hpp"
#include "ringattn/job.hpp"
#include "ringattn/moe_job.hpp"
#include "ringattn/npy.hpp"
#include "ringattn/tempfiles.hpp"

namespace ringattn::cli {
namespace {

constexpr const char* kDefaultTokens = "16384";
constexpr const char* kDefaultDModel = "1024";
constexpr const char* kDefaultExperts = "8";

CommandSpec moe_spec() {
  CommandSpec s;
  s.name = "moe";
  s.summary =
      "The mixture-of-experts routing stage alone (semantics: include/ringattn/moe.hpp): a router\n"
      "picks experts for each token of X [T, d_model], capacity decides which assignments each\n"
      "expert accepts, accepted rows travel to the expert's rank (all-to-all), run its SwiGLU FFN\n"
      "and come back weighted by their gates. X is split over the ranks in contiguous chunks of\n"
      "rows; rank r holds experts [floor(r E / P), floor((r+1) E / P)). A dropped assignment\n"
      "contributes zero. P in-process ranks with --ranks-local P, or one rank per process under\n"
      "mpirun. Prints a per-rank table (times, FFN rate against sgemm, bytes) and the routing's\n"
      "figures (capacity, load, drops, losses) on rank 0.";
  s.usage =
      "[--x X.npy | --tokens T --d-model D] [--moe-* options] [--ranks-local P | under mpirun] "
      "[options]";
  s.options = {
      backend_option_spec(),
      ranks_local_option_spec(),
      OptionSpec::text("x", "",
                       "read the tokens X [T, d_model] float32 from this .npy (each rank reads "
                       "only its rows) instead of generating them")
          .as_input(),
      OptionSpec::integer("tokens", "", "tokens T of the generated X", "tokens")
          .positive()
          .shown_default(kDefaultTokens),
      OptionSpec::integer("d-model", "", "width d_model of the generated X", "features")
          .positive()
          .shown_default(kDefaultDModel),
      OptionSpec::integer("seq-len", "0",
                          "tokens per sequence (T a multiple of it); chunks never cross one "
                          "(0: T)",
                          "tokens")
          .non_negative(),
      OptionSpec::integer("seed", "0", "seed of the generated X and weights").non_negative(),
  };
  for (OptionSpec& o : moe_option_specs()) {
    if (o.name == "moe-experts") {  // the stage is the command: at least one expert
      o.default_value = kDefaultExperts;
      o.range = Range::positive;
      o.help = "experts E, spread over the ranks in contiguous groups (at least one per rank)";
    }
    s.options.push_back(std::move(o));
  }
  const std::vector<OptionSpec> rest = {
      OptionSpec::text("out", "", "write Y [T, d_model] float32 in token order (.npy)").as_output(),
      OptionSpec::text("routing-out", "",
                       "write the routing R [T, k] int32 (expert choice: [T, E]): the experts of "
                       "each token, -1 where dropped (.npy)")
          .as_output(),
      OptionSpec::text("gates-out", "",
                       "write the gates G, float32, shaped like R, 0 where R is -1 (.npy)")
          .as_output(),
      OptionSpec::integer("repeats", "1", "timed passes; the best one is reported").positive(),
      OptionSpec::integer("warmup", "0", "untimed passes before the timed ones").non_negative(),
      OptionSpec::integer("check-rows", "0",
                          "check the routing of every token and the outputs of this many "
                          "sampled tokens against the float64 reference on rank 0; fail, "
                          "writing nothing, over the tolerance (0: off)",
                          "tokens")
          .non_negative(),
      OptionSpec::flag("no-baseline", "false",
                       "skip measuring each rank's sgemm rate before the job (the table's "
                       "%sgemm column)"),
      OptionSpec::integer("fail-rank", "-1",
                          "testing: this rank fails right after its first pass, to check that "
                          "the whole job ends (-1: none)"),
  };
  s.options.insert(s.options.end(), rest.begin(), rest.end());
  s.epilog =
      "--threads is the threads of each rank (OpenMP and BLAS): 0 means cores / P for in-process\n"
      "ranks and the OpenMP default (OMP_NUM_THREADS) under MPI.\n"
      "Memory per rank: its rows of X and Y, the rows its experts accept (about k cf T / P), its\n"
      "experts' weights, and the routing records. --check-rows also gathers X on rank 0.";
  return s;
}

// With --moe-weights: d_ff is w1.npy's last dimension (unless --moe-ffn is given), and
// the router's rows must be X's width; said before any rank starts.
void check_weights(const ParsedOptions& opt, MoeJobSpec* s) {
  const std::filesystem::path dir(s->weights_dir);
  const std::string router = (dir / "router.npy").string();
  if (std::filesystem::exists(router)) {
    const NpyHeader h = read_npy_header(router);
    if (h.shape.size() == 2 && h.shape[0] != s->d_model)
      throw UsageError(fmt::format(
          "option '--{}': X has d_model = {}, but the router {} is [{}, {}] (expected [{}, E])",
          opt.has("x") ? "x" : "d-model", s->d_model, router, h.shape[0], h.shape[1], s->d_model));
  }
  const std::string w1 = (dir / "w1.npy").string();
  if (!opt.given("moe-ffn") && std::filesystem::exists(w1)) {
    const NpyHeader h = read_npy_header(w1);
    if (h.shape.size() == 3) s->moe.d_ff = h.shape[2];
  }
}

// X's header; its errors name --x.
void use_x_file(MoeJobSpec* s, const std::string& path) {
  try {
    s->use_x_file(path);
  } catch (const FieldError&) {
    throw;
  } catch (const Error& e) {
    throw Error(fmt::format("option '--x': {}", e.what()));
  }
}

MoeRunConfig make_moe_config(const ParsedOptions& opt, int ranks) {
  MoeRunConfig c;
  MoeJobSpec& s = c.spec;
  if (opt.has("x")) {
    use_x_file(&s, opt.text("x"));
    std::string ignored;
    for (const char* name : {"tokens", "d-model"})
      if (opt.given(name)) ignored += fmt::format("{}--{}", ignored.empty() ? "" : ", ", name);
    if (!ignored.empty())
      fmt::print(stderr, "ringattn: warning: {} ignored: X's shape comes from --x ([{}, {}])\n",
                 ignored, s.tokens, s.d_model);
  } else {
    s.tokens = opt.has("tokens") ? opt.integer("tokens") : std::stoll(kDefaultTokens);
    s.d_model = opt.has("d-model") ? opt.integer("d-model") : std::stoll(kDefaultDModel);
  }
  s.seq_len = opt.integer("seq-len");
  s.seed = static_cast<uint64_t>(opt.integer("seed"));
  MoeOptions m = parse_moe_options(opt, s.d_model);
  s.moe = m.config;
  s.weights_dir = m.weights_dir;
  if (!s.weights_dir.empty()) check_weights(opt, &s);
  const auto path = [&](const char* name) { return opt.has(name) ? opt.text(name) : ""; };
  s.out_path = path("out");
  s.routing_path = path("routing-out");
  s.gates_path = path("gates-out");
  s.repeats = opt.integer_int("repeats");
  s.warmup = opt.integer_int("warmup");
  s.check_rows = opt.integer("check-rows");
  s.threads = opt.threads();
  s.fail_rank = opt.integer_int("fail-rank");
  c.baseline = !opt.flag("no-baseline");
  c.metrics_path = opt.metrics_path();
  c.command_line = opt.command_line();
  with_option_names([&] { s.validate(ranks); });
  return c;
}

// Each rank's sgemm rate on the threads it will run with (rank_threads), all
// ranks at once as in the job; every rank gets every rank's rate.
double measure_rank_sgemm(Communicator& comm, int threads) {
  JobSpec threads_only;
  threads_only.threads = threads;
  return measure_sgemm_gflops(rank_threads(threads_only, comm));
}

std::vector<double> sgemm_rates_mpi(Communicator& comm, const MoeRunConfig& cfg) {
  if (!cfg.baseline) return {};
  const double mine = measure_rank_sgemm(comm, cfg.spec.threads);
  std::vector<double> all(static_cast<std::size_t>(comm.size()));
  comm.allgather(&mine, sizeof mine, all.data());
  return all;
}

std::vector<double> sgemm_rates_local(int ranks, const MoeRunConfig& cfg) {
  if (!cfg.baseline) return {};
  std::vector<double> all(static_cast<std::size_t>(ranks));
  run_local(ranks, [&](Communicator& comm) {
    all[static_cast<std::size_t>(comm.rank())] = measure_rank_sgemm(comm, cfg.spec.threads);
  });
  return all;
}

// Rank 0: the table, then (a run whose check passed) the --metrics records.
int finish(const MoeRunConfig& cfg, MoeJobReport job, std::vector<double> sgemm) {
  MoeRunReport report;
  report.cfg = &cfg;
  report.job = std::move(job);
  report.sgemm_gflops = std::move(sgemm);
  print_moe_report(report);
  if (!report.job.failure.empty()) {
    std::fflush(stdout);
    fmt::print(stderr, "ringattn: error: option '--check-rows': {}\n", report.job.failure);
    return kExitFailure;
  }
  MetricsFile metrics(cfg.metrics_path);
  write_moe_metrics(metrics, report);
  return kExitOk;
}

}  // namespace

int cmd_moe(int argc, char** argv) {
  const std::optional<ParsedOptions> opt = parse_options(moe_spec(), argc, argv);
  if (!opt) return kExitOk;
  const Backend backend = choose_backend(*opt);
  install_temp_cleanup_handlers();  // before MPI starts (see cmd_run.cpp)
  if (backend.mpi) {
    Communicator& comm = mpi_world();
    set_signal_context(comm.rank());
    const MoeRunConfig cfg =
        resolve_or_abort(comm, [&] { return make_moe_config(*opt, comm.size()); });
    if (comm.rank() == 0) MetricsFile::check_writable(cfg.metrics_path);
    std::vector<double> sgemm = sgemm_rates_mpi(comm, cfg);
    MoeJobReport job = run_moe_job(comm, cfg.spec);
    return comm.rank() == 0 ? finish(cfg, std::move(job), std::move(sgemm)) : kExitOk;
  }
  const MoeRunConfig cfg = make_moe_config(*opt, backend.local_ranks);
  MetricsFile::check_writable(cfg.metrics_path);  // appended to once the run succeeded
  std::vector<double> sgemm = sgemm_rates_local(backend.local_ranks, cfg);
  return finish(cfg, run_moe_job_local(backend.local_ranks, cfg.spec), std::move(sgemm));
}

}  // namespace ringattn::cli
