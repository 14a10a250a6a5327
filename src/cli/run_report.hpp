// What `ringattn run` reports on rank 0: a header with the configuration, a
// per-rank table (nccl-tests style), totals, and --metrics JSON lines (one
// object per rank, then one summary object).
//
// Per-rank figures travel to rank 0 as a fixed-size RankStats (job.hpp).
// Times are those of the best timed repeat: the one whose slowest rank was
// fastest. Metric definitions:
//   total        slowest rank's wall time of the ring pass (T_ring)
//   GFLOP/s      attention_flops of the global problem / T_ring
//   imbalance    schedule: max / mean visible pairs per rank (1 = balanced);
//                measured: max / mean compute time per rank
//   bytes/step   K/V bytes each rank sends per rotation (mean over ranks)
//   compute      kernel calls and the merge of their partial states into the
//                running state; merge: the global queries' states from other ranks
//   efficiency   T1 / (P T_ring), T1 the single-rank kernel on rank 0 (--verify)
//   peak mem     bytes in Buffers allocated by the rank, high-water mark of the
//                ring pass (inputs, O, LSE, K/V blocks, kernel workspace)
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "cli/harness.hpp"
#include "cli/metrics.hpp"
#include "cli/run_config.hpp"
#include "ringattn/job.hpp"

namespace ringattn::cli {

// The job's report (ringattn/job.hpp) with the command's configuration.
struct RunReport : JobReport {
  RunReport(const RunConfig& c, JobReport j, double command)
      : JobReport(std::move(j)), cfg(&c), command_s(command) {}
  const RunConfig* cfg;
  double command_s;  // the command on rank 0, from its start (MPI start-up included) to the report
  std::string reproduce() const;  // the command line (with mpirun -np P under MPI)
};

void print_report(const RunReport& r);
// The --metrics records of a run (one per rank, then the summary): what
// write_metrics appends, and what the Python module returns as the run's stats.
std::vector<JsonObject> run_records(const RunReport& r);
void write_metrics(MetricsFile& file, const RunReport& r);

}  // namespace ringattn::cli
