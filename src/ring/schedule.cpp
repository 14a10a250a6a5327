#include "ringattn/schedule.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "ringattn/error.hpp"
#include "ringattn/kernel.hpp"

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

double RingSchedule::imbalance() const {
  int64_t mx = 0, total = 0;
  for (int r = 0; r < ranks; ++r) {
    const int64_t p = rank_pairs(r);
    mx = std::max(mx, p);
    total += p;
  }
  return total == 0 ? 1.0 : double(mx) * ranks / double(total);
}

RingSchedule make_ring_schedule(const Layout& q, const Layout& kv, const Mask& mask) {
  if (q.ranks() != kv.ranks())
    throw Error(fmt::format("ring schedule: query layout has {} ranks, key layout {}", q.ranks(),
                            kv.ranks()));
  RingSchedule sch;
  sch.ranks = q.ranks();
  const int p = sch.ranks;
  sch.per_rank.assign(static_cast<std::size_t>(p),
                      std::vector<RingStep>(static_cast<std::size_t>(p)));
  int last_needed = 0;  // last step at which any rank has work
  for (int r = 0; r < p; ++r) {
    for (int s = 0; s < p; ++s) {
      RingStep& st = sch.per_rank[static_cast<std::size_t>(r)][static_cast<std::size_t>(s)];
      st.source = ((r - s) % p + p) % p;
      const auto& qs = q.segments(r);
      const auto& ks = kv.segments(st.source);
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
      if (!st.work.empty()) last_needed = std::max(last_needed, s);
    }
  }
  // Steps after the last one with work anywhere need neither compute nor
  // rotation (dense masks keep all P steps; band masks stop early).
  sch.steps = last_needed + 1;
  for (auto& v : sch.per_rank) v.resize(static_cast<std::size_t>(sch.steps));
  return sch;
}

}  // namespace ringattn
