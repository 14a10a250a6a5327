// What `ringattn run` reports on rank 0: a header with the configuration, a
// per-rank table (nccl-tests style), totals, and --metrics JSON lines (one
// object per rank, then one summary object).
//
// Per-rank figures travel to rank 0 as a fixed-size RankStats (allgather).
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
#include "ringattn/reference.hpp"
#include "ringattn/ring.hpp"

namespace ringattn::cli {

// One rank's figures; trivially copyable (gathered as bytes).
struct RankStats {
  int64_t rank = 0, q_tokens = 0, kv_tokens = 0, threads = 0;
  int64_t steps = 0, computed_steps = 0, bytes_sent = 0, peak_bytes = 0, pairs = 0;
  int64_t tiles_total = 0, tiles_computed = 0, tiles_partial = 0;  // in the kernel calls made
  int64_t full_ring_bytes = 0;  // what a ring of P - 1 rotations would send from this rank
  int64_t shared_bytes = 0;     // of bytes_sent: sinks, global keys and queries, their states
  double total_s = 0, compute_s = 0, merge_s = 0, wait_s = 0, step_mean_s = 0;
};

RankStats rank_stats(const RingMetrics& m, int rank, int64_t q_tokens, int64_t kv_tokens,
                     int threads, std::size_t peak_bytes, int64_t full_ring_bytes);

struct VerifyResult {
  double t1_s = 0;  // the single-rank kernel, rank 0's threads
  ErrorStats err;
  Tolerance tol{};
  bool ok = false;
};

struct RunReport {
  const RunConfig* cfg = nullptr;
  int ranks = 1;
  std::string backend;  // "local", "mpi"
  std::string isa;
  double flops = 0;                             // of the global problem
  double sched_imbalance = 1;                   // RingSchedule::imbalance()
  std::string transfer;                         // "ring" or "direct" (RingSchedule::transfer)
  int64_t shared_keys = 0, shared_queries = 0;  // tokens taken out of the rotation
  int repeats = 1;
  std::vector<RankStats> stats;       // per rank, in rank order
  std::size_t rank0_output_peak = 0;  // rank 0's peak while writing/verifying
  std::optional<VerifyResult> verify;
  std::optional<VerifyResult> sampled;  // --check-rows (t1_s unused)
  int64_t sampled_rows = 0;
  std::string outputs;  // "o.npy, lse.npy" or ""

  double slowest_s() const;
  double efficiency() const;  // NaN without verify
  std::string reproduce() const;
};

void print_report(const RunReport& r);
void write_metrics(MetricsFile& file, const RunReport& r);

}  // namespace ringattn::cli
