#include "ringattn/schedule.hpp"

#include <fmt/format.h>

#include <algorithm>

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

int64_t RingSchedule::tokens_sent(const Layout& kv, int rank) const {
  int64_t n = 0;
  for (int s = 1; s < steps; ++s) {
    const RingStep& st = step(rank, s);
    if (st.send_to < 0) continue;
    // ring: the block held when the transfer is posted; direct: the rank's own.
    n += kv.tokens(transfer == Transfer::direct ? rank : step(rank, st.post).source);
  }
  return n;
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
      st.work.push_back({i, j, cls, pairs});
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

  // Tokens each transfer would send: the ring passes every held block on at
  // every step up to the last needed one; direct sends only needed blocks.
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
      } else if (i > 0) {
        st.recv_from = needs(r, s) ? mod(r - s, p) : -1;
        st.send_to = needs(r + s, s) ? mod(r + s, p) : -1;
      }
      sch.per_rank[static_cast<std::size_t>(r)].push_back(std::move(st));
    }
  return sch;
}

}  // namespace ringattn
