// Attention masks in global token positions, and the closed-form tile
// classification the kernel and the ring schedule share.
//
// A block of tokens is described by Positions: token i of the block sits at
// global position start + i * stride (stride >= 1). Contiguous and zigzag
// chunks use stride 1; the striped layout uses stride P.
//
// A Mask says which key position kp a query at position qp sees (d = kp - qp):
//
//   visible = d <= limit                                  (causal bound, AND)
//         and (   lo <= d <= hi and d % dilation == 0     (local band / window)
//                 [aligned: band_lo(qp) <= kp <= band_hi(qp), see below]
//              or 0 <= kp < sinks                         (attention sinks)
//              or kp or qp in a global range              (Longformer global tokens)
//              or blocks.allows(qp, kp) )                 (BigBird block-sparse)
//         and qp not in a skipped query range and kp not in a skipped key range
//
// The skipped ranges carve parts out of a mask: the ring computes sinks and
// global tokens outside the rotation and runs the rest with them skipped.
//
// Documents (packed variable-length sequences, Documents below) make the mask
// block-diagonal: a query of document i sees only keys of document i, and the
// rule above applies inside the document, bottom-right aligned per document:
// the band and the causal bound see the query at qp + shift_i, where
// shift_i = (k_end_i - q_end_i) - (Nk - Nq) (0 for self-attention), the
// dilation counts the distance in the document's own positions ((kp - k_i) -
// (qp - q_i): the document alone), and the sinks are the first `sinks` keys of
// the document. Global ranges stay inside
// their document unless global_across is set; then they see and are seen by
// every token (under the causal bound in global positions). Skipped ranges are
// in global positions.
//
// An aligned band (align_lo or align_hi > 1) extends the band's ends to
// multiples of the alignment: band_lo(qp) = align_lo floor((qp + lo) / align_lo)
// and band_hi(qp) = align_hi ceil((qp + hi + 1) / align_hi) - 1, so aligned
// blocks of keys are never split (hierarchical levels, ringattn/hierarchy.hpp).
//
// No mask is the unbounded band; causal is hi = limit = diag (bottom-right
// aligned: diag = Nk - Nq). Everything is closed form (no per-element tables),
// header-only, and usable from host and device code.
#pragma once

#include <algorithm>
#include <cstdint>

#include "ringattn/dtype.hpp"  // RINGATTN_HD

namespace ringattn {

// Large enough to mean "no bound", small enough that adding any position
// (< 2^48) cannot overflow int64.
inline constexpr int64_t kUnbounded = int64_t{1} << 60;
inline constexpr int kMaxGlobalRanges = 8;
inline constexpr int kMaxRandomBlocks = 8;

struct Positions {
  int64_t start = 0;
  int64_t stride = 1;
  RINGATTN_HD int64_t at(int64_t i) const { return start + i * stride; }
  // Positions of the sub-block that begins at local index i.
  RINGATTN_HD Positions from(int64_t i) const { return {at(i), stride}; }
};

enum class TileClass : uint8_t { empty, partial, full };

// floor(a / b) and ceil(a / b) for b > 0.
RINGATTN_HD inline int64_t floor_div(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}
RINGATTN_HD inline int64_t ceil_div(int64_t a, int64_t b) {
  return -floor_div(-a, b);
}

// A half-open range of positions [begin, end).
struct PosRange {
  int64_t begin = 0, end = 0;
  RINGATTN_HD bool contains(int64_t p) const { return p >= begin && p < end; }
};

// BigBird-style block sparsity over blocks of `size` positions: query block
// bq sees key blocks bq - window .. bq + window, the first `global` blocks
// (which also see every block), and `random` blocks drawn from `seed` (the
// same on every rank and for every P) among the `key_blocks` key blocks.
struct BlockSparse {
  int64_t size = 0;  // 0: off
  int64_t window = 1;
  int64_t global = 0;
  int random = 0;
  uint64_t seed = 0;
  int64_t key_blocks = 0;  // ceil(Nk / size) of the whole key sequence

  RINGATTN_HD bool on() const { return size > 0; }
  // The r-th random key block of query block bq.
  RINGATTN_HD int64_t random_block(int64_t bq, int r) const {
    uint64_t z =
        seed + 0x9e3779b97f4a7c15ull * static_cast<uint64_t>(bq * kMaxRandomBlocks + r + 1);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;  // splitmix64 finaliser
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return key_blocks > 0 ? static_cast<int64_t>(z % static_cast<uint64_t>(key_blocks)) : 0;
  }
  RINGATTN_HD bool allows_blocks(int64_t bq, int64_t bk) const {
    if (bk < 0 || bq < 0) return false;
    if (bq - bk <= window && bk - bq <= window) return true;
    if (bk < global || bq < global) return true;
    for (int r = 0; r < random; ++r)
      if (random_block(bq, r) == bk) return true;
    return false;
  }
  RINGATTN_HD bool allows(int64_t qp, int64_t kp) const {
    return on() && qp >= 0 && kp >= 0 && allows_blocks(qp / size, kp / size);
  }
};

// Document boundaries as cumulative offsets (flash-attn's cu_seqlens): document
// i holds queries [q[i], q[i + 1]) and keys [k[i], k[i + 1]); q[0] = k[0] = 0,
// q[count] = Nq, k[count] = Nk, non-decreasing (an empty document holds no
// tokens). The arrays are not owned: whoever builds the Mask keeps them alive
// (AttentionProblem::set_documents). Host code only (the CUDA kernel refuses them).
struct Documents {
  int64_t count = 0;  // 0: off (one document, the plain mask)
  const int64_t* q = nullptr;
  const int64_t* k = nullptr;
  bool global_across = false;  // global ranges cross documents

  RINGATTN_HD bool on() const { return count > 0; }
  // The document holding query / key position p (the last one starting at or
  // before p, so empty documents are never returned for a held position).
  RINGATTN_HD int64_t q_doc(int64_t p) const { return find(q, p); }
  RINGATTN_HD int64_t k_doc(int64_t p) const { return find(k, p); }

 private:
  RINGATTN_HD int64_t find(const int64_t* off, int64_t p) const {
    int64_t a = 0, b = count;  // invariant: off[a] <= p (or a == 0), answer in [a, b)
    while (b - a > 1) {
      const int64_t m = a + (b - a) / 2;
      if (off[m] <= p)
        a = m;
      else
        b = m;
    }
    return a;
  }
};

struct Mask {
  int64_t lo = -kUnbounded;    // local band: smallest visible kp - qp
  int64_t hi = kUnbounded;     // local band: largest visible kp - qp
  int64_t limit = kUnbounded;  // causal bound on kp - qp, applied to every part
  int64_t dilation = 1;        // band keeps only kp - qp divisible by it
  int64_t align_lo = 1;        // band's lower end rounded down to a multiple of it
  int64_t align_hi = 1;        // band's upper end rounded up to one before a multiple
  int64_t sinks = 0;           // keys at 0 <= kp < sinks are seen by every query
  int n_global = 0;            // global ranges: see and are seen by everything
  PosRange global[kMaxGlobalRanges] = {};
  BlockSparse blocks;
  int n_skip_q = 0;  // queries in these ranges see nothing
  PosRange skip_q[kMaxGlobalRanges] = {};
  int n_skip_k = 0;  // keys in these ranges are seen by nothing
  PosRange skip_k[kMaxGlobalRanges + 1] = {};
  Documents docs;  // block-diagonal over documents (off: one document)

  static Mask none() { return {}; }
  // Query at qp sees keys at kp <= qp + diag.
  static Mask causal(int64_t diag = 0) {
    Mask m;
    m.hi = m.limit = diag;
    return m;
  }
  // Only the band lo <= kp - qp <= hi.
  static Mask band(int64_t lo, int64_t hi) {
    Mask m;
    m.lo = lo, m.hi = hi;
    return m;
  }

  RINGATTN_HD bool aligned() const { return align_lo != 1 || align_hi != 1; }
  RINGATTN_HD bool band_empty() const { return !aligned() && (lo > hi || lo > limit); }
  // The band's smallest and largest visible key position for a query at qp
  // (-kUnbounded / kUnbounded where unbounded).
  RINGATTN_HD int64_t band_lo(int64_t qp) const {
    if (lo <= -kUnbounded) return -kUnbounded;
    return align_lo == 1 ? qp + lo : align_lo * floor_div(qp + lo, align_lo);
  }
  RINGATTN_HD int64_t band_hi(int64_t qp) const {
    if (hi >= kUnbounded) return kUnbounded;
    return align_hi == 1 ? qp + hi : align_hi * ceil_div(qp + hi + 1, align_hi) - 1;
  }
  RINGATTN_HD bool has_extras() const { return sinks > 0 || n_global > 0 || blocks.on(); }
  RINGATTN_HD bool is_none() const {
    return lo <= -kUnbounded && hi >= kUnbounded && limit >= kUnbounded && dilation == 1 &&
           !has_skips() && !docs.on();  // an unbounded band stays unbounded whatever its alignment
  }
  RINGATTN_HD bool has_skips() const { return n_skip_q > 0 || n_skip_k > 0; }
  RINGATTN_HD bool skipped(int64_t qp, int64_t kp) const {
    for (int i = 0; i < n_skip_q; ++i)
      if (skip_q[i].contains(qp)) return true;
    for (int i = 0; i < n_skip_k; ++i)
      if (skip_k[i].contains(kp)) return true;
    return false;
  }
  RINGATTN_HD bool in_global(int64_t p) const {
    for (int i = 0; i < n_global; ++i)
      if (global[i].contains(p)) return true;
    return false;
  }
  RINGATTN_HD bool allows(int64_t qp, int64_t kp) const {
    if (!docs.on()) return allows_in(Frame{}, qp, kp);
    const int64_t i = docs.q_doc(qp);
    if (kp >= docs.k[i] && kp < docs.k[i + 1] && allows_in(frame(i), qp, kp)) return true;
    return across_allows(qp, kp);
  }

  // Classify the tile of queries at positions [q_first, q_last] and keys at
  // [k_first, k_last] (the extremes of each block). `empty` and `full` are
  // exact (never claimed unless true for every pair); `partial` may be
  // conservative. With documents: each document both ranges touch is
  // classified in its own frame (beyond kMaxTileDocs of them: partial), a tile
  // whose queries and keys lie in different documents is empty, and only a
  // tile inside one document can be full.
  RINGATTN_HD TileClass classify(int64_t q_first, int64_t q_last, int64_t k_first,
                                 int64_t k_last) const {
    if (!docs.on()) return classify_in(Frame{}, q_first, q_last, k_first, k_last);
    const int64_t iq0 = docs.q_doc(q_first), iq1 = docs.q_doc(q_last);
    const int64_t ik0 = docs.k_doc(k_first), ik1 = docs.k_doc(k_last);
    const int64_t i0 = iq0 > ik0 ? iq0 : ik0, i1 = iq1 < ik1 ? iq1 : ik1;
    bool any = across_any(q_first, q_last, k_first, k_last);
    if (i1 - i0 >= kMaxTileDocs) return TileClass::partial;
    for (int64_t i = i0; i <= i1 && !any; ++i) {
      const int64_t qa = q_first > docs.q[i] ? q_first : docs.q[i];
      const int64_t qb = q_last < docs.q[i + 1] - 1 ? q_last : docs.q[i + 1] - 1;
      const int64_t ka = k_first > docs.k[i] ? k_first : docs.k[i];
      const int64_t kb = k_last < docs.k[i + 1] - 1 ? k_last : docs.k[i + 1] - 1;
      if (qa > qb || ka > kb) continue;
      const TileClass c = classify_in(frame(i), qa, qb, ka, kb);
      if (c == TileClass::full && iq0 == iq1 && ik0 == ik1 && iq0 == ik0) return c;
      any = c != TileClass::empty;
    }
    return any ? TileClass::partial : TileClass::empty;
  }

  // Bounds on the key positions any query in [q_first, q_last] may see, and on
  // the query positions that may see a key in [k_first, k_last] (inclusive;
  // -kUnbounded / kUnbounded where open): the documents' (unless global ranges
  // cross them), else the band's and the causal limit's when no sink, global
  // range or block pattern reaches past them. The kernels skip whole runs of
  // tiles outside them without classifying each, and pack only the keys inside.
  RINGATTN_HD void key_bounds(int64_t q_first, int64_t q_last, int64_t* lo_pos,
                              int64_t* hi_pos) const {
    *lo_pos = -kUnbounded, *hi_pos = kUnbounded;
    if (docs.on()) {
      if (docs.global_across && n_global > 0) return;
      *lo_pos = docs.k[docs.q_doc(q_first)];
      *hi_pos = docs.k[docs.q_doc(q_last) + 1] - 1;
      return;
    }
    if (has_extras()) return;
    if (lo > -kUnbounded) *lo_pos = band_lo(q_first);
    if (hi < kUnbounded) *hi_pos = band_hi(q_last);
    if (limit < kUnbounded && q_last + limit < *hi_pos) *hi_pos = q_last + limit;
  }
  RINGATTN_HD void query_bounds(int64_t k_first, int64_t k_last, int64_t* lo_pos,
                                int64_t* hi_pos) const {
    *lo_pos = -kUnbounded, *hi_pos = kUnbounded;
    if (docs.on()) {
      if (docs.global_across && n_global > 0) return;
      *lo_pos = docs.q[docs.k_doc(k_first)];
      *hi_pos = docs.q[docs.k_doc(k_last) + 1] - 1;
      return;
    }
    if (has_extras() || aligned()) return;
    // kp - qp <= min(hi, limit) and kp - qp >= lo.
    const int64_t top = hi < limit ? hi : limit;
    if (top < kUnbounded) *lo_pos = k_first - top;
    if (lo > -kUnbounded) *hi_pos = k_last - lo;
  }

  // Visible keys of one query among nk keys at positions kpos, as up to `max`
  // half-open ranges of local key indices, in no particular order and possibly
  // overlapping; returns how many. *elementwise is set when the ranges are only
  // an outer bound and allows() must be checked per key (dilated bands, or
  // more ranges than `max`, or a skipped key range among the keys).
  RINGATTN_HD int key_ranges(int64_t qp, Positions kpos, int64_t nk, int64_t* begin, int64_t* end,
                             int max, bool* elementwise) const {
    if (!docs.on()) return key_ranges_in(Frame{}, qp, kpos, nk, begin, end, max, elementwise);
    const int64_t i = docs.q_doc(qp);
    int n = key_ranges_in(frame(i), qp, kpos, nk, begin, end, max, elementwise);
    if (docs.global_across && n_global > 0) {  // the global parts, not clipped to the document
      bool ew = false;
      Mask g = *this;  // only the global ranges, under the causal bound in global positions
      g.docs = Documents{};
      g.lo = kUnbounded, g.hi = -kUnbounded, g.dilation = 1, g.align_lo = g.align_hi = 1;
      g.sinks = 0;
      n += g.key_ranges_in(Frame{}, qp, kpos, nk, begin + n, end + n, max - n, &ew);
      *elementwise = *elementwise || ew;
    }
    return n;
  }

 private:
  // The coordinates of one document (Frame{}: the whole sequence): the band and
  // the causal bound see a query at qp + shift, the sinks start at sink0, keys
  // lie in [k_begin, k_end), and the global ranges count when `globals`. The
  // dilation counts kr - qr = d + phase (d = kp - (qp + shift)): the distance in
  // the document's own positions, as for the document alone (and kp - qp
  // without documents).
  struct Frame {
    int64_t shift = 0, sink0 = 0;
    int64_t k_begin = -kUnbounded, k_end = kUnbounded;
    bool globals = true;
    int64_t phase = 0;
  };
  static constexpr int64_t kMaxTileDocs = 16;  // documents classify() looks at in one tile

  RINGATTN_HD Frame frame(int64_t i) const {
    const int64_t nq = docs.q[docs.count], nk = docs.k[docs.count];
    Frame f;
    f.shift = (docs.k[i + 1] - docs.q[i + 1]) - (nk - nq);
    f.sink0 = f.k_begin = docs.k[i];
    f.k_end = docs.k[i + 1];
    f.globals = !docs.global_across;
    f.phase = f.shift - (docs.k[i] - docs.q[i]);
    return f;
  }
  RINGATTN_HD bool allows_in(const Frame& f, int64_t qp, int64_t kp) const {
    const int64_t d = kp - (qp + f.shift);
    if (d > limit) return false;
    if (has_skips() && skipped(qp, kp)) return false;
    if (!aligned()) {
      if (d >= lo && d <= hi && (dilation == 1 || (d + f.phase) % dilation == 0)) return true;
    } else if (kp >= band_lo(qp + f.shift) && kp <= band_hi(qp + f.shift) &&
               (dilation == 1 || (d + f.phase) % dilation == 0)) {
      return true;
    }
    if (kp >= f.sink0 && kp < f.sink0 + sinks) return true;
    if (f.globals && n_global > 0 && (in_global(kp) || in_global(qp))) return true;
    return blocks.allows(qp, kp);
  }
  // Global ranges across documents (docs.global_across), under the causal bound
  // in global positions.
  RINGATTN_HD bool across_allows(int64_t qp, int64_t kp) const {
    if (!docs.global_across || n_global == 0 || kp - qp > limit) return false;
    if (has_skips() && skipped(qp, kp)) return false;
    return in_global(kp) || in_global(qp);
  }
  RINGATTN_HD bool across_any(int64_t q_first, int64_t q_last, int64_t k_first,
                              int64_t k_last) const {
    if (!docs.global_across || n_global == 0 || k_first - q_last > limit) return false;
    for (int i = 0; i < n_global; ++i)
      if (range_class(global[i], k_first, k_last) != TileClass::empty ||
          range_class(global[i], q_first, q_last) != TileClass::empty)
        return true;  // conservative (the tile is partial at best)
    return false;
  }

  // classify() inside one frame (without documents: the whole sequence).
  RINGATTN_HD TileClass classify_in(const Frame& f, int64_t q_first, int64_t q_last,
                                    int64_t k_first, int64_t k_last) const {
    const int64_t dmin = k_first - (q_last + f.shift), dmax = k_last - (q_first + f.shift);
    if (dmin > limit) return TileClass::empty;
    // Skipped ranges: a tile inside one is empty, a tile touching one is at best partial.
    bool touches_skip = false;
    for (int i = 0; i < n_skip_q; ++i) {
      const TileClass c = range_class(skip_q[i], q_first, q_last);
      if (c == TileClass::full) return TileClass::empty;
      touches_skip = touches_skip || c == TileClass::partial;
    }
    for (int i = 0; i < n_skip_k; ++i) {
      const TileClass c = range_class(skip_k[i], k_first, k_last);
      if (c == TileClass::full) return TileClass::empty;
      touches_skip = touches_skip || c == TileClass::partial;
    }
    const bool limit_full = dmax <= limit && !touches_skip;
    // The union of the parts: full if one is full, empty if all are empty.
    bool any = false, full = false;
    auto add = [&](TileClass c) {
      any = any || c != TileClass::empty;
      full = full || c == TileClass::full;
    };
    if (!band_empty()) {
      // The band's ends grow with qp: compare the tile's keys with the ends of
      // its first and last query (for an unaligned band: dmax < lo, dmin > hi, ...).
      const int64_t qa = q_first + f.shift, qb = q_last + f.shift;
      const bool disjoint = k_last < band_lo(qa) || k_first > band_hi(qb);
      const bool inside = k_first >= band_lo(qb) && k_last <= band_hi(qa);
      add(disjoint ? TileClass::empty
                   : (inside && dilation == 1 ? TileClass::full : TileClass::partial));
    }
    if (sinks > 0) add(range_class({f.sink0, f.sink0 + sinks}, k_first, k_last));
    for (int i = 0; i < (f.globals ? n_global : 0); ++i) {
      add(range_class(global[i], k_first, k_last));
      add(range_class(global[i], q_first, q_last));
    }
    if (blocks.on()) add(block_class(q_first, q_last, k_first, k_last));
    if (!any) return TileClass::empty;
    return full && limit_full ? TileClass::full : TileClass::partial;
  }

  // key_ranges() inside one frame: the ranges are clipped to the frame's keys.
  RINGATTN_HD int key_ranges_in(const Frame& f, int64_t qp, Positions kpos, int64_t nk,
                                int64_t* begin, int64_t* end, int max, bool* elementwise) const {
    *elementwise = false;
    int n = 0;
    if (max <= 0) return 0;
    // The causal bound and the frame's last key cap every range; its first key floors them.
    int64_t cap = nk;
    const int64_t qs = qp + f.shift;
    if (limit < kUnbounded)
      cap = std::min(cap, floor_div(qs + limit - kpos.start, kpos.stride) + 1);
    if (f.k_end < kUnbounded) cap = std::min(cap, ceil_div(f.k_end - kpos.start, kpos.stride));
    const int64_t floor_j =
        f.k_begin <= -kUnbounded
            ? 0
            : std::max<int64_t>(0, ceil_div(f.k_begin - kpos.start, kpos.stride));
    if (cap <= floor_j) return 0;
    for (int i = 0; i < n_skip_q; ++i)
      if (skip_q[i].contains(qp)) return 0;
    for (int i = 0; i < n_skip_k; ++i)  // keys at kpos.at(0) .. kpos.at(cap - 1)
      if (skip_k[i].begin <= kpos.at(cap - 1) && skip_k[i].end > kpos.at(0)) *elementwise = true;
    auto push = [&](int64_t lo_pos, int64_t hi_pos_excl) {  // positions -> indices
      int64_t a = lo_pos <= -kUnbounded
                      ? floor_j
                      : std::max<int64_t>(floor_j, ceil_div(lo_pos - kpos.start, kpos.stride));
      int64_t b = hi_pos_excl >= kUnbounded
                      ? cap
                      : std::min(cap, ceil_div(hi_pos_excl - kpos.start, kpos.stride));
      if (a < b && n < max)
        begin[n] = a, end[n] = b, ++n;
      else if (a < b)
        begin[n - 1] = std::min(begin[n - 1], a), end[n - 1] = std::max(end[n - 1], b),
                  *elementwise = true;
    };
    if (f.globals && n_global > 0 && in_global(qp)) {
      push(-kUnbounded, kUnbounded);
      return n;
    }
    if (!band_empty()) {
      const int64_t bl = band_lo(qs), bh = band_hi(qs);
      push(bl, bh >= kUnbounded ? kUnbounded : bh + 1);
      if (dilation != 1) *elementwise = true;
    }
    if (sinks > 0) push(f.sink0, f.sink0 + sinks);
    for (int i = 0; i < (f.globals ? n_global : 0); ++i) push(global[i].begin, global[i].end);
    if (blocks.on() && qp >= 0) {
      const int64_t bq = qp / blocks.size, s = blocks.size;
      push(std::max<int64_t>(0, (bq - blocks.window) * s), (bq + blocks.window + 1) * s);
      if (blocks.global > 0) push(0, blocks.global * s);
      if (bq < blocks.global) push(0, kUnbounded);
      for (int r = 0; r < blocks.random; ++r) {
        const int64_t bk = blocks.random_block(bq, r);
        push(bk * s, (bk + 1) * s);
      }
    }
    return n;
  }

  RINGATTN_HD static TileClass range_class(PosRange r, int64_t first, int64_t last) {
    if (last < r.begin || first >= r.end) return TileClass::empty;
    if (first >= r.begin && last < r.end) return TileClass::full;
    return TileClass::partial;
  }
  RINGATTN_HD TileClass block_class(int64_t q_first, int64_t q_last, int64_t k_first,
                                    int64_t k_last) const {
    const int64_t s = blocks.size;
    if (q_last < 0 || k_last < 0) return TileClass::empty;
    const int64_t bq0 = std::max<int64_t>(q_first, 0) / s, bq1 = q_last / s;
    const int64_t bk0 = std::max<int64_t>(k_first, 0) / s, bk1 = k_last / s;
    constexpr int64_t kMaxPairs = 64;  // beyond this many block pairs, do not enumerate
    if ((bq1 - bq0 + 1) * (bk1 - bk0 + 1) > kMaxPairs) return TileClass::partial;
    int64_t allowed = 0, total = 0;
    for (int64_t bq = bq0; bq <= bq1; ++bq)
      for (int64_t bk = bk0; bk <= bk1; ++bk, ++total) allowed += blocks.allows_blocks(bq, bk);
    if (allowed == 0) return TileClass::empty;
    return allowed == total && q_first >= 0 && k_first >= 0 ? TileClass::full : TileClass::partial;
  }
};

}  // namespace ringattn
