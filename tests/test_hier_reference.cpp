// The float64 reference of hierarchical aggregation (levels and block routing)
// against answers known another way: the plain reference where the hierarchy
// changes nothing (a window covering every key, blocks of identical keys,
// routing to every block), a literal enumeration of every row's items on tiny
// sizes, exact ties in routing, and the rows its key loader is asked for.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include "ringattn/error.hpp"
#include "ringattn/hier_reference.hpp"
#include "ringattn/reference.hpp"
#include "util.hpp"

namespace ringattn {
namespace {

using test::make_problem;
using test::Problem;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kTol = 1e-12;
constexpr int64_t kLoaderWindow = 4096;  // the most rows the reference asks for at once

enum class Kind { causal, two_sided, left_only };
const char* kind_name(Kind k) {
  return k == Kind::causal ? "causal" : (k == Kind::two_sided ? "two-sided" : "left-only");
}

// A window of w1 keys before the diagonal (and wr after it, two-sided); with
// `extras`, 2 sinks and the global tokens [17, 20).
Mask window_mask(Kind kind, int64_t nq, int64_t nk, int64_t w1, int64_t wr, bool extras) {
  const int64_t diag = nk - nq;
  Mask m = kind == Kind::causal ? Mask::causal(diag) : Mask::none();
  m.lo = diag - w1;
  if (kind == Kind::two_sided) m.hi = diag + wr;
  if (extras) {
    m.sinks = 2;
    m.n_global = 1;
    m.global[0] = {17, 20};
  }
  return m;
}

Hierarchy levels(int64_t s1, int64_t w2, int64_t s2) {
  Hierarchy h;
  h.regional_block = s1, h.regional_window = w2, h.global_block = s2;
  return h;
}

Hierarchy routing(int64_t block, int64_t topk) {
  Hierarchy h;
  h.route_block = block, h.route_topk = topk;
  return h;
}

// The plain reference of the same inputs under `mask`, without the hierarchy.
ReferenceResult plain(const AttentionArgs& a, const Mask& mask) {
  AttentionArgs p = a;
  p.hier = Hierarchy{};
  p.mask = mask;
  return reference_attention(p);
}

// Every O and LSE value within tol of the expected one, relative to max(1, |x|).
void expect_close(const ReferenceResult& got, const ReferenceResult& want, double tol_o,
                  double tol_lse, const std::string& what) {
  ASSERT_EQ(got.o.size(), want.o.size()) << what;
  ASSERT_EQ(got.lse.size(), want.lse.size()) << what;
  double worst_o = 0, worst_lse = 0;
  int64_t mismatched = 0;
  for (std::size_t e = 0; e < got.o.size(); ++e)
    worst_o =
        std::max(worst_o, std::abs(got.o[e] - want.o[e]) / std::max(1.0, std::abs(want.o[e])));
  for (std::size_t e = 0; e < got.lse.size(); ++e) {
    if (got.lse[e] == -kInf || want.lse[e] == -kInf) {
      mismatched += got.lse[e] != want.lse[e];
      continue;
    }
    worst_lse = std::max(worst_lse,
                         std::abs(got.lse[e] - want.lse[e]) / std::max(1.0, std::abs(want.lse[e])));
  }
  EXPECT_LE(worst_o, tol_o) << what;
  EXPECT_LE(worst_lse, tol_lse) << what;
  EXPECT_EQ(mismatched, 0) << what;
}

// Key (and with `values`, value) row j of every batch and head set to row
// j - j % s: blocks of s identical rows.
void make_blocks_identical(Problem& pr, int64_t s, bool values) {
  const AttentionArgs& a = pr.args;
  const int64_t row = a.hkv * a.head_dim;
  for (int64_t b = 0; b < a.batch; ++b)
    for (int64_t j = 0; j < a.nk; ++j)
      for (int64_t e = 0; e < row; ++e) {
        const int64_t dst = (b * a.nk + j) * row + e, src = (b * a.nk + j - j % s) * row + e;
        pr.k.set(dst, pr.k.get(src));
        if (values) pr.v.set(dst, pr.v.get(src));
      }
}

// 1. A window W1, Wr >= max(Nq, Nk) leaves nothing to summarise:
// the levels give the plain reference under the same mask.
TEST(HierReference, WindowCoveringEveryKeyIsPlainAttention) {
  const int64_t sizes[][2] = {{48, 48}, {37, 53}, {53, 37}};
  for (const auto& nqk : sizes)
    for (Kind kind : {Kind::causal, Kind::two_sided, Kind::left_only})
      for (bool extras : {false, true}) {
        // i = t + Nk - Nq reaches Nk - Nq below 0: the window covers i - Nk .. i + Nq.
        const int64_t nq = nqk[0], nk = nqk[1], w = std::max(nq, nk) + 3;
        Problem pr = make_problem(2, nq, nk, 4, 2, 8, DType::f32, 11);
        pr.args.mask = window_mask(kind, nq, nk, w, w, extras);
        pr.args.hier = levels(4, w + 4, 8);
        const std::string what =
            fmt::format("{} Nq={} Nk={} extras={}", kind_name(kind), nq, nk, extras);
        expect_close(reference_hierarchical(pr.args), plain(pr.args, pr.args.mask), kTol, kTol,
                     what);
      }
}

// 2. Blocks of s2 identical keys (so every s1 block too): a summary of c keys
// contributes exactly what the c keys would, so the levels give dense
// attention (the causal bound only).
// With identical values too O matches to 1e-12; with random values only the
// pooled value's rounding to float32 separates them.
TEST(HierReference, IdenticalKeyBlocksGiveDenseAttention) {
  const int64_t sizes[][2] = {{100, 100}, {70, 100}, {100, 70}};
  const int64_t s1 = 4, s2 = 12, w1 = 6, wr = 5, w2 = 17;
  for (const auto& nqk : sizes)
    for (Kind kind : {Kind::causal, Kind::two_sided, Kind::left_only})
      for (bool extras : {false, true})
        for (bool same_values : {true, false}) {
          const int64_t nq = nqk[0], nk = nqk[1];
          Problem pr = make_problem(2, nq, nk, 4, 2, 8, DType::f32, 21);
          make_blocks_identical(pr, s2, same_values);
          pr.args.mask = window_mask(kind, nq, nk, w1, wr, extras);
          pr.args.hier = levels(s1, w2, s2);
          const Mask dense = kind == Kind::causal ? Mask::causal(nk - nq) : Mask::none();
          const std::string what = fmt::format("{} Nq={} Nk={} extras={} same values={}",
                                               kind_name(kind), nq, nk, extras, same_values);
          expect_close(reference_hierarchical(pr.args), plain(pr.args, dense),
                       same_values ? kTol : 1e-6, kTol, what);
        }
}

// 3. Routing to every block (top-k above the block count) is dense attention:
// causal under a causal mask, full otherwise; the route lists every block it
// may (causal: up to its own) and no candidate is left out (gap +inf).
TEST(HierReference, RoutingToEveryBlockIsDense) {
  const int64_t sizes[][2] = {{53, 53}, {40, 53}, {60, 53}};
  const int64_t bs = 5;
  for (const auto& nqk : sizes)
    for (int variant = 0; variant < 3; ++variant) {
      const int64_t nq = nqk[0], nk = nqk[1], diag = nk - nq, nb = (nk + bs - 1) / bs;
      Problem pr = make_problem(2, nq, nk, 4, 2, 8, DType::f32, 31);
      const bool causal = variant != 1;
      pr.args.mask = causal ? Mask::causal(diag) : Mask::none();
      if (variant == 2) pr.args.mask = window_mask(Kind::causal, nq, nk, 6, 0, true);
      pr.args.hier = routing(bs, nb + 2);
      std::vector<int32_t> route;
      std::vector<double> gap;
      const ReferenceResult r = reference_hierarchical(pr.args, &route, &gap);
      const std::string what = fmt::format("variant {} Nq={} Nk={}", variant, nq, nk);
      expect_close(r, plain(pr.args, causal ? Mask::causal(diag) : Mask::none()), kTol, kTol, what);
      const int64_t topk = nb + 2, hq = 4;
      ASSERT_EQ(route.size(), static_cast<std::size_t>(2 * nq * hq * topk)) << what;
      ASSERT_EQ(gap.size(), static_cast<std::size_t>(2 * nq * hq)) << what;
      for (int64_t b = 0; b < 2; ++b)
        for (int64_t t = 0; t < nq; ++t)
          for (int64_t h = 0; h < hq; ++h) {
            const int64_t i = t + diag;
            const int64_t last = causal ? (i >= 0 ? i / bs : -1) : nb - 1;
            const int64_t base = ((b * nq + t) * hq + h) * topk;
            for (int64_t r2 = 0; r2 < topk; ++r2)
              EXPECT_EQ(route[static_cast<std::size_t>(base + r2)], r2 <= last ? r2 : -1)
                  << what << " row " << t << " entry " << r2;
            EXPECT_EQ(gap[static_cast<std::size_t>((b * nq + t) * hq + h)], kInf) << what;
          }
    }
}

// ---- The literal version: every row's items enumerated from hierarchy.hpp.

int64_t floor_of(int64_t a, int64_t b) {  // b > 0
  int64_t q = a / b;
  if (q * b > a) --q;
  return q;
}
int64_t ceil_of(int64_t a, int64_t b) {  // b > 0
  int64_t q = a / b;
  if (q * b < a) ++q;
  return q;
}

// The softmax scale of the float64 references: the given one, or 1/sqrt(D) in double.
double scale_of(const AttentionArgs& a) {
  return a.scale != 0.0f ? double(a.scale) : 1.0 / std::sqrt(double(a.head_dim));
}

struct Item {
  double logit;
  std::vector<double> v;
};

// Batch b, query head h of problem pr: q, and key / value rows as doubles.
struct RowView {
  const Problem& pr;
  int64_t b, h;
  int64_t hk() const { return h / (pr.args.hq / pr.args.hkv); }
  double q(int64_t t, int64_t d) const {
    const AttentionArgs& a = pr.args;
    return pr.q.get(((b * a.nq + t) * a.hq + h) * a.head_dim + d);
  }
  double k(int64_t j, int64_t d) const {
    const AttentionArgs& a = pr.args;
    return pr.k.get(((b * a.nk + j) * a.hkv + hk()) * a.head_dim + d);
  }
  double v(int64_t j, int64_t d) const {
    const AttentionArgs& a = pr.args;
    return pr.v.get(((b * a.nk + j) * a.hkv + hk()) * a.head_dim + d);
  }
  bool global(int64_t p) const {
    const Mask& m = pr.args.mask;
    for (int r = 0; r < m.n_global; ++r)
      if (p >= m.global[r].begin && p < m.global[r].end) return true;
    return false;
  }
  Item key_item(int64_t t, int64_t j) const {
    Item it{0.0, {}};
    for (int64_t d = 0; d < pr.args.head_dim; ++d) {
      it.logit += q(t, d) * k(j, d);
      it.v.push_back(v(j, d));
    }
    it.logit *= scale_of(pr.args);
    return it;
  }
};

// The levels' items of row t: its exact keys, then one summary per block.
std::vector<Item> level_items(const RowView& rv, int64_t t) {
  const AttentionArgs& a = rv.pr.args;
  const Mask& m = a.mask;
  const int64_t nk = a.nk, diag = nk - a.nq, i = t + diag, D = a.head_dim;
  const int64_t s1 = a.hier.regional_block, s2 = a.hier.global_block, w2 = a.hier.regional_window;
  const bool causal = m.limit < kUnbounded, two = !causal && m.hi < kUnbounded;
  const int64_t w1 = diag - m.lo, wr = two ? m.hi - diag : 0;
  const int64_t e = std::max<int64_t>(0, s1 * floor_of(i - w1, s1));
  const int64_t g = s2 > 0 ? std::max<int64_t>(0, std::min(e, s2 * floor_of(i - w2, s2))) : 0;
  const int64_t er = s1 * ceil_of(i + wr + 1, s1);
  const int64_t gr = s2 > 0 ? std::max(er, s2 * ceil_of(i + w2 + 1, s2)) : kUnbounded;
  const bool global_q = rv.global(t);
  std::vector<Item> items;
  for (int64_t j = 0; j < nk; ++j) {
    const bool exact = j - t <= m.limit && (global_q || j < m.sinks || rv.global(j) ||
                                            (j >= e && (two ? j < er : j - t <= m.hi)));
    if (exact) items.push_back(rv.key_item(t, j));
  }
  if (global_q) return items;
  const auto summary = [&](int64_t lo, int64_t hi) {
    std::vector<double> sk(static_cast<std::size_t>(D)), sv(sk);
    int64_t c = 0;
    for (int64_t j = lo; j < std::min(hi, nk); ++j) {
      if (j < m.sinks || rv.global(j)) continue;
      ++c;
      for (int64_t d = 0; d < D; ++d) sk[d] += rv.k(j, d), sv[d] += rv.v(j, d);
    }
    if (c == 0) return;
    Item it{0.0, {}};
    for (int64_t d = 0; d < D; ++d) {
      const double kp = round_to(a.dtype, static_cast<float>(sk[d] / double(c)));
      it.logit += rv.q(t, d) * kp;
      it.v.push_back(round_to(a.dtype, static_cast<float>(sv[d] / double(c))));
    }
    it.logit = it.logit * scale_of(a) + std::log(double(c));
    items.push_back(it);
  };
  for (int64_t lo = 0; lo < nk; lo += s1)
    if ((g <= lo && lo + s1 <= e) || (two && lo >= er && lo < gr)) summary(lo, lo + s1);
  if (s2 > 0)
    for (int64_t lo = 0; lo < nk; lo += s2)
      if (lo + s2 <= g || (two && lo >= gr)) summary(lo, lo + s2);
  return items;
}

struct Routed {
  std::vector<Item> items;
  std::vector<int32_t> route;
  double gap = kInf;
};

// Block routing of row t: scores, the chosen blocks, and the keys.
Routed route_items(const RowView& rv, int64_t t) {
  const AttentionArgs& a = rv.pr.args;
  const Mask& m = a.mask;
  const int64_t nk = a.nk, i = t + nk - a.nq, D = a.head_dim, bs = a.hier.route_block;
  const int64_t topk = a.hier.route_topk, nb = ceil_of(nk, bs);
  const bool causal = m.limit < kUnbounded;
  const int64_t own = i >= 0 && i < nk ? i / bs : -1;
  std::vector<double> score(static_cast<std::size_t>(nb));
  std::vector<bool> left(static_cast<std::size_t>(nb)), chosen(left);
  int64_t n_left = 0;
  for (int64_t c = 0; c < nb; ++c) {
    const int64_t lo = c * bs, hi = std::min(nk, lo + bs);
    for (int64_t d = 0; d < D; ++d) {
      double sum = 0;
      for (int64_t j = lo; j < hi; ++j) sum += rv.k(j, d);
      score[c] += rv.q(t, d) * round_to(a.dtype, static_cast<float>(sum / double(hi - lo)));
    }
    left[c] = causal ? (own >= 0 && c < own) : c != own;
    n_left += left[c];
  }
  Routed r;
  double last = 0;
  int64_t taken = 0;
  for (; taken < topk - 1 && n_left > 0; ++taken, --n_left) {
    int64_t best = -1;
    for (int64_t c = 0; c < nb; ++c)
      if (left[c] && (best < 0 || score[c] > score[best])) best = c;
    left[best] = false, chosen[best] = true, last = score[best];
  }
  if (taken > 0 && n_left > 0) {
    double next = -kInf;
    for (int64_t c = 0; c < nb; ++c)
      if (left[c]) next = std::max(next, score[c]);
    r.gap = (last - next) / std::max(1.0, std::abs(last));
  }
  if (own >= 0) chosen[own] = true;
  for (int64_t c = 0; c < nb; ++c)
    if (chosen[c]) r.route.push_back(static_cast<int32_t>(c));
  r.route.resize(static_cast<std::size_t>(topk), -1);
  const bool window = m.lo > -kUnbounded || (m.hi < kUnbounded && m.hi < m.limit);
  for (int64_t j = 0; j < nk; ++j) {
    const int64_t dist = j - t;
    if (dist > m.limit) continue;
    const bool by_mask =
        (window && dist >= m.lo && dist <= m.hi) || j < m.sinks || rv.global(j) || rv.global(t);
    if (by_mask || chosen[j / bs]) r.items.push_back(rv.key_item(t, j));
  }
  return r;
}

// Softmax over the items, checked against the reference's row.
void expect_row(const std::vector<Item>& items, const double* o, int64_t D, double lse,
                const std::string& what) {
  if (items.empty()) {
    EXPECT_EQ(lse, -kInf) << what;
    for (int64_t d = 0; d < D; ++d) EXPECT_EQ(o[d], 0.0) << what;
    return;
  }
  double m = -kInf, sum = 0;
  for (const Item& it : items) m = std::max(m, it.logit);
  std::vector<double> acc(static_cast<std::size_t>(D));
  for (const Item& it : items) {
    const double p = std::exp(it.logit - m);
    sum += p;
    for (int64_t d = 0; d < D; ++d) acc[d] += p * it.v[d];
  }
  const double want_lse = m + std::log(sum);
  EXPECT_NEAR(lse, want_lse, kTol * std::max(1.0, std::abs(want_lse))) << what;
  for (int64_t d = 0; d < D; ++d)
    EXPECT_NEAR(o[d], acc[d] / sum, kTol * std::max(1.0, std::abs(acc[d] / sum))) << what;
}

// Every (batch, row, head) of the reference against the literal version.
void check_literal(const Problem& pr, const std::string& what) {
  const AttentionArgs& a = pr.args;
  std::vector<int32_t> route;
  std::vector<double> gap;
  const ReferenceResult r = reference_hierarchical(a, &route, &gap);
  const int64_t topk = a.hier.route_topk, D = a.head_dim;
  for (int64_t b = 0; b < a.batch; ++b)
    for (int64_t t = 0; t < a.nq; ++t)
      for (int64_t h = 0; h < a.hq; ++h) {
        const RowView rv{pr, b, h};
        const std::string at = fmt::format("{} b={} t={} h={}", what, b, t, h);
        const double* o = r.o.data() + ((b * a.nq + t) * a.hq + h) * D;
        const double lse = r.lse[static_cast<std::size_t>((b * a.hq + h) * a.nq + t)];
        if (a.hier.levels()) {
          expect_row(level_items(rv, t), o, D, lse, at);
          continue;
        }
        const Routed want = route_items(rv, t);
        expect_row(want.items, o, D, lse, at);
        const std::size_t base = static_cast<std::size_t>(((b * a.nq + t) * a.hq + h) * topk);
        for (int64_t e = 0; e < topk; ++e)
          EXPECT_EQ(route[base + static_cast<std::size_t>(e)], want.route[e]) << at;
        const double g = gap[static_cast<std::size_t>((b * a.nq + t) * a.hq + h)];
        if (want.gap == kInf)
          EXPECT_EQ(g, kInf) << at;
        else
          EXPECT_NEAR(g, want.gap, kTol) << at;
      }
}

// 4a. Levels on tiny sizes: s1 = 4, s2 = 8 (or no level 3), W1 = 5, Wr = 3,
// W2 = 13, GQA, two batches, Nq = Nk, Nq < Nk and Nq > Nk, 16-bit storage too.
TEST(HierReference, LevelsMatchLiteralEnumeration) {
  const int64_t sizes[][2] = {{57, 57}, {40, 64}, {70, 45}};
  for (const auto& nqk : sizes)
    for (Kind kind : {Kind::causal, Kind::two_sided, Kind::left_only})
      for (bool extras : {false, true})
        for (int64_t s2 : {8, 0})
          for (DType dt : {DType::f32, DType::bf16}) {
            const int64_t nq = nqk[0], nk = nqk[1];
            Problem pr = make_problem(2, nq, nk, 4, 2, 8, dt, 41);
            pr.args.mask = window_mask(kind, nq, nk, 5, 3, extras);
            pr.args.hier = levels(4, 13, s2);
            check_literal(pr, fmt::format("{} Nq={} Nk={} extras={} s2={} {}", kind_name(kind), nq,
                                          nk, extras, s2, dtype_name(dt)));
          }
}

// 4b. Routing on tiny sizes: blocks of 5, top 1 and top 3, with and without a
// window, sinks and global tokens.
TEST(HierReference, RoutingMatchesLiteralEnumeration) {
  const int64_t sizes[][2] = {{57, 57}, {40, 64}, {70, 45}};
  for (const auto& nqk : sizes)
    for (int variant = 0; variant < 4; ++variant)
      for (int64_t topk : {1, 3})
        for (DType dt : {DType::f32, DType::bf16}) {
          const int64_t nq = nqk[0], nk = nqk[1], diag = nk - nq;
          Problem pr = make_problem(2, nq, nk, 4, 2, 8, dt, 51);
          Mask m = Mask::causal(diag);
          if (variant == 0) m.sinks = 2;                                         // no window
          if (variant == 1) m = window_mask(Kind::causal, nq, nk, 6, 0, false);  // window
          if (variant == 2) m = window_mask(Kind::two_sided, nq, nk, 4, 3, true);
          if (variant == 3)
            m = window_mask(Kind::two_sided, nq, nk, 4, 3, true), m.lo = -kUnbounded;
          pr.args.mask = m;
          pr.args.hier = routing(5, topk);
          check_literal(pr, fmt::format("variant {} top {} Nq={} Nk={} {}", variant, topk, nq, nk,
                                        dtype_name(dt)));
        }
}

// 4c. Two blocks with identical keys tie exactly: the lower index wins and the
// gap is 0. Blocks 1 and 3 hold u, the others -u, and every query is u.
TEST(HierReference, RoutingTiesGoToTheLowestBlock) {
  const int64_t n = 24, bs = 4, D = 8;
  for (bool causal : {true, false})
    for (int64_t topk : {2, 3}) {
      Problem pr = make_problem(1, n, n, 1, 1, D, DType::f32, 61);
      for (int64_t j = 0; j < n; ++j)
        for (int64_t d = 0; d < D; ++d) {
          const float u = static_cast<float>(d + 1) * 0.25f;
          pr.k.set(j * D + d, j / bs == 1 || j / bs == 3 ? u : -u);
        }
      for (int64_t t = 0; t < n; ++t)
        for (int64_t d = 0; d < D; ++d) pr.q.set(t * D + d, static_cast<float>(d + 1) * 0.25f);
      pr.args.mask = causal ? Mask::causal() : Mask::none();
      pr.args.hier = routing(bs, topk);
      std::vector<int32_t> route;
      std::vector<double> gap;
      reference_hierarchical(pr.args, &route, &gap);
      const std::string what = fmt::format("causal={} top {}", causal, topk);
      for (int64_t t = 20; t < n; ++t) {  // own block 5, candidates 0..4
        const std::vector<int32_t> got(route.begin() + t * topk, route.begin() + (t + 1) * topk);
        const std::vector<int32_t> want =
            topk == 2 ? std::vector<int32_t>{1, 5} : std::vector<int32_t>{1, 3, 5};
        EXPECT_EQ(got, want) << what << " row " << t;
        // Top 3: both tied blocks chosen; the next (-|u|^2) is 2 |u|^2 / |u|^2 = 2 below.
        EXPECT_EQ(gap[static_cast<std::size_t>(t)], topk == 2 ? 0.0 : 2.0) << what << " row " << t;
      }
      check_literal(pr, what);
    }
}

// ---- The key loader: what the reference asks for.

struct Call {
  int64_t b, j0, n;
};

// A reference over pr's arrays whose loader records every call.
HierarchyReference counting_reference(const Problem& pr, std::vector<Call>* calls) {
  const AttentionArgs& a = pr.args;
  return HierarchyReference(a, [&pr, calls](int64_t b, int64_t j0, int64_t n,
                                            std::vector<double>* k, std::vector<double>* v) {
    calls->push_back({b, j0, n});
    const AttentionArgs& aa = pr.args;
    const int64_t row = aa.hkv * aa.head_dim;
    k->resize(static_cast<std::size_t>(n * row));
    v->resize(k->size());
    for (int64_t e = 0; e < n * row; ++e) {
      (*k)[static_cast<std::size_t>(e)] = pr.k.get((b * aa.nk + j0) * row + e);
      (*v)[static_cast<std::size_t>(e)] = pr.v.get((b * aa.nk + j0) * row + e);
    }
  });
}

// The distinct rows a row() asked for; every call in range and at most one window.
std::set<int64_t> rows_read(const std::vector<Call>& calls, int64_t nk) {
  std::set<int64_t> rows;
  for (const Call& c : calls) {
    EXPECT_GE(c.j0, 0);
    EXPECT_GE(c.n, 1);
    EXPECT_LE(c.j0 + c.n, nk);
    EXPECT_LE(c.n, kLoaderWindow);
    for (int64_t j = c.j0; j < c.j0 + c.n; ++j) rows.insert(j);
  }
  return rows;
}

// 5. The constructor streams each batch once in order; a row reads exactly
// the keys it attends (levels) or a subset of its mask's and chosen blocks'
// keys (routing), so its work does not grow with Nk.
TEST(HierReference, LoaderReadsOnlyWhatARowNeeds) {
  const int64_t w1 = 100, s1 = 16, s2 = 256, bs = 64, topk = 4;
  std::vector<std::size_t> last_row_reads;
  for (int64_t nk : {6000, 10000}) {
    Problem pr = make_problem(2, nk, nk, 2, 1, 8, DType::f32, 71);
    Mask m = window_mask(Kind::causal, nk, nk, w1, 0, false);
    m.sinks = 4, m.n_global = 1, m.global[0] = {5000, 5010};
    pr.args.mask = m;
    for (bool route : {false, true}) {
      pr.args.hier = route ? routing(bs, topk) : levels(s1, 1000, s2);
      std::vector<Call> calls;
      const HierarchyReference ref = counting_reference(pr, &calls);
      for (int64_t b = 0; b < 2; ++b) {  // in order, every key once
        int64_t next = 0;
        for (const Call& c : calls) {
          if (c.b != b) continue;
          EXPECT_EQ(c.j0, next);
          EXPECT_LE(c.n, kLoaderWindow);
          next += c.n;
        }
        EXPECT_EQ(next, nk);
      }
      std::vector<double> q(16, 0.5), o(16);
      double lse[2];
      int32_t chosen[2 * topk];
      for (int64_t t : {int64_t{0}, int64_t{777}, int64_t{5005}, nk - 1}) {
        calls.clear();
        ref.row(1, t, q.data(), o.data(), lse, chosen);
        const std::set<int64_t> rows = rows_read(calls, nk);
        const int64_t e = std::max<int64_t>(0, (t - w1) / s1 * s1);
        const auto by_mask = [&](int64_t j) {
          return j <= t && (j < 4 || (j >= 5000 && j < 5010) || (t >= 5000 && t < 5010) ||
                            j >= (route ? t - w1 : e));
        };
        for (int64_t j : rows) {
          bool ok = by_mask(j);
          for (int h = 0; h < 2 && route; ++h)
            for (int r = 0; r < topk; ++r) ok = ok || chosen[h * topk + r] == j / bs;
          EXPECT_TRUE(ok) << "row " << t << " read key " << j << " route " << route;
        }
        if (!route) {  // levels: every attended key read
          for (int64_t j = 0; j < nk; ++j) {
            if (!by_mask(j)) continue;
            EXPECT_TRUE(rows.count(j)) << "row " << t << " key " << j;
          }
        }
        if (t == nk - 1) last_row_reads.push_back(rows.size());
      }
    }
  }
  // The last row of a sequence reads the same under both lengths (levels; routing: at most
  // its window, sinks, global tokens and top-k blocks per head).
  ASSERT_EQ(last_row_reads.size(), 4u);
  EXPECT_EQ(last_row_reads[0], last_row_reads[2]);
  const std::size_t most = static_cast<std::size_t>(w1 + 1 + 4 + 10 + 2 * topk * bs);
  EXPECT_LE(last_row_reads[1], most);
  EXPECT_LE(last_row_reads[3], most);
}

TEST(HierReference, RejectsWhatItCannotRun) {
  Problem pr = make_problem(1, 8, 8, 1, 1, 8, DType::f32, 81);
  EXPECT_THROW(reference_hierarchical(pr.args), Error);  // no hierarchy
  pr.args.mask = window_mask(Kind::causal, 8, 8, 2, 0, false);
  pr.args.hier = levels(4, 5, 0);  // W2 < W1 + s1
  EXPECT_THROW(reference_hierarchical(pr.args), FieldError);
  pr.args.hier = levels(4, 6, 0);
  const auto short_loader = [](int64_t, int64_t, int64_t, std::vector<double>* k,
                               std::vector<double>* v) { k->assign(1, 0.0), v->assign(1, 0.0); };
  EXPECT_THROW(HierarchyReference(pr.args, short_loader), Error);
  std::vector<Call> calls;
  const HierarchyReference ref = counting_reference(pr, &calls);
  std::vector<double> q(8), o(8);
  double lse = 0;
  EXPECT_THROW(ref.row(0, 8, q.data(), o.data(), &lse), Error);
  EXPECT_THROW(ref.row(1, 0, q.data(), o.data(), &lse), Error);
}

}  // namespace
}  // namespace ringattn
