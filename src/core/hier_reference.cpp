// The float64 reference of hierarchical aggregation (ringattn/hier_reference.hpp),
// written from the semantics in ringattn/hierarchy.hpp and nothing else of the
// mask machinery but Mask::allows (and the mask's fields).
//
// Query row t sits at key position i = t + diag, diag = Nk - Nq. The mask's
// left window is W1 = diag - lo; two-sided (no causal bound, hi bounded) adds
// the right window Wr = hi - diag. The causal bound j - t <= limit caps every
// exact key.
//
// Levels (s1, W2, s2):
//   e(i)   = max(0, s1 floor((i - W1) / s1))
//   g(i)   = max(0, min(e(i), s2 floor((i - W2) / s2)))     (0 without level 3)
//   e_r(i) = s1 ceil((i + Wr + 1) / s1)                     (two-sided)
//   g_r(i) = max(e_r(i), s2 ceil((i + W2 + 1) / s2))        (+inf without level 3)
//   exact keys j: j - t <= limit and (j < sinks, or j or t global, or
//                 e(i) <= j and (two-sided ? j < e_r(i) : j - t <= hi))
//   summaries (none for a global query t): s1-blocks inside [g(i), e(i)),
//                 s2-blocks inside [0, g(i)); two-sided also s1-blocks starting
//                 in [e_r(i), g_r(i)) and s2-blocks starting from g_r(i).
//   A block's summary: its c keys that are neither sinks nor global (c = 0:
//   no summary), k and v their float64 mean rounded to the storage dtype,
//   logit scale q . k + log(c).
// Block routing (B, k):
//   own(i) = floor(i / B) for 0 <= i < Nk; candidates: causal (limit bounded)
//   the blocks c < own(i), otherwise every block but own(i); score(c) = q . kbar_c
//   with kbar_c the mean of all the block's rows rounded to the storage dtype;
//   chosen: the k - 1 best (ties: lowest index) and own(i). Keys: the mask's
//   (its band only where the mask has a window) and the chosen blocks' keys with
//   j - t <= limit, each once.
//
// The scale is the problem's, or 1/sqrt(D) in double as in the plain reference.
// Each query head is a softmax over its items (exact keys and summaries) in
// two passes: the largest logit, then the sums. Keys come from the loader in
// windows of at most kWindow rows over the row's merged key ranges; the block
// means (as floats: they are rounded to the storage dtype) are built once per
// batch by streaming every key in order.
#include "ringattn/hier_reference.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <utility>
#include <vector>

#include "ringattn/error.hpp"

namespace ringattn {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr int64_t kWindow = 4096;  // key rows per loader call

std::size_t at(int64_t i) {
  return static_cast<std::size_t>(i);
}

// floor(a / b) and ceil(a / b) for b > 0 (the reference's own, not the mask's).
int64_t floor_by(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return q * b > a ? q - 1 : q;
}
int64_t ceil_by(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return q * b < a ? q + 1 : q;
}

// The aligned blocks [c size, (c + 1) size) ∩ [0, Nk) of one batch: the mean
// of each block's counted rows, rounded to the storage dtype (so exact as
// float), and how many rows were counted.
struct Pooled {
  int64_t size = 0;
  std::vector<float> k, v;     // [blocks, Hkv, D]; v empty where not needed
  std::vector<int64_t> count;  // [blocks]
};

// Builds a Pooled from the key rows in order j = 0, 1, ..., Nk - 1: each
// block's sum is a plain float64 sum in key order.
class PoolBuilder {
 public:
  PoolBuilder(int64_t size, int64_t nk, int64_t row, bool with_v, DType dtype)
      : nk_(nk), row_(row), dtype_(dtype), sum_k_(at(row)), sum_v_(with_v ? at(row) : 0) {
    const int64_t blocks = nk / size + (nk % size != 0 ? 1 : 0);
    pool_.size = size;
    pool_.k.assign(at(blocks * row), 0.0f);
    if (with_v) pool_.v.assign(at(blocks * row), 0.0f);
    pool_.count.assign(at(blocks), 0);
  }

  // Key row j ([Hkv, D]); `counted`: part of the block's mean.
  void add(int64_t j, const double* k, const double* v, bool counted) {
    if (counted) {
      for (int64_t e = 0; e < row_; ++e) sum_k_[at(e)] += k[e];
      for (std::size_t e = 0; e < sum_v_.size(); ++e) sum_v_[e] += v[e];
      ++count_;
    }
    if ((j + 1) % pool_.size == 0 || j + 1 == nk_) close(j / pool_.size);
  }

  Pooled take() { return std::move(pool_); }

 private:
  void close(int64_t block) {
    pool_.count[at(block)] = count_;
    if (count_ > 0) {
      const double c = static_cast<double>(count_);
      for (int64_t e = 0; e < row_; ++e)
        pool_.k[at(block * row_ + e)] = round_to(dtype_, static_cast<float>(sum_k_[at(e)] / c));
      for (std::size_t e = 0; e < sum_v_.size(); ++e)
        pool_.v[at(block * row_) + e] = round_to(dtype_, static_cast<float>(sum_v_[e] / c));
    }
    std::fill(sum_k_.begin(), sum_k_.end(), 0.0);
    std::fill(sum_v_.begin(), sum_v_.end(), 0.0);
    count_ = 0;
  }

  int64_t nk_, row_;
  DType dtype_;
  std::vector<double> sum_k_, sum_v_;
  int64_t count_ = 0;
  Pooled pool_;
};

struct Range {
  int64_t begin, end;  // key rows [begin, end)
};

// One summary a row sees: block `block` of `pool`.
struct BlockRef {
  const Pooled* pool;
  int64_t block;
};

// Per-call buffers of row().
struct Work {
  std::vector<double> k, v;      // one window of rows, [n, Hkv, D]
  std::vector<double> pooled_v;  // one pooled value row, [D]
};

// The ranges clipped to [0, cap), sorted and merged (no key twice).
std::vector<Range> merged(std::vector<Range> in, int64_t cap) {
  std::vector<Range> out;
  for (Range& r : in) {
    r.begin = std::max<int64_t>(r.begin, 0);
    r.end = std::min(r.end, cap);
  }
  std::sort(in.begin(), in.end(), [](const Range& a, const Range& b) { return a.begin < b.begin; });
  for (const Range& r : in) {
    if (r.begin >= r.end) continue;
    if (!out.empty() && r.begin <= out.back().end)
      out.back().end = std::max(out.back().end, r.end);
    else
      out.push_back(r);
  }
  return out;
}

}  // namespace

struct HierarchyReference::Impl {
  AttentionProblem p;
  KvLoader load;
  int64_t diag = 0, group = 1, row = 0;  // row: values of one key row, Hkv x D
  double scale = 0.0;
  bool causal = false, two_sided = false;
  int64_t w1 = 0, wr = 0, w2 = 0, s1 = 0, s2 = 0;  // levels
  int64_t nblocks = 0;                             // routing: ceil(Nk / B)
  Mask route_mask;                     // the mask's keys under routing (no band without a window)
  std::vector<Pooled> l2, l3, routed;  // per batch

  bool global_query(int64_t t) const { return p.mask.n_global > 0 && p.mask.in_global(t); }
  int64_t key_cap(int64_t t) const {  // keys j < cap satisfy j - t <= limit
    if (p.mask.limit >= kUnbounded) return p.nk;
    return std::clamp<int64_t>(t + p.mask.limit + 1, 0, p.nk);
  }

  void load_rows(int64_t b, int64_t j0, int64_t n, Work& w) const {
    load(b, j0, n, &w.k, &w.v);
    const std::size_t need = at(n * row);
    if (w.k.size() < need || w.v.size() < need)
      throw Error(fmt::format(
          "hierarchical reference: the key loader returned {} and {} values for {} rows of {}",
          w.k.size(), w.v.size(), n, row));
  }

  // Calls fn(logit, v [D]) for every item of query head (q, hk) of row (b, t):
  // the keys j in `ranges` with sees(j), then the summaries.
  template <class Sees, class Fn>
  void visit(int64_t b, int64_t hk, const double* q, const std::vector<Range>& ranges,
             const Sees& sees, const std::vector<BlockRef>& summaries, Work& w, Fn&& fn) const {
    const int64_t D = p.head_dim;
    for (const Range& r : ranges) {
      for (int64_t j0 = r.begin; j0 < r.end; j0 += kWindow) {
        const int64_t n = std::min(kWindow, r.end - j0);
        load_rows(b, j0, n, w);
        for (int64_t jj = 0; jj < n; ++jj) {
          if (!sees(j0 + jj)) continue;
          const double* kj = w.k.data() + (jj * p.hkv + hk) * D;
          double dot = 0.0;
          for (int64_t d = 0; d < D; ++d) dot += q[d] * kj[d];
          fn(scale * dot, w.v.data() + (jj * p.hkv + hk) * D);
        }
      }
    }
    w.pooled_v.resize(at(D));
    for (const BlockRef& s : summaries) {
      const std::size_t off = at((s.block * p.hkv + hk) * D);
      const float* kp = s.pool->k.data() + off;
      const float* vp = s.pool->v.data() + off;
      double dot = 0.0;
      for (int64_t d = 0; d < D; ++d) {
        dot += q[d] * static_cast<double>(kp[d]);
        w.pooled_v[at(d)] = static_cast<double>(vp[d]);
      }
      fn(scale * dot + std::log(static_cast<double>(s.pool->count[at(s.block)])),
         w.pooled_v.data());
    }
  }

  // The softmax of one query head over its items: o [D], *lse.
  template <class Sees>
  void attend(int64_t b, int64_t hk, const double* q, const std::vector<Range>& ranges,
              const Sees& sees, const std::vector<BlockRef>& summaries, Work& w, double* o,
              double* lse) const {
    const int64_t D = p.head_dim;
    double m = kNegInf;
    visit(b, hk, q, ranges, sees, summaries, w,
          [&](double s, const double*) { m = std::max(m, s); });
    for (int64_t d = 0; d < D; ++d) o[d] = 0.0;
    if (m == kNegInf) {
      *lse = kNegInf;
      return;
    }
    double sum = 0.0;
    visit(b, hk, q, ranges, sees, summaries, w, [&](double s, const double* v) {
      const double e = std::exp(s - m);
      sum += e;
      for (int64_t d = 0; d < D; ++d) o[d] += e * v[d];
    });
    for (int64_t d = 0; d < D; ++d) o[d] /= sum;
    *lse = m + std::log(sum);
  }

  void level_row(int64_t b, int64_t t, const double* q, double* o, double* lse, Work& w) const;
  void route_row(int64_t b, int64_t t, const double* q, double* o, double* lse, int32_t* route,
                 double* gap, Work& w) const;
};

HierarchyReference::HierarchyReference(const AttentionProblem& p, KvLoader load) {
  p.validate(HeadDims::any);
  if (!p.hier.on())
    throw Error("hierarchical reference: the problem has neither levels nor block routing");
  if (p.mask.has_skips())
    throw Error(
        "hierarchical reference: the mask skips query or key ranges (a ring block's "
        "mask, not a problem's)");
  if (!load) throw Error("hierarchical reference: no key loader");
  auto m = std::make_shared<Impl>();
  m->p = p;
  m->load = std::move(load);
  m->diag = p.nk - p.nq;
  m->group = p.hq / p.hkv;
  m->row = p.hkv * p.head_dim;
  // As the plain reference: the given scale, or 1/sqrt(D) in double.
  m->scale = p.scale != 0.0f ? static_cast<double>(p.scale)
                             : 1.0 / std::sqrt(static_cast<double>(p.head_dim));
  const Mask& mask = p.mask;
  m->causal = mask.limit < kUnbounded;
  m->two_sided = !m->causal && mask.hi < kUnbounded;
  const Hierarchy& h = p.hier;
  if (h.levels()) {
    m->w1 = m->diag - mask.lo;
    if (m->two_sided) m->wr = mask.hi - m->diag;
    m->w2 = h.regional_window;
    m->s1 = h.regional_block;
    m->s2 = h.global_block;
  } else {
    m->nblocks = p.nk / h.route_block + (p.nk % h.route_block != 0 ? 1 : 0);
    m->route_mask = mask;
    // A band unbounded below and bounded above by nothing but the causal
    // bound is no window: routing then adds only sinks and global tokens.
    const bool window = mask.lo > -kUnbounded || (mask.hi < kUnbounded && mask.hi < mask.limit);
    if (!window) m->route_mask.lo = 1, m->route_mask.hi = 0;
  }

  // The block means, one batch at a time, every key once in order.
  Work w;
  for (int64_t b = 0; b < p.batch; ++b) {
    std::vector<PoolBuilder> pools;
    if (h.levels()) {
      pools.emplace_back(m->s1, p.nk, m->row, true, p.dtype);
      if (m->s2 > 0) pools.emplace_back(m->s2, p.nk, m->row, true, p.dtype);
    } else {
      pools.emplace_back(h.route_block, p.nk, m->row, false, p.dtype);
    }
    for (int64_t j0 = 0; j0 < p.nk; j0 += kWindow) {
      const int64_t n = std::min(kWindow, p.nk - j0);
      m->load_rows(b, j0, n, w);
      for (int64_t jj = 0; jj < n; ++jj) {
        const int64_t j = j0 + jj;
        // Levels summarise the keys that are not attended exactly everywhere.
        const bool counted =
            h.routing() || !(j < mask.sinks || (mask.n_global > 0 && mask.in_global(j)));
        for (PoolBuilder& pb : pools)
          pb.add(j, w.k.data() + jj * m->row, w.v.data() + jj * m->row, counted);
      }
    }
    if (h.levels()) {
      m->l2.push_back(pools[0].take());
      if (m->s2 > 0) m->l3.push_back(pools[1].take());
    } else {
      m->routed.push_back(pools[0].take());
    }
  }
  impl_ = std::move(m);
}

void HierarchyReference::Impl::level_row(int64_t b, int64_t t, const double* q, double* o,
                                         double* lse, Work& w) const {
  const Mask& mask = p.mask;
  const int64_t i = t + diag, nk = p.nk, cap = key_cap(t);
  std::vector<Range> want;
  std::vector<BlockRef> summaries;
  const bool global_q = global_query(t);
  const int64_t e = std::max<int64_t>(0, s1 * floor_by(i - w1, s1));
  const int64_t er = two_sided ? s1 * ceil_by(i + wr + 1, s1) : kUnbounded;
  if (global_q) {
    want.push_back({0, nk});
  } else {
    const int64_t upper = two_sided ? er : (mask.hi >= kUnbounded ? nk : t + mask.hi + 1);
    want.push_back({e, upper});
    want.push_back({0, mask.sinks});
    for (int r = 0; r < mask.n_global; ++r)
      want.push_back({mask.global[r].begin, mask.global[r].end});

    // Left: s1-blocks inside [g, e), s2-blocks inside [0, g).
    const int64_t g = s2 > 0 ? std::max<int64_t>(0, std::min(e, s2 * floor_by(i - w2, s2))) : 0;
    const Pooled& p2 = l2[at(b)];
    for (int64_t c = ceil_by(g, s1); (c + 1) * s1 <= e; ++c)
      if (p2.count[at(c)] > 0) summaries.push_back({&p2, c});
    if (s2 > 0)
      for (int64_t c = 0; (c + 1) * s2 <= g; ++c)
        if (l3[at(b)].count[at(c)] > 0) summaries.push_back({&l3[at(b)], c});
    // Right (two-sided): s1-blocks starting in [e_r, g_r), s2-blocks from g_r.
    if (two_sided) {
      const int64_t gr = s2 > 0 ? std::max(er, s2 * ceil_by(i + w2 + 1, s2)) : kUnbounded;
      const int64_t end2 = std::min(gr, nk);
      for (int64_t c = std::max<int64_t>(0, ceil_by(er, s1)); c * s1 < end2; ++c)
        if (p2.count[at(c)] > 0) summaries.push_back({&p2, c});
      if (s2 > 0)
        for (int64_t c = std::max<int64_t>(0, ceil_by(gr, s2)); c * s2 < nk; ++c)
          if (l3[at(b)].count[at(c)] > 0) summaries.push_back({&l3[at(b)], c});
    }
  }
  const std::vector<Range> ranges = merged(std::move(want), cap);
  const auto sees = [&](int64_t j) {
    if (j - t > mask.limit) return false;
    if (global_q || j < mask.sinks || (mask.n_global > 0 && mask.in_global(j))) return true;
    return j >= e && (two_sided ? j < er : j - t <= mask.hi);
  };
  for (int64_t h = 0; h < p.hq; ++h)
    attend(b, h / group, q + h * p.head_dim, ranges, sees, summaries, w, o + h * p.head_dim,
           lse + h);
}

void HierarchyReference::Impl::route_row(int64_t b, int64_t t, const double* q, double* o,
                                         double* lse, int32_t* route, double* gap, Work& w) const {
  const Mask& mask = p.mask;
  const int64_t i = t + diag, nk = p.nk, bs = p.hier.route_block, topk = p.hier.route_topk;
  const int64_t D = p.head_dim, cap = key_cap(t);
  const int64_t own = i >= 0 && i < nk ? i / bs : -1;
  std::vector<int64_t> cand;
  for (int64_t c = 0; c < (causal ? std::max<int64_t>(own, 0) : nblocks); ++c)
    if (c != own) cand.push_back(c);
  const int64_t take = std::min<int64_t>(topk - 1, static_cast<int64_t>(cand.size()));

  // The mask's part of the keys (route_mask.allows decides per key).
  std::vector<Range> mask_ranges;
  if (global_query(t)) mask_ranges.push_back({0, nk});
  if (route_mask.lo <= route_mask.hi)
    mask_ranges.push_back({route_mask.lo <= -kUnbounded ? 0 : t + route_mask.lo,
                           route_mask.hi >= kUnbounded ? nk : t + route_mask.hi + 1});
  mask_ranges.push_back({0, mask.sinks});
  for (int r = 0; r < mask.n_global; ++r)
    mask_ranges.push_back({mask.global[r].begin, mask.global[r].end});

  std::vector<double> score(at(nblocks));
  std::vector<int64_t> order, chosen;
  for (int64_t h = 0; h < p.hq; ++h) {
    const int64_t hk = h / group;
    const double* qh = q + h * D;
    const Pooled& kbar = routed[at(b)];
    for (int64_t c : cand) {
      const float* kc = kbar.k.data() + (c * p.hkv + hk) * D;
      double s = 0.0;
      for (int64_t d = 0; d < D; ++d) s += qh[d] * static_cast<double>(kc[d]);
      score[at(c)] = s;
    }
    order = cand;
    std::sort(order.begin(), order.end(), [&](int64_t x, int64_t y) {
      return score[at(x)] != score[at(y)] ? score[at(x)] > score[at(y)] : x < y;
    });
    chosen.assign(order.begin(), order.begin() + take);
    if (own >= 0) chosen.push_back(own);
    std::sort(chosen.begin(), chosen.end());
    if (route)
      for (int64_t r = 0; r < topk; ++r)
        route[h * topk + r] =
            r < static_cast<int64_t>(chosen.size()) ? static_cast<int32_t>(chosen[at(r)]) : -1;
    if (gap) {
      gap[h] = kInf;
      if (take > 0 && take < static_cast<int64_t>(order.size())) {
        const double last = score[at(order[at(take - 1)])];
        gap[h] = (last - score[at(order[at(take)])]) / std::max(1.0, std::abs(last));
      }
    }

    std::vector<Range> want = mask_ranges;
    for (int64_t c : chosen) want.push_back({c * bs, (c + 1) * bs});
    const std::vector<Range> ranges = merged(std::move(want), cap);
    const auto sees = [&](int64_t j) {
      if (route_mask.allows(t, j)) return true;
      return j - t <= mask.limit && std::binary_search(chosen.begin(), chosen.end(), j / bs);
    };
    attend(b, hk, qh, ranges, sees, {}, w, o + h * D, lse + h);
  }
}

void HierarchyReference::row(int64_t b, int64_t t, const double* q, double* o, double* lse,
                             int32_t* route, double* route_gap) const {
  const Impl& m = *impl_;
  if (b < 0 || b >= m.p.batch || t < 0 || t >= m.p.nq)
    throw Error(fmt::format("hierarchical reference: row ({}, {}) is outside [0, {}) x [0, {})", b,
                            t, m.p.batch, m.p.nq));
  Work w;
  if (m.p.hier.levels())
    m.level_row(b, t, q, o, lse, w);
  else
    m.route_row(b, t, q, o, lse, route, route_gap, w);
}

ReferenceResult reference_hierarchical(const AttentionArgs& a, std::vector<int32_t>* route,
                                       std::vector<double>* route_gap) {
  a.validate_args(HeadDims::any);
  if (a.qpos.start != 0 || a.qpos.stride != 1 || a.kpos.start != 0 || a.kpos.stride != 1)
    throw Error("hierarchical reference: whole sequences only (query and key positions from 0)");
  const int64_t B = a.batch, Nq = a.nq, Hq = a.hq, D = a.head_dim, row = a.hkv * D;
  const HierarchyReference ref(a, [&a, row](int64_t b, int64_t j0, int64_t n,
                                            std::vector<double>* k, std::vector<double>* v) {
    k->resize(at(n * row));
    v->resize(at(n * row));
    const std::size_t src = at((b * a.nk + j0) * row);
    for (std::size_t e = 0; e < at(n * row); ++e) {
      (*k)[e] = load_as_f32(a.k, a.dtype, src + e);
      (*v)[e] = load_as_f32(a.v, a.dtype, src + e);
    }
  });
  const bool routing = a.hier.routing();
  const int64_t topk = routing ? a.hier.route_topk : 0;
  ReferenceResult res;
  res.o.assign(at(B * Nq * Hq * D), 0.0);
  res.lse.assign(at(B * Hq * Nq), kNegInf);
  if (route) route->assign(routing ? at(B * Nq * Hq * topk) : 0, -1);
  if (route_gap) route_gap->assign(routing ? at(B * Nq * Hq) : 0, kInf);

#pragma omp parallel
  {
    std::vector<double> q(at(Hq * D)), lse(at(Hq));
#pragma omp for schedule(dynamic, 4)
    for (int64_t r = 0; r < B * Nq; ++r) {
      const int64_t b = r / Nq, t = r % Nq;
      for (int64_t e = 0; e < Hq * D; ++e) q[at(e)] = load_as_f32(a.q, a.dtype, at(r * Hq * D + e));
      ref.row(b, t, q.data(), res.o.data() + r * Hq * D, lse.data(),
              route && routing ? route->data() + r * Hq * topk : nullptr,
              route_gap && routing ? route_gap->data() + r * Hq : nullptr);
      for (int64_t h = 0; h < Hq; ++h) res.lse[at((b * Hq + h) * Nq + t)] = lse[at(h)];
    }
  }
  return res;
}

}  // namespace ringattn
