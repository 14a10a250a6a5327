// The hierarchical stage of a ring job (semantics: ringattn/hierarchy.hpp).
// The ring pass computes the exact part (hierarchy_ring_mask: the window
// extended to block boundaries for levels; the window, sinks and global
// tokens for routing); this stage adds the rest to the same running state,
// merged by LSE:
//
//   levels    every rank sums its keys per aligned block, the sums go to each
//             block's owner (all-to-all), the owners' means are all-gathered
//             once (N / s x Hkv x D per level); every rank attends its queries
//             to the summaries with the CPU kernel, one call per run of
//             equally weighted blocks (logit + log(c) as an LSE shift).
//   routing   the same all-gather of block means (keys only); each rank routes
//             its queries locally, then fetches just the chosen blocks from
//             their owners (all-to-all of requests, then of rows) in rounds of
//             bounded memory, and attends each (block, head)'s queries with
//             the kernel, keys the ring already covered masked out.
//
// Collective: every rank of `comm` calls it with the same problem. Host
// memory and the CPU kernel (the cpu device). Per-rank memory O(N / P + N / s).
#pragma once

#include <cstdint>

#include "ringattn/comm.hpp"
#include "ringattn/kernel.hpp"
#include "ringattn/ring.hpp"

namespace ringattn {

struct StageMetrics {
  double total_s = 0;          // wall time of the stage
  double compute_s = 0;        // in the kernel and the merges
  double comm_s = 0;           // in collectives (block means, requests, blocks)
  int64_t bytes_sent = 0;      // this rank's share of every collective
  int64_t summaries = 0;       // blocks summarised over all levels (global count)
  double pair_evals = 0;       // (query, head, key or summary) scores computed by this rank
  int64_t fetched_tokens = 0;  // routing: key tokens received from other ranks
  KernelStats tiles;
};

// The mask the ring runs for a problem with a hierarchy: levels: the exact
// part (LevelMasks::exact); routing: the problem's mask; off: the mask.
Mask hierarchy_ring_mask(const AttentionProblem& p);

// Adds the stage's part of p (p.hier.on(); p.mask the problem's mask, not the
// ring's) to this rank's state o [B, nq_local, Hq, D], lse [B, Hq, nq_local].
// route: routing only, [B, nq_local, Hq, topk] int32 (may be null).
StageMetrics hierarchy_stage(Communicator& comm, const RingProblem& p, float* o, float* lse,
                             const KernelOptions& kopt, int32_t* route = nullptr);

// The whole problem on this thread as one rank: the kernel on the exact part,
// then the stage (a.hier on or off). o [B, Nq, Hq, D], lse [B, Hq, Nq] host
// float32; route [B, Nq, Hq, topk] with routing (may be null).
// *stage (may be null) gets the stage's figures.
KernelStats hierarchical_attention(const AttentionArgs& a, float* o, float* lse,
                                   const KernelOptions& kopt = {}, int32_t* route = nullptr,
                                   StageMetrics* stage = nullptr);

// FLOPs of what hierarchical_attention computed: the exact part's visible
// pairs and the stage's scores (4 D each).
double hierarchical_flops(const AttentionArgs& a, const StageMetrics& stage);

}  // namespace ringattn
