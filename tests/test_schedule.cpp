// Layouts and the ring schedule, without running any attention.
#include <gtest/gtest.h>

#include <map>
#include <set>

#include "ringattn/error.hpp"
#include "ringattn/layout.hpp"
#include "ringattn/schedule.hpp"

namespace ringattn {
namespace {

const LayoutKind kAll[] = {LayoutKind::contiguous, LayoutKind::zigzag, LayoutKind::striped};

TEST(Layout, EveryTokenOnExactlyOneRank) {
  for (LayoutKind k : kAll)
    for (int p : {1, 2, 3, 4, 5, 8, 32})
      for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{p - 1}, int64_t{p}, int64_t{2 * p + 1},
                        int64_t{1000}, int64_t{4099}}) {
        if (n < 0) continue;
        const Layout l(k, n, p);
        std::vector<int> owner(static_cast<std::size_t>(n), -1);
        for (int r = 0; r < p; ++r) {
          int64_t local = 0;
          for (const Segment& s : l.segments(r)) {
            ASSERT_EQ(s.local_offset, local);
            for (int64_t i = 0; i < s.count; ++i) {
              const int64_t pos = s.start + i * s.stride;
              ASSERT_GE(pos, 0);
              ASSERT_LT(pos, n);
              ASSERT_EQ(owner[static_cast<std::size_t>(pos)], -1) << "token on two ranks";
              owner[static_cast<std::size_t>(pos)] = r;
              ASSERT_EQ(l.local_index(r, pos), local + i);
            }
            local += s.count;
          }
          ASSERT_EQ(l.tokens(r), local);
        }
        for (int o : owner) ASSERT_NE(o, -1) << layout_name(k) << " n=" << n << " p=" << p;
      }
}

TEST(Layout, ShapesOfEachKind) {
  const Layout z(LayoutKind::zigzag, 16, 4);  // chunks of 2: rank 0 holds c0 and c7
  ASSERT_EQ(z.segments(0).size(), 2u);
  EXPECT_EQ(z.segments(0)[0].start, 0);
  EXPECT_EQ(z.segments(0)[1].start, 14);
  EXPECT_EQ(z.segments(3)[0].start, 6);
  EXPECT_EQ(z.segments(3)[1].start, 8);
  const Layout s(LayoutKind::striped, 10, 4);
  EXPECT_EQ(s.tokens(0), 3);  // 0, 4, 8
  EXPECT_EQ(s.tokens(3), 2);  // 3, 7
  EXPECT_EQ(s.segments(1)[0].stride, 4);
  const Layout c(LayoutKind::contiguous, 3, 5);  // n < P: some ranks hold nothing
  EXPECT_EQ(c.tokens(0), 0);
  EXPECT_EQ(c.max_tokens(), 1);
  EXPECT_THROW(parse_layout("zig-zag"), Error);
}

// Brute force: every visible (query, key) pair appears in exactly one step of
// exactly one rank, and nothing invisible is scheduled as work.
void check_coverage(const Layout& q, const Layout& kv, const Mask& mask) {
  const RingSchedule sch = make_ring_schedule(q, kv, mask);
  std::map<std::pair<int64_t, int64_t>, int> seen;
  for (int r = 0; r < sch.ranks; ++r)
    for (int s = 0; s < sch.steps; ++s) {
      const RingStep& st = sch.step(r, s);
      ASSERT_EQ(st.source, ((r - s) % sch.ranks + sch.ranks) % sch.ranks);
      for (const SegmentWork& w : st.work) {
        const Segment& a = q.segments(r)[static_cast<std::size_t>(w.q_seg)];
        const Segment& b = kv.segments(st.source)[static_cast<std::size_t>(w.k_seg)];
        int64_t pairs = 0;
        for (int64_t i = 0; i < a.count; ++i)
          for (int64_t j = 0; j < b.count; ++j)
            if (mask.allows(a.start + i * a.stride, b.start + j * b.stride)) {
              ++seen[{a.start + i * a.stride, b.start + j * b.stride}];
              ++pairs;
            }
        ASSERT_EQ(pairs, w.pairs);
        ASSERT_GT(pairs, 0);
      }
    }
  int64_t expected = 0;
  for (int64_t i = 0; i < q.length(); ++i)
    for (int64_t j = 0; j < kv.length(); ++j)
      if (mask.allows(i, j)) {
        ++expected;
        ASSERT_EQ((seen[{i, j}]), 1) << "pair (" << i << ", " << j << ")";
      }
  ASSERT_EQ(static_cast<int64_t>(seen.size()), expected);
}

TEST(Schedule, EachPairCoveredExactlyOnce) {
  for (LayoutKind k : kAll)
    for (int p : {1, 2, 3, 4, 5, 8})
      for (auto [nq, nk] :
           {std::pair<int64_t, int64_t>{37, 37}, {1, 1}, {3, 3}, {50, 23}, {23, 50}})
        for (bool causal : {false, true}) {
          SCOPED_TRACE(layout_name(k) + " p=" + std::to_string(p) + " nq=" + std::to_string(nq) +
                       " nk=" + std::to_string(nk) + " causal=" + std::to_string(causal));
          check_coverage(Layout(k, nq, p), Layout(k, nk, p),
                         causal ? Mask::causal(nk - nq) : Mask::none());
        }
}

TEST(Schedule, CausalSkipsExactlyTheFutureBlocks) {
  // Contiguous causal: rank r sees blocks 0..r; every block of a later rank is
  // wholly in its future, so step s on rank r computes iff source <= r.
  const int p = 6;
  const Layout l(LayoutKind::contiguous, 600, p);
  const RingSchedule sch = make_ring_schedule(l, l, Mask::causal(0));
  EXPECT_EQ(sch.steps, p);  // rank p-1 needs every block
  for (int r = 0; r < p; ++r)
    for (int s = 0; s < p; ++s) {
      const RingStep& st = sch.step(r, s);
      EXPECT_EQ(!st.work.empty(), st.source <= r) << "r=" << r << " s=" << s;
      if (st.source < r) {
        ASSERT_EQ(st.work.size(), 1u);
        EXPECT_EQ(st.work[0].cls, TileClass::full);
      }
    }
  EXPECT_EQ(sch.computed_steps(0), 1);
  EXPECT_EQ(sch.computed_steps(p - 1), p);
}

TEST(Schedule, ZigzagAndStripedBalanceCausalWork) {
  for (int p : {2, 3, 4, 8}) {
    const int64_t n = 4096 * 4;
    for (LayoutKind k : {LayoutKind::zigzag, LayoutKind::striped}) {
      const Layout l(k, n, p);
      const RingSchedule sch = make_ring_schedule(l, l, Mask::causal(0));
      EXPECT_LT(sch.imbalance(), 1.01) << layout_name(k) << " p=" << p;
    }
    const Layout c(LayoutKind::contiguous, n, p);
    EXPECT_GT(make_ring_schedule(c, c, Mask::causal(0)).imbalance(), 1.3) << "p=" << p;
  }
}

TEST(Schedule, BandMaskStopsRotationEarly) {
  // Window of 100 behind, contiguous chunks of 1000: only the own and the
  // previous block are needed, so 2 steps (1 rotation) instead of 8.
  const Layout l(LayoutKind::contiguous, 8000, 8);
  const RingSchedule sch = make_ring_schedule(l, l, Mask::band(-100, 0));
  EXPECT_EQ(sch.steps, 2);
  const RingSchedule dense = make_ring_schedule(l, l, Mask::none());
  EXPECT_EQ(dense.steps, 8);
  EXPECT_DOUBLE_EQ(dense.imbalance(), 1.0);
}

}  // namespace
}  // namespace ringattn
