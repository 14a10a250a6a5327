#include "ringattn/attention.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "ringattn/error.hpp"

namespace ringattn {

bool head_dim_supported(int64_t d) {
  return d >= kMinHeadDim && d <= kMaxHeadDim && d % kHeadDimMultiple == 0;
}

std::string head_dim_expected() {
  return fmt::format("a multiple of {} in [{}, {}]", kHeadDimMultiple, kMinHeadDim, kMaxHeadDim);
}

void AttentionProblem::validate(HeadDims dims) const {
  if (batch < 1) throw FieldError("batch", fmt::format("expected >= 1, got {}", batch));
  if (nq < 0 || nq > kMaxSeqLen)
    throw FieldError("nq", fmt::format("expected 0 to {} tokens, got {}", kMaxSeqLen, nq));
  if (nk < 0 || nk > kMaxSeqLen)
    throw FieldError("nk", fmt::format("expected 0 to {} tokens, got {}", kMaxSeqLen, nk));
  if (hq < 1) throw FieldError("hq", fmt::format("expected >= 1 query heads, got {}", hq));
  if (hkv < 1 || hq % hkv != 0)
    throw FieldError("hkv", fmt::format("expected a divisor of the {} query heads (Hq % Hkv == 0), "
                                        "got {}",
                                        hq, hkv));
  if (dims == HeadDims::kernel ? !head_dim_supported(head_dim) : head_dim < 1)
    throw FieldError(
        "head_dim", fmt::format("expected {}, got {}",
                                dims == HeadDims::kernel ? head_dim_expected() : ">= 1", head_dim));
  if (!(scale >= 0.0f) || !std::isfinite(scale))
    throw FieldError("scale",
                     fmt::format("expected a finite number >= 0 (0: 1/sqrt(D)), got {}", scale));
  validate_hierarchy(hier, mask, nq, nk);
  // Documents: the mask points at the problem's offsets (or, without them, at
  // arrays its builder keeps alive: mask.hpp's Documents).
  if (docs || mask.docs.on()) {
    if (docs && (mask.docs.count != docs->count() || mask.docs.q != docs->q.data() ||
                 mask.docs.k != docs->keys().data()))
      throw FieldError("documents",
                       "the mask's documents are not the problem's (call "
                       "set_documents after building the mask)");
    // (set_documents checked the offsets against the global lengths; copies of
    // the problem for one rank's block keep them with their local nq, nk.)
    check_documents_combine();
  }
}

void AttentionProblem::check_documents_combine() const {
  if (mask.blocks.on())
    throw FieldError("documents",
                     "BigBird block sparsity does not combine with documents; "
                     "expected one of them");
  if (hier.on())
    throw FieldError("documents",
                     "hierarchical levels and block routing do not combine with "
                     "documents; expected one of them");
}

void AttentionProblem::set_documents(std::shared_ptr<const DocOffsets> d) {
  docs = std::move(d);
  mask.docs = Documents{};
  if (!docs) return;
  check_documents_combine();
  check_offsets(docs->q, nq, "documents");
  if (docs->cross()) {
    check_offsets(docs->k, nk, "kv_documents");
    if (docs->k.size() != docs->q.size())
      throw FieldError("kv_documents",
                       fmt::format("{} key documents for {} query documents; expected the same "
                                   "count",
                                   static_cast<int64_t>(docs->k.size()) - 1, docs->count()));
  } else if (nk != nq) {
    throw FieldError("kv_documents",
                     fmt::format("Nk = {} differs from Nq = {}; expected key documents for "
                                 "cross-attention",
                                 nk, nq));
  }
  mask.docs.count = docs->count();
  mask.docs.q = docs->q.data();
  mask.docs.k = docs->keys().data();
  mask.docs.global_across = docs->global_across;
}

void AttentionArgs::validate_args(HeadDims dims) const {
  validate(dims);
  if (qpos.stride < 1 || kpos.stride < 1)
    throw FieldError("positions",
                     fmt::format("strides must be >= 1, got {} (queries) and {} (keys)",
                                 qpos.stride, kpos.stride));
  if (keep.on()) {
    if (keep.heads < 1 || (keep.heads != hq && keep.heads != hkv))
      throw FieldError("keep", fmt::format("kept-key sets for {} heads; expected Hq = {} or "
                                           "Hkv = {}",
                                           keep.heads, hq, hkv));
    if (nk > 0 && (kpos.at(0) < 0 || kpos.at(nk - 1) >= keep.stride))
      throw FieldError("keep", fmt::format("key positions {}..{} outside the kept-key sets of "
                                           "{} positions",
                                           kpos.at(0), kpos.at(nk - 1), keep.stride));
  }
  if (quantized()) {
    validate_quant(kq.fmt, head_dim);
    const int64_t rows = batch * nk * hkv;
    for (const QuantRows* x : {&kq, &vq})
      if (x->fmt.bits != kq.fmt.bits || x->fmt.group != kq.fmt.group ||
          x->fmt.asymmetric != kq.fmt.asymmetric || x->d != head_dim || x->rows < rows ||
          (rows > 0 && (x->codes == nullptr || x->scales == nullptr ||
                        (x->fmt.asymmetric && x->lo == nullptr))))
        throw FieldError("data",
                         fmt::format("quantized K/V: {} rows of {} channels ({}) for {} rows of "
                                     "{}",
                                     x->rows, x->d, x->fmt.describe(), rows, head_dim));
    if (nq > 0 && q == nullptr) throw FieldError("data", "q is null");
    return;
  }
  if ((nq > 0 && q == nullptr) || (nk > 0 && (k == nullptr || v == nullptr)))
    throw FieldError("data", "q, k or v is null");
}

float AttentionProblem::softmax_scale() const {
  return scale > 0.0f ? scale : 1.0f / std::sqrt(static_cast<float>(head_dim));
}

int64_t AttentionProblem::pairs() const {
  return visible_pairs(mask, {0, 1}, nq, {0, 1}, nk);
}

double AttentionProblem::flops() const {
  return attention_flops(*this, pairs());
}

std::string AttentionProblem::shape_str() const {
  return fmt::format("B={} Nq={} Nk={} Hq={} Hkv={} D={} {}", batch, nq, nk, hq, hkv, head_dim,
                     dtype_name(dtype));
}

int64_t nonfinite_rows(const float* o, const float* lse, int64_t batch, int64_t n, int64_t hq,
                       int64_t d) {
  int64_t bad = 0;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t h = 0; h < hq; ++h)
      for (int64_t i = 0; i < n; ++i) {
        const float l = lse[(b * hq + h) * n + i];
        bool ok = !std::isnan(l) && l != std::numeric_limits<float>::infinity();
        const float* row = o + ((b * n + i) * hq + h) * d;
        for (int64_t e = 0; e < d && ok; ++e) ok = std::isfinite(row[e]);
        bad += !ok;
      }
  return bad;
}

std::string nonfinite_message(int64_t rows, int64_t total) {
  return fmt::format(
      "{} of {} result rows are not finite (NaN in O or LSE, or LSE = +inf): the scores scale x "
      "q.k overflow float32 (3.4e38); lower the softmax scale or the inputs' magnitude",
      rows, total);
}

double attention_flops(const AttentionProblem& p, int64_t pairs) {
  return 4.0 * double(p.head_dim) * double(p.hq) * double(p.batch) * double(pairs);
}

double attention_flops(const AttentionArgs& a) {
  return attention_flops(a, a.block_pairs());
}

namespace {

// Keys of the block (local indices) in the skipped key ranges that the mask
// without skips lets query qp see; each key counted once even where ranges overlap.
int64_t skipped_visible_keys(const Mask& base, const Mask& mask, int64_t qp, Positions kpos,
                             int64_t nk) {
  int64_t n = 0;
  for (int r = 0; r < mask.n_skip_k; ++r) {
    const PosRange& s = mask.skip_k[r];
    const int64_t j0 = std::max<int64_t>(0, ceil_div(s.begin - kpos.start, kpos.stride));
    const int64_t j1 = std::min(nk, ceil_div(s.end - kpos.start, kpos.stride));
    for (int64_t j = j0; j < j1; ++j) {
      bool earlier = false;
      for (int e = 0; e < r && !earlier; ++e) earlier = mask.skip_k[e].contains(kpos.at(j));
      n += !earlier && base.allows(qp, kpos.at(j));
    }
  }
  return n;
}

}  // namespace

int64_t visible_pairs(const Mask& mask, Positions qpos, int64_t nq, Positions kpos, int64_t nk) {
  if (nk == 0) return 0;
  if (mask.has_skips()) {
    // The pairs of the mask without skips, less those a skipped range removes:
    // no per-element scan beyond the (few) skipped keys.
    Mask base = mask;
    base.n_skip_q = base.n_skip_k = 0;
    int64_t n = 0;
    for (int64_t i = 0; i < nq; ++i) {
      const int64_t qp = qpos.at(i);
      bool skipped_q = false;
      for (int r = 0; r < mask.n_skip_q && !skipped_q; ++r) skipped_q = mask.skip_q[r].contains(qp);
      if (skipped_q) continue;
      n += visible_pairs(base, qpos.from(i), 1, kpos, nk) -
           skipped_visible_keys(base, mask, qp, kpos, nk);
    }
    return n;
  }
  if (mask.is_none()) return nq * nk;
  constexpr int kMaxRanges = 4 + 2 * kMaxGlobalRanges + kMaxRandomBlocks;
  int64_t n = 0;
  for (int64_t i = 0; i < nq; ++i) {
    const int64_t qp = qpos.at(i);
    int64_t b[kMaxRanges], e[kMaxRanges];
    bool elementwise = false;
    const int nr = mask.key_ranges(qp, kpos, nk, b, e, kMaxRanges, &elementwise);
    if (elementwise) {
      for (int64_t j = 0; j < nk; ++j) n += mask.allows(qp, kpos.at(j));
      continue;
    }
    // Size of the union of the ranges: sort by begin, then sweep.
    std::sort(b, b + nr);  // only the multiset of begins and ends matters for a sweep
    std::sort(e, e + nr);
    int64_t covered = 0, open = 0, since = 0;
    for (int x = 0, y = 0; x < nr || y < nr;) {
      if (x < nr && b[x] < e[y]) {
        if (open++ == 0) since = b[x];
        ++x;
      } else {
        if (--open == 0) covered += e[y] - since;
        ++y;
      }
    }
    n += covered;
  }
  return n;
}

}  // namespace ringattn
