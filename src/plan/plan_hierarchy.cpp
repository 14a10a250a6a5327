// The planner's model of the hierarchical stage (ringattn/plan.hpp, StagePlan).
#include <algorithm>

#include "ringattn/hierarchy.hpp"
#include "ringattn/plan.hpp"

namespace ringattn {
namespace {

constexpr double kDoubleBytes = 8.0, kFloatBytes = 4.0, kIndexBytes = 4.0;
constexpr int64_t kStageChunkRows = 16384;  // the stage's query rows per kernel call

int64_t blocks_of(int64_t n, int64_t s) {
  return n / s + (n % s != 0 ? 1 : 0);
}

// (query, summary) pairs of one level and side for a rank's queries.
int64_t summary_pairs(const Layout& ql, int rank, const Mask& m, Positions kpos, int64_t nb) {
  int64_t n = 0;
  for (const Segment& s : ql.segments(rank))
    n += visible_pairs(m, s.positions(), s.count, kpos, nb);
  return n;
}

}  // namespace

StagePlan plan_hierarchy_stage(const PlanInput& in, const Layout& ql, const Layout& kvl,
                               double rate, const LinkSpec& link) {
  StagePlan sp;
  if (!in.hier.on()) return sp;
  const int np = ql.ranks();
  sp.on = true;
  sp.what = in.hier.describe();
  const double b = double(in.batch), hq = double(in.hq), d = double(in.head_dim);
  const double esz = double(dtype_size(in.dtype)), row = double(in.hkv) * d;
  sp.scores.assign(static_cast<std::size_t>(np), 0.0);
  sp.sent = sp.memory = sp.seconds = sp.scores;
  const double gather_lat = np > 1 ? (np - 1) * link.latency_s : 0.0;
  const double bw = np > 1 ? link.bandwidth_bps : 1.0;

  if (in.hier.levels()) {
    const LevelMasks lm = level_masks(in.hier, in.mask, in.nq, in.nk);
    const int64_t s1 = in.hier.regional_block, s2 = in.hier.global_block;
    const int64_t nb1 = blocks_of(in.nk, s1), nb2 = s2 > 0 ? blocks_of(in.nk, s2) : 0;
    sp.summaries = nb1 + nb2;
    sp.gathered_bytes = double(sp.summaries) * 2.0 * b * row * esz;
    for (int r = 0; r < np; ++r) {
      const auto ri = static_cast<std::size_t>(r);
      int64_t pairs = summary_pairs(ql, r, lm.l2_left, {0, s1}, nb1);
      if (s2 > 0) pairs += summary_pairs(ql, r, lm.l3_left, {0, s2}, nb2);
      if (lm.right) {
        pairs += summary_pairs(ql, r, lm.l2_right, {s1 - 1, s1}, nb1);
        if (s2 > 0) pairs += summary_pairs(ql, r, lm.l3_right, {0, s2}, nb2);
      }
      sp.scores[ri] = double(pairs) * b * hq;
      const double local_blocks = double(kvl.tokens(r)) / double(s1) + 2.0;
      sp.sent[ri] = np > 1 ? sp.gathered_bytes / np * (np - 1) : 0.0;
      // The tables, the gathered copy, the partial sums and one chunk's partial state.
      sp.memory[ri] = 2.0 * sp.gathered_bytes +
                      local_blocks * (2.0 + 2.0 * b * row) * kDoubleBytes +
                      double(kStageChunkRows) * hq * (d + 1) * kFloatBytes;
      sp.seconds[ri] = gather_lat + sp.gathered_bytes / bw + 4.0 * d * sp.scores[ri] / rate;
    }
    return sp;
  }

  // Routing.
  const int64_t bs = in.hier.route_block, k = in.hier.route_topk, diag = in.nk - in.nq;
  const int64_t nb = blocks_of(in.nk, bs);
  const bool causal = in.mask.limit < kUnbounded;
  sp.summaries = nb;
  sp.fetch_bound = true;
  const double means = double(nb) * b * row * esz;
  sp.gathered_bytes = means;
  for (int r = 0; r < np; ++r) {
    const auto ri = static_cast<std::size_t>(r);
    double keys = 0;
    int64_t last = -1;  // the latest key position a query of r can choose
    for (const Segment& s : ql.segments(r))
      for (int64_t t = 0; t < s.count; ++t) {
        const int64_t i = s.start + t * s.stride + diag;
        if (causal && i < 0) continue;
        const int64_t own = std::min(i, in.nk - 1) / bs;
        const int64_t cand = causal ? own : nb - 1;
        const double own_keys =
            causal ? double(i - own * bs + 1) : double(std::min(bs, in.nk - own * bs));
        keys += own_keys + double(std::min(k - 1, cand)) * double(bs);
        last = std::max(last, causal ? i : in.nk - 1);
      }
    sp.scores[ri] = keys * b * hq;
    // Upper bound on what r fetches: every block up to its last query, less its own tokens.
    const double before = double(std::min(in.nk, (last / bs + 1) * bs));
    const double fetched = std::max(0.0, before - double(kvl.tokens(r))) * 2.0 * b * row * esz;
    sp.sent[ri] = (np > 1 ? means / np * (np - 1) : 0.0) + fetched;  // served ~ fetched on average
    const double own_kv = 2.0 * b * double(kvl.max_tokens()) * row * esz;
    sp.memory[ri] = 2.0 * means + b * double(ql.tokens(r)) * hq * double(k) * (kIndexBytes + 8.0) +
                    2.0 * std::max(own_kv, 2.0 * b * double(bs) * row * esz);
    sp.seconds[ri] =
        gather_lat + means / bw + (np > 1 ? fetched / bw : 0.0) + 4.0 * d * sp.scores[ri] / rate;
  }
  return sp;
}

}  // namespace ringattn
