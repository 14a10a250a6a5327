#include "cli/run_rank.hpp"

#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <limits>
#include <optional>
#include <vector>

#include "cli/options.hpp"
#include "cli/run_device.hpp"
#include "cli/run_hash.hpp"
#include "cli/run_inputs.hpp"
#include "cli/run_output.hpp"
#include "cli/run_report.hpp"
#include "cli/run_sample_check.hpp"
#include "cli/run_tempfiles.hpp"
#include "cli/run_verify.hpp"
#include "ringattn/error.hpp"
#include "ringattn/memory.hpp"
#include "ringattn/ring.hpp"

namespace ringattn::cli {
namespace {

constexpr const char* kInjectedFailure = "injected failure (--fail-rank)";

void check_same_config(Communicator& comm, const RunConfig& cfg) {
  const uint64_t mine = config_hash(cfg.config_text());
  std::vector<uint64_t> all(static_cast<std::size_t>(comm.size()));
  comm.allgather(&mine, sizeof(mine), all.data());
  const std::string mismatch = config_mismatch(all);
  if (!mismatch.empty()) throw Error(mismatch);
}

// One warning line when some rank holds no query or no key/value tokens.
void warn_empty_ranks(const RunConfig& cfg, const Layout& ql, const Layout& kvl) {
  int no_q = 0, no_kv = 0;
  for (int r = 0; r < ql.ranks(); ++r) {
    no_q += ql.tokens(r) == 0;
    no_kv += kvl.tokens(r) == 0;
  }
  if (no_q == 0 && no_kv == 0) return;
  std::fflush(stdout);
  fmt::print(stderr,
             "ringattn: warning: N={} Nk={} over P={} ranks ({} layout): {} rank(s) hold no "
             "query tokens and {} no key/value tokens; they still take part in the ring\n",
             cfg.nq, cfg.nk, ql.ranks(), layout_name(cfg.layout), no_q, no_kv);
}

double global_flops(const RunConfig& cfg) {
  AttentionArgs a;
  a.batch = cfg.batch, a.nq = cfg.nq, a.nk = cfg.nk, a.hq = cfg.hq, a.hkv = cfg.hkv;
  a.head_dim = cfg.head_dim, a.mask = cfg.mask();
  return attention_flops(a);
}

// Bytes `rank` would send in a full ring: the blocks it holds at steps 0..P-2.
int64_t full_ring_bytes(const RunConfig& cfg, const Layout& kvl, int rank) {
  const int np = kvl.ranks();
  int64_t tokens = 0;
  for (int s = 0; s + 1 < np; ++s) tokens += kvl.tokens(((rank - s) % np + np) % np);
  return 2 * cfg.batch * tokens * cfg.hkv * cfg.head_dim *
         static_cast<int64_t>(dtype_size(cfg.dtype));
}

std::string outputs_text(const RunConfig& cfg) {
  std::string s = cfg.out_path;
  if (!cfg.lse_path.empty()) s += (s.empty() ? "" : ", ") + cfg.lse_path;
  return s;
}

void run_job(Communicator& comm, const RunConfig& cfg) {
  check_same_config(comm, cfg);
  const int np = comm.size(), rank = comm.rank();
  if (cfg.fail_rank >= np)
    throw Error(
        fmt::format("option '--fail-rank': rank {} does not exist (P = {})", cfg.fail_rank, np));
  const int threads = rank_threads(cfg, comm);
  omp_set_num_threads(threads);  // every OpenMP region of this rank (thread or process)
  KernelOptions kopt;
  kopt.threads = threads;
  kopt.isa = cfg.isa;
  memory_reset_peak_thread();

  const Layout ql(cfg.layout, cfg.nq, np), kvl(cfg.layout, cfg.nk, np);
  const RingSchedule schedule = make_ring_schedule(ql, kvl, cfg.mask());
  std::optional<RunOutputs> outputs;
  if (rank == 0) {
    warn_empty_ranks(cfg, ql, kvl);
    RunOutputs::check_writable(cfg);  // before any compute: an unwritable path fails fast
    MetricsFile::check_writable(cfg.metrics_path);  // opened (appended to) once the run succeeded
  }

  const RankInputs in = load_rank_inputs(cfg, ql, kvl, rank);
  RingProblem p;
  p.batch = cfg.batch, p.nq = cfg.nq, p.nk = cfg.nk, p.hq = cfg.hq, p.hkv = cfg.hkv;
  p.head_dim = cfg.head_dim;
  p.dtype = cfg.dtype, p.scale = cfg.scale, p.mask = cfg.mask();
  p.q_layout = &ql, p.kv_layout = &kvl;
  p.q = in.q.data.data(), p.k = in.k.data.data(), p.v = in.v.data.data();
  const int64_t nq = ql.tokens(rank);
  Buffer o(static_cast<std::size_t>(cfg.batch * nq * cfg.hq * cfg.head_dim) * sizeof(float),
           "local O");
  Buffer lse(static_cast<std::size_t>(cfg.batch * cfg.hq * nq) * sizeof(float), "local LSE");

  RankDevice device(comm, cfg, kopt);
  // Ring passes; the best timed one is the one whose slowest rank was fastest.
  RingMetrics best;
  double best_slowest = std::numeric_limits<double>::infinity();
  for (int pass = 0; pass < cfg.warmup + cfg.repeats; ++pass) {
    comm.barrier();
    RingMetrics m = device.pass(schedule, p, o.as<float>(), lse.as<float>());
    if (pass == 0 && rank == cfg.fail_rank) throw Error(kInjectedFailure);
    if (pass < cfg.warmup) continue;
    const double slowest = comm.allreduce_one(m.total_s, ReduceOp::max);
    if (slowest < best_slowest) {
      best_slowest = slowest;
      best = std::move(m);
    }
  }
  device.finish(o.as<float>(), lse.as<float>());
  const RankStats mine = rank_stats(best, rank, nq, kvl.tokens(rank), threads, memory_peak_thread(),
                                    full_ring_bytes(cfg, kvl, rank));
  std::vector<RankStats> stats(static_cast<std::size_t>(np));
  comm.allgather(&mine, sizeof(mine), stats.data());

  // Collect every rank's rows on rank 0, one rank at a time. The output files
  // exist only from here on: a job ended during compute leaves none behind.
  memory_reset_peak_thread();
  if (rank == 0) outputs.emplace(cfg);
  std::optional<SingleRankCheck> check;
  if (rank == 0 && cfg.verify) check.emplace(cfg, kopt);
  std::optional<SampledReferenceCheck> sampled;
  if (rank == 0 && cfg.check_rows > 0) sampled.emplace(cfg, cfg.check_rows);
  if (cfg.gathers())
    gather_rows(comm, ql, cfg.batch, cfg.hq, cfg.head_dim, o.as<float>(), lse.as<float>(),
                [&](int src, const float* ro, const float* rl) {
                  if (outputs) outputs->write_rank(ql, src, ro, rl);
                  if (check) check->compare(ql, src, ro, rl);
                  if (sampled) sampled->compare(ql, src, ro, rl);
                });
  if (rank != 0) return;

  RunReport report;
  report.cfg = &cfg;
  report.ranks = np;
  report.backend = comm.backend();
  report.isa = cfg.cuda ? device.name() : effective_isa_name(cfg.isa);
  report.flops = global_flops(cfg);
  report.sched_imbalance = schedule.imbalance();
  report.transfer = schedule.transfer == Transfer::direct ? "direct" : "ring";
  report.shared_keys = schedule.shared.key_tokens;
  report.shared_queries = schedule.shared.query_tokens;
  report.repeats = cfg.repeats;
  report.stats = std::move(stats);
  report.rank0_output_peak = memory_peak_thread();
  report.outputs = outputs_text(cfg);
  if (check) {
    VerifyResult v;
    v.t1_s = check->seconds();
    v.err = check->errors();
    v.tol = check->tolerance();
    v.ok = check->ok();
    report.verify = v;
    if (!v.ok) {
      report.outputs.clear();
      print_report(report);
      throw Error(fmt::format(
          "option '--verify': the ring result differs from the single-rank kernel beyond the {} "
          "tolerance (O rel. Frobenius {:.2e}, max |dLSE| {:.2e}); no output written",
          dtype_name(cfg.dtype), v.err.o_rel_fro, v.err.lse_max_abs));
    }
  }
  if (sampled) {
    VerifyResult v;
    v.err = sampled->errors();
    v.tol = sampled->tolerance();
    v.ok = sampled->ok();
    report.sampled = v;
    report.sampled_rows = sampled->rows();
    if (!v.ok) {
      report.outputs.clear();
      print_report(report);
      throw Error(fmt::format(
          "option '--check-rows': the ring result differs from the float64 reference beyond the "
          "{} tolerance (O rel. Frobenius {:.2e}, max |dLSE| {:.2e}); no output written",
          dtype_name(cfg.dtype), v.err.o_rel_fro, v.err.lse_max_abs));
    }
  }
  outputs->commit();
  print_report(report);
  MetricsFile metrics(cfg.metrics_path);
  write_metrics(metrics, report);
}

}  // namespace

int rank_threads(const RunConfig& cfg, const Communicator& comm) {
  if (cfg.threads > 0) return cfg.threads;
  if (comm.backend() == "local") return std::max(1, omp_get_num_procs() / comm.size());
  return omp_get_max_threads();
}

void run_rank(Communicator& comm, const RunConfig& cfg) {
  install_temp_cleanup_handlers();
  try {
    run_job(comm, cfg);
  } catch (const std::exception& e) {
    // Locals are gone (uncommitted outputs removed); make sure before the job ends by abort.
    remove_registered_temps();
    std::fflush(stdout);
    comm.abort(e.what(), kExitFailure);
  }
}

}  // namespace ringattn::cli
