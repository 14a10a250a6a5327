// The MoE stage (semantics: ringattn/moe.hpp): routes each rank's tokens to
// the experts held on other ranks (expert parallelism) and back, over the
// communicator's all-to-all.
//
//   route     each rank: logits = X W_g (GEMM), softmax, choices (chunk policy:
//             partial chunk sums go to each chunk's owner rank, which returns
//             the chunk's logits); one record per assignment (token, choice,
//             expert, p) goes to the expert's owner (counts exchanged first);
//             the owner orders its experts' records by the priority and
//             accepts up to C (expert choice: each rank sends its local top C
//             per expert, the owner keeps the global top C); accept flags return.
//   dispatch  accepted rows go to the owners (all-to-all), grouped per expert.
//   ffn       per held expert, the SwiGLU FFN as three GEMMs over row tiles.
//   combine   outputs return by the inverse all-to-all; y_t = sum of gate x
//             output in choice order, in the rank's own row order.
//
// Every decision is made once, by the expert's owner, from records ordered by
// global token index, so results do not depend on P, the layout or the
// communicator (up to float32 rounding in the GEMMs). Collective: every rank
// of `comm` calls it with the same config and weights' router. Per-rank
// memory: its rows, the rows its experts accept (about k cf T / P), records
// of 24 bytes per assignment, and two FFN tiles of 1024 x d_ff.
#pragma once

#include <cstdint>
#include <vector>

#include "ringattn/comm.hpp"
#include "ringattn/memory.hpp"
#include "ringattn/moe.hpp"

namespace ringattn {

// This rank's tokens.
struct MoeTokens {
  const float* x = nullptr;  // [rows, d_model] float32
  int64_t rows = 0;
  const int64_t* index = nullptr;  // global token index of each row (distinct)
  int64_t tokens = 0;              // T, over all ranks
  int64_t seq_len = 0;             // tokens per sequence (T a multiple of it); chunks stay inside
};

struct MoeMetrics {
  // This rank's figures.
  double total_s = 0, route_s = 0, dispatch_s = 0, ffn_s = 0, combine_s = 0;
  double comm_s = 0;          // of the above, inside the collectives
  int64_t bytes_sent = 0;     // to other ranks: records, flags, rows out and back, chunk sums
  int64_t rows_sent = 0;      // token rows dispatched to other ranks
  int64_t rows_computed = 0;  // rows this rank's experts ran
  double ffn_flops = 0;       // of those rows
  // Global figures (the same on every rank).
  int64_t capacity = 0;                  // C (INT64_MAX: dropless)
  std::vector<int64_t> requested, load;  // per expert
  int64_t assignments = 0, dropped = 0, unrouted = 0;
  double aux_loss = 0, z_loss = 0;
  std::vector<float> next_bias;  // the balance bias for the next pass (moe_next_bias)
  double drop_rate() const { return assignments > 0 ? double(dropped) / double(assignments) : 0.0; }
};

// Buffers the stage keeps between passes (rows out and in, the experts' inputs
// and outputs, the FFN's hidden tiles): a caller that runs it repeatedly passes
// one, so later passes neither allocate nor fault in fresh pages.
struct MoeWorkspace {
  Buffer rows_out, rows_in, expert_in, expert_out, hidden1, hidden3;
};

// Runs the stage on this rank's tokens. w: the router and bias (all experts'
// width) and the experts moe_experts_of(E, P, rank) holds. y [rows, d_model],
// routing and gates [rows, c.width()] (routing and gates may be null).
// blas_threads > 0 sets the BLAS threads first (process-wide: MPI ranks only).
MoeMetrics moe_stage(Communicator& comm, const MoeConfig& c, const MoeWeights& w,
                     const MoeTokens& in, float* y, int32_t* routing, float* gates,
                     int blas_threads = 0, MoeWorkspace* workspace = nullptr);

}  // namespace ringattn
