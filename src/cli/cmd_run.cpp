// ringattn run: the multi-rank ring-attention job.
//
//   ringattn run --ranks-local 4 --seq-len 65536 --causal --verify     (threads of one process)
//   mpirun -np 4 ringattn run --config configs/default.ini             (one rank per process)
//
// This file picks the backend and runs the job (ringattn/job.hpp) on it; the
// options are in cli/run_config.cpp, the report in cli/run_report.cpp.
#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <optional>
#include <string>

#include "cli/backend.hpp"
#include "cli/commands.hpp"
#include "cli/metrics.hpp"
#include "cli/options.hpp"
#include "cli/run_config.hpp"
#include "cli/run_report.hpp"
#include "ringattn/comm.hpp"
#include "ringattn/comm_mpi.hpp"
#include "ringattn/job.hpp"
#include "ringattn/tempfiles.hpp"

namespace ringattn::cli {
namespace {

// Rank 0: the table, then (a run whose checks passed) the --metrics records.
using Clock = std::chrono::steady_clock;

int finish(const RunConfig& cfg, JobReport job, Clock::time_point started) {
  const RunReport report(cfg, std::move(job),
                         std::chrono::duration<double>(Clock::now() - started).count());
  print_report(report);
  if (!report.failure.empty()) {
    std::fflush(stdout);
    fmt::print(stderr, "ringattn: error: option '--{}': {}\n",
               option_for_field(report.failure_field), report.failure);
    return kExitFailure;
  }
  MetricsFile metrics(cfg.metrics_path);
  write_metrics(metrics, report);
  return kExitOk;
}

}  // namespace

int cmd_run(int argc, char** argv) {
  const Clock::time_point started = Clock::now();
  const std::optional<ParsedOptions> opt = parse_options(run_spec(), argc, argv);
  if (!opt) return kExitOk;
  const Backend backend = choose_backend(*opt);
  // Before MPI starts (hundreds of ms on a loaded machine): a launcher's SIGTERM then still
  // says why the rank ends, instead of a silent default death.
  install_temp_cleanup_handlers();
  if (backend.mpi) {
    Communicator& comm = mpi_world();
    set_signal_context(comm.rank());
    const RunConfig cfg = resolve_or_abort(comm, [&] { return make_run_config(*opt); });
    if (comm.rank() == 0) MetricsFile::check_writable(cfg.metrics_path);
    JobReport job = run_job(comm, cfg);
    return comm.rank() == 0 ? finish(cfg, std::move(job), started) : kExitOk;
  }
  const RunConfig cfg = make_run_config(*opt);
  MetricsFile::check_writable(cfg.metrics_path);  // appended to once the run succeeded
  return finish(cfg, run_job_local(backend.local_ranks, cfg), started);
}

}  // namespace ringattn::cli
