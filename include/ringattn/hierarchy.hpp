// Hierarchical aggregation: what a query sees beyond its exact window, through
// block summaries (levels) or through the blocks it routes to (block routing).
// The semantics every implementation and the float64 reference follow.
//
// Positions: query t of Nq sits at key position i = t + (Nk - Nq) (bottom-right
// alignment, as for the causal mask). W1 is the exact window (--window-left),
// Wr the right window (--window-right, two-sided only).
//
// Levels (regional_block s1 > 0; needs a left window W1 >= 0):
//   e(i) = max(0, s1 floor((i - W1) / s1))              exact keys from e(i) up
//   g(i) = max(0, min(e(i), s2 floor((i - W2) / s2)))   with level 3, else 0
//   keys in [e(i), i]          attended exactly (the window extended down to a
//                              block boundary, so no block is ever split)
//   s1-blocks in [g(i), e(i))  level 2: one summary per aligned block
//   s2-blocks in [0, g(i))     level 3 (global_block s2, a multiple of s1)
// Two-sided (not causal, a right window Wr): mirrored,
//   e_r(i) = s1 ceil((i + Wr + 1) / s1)   exact keys below e_r(i)
//   g_r(i) = max(e_r(i), s2 ceil((i + W2 + 1) / s2))   with level 3, else +inf
//   s1-blocks starting in [e_r(i), g_r(i)) level 2; s2-blocks from g_r(i) level 3.
// A block [b s, (b + 1) s) ∩ [0, Nk) is summarised over its keys that are not
// sinks or global tokens (those are attended exactly): c of them; c = 0 drops
// the block. Pooled key / value = the float64 mean of those rows, rounded to
// the storage dtype; logit = scale q . k_pool + log(c). So a block of identical
// keys contributes exactly what its c keys would. Global queries see every key
// exactly (no summaries). Requires W2 >= W1 + s1 (and >= Wr + s1 two-sided).
//
// Block routing (route_block B > 0, route_topk k >= 1; MoBA):
//   key blocks [c B, (c + 1) B) ∩ [0, Nk); own(i) = floor(i / B) when 0 <= i < Nk
//   candidates: causal: blocks c < own(i) (none when i < 0);
//               not causal: every block but own(i)
//   score(c) = q_i . kbar_c (the query head's K/V head), kbar_c = the float64
//   mean of all the block's key rows, rounded to the storage dtype
//   chosen: the k - 1 best candidates (ties: lowest block index), plus own(i)
//   attended keys: the union of the mask's keys (window, sinks, global; no
//   band without a window) and the chosen blocks' keys (own block: keys j <= i
//   under causal), each key once, exactly.
// The route output lists the chosen blocks per (batch, query, head) ascending,
// padded with -1 to k entries.
#pragma once

#include <cstdint>
#include <string>

#include "ringattn/mask.hpp"

namespace ringattn {

struct Hierarchy {
  int64_t regional_block = 0;   // s1, tokens; 0: no levels
  int64_t regional_window = 0;  // W2, tokens
  int64_t global_block = 0;     // s2, tokens (a multiple of s1); 0: no level 3
  int64_t route_block = 0;      // B, tokens; 0: no block routing
  int64_t route_topk = 0;       // k

  bool levels() const { return regional_block > 0; }
  bool routing() const { return route_block > 0; }
  bool on() const { return levels() || routing(); }
  // "levels 64/131072 + 1024", "route 4096 top 8", "" when off
  std::string describe() const;
};

// The parts of a hierarchical problem, as masks in global positions (nq, nk:
// the whole sequences; `mask` is the problem's mask with the window).
struct LevelMasks {
  Mask exact;                        // the window extended to block boundaries, sinks, global
  bool left = false, right = false;  // summaries on that side
  // Summaries are keys at positions start + b * stride (one per block b).
  // Left side: positions b * s (block starts); right side: b * s + s - 1 (ends).
  Mask l2_left, l3_left, l2_right, l3_right;
};

// Routing's exact part: the mask, with its band emptied when it is no window
// (unbounded below and bounded above only by the causal bound, or not at all).
Mask routing_base_mask(const Mask& mask);

// Throws FieldError("regional_block" | "regional_window" | "global_block" |
// "route_block" | "route_topk", ...) when the spec cannot run with `mask`.
void validate_hierarchy(const Hierarchy& h, const Mask& mask, int64_t nq, int64_t nk);

// The masks of the levels (h.levels() must be on and valid).
LevelMasks level_masks(const Hierarchy& h, const Mask& mask, int64_t nq, int64_t nk);

}  // namespace ringattn
