// The MoE stage as a job (ringattn/moe_job.hpp).
#include "ringattn/moe_job.hpp"

#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <limits>

#include "job/moe_parts.hpp"
#include "job/rank_guard.hpp"
#include "ringattn/error.hpp"
#include "ringattn/job.hpp"  // config_hash, config_mismatch
#include "ringattn/memory.hpp"
#include "ringattn/npy.hpp"
#include "ringattn/tempfiles.hpp"

namespace ringattn {
namespace {

constexpr int kNdimX = 2;  // X [T, d_model]

int moe_threads(const MoeJobSpec& spec, const Communicator& comm) {
  if (spec.threads > 0) return spec.threads;
  if (comm.backend() == "local") return std::max(1, omp_get_num_procs() / comm.size());
  return omp_get_max_threads();
}

// This rank's rows of X: contiguous chunks of tokens.
std::vector<float> load_x(const MoeJobSpec& spec, const Layout& l, int rank) {
  const int64_t rows = l.tokens(rank),
                row0 = l.segments(rank).empty() ? 0 : l.segments(rank)[0].start;
  std::vector<float> x(static_cast<std::size_t>(rows * spec.d_model));
  if (spec.x_path.empty()) {
    moe_generate_tokens(spec.seed, spec.d_model, row0, rows, x.data());
    return x;
  }
  if (rows == 0) return x;
  const Tensor t = read_npy_slice(spec.x_path, 0, row0, rows);
  check_finite(t, "--x " + spec.x_path);
  std::copy_n(t.as<float>(), x.size(), x.data());
  return x;
}

MoeJobReport run_rank(Communicator& comm, const MoeJobSpec& spec) {
  spec.validate(comm.size());
  job::check_same_config(comm, spec.config_text());
  const int np = comm.size(), rank = comm.rank();
  const int threads = moe_threads(spec, comm);
  omp_set_num_threads(threads);
  memory_reset_peak_thread();
  job::MoeOutputPaths paths{spec.out_path, spec.routing_path, spec.gates_path, {spec.tokens},
                            "out",         "routing_out",     "gates_out"};
  if (rank == 0) job::MoeCollector::check_writable(paths);

  const Layout l(LayoutKind::contiguous, spec.tokens, np);
  job::MoeSetup setup;
  setup.config = spec.moe, setup.weights_dir = spec.weights_dir, setup.seed = spec.seed;
  setup.d_model = spec.d_model, setup.tokens = spec.tokens, setup.seq_len = spec.sequence_length();
  const std::vector<float> x = load_x(spec, l, rank);
  job::MoeRank stage(comm, setup, job::moe_row_index(l, rank, 1));
  // BLAS threads are per process: set them under MPI only (in-process ranks share one setting).
  const int blas_threads = comm.backend() == "local" ? 0 : threads;

  MoeMetrics best, last;
  double best_slowest = std::numeric_limits<double>::infinity();
  for (int pass = 0; pass < spec.warmup + spec.repeats; ++pass) {
    comm.barrier();
    last = stage.pass(x.data(), blas_threads);
    if (pass == 0 && rank == spec.fail_rank) throw Error("injected failure (fail_rank)");
    if (pass < spec.warmup) continue;
    const double slowest = comm.allreduce_one(last.total_s, ReduceOp::max);
    if (slowest < best_slowest) best_slowest = slowest, best = last;
  }
  MoeRankStats mine = moe_rank_stats(best, rank, stage.rows(), threads);
  mine.peak_bytes = static_cast<int64_t>(memory_peak_thread());

  MoeJobReport report;
  report.ranks = np, report.rank = rank, report.backend = comm.backend();
  report.metrics = best;
  report.stats.resize(static_cast<std::size_t>(np));
  comm.allgather(&mine, sizeof(mine), report.stats.data());

  std::optional<job::MoeCollector> collect;
  if (paths.any() || spec.check_rows > 0) {
    collect.emplace(comm, setup, paths, spec.check_rows);
    collect->gather(stage, x.data());
  }
  if (rank != 0) return report;
  if (spec.check_rows > 0) {
    report.check = collect->check(last, stage.last_bias());
    if (!report.check->ok) {
      report.failure = report.check->failure + "; no output written";
      return report;
    }
  }
  if (collect) collect->commit();
  mark_job_completed();
  for (const std::string* p : {&spec.out_path, &spec.routing_path, &spec.gates_path})
    if (!p->empty()) report.outputs.push_back(*p);
  return report;
}

}  // namespace

void MoeJobSpec::use_x_file(const std::string& path) {
  const NpyHeader h = read_npy_header(path);
  if (h.dtype != DType::f32 || h.shape.size() != kNdimX)
    throw FieldError("x", fmt::format("{} holds {} {}, expected float32 [T, d_model]", path,
                                      dtype_name(h.dtype), shape_str(h.shape)));
  x_path = path;
  tokens = h.shape[0];
  d_model = h.shape[1];
}

void MoeJobSpec::validate(int ranks) const {
  if (tokens < 1) throw FieldError("tokens", fmt::format("expected >= 1 tokens, got {}", tokens));
  if (d_model < 1) throw FieldError("d_model", fmt::format("expected >= 1, got {}", d_model));
  if (seq_len < 0 || (seq_len > 0 && tokens % seq_len != 0))
    throw FieldError("seq_len",
                     fmt::format("{} tokens are not whole sequences of {}", tokens, seq_len));
  if (!moe.on()) throw FieldError("moe_experts", "the MoE job needs experts (E >= 1)");
  validate_moe(moe, ranks);
  job::check_execution(repeats, warmup, check_rows, fail_rank);
}

std::string MoeJobSpec::config_text() const {
  return fmt::format(
      "moe {} policy {} priority {} cf {} min {} chunk {} bias {} T {} d {} seq {} "
      "x '{}' w '{}' seed {} repeats {} warmup {} check {} outputs {} {} {}",
      moe.describe(), moe_policy_name(moe.policy), moe_priority_name(moe.priority),
      moe.capacity_factor, moe.min_capacity, moe.chunk, moe.bias_rate, tokens, d_model, seq_len,
      x_path, weights_dir, seed, repeats, warmup, check_rows, !out_path.empty(),
      !routing_path.empty(), !gates_path.empty());
}

double MoeJobReport::slowest_s() const {
  double m = 0;
  for (const MoeRankStats& s : stats) m = std::max(m, s.total_s);
  return m;
}

MoeJobReport run_moe_job(Communicator& comm, const MoeJobSpec& spec) {
  return job::run_guarded(
      comm, [&] { return run_rank(comm, spec); }, nullptr);
}

MoeJobReport run_moe_job_local(int ranks, const MoeJobSpec& spec) {
  spec.validate(ranks);
  MoeJobReport report;
  run_local(ranks, [&](Communicator& comm) {
    MoeJobReport mine = run_moe_job(comm, spec);
    if (comm.rank() == 0) report = std::move(mine);
  });
  return report;
}

}  // namespace ringattn
