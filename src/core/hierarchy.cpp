#include "ringattn/hierarchy.hpp"

#include <fmt/format.h>

#include "ringattn/attention.hpp"  // kMaxSeqLen
#include "ringattn/error.hpp"

namespace ringattn {

std::string Hierarchy::describe() const {
  if (levels())
    return global_block > 0
               ? fmt::format("levels {}/{} + {}", regional_block, regional_window, global_block)
               : fmt::format("levels {}/{}", regional_block, regional_window);
  if (routing()) return fmt::format("route {} top {}", route_block, route_topk);
  return "";
}

namespace {

void check_size(const char* field, int64_t v, int64_t min) {
  if (v < min || v > kMaxSeqLen)
    throw FieldError(field, fmt::format("expected {} to {} tokens, got {}", min, kMaxSeqLen, v));
}

// The left and right windows of the problem's band (-1: unbounded), in tokens.
int64_t left_window(const Mask& m, int64_t diag) {
  return m.lo <= -kUnbounded ? -1 : diag - m.lo;
}
bool two_sided(const Mask& m) {
  return m.limit >= kUnbounded && m.hi < kUnbounded;
}

}  // namespace

void validate_hierarchy(const Hierarchy& h, const Mask& mask, int64_t nq, int64_t nk) {
  if (!h.on()) {
    if (h.regional_window != 0 || h.global_block != 0)
      throw FieldError(h.regional_window != 0 ? "regional_window" : "global_block",
                       "needs the regional level (regional_block > 0)");
    if (h.route_topk != 0) throw FieldError("route_topk", "needs block routing (route_block > 0)");
    return;
  }
  if (h.levels() && h.routing())
    throw FieldError("route_block",
                     "block routing replaces the regional level: give one of regional_block and "
                     "route_block");
  if (mask.dilation != 1 || mask.blocks.on() || mask.aligned())
    throw FieldError(h.levels() ? "regional_block" : "route_block",
                     "combines only with windows, sinks and global tokens (not with a dilated "
                     "window or block-sparse masks)");
  const int64_t diag = nk - nq;
  if (h.routing()) {
    check_size("route_block", h.route_block, 1);
    if (h.route_topk < 1 || h.route_topk > kMaxSeqLen)
      throw FieldError("route_topk", fmt::format("expected >= 1 blocks, got {}", h.route_topk));
    return;
  }
  check_size("regional_block", h.regional_block, 1);
  const int64_t w1 = left_window(mask, diag);
  if (w1 < 0)
    throw FieldError("regional_block",
                     "needs a left window (window_left >= 0): the exact part the levels extend");
  int64_t wr = 0;
  if (two_sided(mask)) wr = mask.hi - diag;
  const int64_t need = std::max(w1, wr) + h.regional_block;
  if (h.regional_window < need || h.regional_window > kMaxSeqLen)
    throw FieldError(
        "regional_window",
        fmt::format("expected >= {} (the window {} plus one regional block of {}), "
                    "up to {}, got {}",
                    need, std::max(w1, wr), h.regional_block, kMaxSeqLen, h.regional_window));
  if (h.global_block != 0) {
    check_size("global_block", h.global_block, 1);
    if (h.global_block % h.regional_block != 0)
      throw FieldError("global_block",
                       fmt::format("expected a multiple of the regional block {}, got {}",
                                   h.regional_block, h.global_block));
  }
}

Mask routing_base_mask(const Mask& mask) {
  Mask m = mask;
  if (m.lo <= -kUnbounded && (m.hi >= kUnbounded || m.hi >= m.limit)) m.lo = 1, m.hi = 0;
  return m;
}

LevelMasks level_masks(const Hierarchy& h, const Mask& mask, int64_t nq, int64_t nk) {
  const int64_t diag = nk - nq, s1 = h.regional_block, s2 = h.global_block, w2 = h.regional_window;
  LevelMasks m;
  m.left = true;
  m.right = two_sided(mask);
  m.exact = mask;
  m.exact.align_lo = s1;
  if (m.right) m.exact.align_hi = s1;

  // Summaries: no causal bound of their own (every summary lies outside the
  // exact window), global queries see none (they see every key exactly).
  Mask base;
  base.n_skip_q = mask.n_global;
  for (int i = 0; i < mask.n_global; ++i) base.skip_q[i] = mask.global[i];
  const int64_t lo1 = mask.lo, lo2 = diag - w2;
  // Left level 2, summary b at position b s1: g(i) <= b s1 and (b + 1) s1 <= e(i).
  m.l2_left = base;
  m.l2_left.hi = lo1 - s1;
  if (s2 > 0) m.l2_left.lo = lo2, m.l2_left.align_lo = s2;
  // Left level 3, summary c at position c s2: (c + 1) s2 <= g(i).
  m.l3_left = base;
  m.l3_left.hi = lo2 - s2;
  if (m.right) {
    const int64_t hi1 = mask.hi, hi2 = diag + w2;
    // Right level 2, summary b at position b s1 + s1 - 1: b s1 >= e_r(i), (b + 1) s1 <= g_r(i).
    m.l2_right = base;
    m.l2_right.lo = hi1 + s1;
    if (s2 > 0) m.l2_right.hi = hi2, m.l2_right.align_hi = s2;
    // Right level 3, summary c at position c s2: c s2 >= g_r(i).
    m.l3_right = base;
    m.l3_right.lo = hi2 + 1;
  }
  return m;
}

}  // namespace ringattn
