// The K/V selection stage (semantics: ringattn/kv_select.hpp) on the ring and
// on one process.
//
// On the ring it runs after the job's exact pass, on the same seams: the
// importance pass is the ring loop (ring_attention) with an engine whose
// "attend and merge" adds the column sums of each (query segment, key block)
// pair to the importance instead of merging a state; the final pass is the
// ring loop with the kept set (RingProblem::keep), and for the INT4 rest a
// second one over the block quantized to INT4 with the complementary set,
// merged by LSE. The schedule and the transfers are the exact pass's.
//
// Not supported (FieldError): global tokens (a global query is attended on
// every rank, so its final LSE is not where the importance pass needs it),
// K/V quantized on the wire or in memory (--kv-wire, --kv-store), the
// hierarchical stage, and the cuda device (the GPU kernel has no kept-key sets).
#pragma once

#include <cstdint>
#include <vector>

#include "ringattn/comm.hpp"
#include "ringattn/hierarchy_stage.hpp"  // StageMetrics
#include "ringattn/kernel.hpp"
#include "ringattn/kv_select.hpp"
#include "ringattn/ring.hpp"
#include "ringattn/schedule.hpp"

namespace ringattn {

// Throws FieldError naming what the stage cannot run with ("kv_keep" with the
// reason) for problem p (its mask, hierarchy) and the formats in use.
void check_select_supported(const AttentionProblem& p, const KvSelect& sel, bool kv_quantized);

// The figures of one run of the stage on one rank.
struct SelectMetrics : StageMetrics {
  double importance_s = 0;  // the importance pass (ring) and its all-reduce
  double final_s = 0;       // the final pass(es)
  int64_t kept = 0;         // kept keys summed over (batch, selection head)
  int64_t keys = 0;         // B Hsel Nk
  // This rank's sum of squares of (O - O_exact) and of O_exact over its rows:
  // the selection's change of the output (all ranks' sums give its relative
  // Frobenius error against exact attention).
  double diff2 = 0, exact2 = 0;
};

// After the exact pass: o [B, nq_local, Hq, D] and lse [B, Hq, nq_local] hold
// this rank's exact result for p (p.keep off); they are replaced by attention
// over the kept keys. keep (resized to [B, Hsel, Nk]) gets the kept set, the
// same on every rank. A collective: every rank calls it with the same schedule.
SelectMetrics kv_select_stage(Communicator& comm, const RingSchedule& schedule,
                              const RingProblem& p, const KvSelect& sel, float* o, float* lse,
                              const KernelOptions& kopt, std::vector<uint8_t>* keep);

// The whole problem on this thread's process: exact attention, importance,
// selection and the final attention with the kernel. o [B, Nq, Hq, D], lse
// [B, Hq, Nq]; keep (may be null) gets the kept set [B, Hsel, Nk]. a.kpos and
// a.qpos must be {0, 1} (the whole sequences).
KernelStats kv_select_attention(const AttentionArgs& a, const KvSelect& sel, float* o, float* lse,
                                const KernelOptions& kopt, std::vector<uint8_t>* keep = nullptr);

}  // namespace ringattn
