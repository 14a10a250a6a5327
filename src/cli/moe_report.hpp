// What `ringattn moe` reports on rank 0: a header with the configuration, a
// per-rank table, the routing's global figures (capacity, per-expert load,
// drops, losses), the reference check, and --metrics JSON lines (one object per
// rank, then one summary object; keys in docs/METRICS.md).
//
// Per-rank figures are those of the best timed pass (the one whose slowest rank
// was fastest; ringattn/moe_job.hpp). Metric definitions:
//   FFN GFLOP/s   the rank's expert FLOPs (three GEMMs: 6 d_model d_ff per
//                 computed row) / its FFN time
//   % sgemm       that rate over the same rank's sgemm rate, measured before the
//                 job on the same threads (measure_sgemm_gflops, 2048^3)
//   comm/FFN      (dispatch + combine) / FFN time: what the all-to-alls cost
//                 against the expert work they feed
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "cli/metrics.hpp"
#include "ringattn/moe_job.hpp"

namespace ringattn::cli {

// What `ringattn moe` resolves its options to: the job and what only the command needs.
struct MoeRunConfig {
  MoeJobSpec spec;
  bool baseline = true;      // measure each rank's sgemm rate first (not --no-baseline)
  std::string metrics_path;  // --metrics
  std::string command_line;  // `ringattn moe ...` with every effective option
};

// The job's report with the command's configuration and the ranks' sgemm rates.
struct MoeRunReport {
  const MoeRunConfig* cfg = nullptr;
  MoeJobReport job;
  std::vector<double> sgemm_gflops;  // per rank; empty with --no-baseline
  std::string reproduce() const;     // the command line (with mpirun -np P under MPI)
};

void print_moe_report(const MoeRunReport& r);

// The pieces `run` shares (the stage after attention).
using LineFn = std::function<void(const std::string& label, const std::string& value)>;
// capacity, per-expert load, drops, unrouted tokens, losses
void print_moe_summary(const MoeMetrics& m, int64_t tokens, const LineFn& line);
void print_moe_check(const MoeCheck& k, const LineFn& line);  // "moe check ...: ok"
// moe_rows_sent, moe_ms, moe_route_ms, ... of one rank.
void add_moe_rank_keys(JsonObject& row, const MoeRankStats& s);
// moe_experts ... moe_z_loss of the pass; moe_check_rows ... moe_ref_pass of the check.
void add_moe_summary_keys(JsonObject& sum, const MoeConfig& c, const MoeMetrics& m);
void add_moe_check_keys(JsonObject& sum, const MoeCheck& k);
void write_moe_metrics(MetricsFile& file, const MoeRunReport& r);

}  // namespace ringattn::cli
