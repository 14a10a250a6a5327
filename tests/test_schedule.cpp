// Layouts and the ring schedule, without running any attention.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <map>
#include <set>

#include "ringattn/error.hpp"
#include "ringattn/layout.hpp"
#include "ringattn/schedule.hpp"
#include "util.hpp"

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

// Brute force: every visible (query, key) pair is covered exactly once, by
// one step of one rank or by the shared part (queries x shared keys, global
// queries x the other keys), and nothing invisible is scheduled as work.
void check_coverage(const Layout& q, const Layout& kv, const Mask& mask,
                    const ScheduleOptions& opt = {}) {
  const RingSchedule sch = make_ring_schedule(q, kv, mask, opt);
  std::map<std::pair<int64_t, int64_t>, int> seen;
  ASSERT_EQ(static_cast<int>(sch.shift.size()), sch.steps);
  ASSERT_EQ(sch.shift[0], 0);
  for (int r = 0; r < sch.ranks; ++r)
    for (int s = 0; s < sch.steps; ++s) {
      const RingStep& st = sch.step(r, s);
      ASSERT_EQ(st.source,
                ((r - sch.shift[static_cast<std::size_t>(s)]) % sch.ranks + sch.ranks) % sch.ranks);
      if (s > 0 && !st.work.empty()) {
        ASSERT_GE(st.recv_from, 0) << "work without a block";
      }
      for (const SegmentWork& w : st.work) {
        const Segment& a = q.segments(r)[static_cast<std::size_t>(w.q_seg)];
        const Segment& b = kv.segments(st.source)[static_cast<std::size_t>(w.k_seg)];
        int64_t pairs = 0;
        for (int64_t i = 0; i < a.count; ++i)
          for (int64_t j = 0; j < b.count; ++j)
            if (sch.ring_mask.allows(a.start + i * a.stride, b.start + j * b.stride)) {
              ASSERT_TRUE(mask.allows(a.start + i * a.stride, b.start + j * b.stride));
              ++seen[{a.start + i * a.stride, b.start + j * b.stride}];
              ++pairs;
            }
        ASSERT_EQ(pairs, w.pairs);
        ASSERT_GT(pairs, 0);
      }
    }
  auto in = [](const std::vector<PosRange>& v, int64_t x) {
    for (const PosRange& r : v)
      if (r.contains(x)) return true;
    return false;
  };
  for (int64_t i = 0; i < q.length(); ++i)
    for (int64_t j = 0; j < kv.length(); ++j)
      if (mask.allows(i, j) && (in(sch.shared.keys, j) || in(sch.shared.queries, i)))
        ++seen[{i, j}];
  // Every shared token sits in exactly one rank's chunks.
  int64_t key_chunk_tokens = 0;
  for (int r = 0; r < sch.ranks && sch.shared.on(); ++r)
    for (const Chunk& c : sch.shared.key_chunks[static_cast<std::size_t>(r)]) {
      key_chunk_tokens += c.count;
      for (int64_t t = 0; t < c.count; ++t) {
        ASSERT_TRUE(in(sch.shared.keys, c.pos.at(t)));
        ASSERT_EQ(kv.local_index(r, c.pos.at(t)), c.local + t);
      }
    }
  ASSERT_EQ(key_chunk_tokens, sch.shared.key_tokens);
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

TEST(Schedule, SparsePatternsCoveredExactlyOnceWithSharedPartsAndDirectTransfers) {
  const int64_t n = 130;
  for (const test::NamedMask& nm : test::sparse_patterns(n))
    for (LayoutKind k : kAll)
      for (int p : {1, 2, 3, 4, 8})
        for (bool share : {true, false}) {
          SCOPED_TRACE(nm.name + " " + layout_name(k) + " p=" + std::to_string(p) +
                       " share=" + std::to_string(share));
          ScheduleOptions opt;
          opt.share = share;
          check_coverage(Layout(k, n, p), Layout(k, n, p), nm.mask, opt);
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

TEST(Schedule, WindowOnContiguousSendsOnlyToTheRanksThatNeedIt) {
  // 8 ranks of 125 tokens, causal window 200: rank r needs blocks r-1 and r-2
  // (ceil(199 / 125) = 2 earlier ones): 3 steps. Direct: rank r sends to r+1
  // and r+2 where they exist, only the rows they see: all 125 to r+1, and to
  // r+2 (queries from 125 r + 250, keys from 125 r + 51) rows 51..124, 74; the
  // ring would pass on two blocks from most ranks.
  Mask m = Mask::causal(0);
  m.lo = -199;
  const Layout l(LayoutKind::contiguous, 1000, 8);
  const RingSchedule sch = make_ring_schedule(l, l, m);
  EXPECT_EQ(sch.transfer, Transfer::direct);
  EXPECT_EQ(sch.steps, 3);
  for (int r = 0; r < 8; ++r)
    EXPECT_EQ(sch.tokens_sent(l, r), 125 * (r + 1 < 8) + 74 * (r + 2 < 8)) << "rank " << r;
  for (int r = 0; r < 8; ++r)  // whole blocks (a quantized wire)
    EXPECT_EQ(sch.tokens_sent(l, r, false), 125 * ((r + 1 < 8) + (r + 2 < 8))) << "rank " << r;
  ScheduleOptions ring_only;
  ring_only.direct = false;
  const RingSchedule ring = make_ring_schedule(l, l, m, ring_only);
  EXPECT_EQ(ring.transfer, Transfer::ring);
  EXPECT_EQ(ring.steps, 3);
  // The ring: rank r passes on its own block and then r - 1's, each with the
  // rows some rank on its way sees: all of it, except rank 7's (nobody's).
  const auto ring_rows = [](int x) { return x < 7 ? 125 : 0; };
  for (int r = 0; r < 8; ++r)
    EXPECT_EQ(ring.tokens_sent(l, r), ring_rows(r) + ring_rows((r + 7) % 8)) << "rank " << r;
}

TEST(Schedule, ZigzagWindowSkipsTheMiddleSteps) {
  // Zigzag, P = 4, chunks of 512, causal window 256: chunk c_r needs c_{r-1}
  // (rank r - 1: shift 1) and c_{7-r} needs c_{6-r} (rank r + 1: shift 3).
  // Shift 2 is needed by nobody: the direct transfer runs 3 steps, not 4.
  Mask m = Mask::causal(0);
  m.lo = -255;
  const int p = 4;
  const Layout l(LayoutKind::zigzag, 4096, p);
  const RingSchedule sch = make_ring_schedule(l, l, m);
  EXPECT_EQ(sch.transfer, Transfer::direct);
  EXPECT_EQ(sch.shift, (std::vector<int>{0, 1, 3}));
  ScheduleOptions ring_only;
  ring_only.direct = false;
  EXPECT_EQ(make_ring_schedule(l, l, m, ring_only).steps, p);
  int64_t sent = 0;
  for (int r = 0; r < p; ++r) sent += sch.tokens_sent(l, r);
  // Rank 0 (c0, c7) needs only rank 1 (c6); rank 3 (c3, c4) needs c2 (rank 2)
  // and c3 is its own; ranks 1 and 2 need both neighbours: 1 + 1 + 2 + 2 blocks
  // whole, and of each block only the 255 rows next to the boundary.
  EXPECT_EQ(sent, 6 * 255);
  sent = 0;
  for (int r = 0; r < p; ++r) sent += sch.tokens_sent(l, r, false);
  EXPECT_EQ(sent, 6 * 1024);
}

TEST(Schedule, TransfersCarryEveryVisibleKeyRowAndNoOther) {
  // Brute force over every (query, key) pair: each step's work item attends
  // key rows [k_lo, k_hi) holding every key its queries see; the rows a block
  // arrives with hold every work item's rows; what a rank passes on it holds.
  // Bands on contiguous layouts: rows are exactly the first to the last visible
  // key of each segment (the hull), so a window sends its W boundary rows.
  struct Case {
    const char* name;
    Mask m;
  };
  std::vector<Case> cases;
  cases.push_back({"causal", Mask::causal(0)});
  Mask w = Mask::causal(0);
  w.lo = -37;
  cases.push_back({"causal window 38", w});
  cases.push_back({"band -20..45", Mask::band(-20, 45)});
  Mask ws = w;
  ws.sinks = 3;
  ws.n_global = 1;
  ws.global[0] = {150, 154};
  cases.push_back({"window + sinks + global", ws});
  for (const Case& c : cases)
    for (const LayoutKind k : kAll)
      for (const int p : {2, 3, 5, 8})
        for (const bool direct : {true, false}) {
          const int64_t n = 311;
          const Layout l(k, n, p);
          ScheduleOptions opt;
          opt.direct = direct;
          const RingSchedule sch = make_ring_schedule(l, l, c.m, opt);
          const std::string where =
              fmt::format("{} {} P={} {}", c.name, layout_name(k), p, transfer_name(sch.transfer));
          for (int r = 0; r < p; ++r)
            for (int t = 0; t < sch.steps; ++t) {
              const RingStep& st = sch.step(r, t);
              const auto& qsegs = l.segments(r);
              const auto& ksegs = l.segments(st.source);
              const HeldRows held = held_rows(l, st);
              for (std::size_t j = 0; j < ksegs.size(); ++j) {
                const Segment& ks = ksegs[j];
                int64_t first = ks.count, last = -1;  // visible rows of this key segment
                for (std::size_t i = 0; i < qsegs.size(); ++i) {
                  const Segment& qs = qsegs[i];
                  const SegmentWork* item = nullptr;
                  for (const SegmentWork& x : st.work)
                    if (x.q_seg == static_cast<int>(i) && x.k_seg == static_cast<int>(j)) item = &x;
                  for (int64_t a = 0; a < qs.count; ++a)
                    for (int64_t b = 0; b < ks.count; ++b) {
                      if (!sch.ring_mask.allows(qs.start + a * qs.stride, ks.start + b * ks.stride))
                        continue;
                      ASSERT_NE(item, nullptr) << where << " r=" << r << " t=" << t;
                      ASSERT_GE(b, item->k_lo) << where;
                      ASSERT_LT(b, item->k_hi) << where;
                      first = std::min(first, b), last = std::max(last, b);
                    }
                }
                if (t == 0 || last < 0) continue;
                ASSERT_TRUE(held.packed) << where;
                const RowSpan* span = nullptr;
                for (const RowSpan& x : st.rows)
                  if (x.seg == static_cast<int>(j)) span = &x;
                ASSERT_NE(span, nullptr) << where << " r=" << r << " t=" << t;
                EXPECT_LE(span->lo, first) << where;
                EXPECT_GT(span->hi, last) << where;
                if (k == LayoutKind::contiguous && sch.transfer == Transfer::direct &&
                    c.m.sinks == 0) {
                  EXPECT_EQ(span->lo, first) << where << " r=" << r << " t=" << t;
                  EXPECT_EQ(span->hi, last + 1) << where << " r=" << r << " t=" << t;
                }
              }
              // What arrives: from the sender as it holds the block.
              if (t > 0 && st.recv_from >= 0) {
                const RingStep& from =
                    sch.step(st.recv_from, sch.transfer == Transfer::direct ? 0 : st.post);
                int64_t tokens = 0;
                for (const TokenRun& run : transfer_runs(l, from, st, 2)) tokens += run.count;
                EXPECT_EQ(tokens, 2 * st.row_count()) << where;
              }
            }
        }
}

TEST(Schedule, SinksAndGlobalTokensAreSharedNotRotated) {
  // Contiguous, 4 ranks of 100, causal window 50 + 4 sinks: without sharing,
  // rank 3 needs rank 0's block for the sinks (all 4 steps); shared, only the
  // neighbour is needed (2 steps).
  Mask m = Mask::causal(0);
  m.lo = -49;
  m.sinks = 4;
  const Layout l(LayoutKind::contiguous, 400, 4);
  ScheduleOptions no_share;
  no_share.share = false;
  EXPECT_EQ(make_ring_schedule(l, l, m, no_share).steps, 4);
  const RingSchedule sch = make_ring_schedule(l, l, m);
  EXPECT_EQ(sch.steps, 2);
  ASSERT_EQ(sch.shared.keys.size(), 1u);
  EXPECT_EQ(sch.shared.keys[0].end, 4);
  EXPECT_EQ(sch.shared.key_tokens, 4);
  EXPECT_EQ(sch.shared.query_tokens, 0);
  EXPECT_EQ(sch.ring_mask.sinks, 0);
  EXPECT_FALSE(sch.ring_mask.allows(300, 2));  // sinks left out of the ring
  EXPECT_TRUE(sch.ring_mask.allows(300, 260));
  // Global tokens: both keys and queries; a single rank shares nothing.
  Mask g = Mask::band(-8, 8);
  g.n_global = 2;
  g.global[0] = {0, 2};
  g.global[1] = {250, 253};
  const RingSchedule gs = make_ring_schedule(l, l, g);
  EXPECT_EQ(gs.shared.key_tokens, 5);
  EXPECT_EQ(gs.shared.query_tokens, 5);
  EXPECT_EQ(gs.steps, 3);  // neighbours on both sides: shifts 0, 1 and P - 1
  const Layout one(LayoutKind::contiguous, 400, 1);
  EXPECT_FALSE(make_ring_schedule(one, one, g).shared.on());
  // More shared tokens than one rank holds: they ride the ring (memory O(N/P)).
  Mask big = m;
  big.sinks = 101;
  EXPECT_FALSE(make_ring_schedule(l, l, big).shared.on());
}

}  // namespace
}  // namespace ringattn
