#include "ringattn/schedule.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <limits>

#include "ringattn/attention.hpp"
#include "ringattn/error.hpp"

namespace ringattn {

int64_t RingSchedule::rank_pairs(int rank) const {
  int64_t n = 0;
  for (const RingStep& s : per_rank[static_cast<std::size_t>(rank)]) n += s.pairs;
  return n;
}

int RingSchedule::computed_steps(int rank) const {
  int n = 0;
  for (const RingStep& s : per_rank[static_cast<std::size_t>(rank)]) n += !s.work.empty();
  return n;
}

const char* transfer_name(Transfer t) {
  switch (t) {
    case Transfer::ring:
      return "ring";
    case Transfer::direct:
      return "direct";
    case Transfer::double_ring:
      return "double-ring";
  }
  return "?";
}

int64_t RingStep::row_count() const {
  int64_t n = 0;
  for (const RowSpan& r : rows) n += r.hi - r.lo;
  return n;
}

int64_t RingSchedule::tokens_arriving(const Layout& kv, int rank, int s, bool packed) const {
  const RingStep& st = step(rank, s);
  return packed && st.packed ? st.row_count() : kv.tokens(st.source);
}

int64_t RingSchedule::tokens_sent(const Layout& kv, int rank, bool packed) const {
  int64_t n = 0;
  for (int s = 1; s < steps; ++s) {
    const RingStep& st = step(rank, s);
    if (st.send_to >= 0) n += tokens_arriving(kv, st.send_to, s, packed);
  }
  return n;
}

HeldRows held_rows(const Layout& kv, const RingStep& st, bool packed) {
  HeldRows h;
  const auto& segs = kv.segments(st.source);
  h.packed = packed && st.packed;
  if (!h.packed) {
    h.tokens = kv.tokens(st.source);
    for (const Segment& s : segs) h.seg_base.push_back(s.local_offset);
    return h;
  }
  h.seg_base.assign(segs.size(), 0);
  for (const RowSpan& r : st.rows) {
    if (r.seg < 0 || static_cast<std::size_t>(r.seg) >= segs.size() || r.lo < 0 || r.hi < r.lo ||
        r.hi > segs[static_cast<std::size_t>(r.seg)].count)
      throw Error("ring schedule: rows outside the source's key segments");
    h.seg_base[static_cast<std::size_t>(r.seg)] = h.tokens - r.lo;
    h.tokens += r.hi - r.lo;
  }
  return h;
}

std::vector<TokenRun> transfer_runs(const Layout& kv, const RingStep& from, const RingStep& to,
                                    int64_t batch, bool packed) {
  if (from.source != to.source) throw Error("ring schedule: a transfer between different blocks");
  const HeldRows f = held_rows(kv, from, packed), t = held_rows(kv, to, packed);
  std::vector<TokenRun> out;
  if (!t.packed) {  // the whole block: the sender holds it whole too
    if (f.packed) throw Error("ring schedule: a whole block passed on from packed rows");
    if (f.tokens > 0) out.push_back({0, 0, batch * f.tokens});
    return out;
  }
  for (const RowSpan& r : to.rows) {
    bool held = !f.packed;
    for (const RowSpan& h : from.rows)
      held = held || (h.seg == r.seg && h.lo <= r.lo && r.hi <= h.hi);
    if (!held) throw Error("ring schedule: rows passed on that the sender does not hold");
  }
  int64_t dst = 0;
  for (int64_t b = 0; b < batch; ++b)
    for (const RowSpan& r : to.rows) {
      const int64_t src = b * f.tokens + f.seg_base[static_cast<std::size_t>(r.seg)] + r.lo;
      const int64_t n = r.hi - r.lo;
      if (n == 0) continue;
      if (!out.empty() && out.back().src + out.back().count == src)
        out.back().count += n;
      else
        out.push_back({src, dst, n});
      dst += n;
    }
  return out;
}

double RingSchedule::imbalance() const {
  int64_t mx = 0, total = 0;
  for (int r = 0; r < ranks; ++r) {
    const int64_t p = rank_pairs(r);
    mx = std::max(mx, p);
    total += p;
  }
  return total == 0 ? 1.0 : double(mx) * ranks / double(total);
}

std::vector<Chunk> chunks_in(const Layout& l, int rank, const std::vector<PosRange>& ranges) {
  std::vector<Chunk> out;
  for (const Segment& seg : l.segments(rank))
    for (const PosRange& r : ranges) {
      const int64_t i0 = std::max<int64_t>(0, ceil_div(r.begin - seg.start, seg.stride));
      const int64_t i1 = std::min(seg.count, ceil_div(r.end - seg.start, seg.stride));
      if (i0 < i1) out.push_back({seg.local_offset + i0, i1 - i0, seg.positions().from(i0)});
    }
  return out;
}

namespace {

int mod(int a, int p) {
  return ((a % p) + p) % p;
}

// Sorted union of ranges clipped to [0, n).
std::vector<PosRange> normalise(std::vector<PosRange> v, int64_t n) {
  for (PosRange& r : v) r.begin = std::max<int64_t>(r.begin, 0), r.end = std::min(r.end, n);
  v.erase(std::remove_if(v.begin(), v.end(), [](const PosRange& r) { return r.begin >= r.end; }),
          v.end());
  std::sort(v.begin(), v.end(),
            [](const PosRange& a, const PosRange& b) { return a.begin < b.begin; });
  std::vector<PosRange> out;
  for (const PosRange& r : v) {
    if (!out.empty() && r.begin <= out.back().end)
      out.back().end = std::max(out.back().end, r.end);
    else
      out.push_back(r);
  }
  return out;
}

int64_t total(const std::vector<PosRange>& v) {
  int64_t n = 0;
  for (const PosRange& r : v) n += r.end - r.begin;
  return n;
}

// Sinks and global tokens carved out of the ring, when worth it.
SharedPart shared_part(const Layout& q, const Layout& kv, const Mask& mask,
                       const ScheduleOptions& opt) {
  SharedPart sp;
  // Documents: each has its own sinks, and global tokens stay in theirs (mask.hpp): none shared.
  if (!opt.share || q.ranks() < 2 || (mask.sinks <= 0 && mask.n_global == 0) || mask.docs.on())
    return sp;
  if (mask.has_skips()) throw Error("ring schedule: the mask already has skipped ranges");
  std::vector<PosRange> keys, queries;
  if (mask.sinks > 0) keys.push_back({0, mask.sinks});
  for (int i = 0; i < mask.n_global; ++i) {
    keys.push_back(mask.global[i]);
    queries.push_back(mask.global[i]);
  }
  keys = normalise(keys, kv.length());
  queries = normalise(queries, q.length());
  // Every rank holds the shared rows: keep that within one rank's share
  // (per-rank memory stays O(N / P)); beyond it they ride the ring.
  if (total(keys) > kv.max_tokens() || total(queries) > q.max_tokens()) return sp;
  sp.keys = keys, sp.queries = queries;
  sp.key_tokens = total(keys), sp.query_tokens = total(queries);
  for (int r = 0; r < q.ranks(); ++r) {
    sp.key_chunks.push_back(chunks_in(kv, r, keys));
    sp.query_chunks.push_back(chunks_in(q, r, queries));
  }
  return sp;
}

// The mask of the rotating part: sinks and global tokens skipped.
Mask ring_mask_of(const Mask& mask, const SharedPart& sp) {
  if (!sp.on()) return mask;
  Mask m = mask;
  m.sinks = 0;
  m.n_global = 0;
  m.n_skip_k = static_cast<int>(sp.keys.size());
  for (std::size_t i = 0; i < sp.keys.size(); ++i) m.skip_k[i] = sp.keys[i];
  m.n_skip_q = static_cast<int>(sp.queries.size());
  for (std::size_t i = 0; i < sp.queries.size(); ++i) m.skip_q[i] = sp.queries[i];
  return m;
}

// Rows [lo, hi) of key segment b holding every key some query of segment a
// sees: the longest prefix and suffix that classify() calls empty, found by
// bisection (a part of an empty range is empty).
void visible_rows(const Mask& mask, const Segment& a, const Segment& b, SegmentWork* w) {
  const auto empty = [&](int64_t i0, int64_t i1) {  // keys [i0, i1) of b
    return i1 <= i0 || mask.classify(a.start, a.last(), b.start + i0 * b.stride,
                                     b.start + (i1 - 1) * b.stride) == TileClass::empty;
  };
  int64_t lo = 0, bad = b.count;  // [0, lo) empty, [0, bad) not
  while (bad - lo > 1) {
    const int64_t mid = lo + (bad - lo) / 2;
    (empty(0, mid) ? lo : bad) = mid;
  }
  int64_t hi = b.count;
  bad = lo;  // [hi, count) empty, [bad, count) not
  while (hi - bad > 1) {
    const int64_t mid = bad + (hi - bad) / 2;
    (empty(mid, b.count) ? hi : bad) = mid;
  }
  w->k_lo = lo, w->k_hi = hi;
}

// Per key segment of a block, the hull of the rows that work items see.
class Hull {
 public:
  explicit Hull(std::size_t segs) : lo_(segs, std::numeric_limits<int64_t>::max()), hi_(segs, 0) {}
  void add(const RingStep& st) {
    for (const SegmentWork& w : st.work) {
      const auto j = static_cast<std::size_t>(w.k_seg);
      lo_[j] = std::min(lo_[j], w.k_lo);
      hi_[j] = std::max(hi_[j], w.k_hi);
    }
  }
  std::vector<RowSpan> spans() const {
    std::vector<RowSpan> out;
    for (std::size_t j = 0; j < lo_.size(); ++j)
      if (lo_[j] < hi_[j]) out.push_back({static_cast<int>(j), lo_[j], hi_[j]});
    return out;
  }

 private:
  std::vector<int64_t> lo_, hi_;
};

// The work of rank r with the block of `source`.
RingStep step_work(const Layout& q, const Layout& kv, const Mask& mask, int r, int source) {
  RingStep st;
  st.source = source;
  const auto& qs = q.segments(r);
  const auto& ks = kv.segments(source);
  for (int i = 0; i < static_cast<int>(qs.size()); ++i)
    for (int j = 0; j < static_cast<int>(ks.size()); ++j) {
      const Segment& a = qs[static_cast<std::size_t>(i)];
      const Segment& b = ks[static_cast<std::size_t>(j)];
      const TileClass cls = mask.classify(a.start, a.last(), b.start, b.last());
      if (cls == TileClass::empty) continue;
      const int64_t pairs = cls == TileClass::full ? a.count * b.count
                                                   : visible_pairs(mask, a.positions(), a.count,
                                                                   b.positions(), b.count);
      if (pairs == 0) continue;
      SegmentWork w{i, j, cls, pairs, 0, b.count};
      if (cls != TileClass::full) visible_rows(mask, a, b, &w);
      st.work.push_back(w);
      st.pairs += pairs;
    }
  return st;
}

// The double ring (schedule.hpp) over nodes of w ranks.
void double_ring(const Layout& q, const Layout& kv, int w, RingSchedule* sch) {
  const int p = sch->ranks, nodes = p / w;
  const auto source = [&](int r, int round, int j) {
    return mod(r / w - round, nodes) * w + mod(r % w - j, w);
  };
  // by[r][round w + j]: the work of rank r at (round, j); needed: any rank has work.
  std::vector<std::vector<RingStep>> by(static_cast<std::size_t>(p));
  std::vector<bool> needed(static_cast<std::size_t>(p), false);
  for (int r = 0; r < p; ++r)
    for (int round = 0; round < nodes; ++round)
      for (int j = 0; j < w; ++j) {
        by[static_cast<std::size_t>(r)].push_back(
            step_work(q, kv, sch->ring_mask, r, source(r, round, j)));
        if (!by[static_cast<std::size_t>(r)].back().work.empty())
          needed[static_cast<std::size_t>(round * w + j)] = true;
      }
  int last_round = 0;
  std::vector<int> last_inner(static_cast<std::size_t>(nodes), 0);
  for (int round = 0; round < nodes; ++round)
    for (int j = 0; j < w; ++j)
      if (needed[static_cast<std::size_t>(round * w + j)]) {
        last_round = round;
        last_inner[static_cast<std::size_t>(round)] = j;
      }
  sch->transfer = Transfer::double_ring;
  sch->per_node = w;
  sch->per_rank.assign(static_cast<std::size_t>(p), {});
  int round_start = 0;  // step index of the current round's first step
  for (int round = 0; round <= last_round; ++round) {
    const int first = static_cast<int>(sch->shift.size());
    for (int j = 0; j <= last_inner[static_cast<std::size_t>(round)]; ++j) {
      const int step = static_cast<int>(sch->shift.size());
      sch->shift.push_back(round * w + j);
      for (int r = 0; r < p; ++r) {
        RingStep st = by[static_cast<std::size_t>(r)][static_cast<std::size_t>(round * w + j)];
        const int n = r / w, i = r % w;
        if (j > 0) {  // inside the node
          st.recv_from = n * w + mod(i - 1, w);
          st.send_to = n * w + mod(i + 1, w);
          st.post = step - 1;
        } else if (round > 0) {  // across nodes, posted at the previous round's start
          st.recv_from = mod(n - 1, nodes) * w + i;
          st.send_to = mod(n + 1, nodes) * w + i;
          st.post = round_start;
        }
        sch->per_rank[static_cast<std::size_t>(r)].push_back(std::move(st));
      }
    }
    round_start = first;
  }
  sch->steps = static_cast<int>(sch->shift.size());
}

}  // namespace

RingSchedule make_ring_schedule(const Layout& q, const Layout& kv, const Mask& mask,
                                const ScheduleOptions& opt) {
  if (q.ranks() != kv.ranks())
    throw Error(fmt::format("ring schedule: query layout has {} ranks, key layout {}", q.ranks(),
                            kv.ranks()));
  RingSchedule sch;
  sch.ranks = q.ranks();
  const int p = sch.ranks;
  sch.shared = shared_part(q, kv, mask, opt);
  sch.ring_mask = ring_mask_of(mask, sch.shared);
  if (opt.per_node > 0) {
    if (p % opt.per_node != 0)
      throw FieldError("ranks_per_node", fmt::format("{} ranks per node do not divide the {} ranks",
                                                     opt.per_node, p));
    double_ring(q, kv, opt.per_node, &sch);
    return sch;
  }

  // Work of every rank with every block: by[r][shift].
  std::vector<std::vector<RingStep>> by(static_cast<std::size_t>(p));
  int last_needed = 0;  // last shift at which any rank has work
  std::vector<bool> shift_needed(static_cast<std::size_t>(p), false);
  shift_needed[0] = true;
  for (int r = 0; r < p; ++r)
    for (int s = 0; s < p; ++s) {
      by[static_cast<std::size_t>(r)].push_back(step_work(q, kv, sch.ring_mask, r, mod(r - s, p)));
      if (!by[static_cast<std::size_t>(r)].back().work.empty()) {
        last_needed = std::max(last_needed, s);
        shift_needed[static_cast<std::size_t>(s)] = true;
      }
    }
  auto needs = [&](int r, int s) {
    return !by[static_cast<std::size_t>(mod(r, p))][static_cast<std::size_t>(s)].work.empty();
  };

  // The rows each transfer carries: direct, the rows the receiver's work sees;
  // the ring, every row of the block that any rank on its way round sees.
  std::vector<Hull> ring_rows;  // [source]
  for (int src = 0; src < p; ++src) {
    ring_rows.emplace_back(kv.segments(src).size());
    for (int s = 1; s <= last_needed; ++s)
      ring_rows.back().add(
          by[static_cast<std::size_t>(mod(src + s, p))][static_cast<std::size_t>(s)]);
  }
  const auto direct_rows = [&](int r, int s) {
    Hull h(kv.segments(mod(r - s, p)).size());
    h.add(by[static_cast<std::size_t>(r)][static_cast<std::size_t>(s)]);
    return h;
  };
  // Blocks each transfer would send: the ring passes every held block on at
  // every step up to the last needed one; direct sends only needed blocks.
  // Compared by whole blocks: direct talks to ranks other than the neighbours,
  // worth it where it drops whole blocks (steps in the middle), not to save
  // the part of a block some ranks do not see (causal zigzag's back chunk:
  // 25% of the bytes, at the price of every rank talking to every other one).
  int64_t ring_tokens = 0, direct_tokens = 0;
  for (int r = 0; r < p; ++r)
    for (int s = 1; s < p; ++s) {
      if (s <= last_needed) ring_tokens += kv.tokens(mod(r - s, p));
      if (needs(r, s)) direct_tokens += kv.tokens(mod(r - s, p));
    }
  sch.transfer = opt.direct && direct_tokens < ring_tokens ? Transfer::direct : Transfer::ring;

  for (int s = 0; s < p; ++s)
    if (sch.transfer == Transfer::ring ? s <= last_needed
                                       : shift_needed[static_cast<std::size_t>(s)])
      sch.shift.push_back(s);
  sch.steps = static_cast<int>(sch.shift.size());
  sch.per_rank.assign(static_cast<std::size_t>(p), {});
  for (int r = 0; r < p; ++r)
    for (int i = 0; i < sch.steps; ++i) {
      const int s = sch.shift[static_cast<std::size_t>(i)];
      RingStep st = by[static_cast<std::size_t>(r)][static_cast<std::size_t>(s)];
      if (i > 0) st.post = i - 1;
      if (i > 0 && sch.transfer == Transfer::ring) {
        st.recv_from = mod(r - 1, p);
        st.send_to = mod(r + 1, p);
        st.packed = true;
        st.rows = ring_rows[static_cast<std::size_t>(mod(r - s, p))].spans();
      } else if (i > 0) {
        st.recv_from = needs(r, s) ? mod(r - s, p) : -1;
        st.send_to = needs(r + s, s) ? mod(r + s, p) : -1;
        st.packed = st.recv_from >= 0;
        if (st.packed) st.rows = direct_rows(r, s).spans();
      }
      sch.per_rank[static_cast<std::size_t>(r)].push_back(std::move(st));
    }
  return sch;
}

}  // namespace ringattn
