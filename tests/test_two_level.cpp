// Two-level communication (ringattn/two_level.hpp): the nested layout, the
// sub-communicators, the double-ring schedule (every block once, skips at both
// levels), and the double-ring, flat and a2a-ring schemes against the float64 reference for
// P in {2, 4, 6, 8} and w in {1, 2, 4}, every layout, GQA/MQA with K/V heads
// split or replicated, N < P, cross lengths, batch 2; per-level bytes equal to
// the analytic counts; a failing rank ends the job inside a sub-communicator.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <numeric>
#include <string>
#include <vector>

#include "ring_cases.hpp"
#include "ringattn/comm.hpp"
#include "ringattn/error.hpp"
#include "ringattn/reference.hpp"
#include "ringattn/two_level.hpp"
#include "util.hpp"

namespace ringattn {
namespace {

std::size_t at(int64_t i) {
  return static_cast<std::size_t>(i);
}

TEST(TwoLevel, NestedLayoutSplitsEachNodesTokensContiguously) {
  for (LayoutKind kind : {LayoutKind::contiguous, LayoutKind::zigzag, LayoutKind::striped})
    for (int64_t n : {int64_t{0}, int64_t{5}, int64_t{37}, int64_t{1000}})
      for (int w : {1, 2, 3, 4})
        for (int nodes : {1, 2, 3}) {
          const Layout top(kind, n, nodes), l = Layout::nested(kind, n, nodes, w);
          ASSERT_EQ(l.ranks(), nodes * w);
          EXPECT_EQ(l.per_node(), w);
          EXPECT_EQ(l.nodes(), nodes);
          std::vector<int> seen(at(n), 0);
          for (int a = 0; a < nodes; ++a) {
            // The node's ranks, in order, list the node's tokens in its local order.
            std::vector<int64_t> node_order, ranks_order;
            for (const Segment& s : top.segments(a))
              for (int64_t i = 0; i < s.count; ++i) node_order.push_back(s.start + i * s.stride);
            for (int i = 0; i < w; ++i) {
              const int r = a * w + i;
              const int64_t len = top.tokens(a);
              EXPECT_EQ(l.tokens(r), (i + 1) * len / w - i * len / w);
              for (const Segment& s : l.segments(r))
                for (int64_t k = 0; k < s.count; ++k) {
                  const int64_t pos = s.start + k * s.stride;
                  ranks_order.push_back(pos);
                  ++seen[at(pos)];
                  EXPECT_EQ(l.local_index(r, pos), s.local_offset + k);
                }
            }
            EXPECT_EQ(ranks_order, node_order);
          }
          for (int x : seen) EXPECT_EQ(x, 1);
        }
}

TEST(TwoLevel, SubCommunicatorsCarryMessagesAndCollectivesPerLevel) {
  const int np = 6, w = 3;
  run_local(np, [&](Communicator& comm) {
    const int r = comm.rank(), node = r / w, me = r % w;
    std::vector<int> nm, cm;
    for (int j = 0; j < w; ++j) nm.push_back(node * w + j);
    for (int x = 0; x < np / w; ++x) cm.push_back(x * w + me);
    const auto nc = make_sub_communicator(comm, nm, 8192);
    const auto cc = make_sub_communicator(comm, cm, 8192 + kSubTagSpan);
    ASSERT_EQ(nc->size(), w);
    ASSERT_EQ(nc->rank(), me);
    ASSERT_EQ(cc->size(), np / w);
    ASSERT_EQ(cc->rank(), node);
    // Reductions in sub-rank order, the same on every member.
    EXPECT_EQ(nc->allreduce_one(int64_t{r}, ReduceOp::sum), int64_t{node * w * w + 3});
    EXPECT_EQ(cc->allreduce_one(double(r), ReduceOp::max), double((np / w - 1) * w + me));
    // allgatherv: rank k contributes k + 1 bytes of value 10 r.
    std::vector<std::size_t> counts;
    for (int k = 0; k < w; ++k) counts.push_back(at(k + 1));
    std::vector<char> in(at(me + 1), static_cast<char>(10 * r)), out(6);
    nc->allgatherv(in.data(), counts, out.data());
    std::size_t o = 0;
    for (int k = 0; k < w; ++k)
      for (int x = 0; x <= k; ++x) EXPECT_EQ(out[o++], static_cast<char>(10 * (node * w + k)));
    // alltoallv: to sub-rank k, one int32 of value 100 r + k.
    std::vector<int32_t> a(at(w)), bb(at(w));
    for (int k = 0; k < w; ++k) a[at(k)] = 100 * r + k;
    const std::vector<std::size_t> four(at(w), sizeof(int32_t));
    nc->alltoallv(a.data(), four, bb.data(), four);
    for (int k = 0; k < w; ++k) EXPECT_EQ(bb[at(k)], 100 * (node * w + k) + me);
    // Point to point across nodes, on the same tags as the node level uses.
    int32_t token = r, got = -1;
    const int next = (node + 1) % (np / w), prev = (node + np / w - 1) % (np / w);
    Request rq = cc->irecv(&got, sizeof(got), prev, 0);
    Request sq = cc->isend(&token, sizeof(token), next, 0);
    sq.wait();
    rq.wait();
    EXPECT_EQ(got, prev * w + me);
    cc->barrier();
    nc->barrier();
  });
}

struct Case {
  int ranks, w;
  int64_t b, nq, nk, hq, hkv, d;
  LayoutKind kind;
  int mask;  // 0 full, 1 causal, 2 window + sinks
  CommScheme scheme = CommScheme::a2a_ring;
};

Mask mask_of(const Case& c) {
  if (c.mask == 0) return Mask::none();
  Mask m = Mask::causal(c.nk - c.nq);
  if (c.mask == 2) m.lo = -23, m.sinks = 3;
  return m;
}

std::string name_of(const Case& c) {
  return std::string(comm_scheme_name(c.scheme)) + " P=" + std::to_string(c.ranks) +
         " w=" + std::to_string(c.w) + " N=" + std::to_string(c.nq) + "/" + std::to_string(c.nk) +
         " H=" + std::to_string(c.hq) + "/" + std::to_string(c.hkv) + " " + layout_name(c.kind) +
         " mask " + std::to_string(c.mask);
}

// Runs a case (flat and double-ring on the plain layout over P ranks through
// ring_attention, a2a-ring on the nested one); every rank's rows against the
// reference; returns each rank's traffic (LevelCounter) and the bytes its ring sent.
void run_case(const Case& c, std::vector<LevelTraffic>* traffic = nullptr,
              std::vector<int64_t>* ring_bytes = nullptr) {
  SCOPED_TRACE(name_of(c));
  test::Problem g = test::make_problem(c.b, c.nq, c.nk, c.hq, c.hkv, c.d, DType::f32,
                                       uint64_t(c.ranks * 100 + c.w * 10 + c.mask));
  g.args.mask = mask_of(c);
  const ReferenceResult ref = reference_attention(g.args);
  const int nodes = c.ranks / c.w;
  const bool a2a = c.scheme == CommScheme::a2a_ring;
  const Layout ql = a2a ? Layout::nested(c.kind, c.nq, nodes, c.w) : Layout(c.kind, c.nq, c.ranks),
               kl = a2a ? Layout::nested(c.kind, c.nk, nodes, c.w) : Layout(c.kind, c.nk, c.ranks);
  const RingSchedule sch = make_ring_schedule(ql, kl, g.args.mask, scheme_options(c.scheme, c.w));
  std::vector<LevelTraffic> t(at(c.ranks));
  std::vector<int64_t> rb(at(c.ranks));
  run_local(c.ranks, [&](Communicator& comm) {
    const int r = comm.rank();
    LevelCounter counter(comm, c.w, &t[at(r)]);
    const test::RankShare share = test::rank_share(g, ql, kl, r);
    const RingProblem& rp = share.rp;
    const int64_t nl = ql.tokens(r);
    std::vector<float> o(at(c.b * nl * c.hq * c.d)), lse(at(c.b * c.hq * nl));
    KernelOptions kopt;
    kopt.threads = 1;
    const RingMetrics m =
        a2a ? a2a_ring_attention(counter, c.w, rp, o.data(), lse.data(), kopt, &t[at(r)])
            : ring_attention(counter, sch, rp, o.data(), lse.data(), kopt);
    rb[at(r)] = m.bytes_sent;
    const test::GlobalRows gr = test::to_global(ql, r, c.b, c.nq, c.hq, c.d, o.data(), lse.data());
    if (gr.rows.empty()) return;
    const ErrorStats e = compare_to_reference(g.args, gr.o.data(), gr.lse.data(), ref, gr.rows);
    EXPECT_TRUE(within(e, tolerance_for(DType::f32)))
        << name_of(c) << " rank " << r << ": " << error_text(e, tolerance_for(DType::f32));
  });
  if (traffic != nullptr) *traffic = t;
  if (ring_bytes != nullptr) *ring_bytes = rb;
}

TEST(TwoLevel, A2aRingEqualsTheFloat64Reference) {
  int n = 0;
  for (int ranks : {2, 4, 6, 8})
    for (int w : {1, 2, 4}) {
      if (ranks % w != 0) continue;
      for (LayoutKind kind : {LayoutKind::contiguous, LayoutKind::zigzag, LayoutKind::striped})
        for (int mask : {0, 1, 2}) {
          if ((ranks + w + int(kind) + mask) % 2 != 0 && !(w == ranks || w == 1)) continue;
          if (test::kSanitized && ranks == 8 && mask != 1) continue;
          // GQA: K/V heads split (Hkv >= w) or replicated (Hkv < w), and MQA.
          const int64_t hkv = (n % 3 == 0) ? 8 : (n % 3 == 1) ? 2 : 1;
          ++n;
          run_case({ranks, w, 1 + (n % 2), 157, 157, 8, hkv, 32, kind, mask});
        }
    }
  EXPECT_GT(n, 40);
}

TEST(TwoLevel, A2aRingWithFewTokensOddNodesAndCrossLengths) {
  run_case({8, 2, 1, 5, 5, 4, 2, 32, LayoutKind::zigzag, 1});      // N < P: empty ranks
  run_case({6, 2, 1, 151, 151, 4, 4, 32, LayoutKind::zigzag, 2});  // 3 nodes (odd P / w)
  run_case({4, 2, 2, 90, 130, 4, 1, 32, LayoutKind::contiguous, 1});
  run_case({4, 4, 1, 101, 101, 8, 2, 64, LayoutKind::striped, 0});  // w = P: one node
}

TEST(TwoLevel, PerLevelBytesEqualTheAnalyticCounts) {
  const Case c{8, 2, 1, 160, 160, 8, 2, 32, LayoutKind::contiguous, 0};
  std::vector<LevelTraffic> t;
  std::vector<int64_t> ring_bytes;
  run_case(c, &t, &ring_bytes);
  const int nodes = c.ranks / c.w;
  const int64_t node_tokens = c.nq / nodes, mine = node_tokens / c.w;
  const HeadShare h = a2a_heads(c.hq, c.hkv, c.w, 0);
  for (int r = 0; r < c.ranks; ++r) {
    // To each other rank of its node: Q of its heads and K, V of its K/V heads for my
    // tokens, then O and LSE of my heads for its tokens (float32).
    const int64_t a2a = (c.w - 1) * (c.b * (mine * h.nq + 2 * mine * h.nkv) * c.d * 4 +
                                     c.b * mine * h.nq * (c.d + 1) * 4);
    EXPECT_EQ(t[at(r)].intra_bytes, a2a) << "rank " << r;
    EXPECT_EQ(t[at(r)].intra_messages, 2 * (c.w - 1)) << "rank " << r;
    // Across nodes: the full mask's ring of P / w steps, the node's K/V block of this
    // rank's K/V heads each rotation, as two messages.
    const int64_t block = 2 * c.b * node_tokens * h.nkv * c.d * 4;
    EXPECT_EQ(t[at(r)].inter_bytes, (nodes - 1) * block) << "rank " << r;
    EXPECT_EQ(t[at(r)].inter_messages, 2 * (nodes - 1)) << "rank " << r;
    EXPECT_EQ(ring_bytes[at(r)], a2a + (nodes - 1) * block) << "rank " << r;
  }
}

TEST(TwoLevel, DoubleRingAndFlatEqualTheFloat64Reference) {
  int n = 0;
  for (CommScheme scheme : {CommScheme::double_ring, CommScheme::flat})
    for (int ranks : {2, 4, 6, 8})
      for (int w : {1, 2, 4}) {
        if (ranks % w != 0) continue;
        for (LayoutKind kind : {LayoutKind::contiguous, LayoutKind::zigzag, LayoutKind::striped})
          for (int mask : {0, 1, 2}) {
            if (scheme == CommScheme::flat && (mask != 1 || kind != LayoutKind::zigzag)) continue;
            if ((ranks + w + int(kind) + mask) % 2 != 0 && !(w == ranks || w == 1)) continue;
            if (test::kSanitized && ranks == 8 && mask != 1) continue;
            const int64_t hkv = (n % 3 == 0) ? 4 : (n % 3 == 1) ? 2 : 1;
            ++n;
            Case c{ranks, w, 1 + (n % 2), 157, 157, 4, hkv, 32, kind, mask, scheme};
            run_case(c);
          }
      }
  EXPECT_GT(n, 40);
  // N < P (empty ranks), odd P / w, cross lengths.
  run_case({8, 2, 1, 5, 5, 4, 2, 32, LayoutKind::zigzag, 1, CommScheme::double_ring});
  run_case({6, 2, 1, 151, 151, 4, 4, 32, LayoutKind::zigzag, 2, CommScheme::double_ring});
  run_case({4, 2, 2, 90, 130, 4, 1, 32, LayoutKind::contiguous, 1, CommScheme::double_ring});
}

// The double ring's order of blocks: every rank meets every block exactly once; inside a
// round only neighbours of a node talk, across rounds only the same local rank of the
// next node, posted at the round's first step; a window skips whole rounds and the tail
// of a round, and the schedule still delivers every block some rank needs.
TEST(TwoLevel, DoubleRingScheduleVisitsEveryBlockOnceAndSkipsAtBothLevels) {
  for (int ranks : {2, 4, 6, 8})
    for (int w : {1, 2, ranks}) {
      if (ranks % w != 0) continue;
      const Layout l(LayoutKind::contiguous, 64 * ranks, ranks);
      ScheduleOptions opt;
      opt.per_node = w;
      const RingSchedule sch = make_ring_schedule(l, l, Mask::none(), opt);
      ASSERT_EQ(sch.steps, ranks);
      for (int r = 0; r < ranks; ++r) {
        std::vector<int> seen;
        for (int s = 0; s < sch.steps; ++s) {
          const RingStep& st = sch.step(r, s);
          seen.push_back(st.source);
          if (s == 0) continue;
          // What arrives is what the sender held when the transfer was posted.
          EXPECT_EQ(sch.step(st.recv_from, st.post).source, st.source) << r << " " << s;
          EXPECT_EQ(sch.step(st.send_to, s).recv_from, r);
          const bool inner = s % w != 0;
          EXPECT_EQ(st.post, inner ? s - 1 : s - w);
          EXPECT_EQ(st.recv_from / w == r / w, inner)
              << "P=" << ranks << " w=" << w << " r=" << r << " s=" << s;
        }
        std::sort(seen.begin(), seen.end());
        for (int i = 0; i < ranks; ++i) EXPECT_EQ(seen[at(i)], i);
      }
    }
  // A causal window of less than a block, 4 nodes of 2: rank r needs blocks r and r - 1,
  // held at (round 0, j 0) and, for odd r, (round 0, j 1), for even r (its left
  // neighbour is on the previous node) (round 1, j 1); (round 1, j 0) has no work but
  // relays the blocks across nodes, and rounds 2 and 3 are dropped.
  const Layout l(LayoutKind::contiguous, 8 * 64, 8);
  Mask m = Mask::causal(0);
  m.lo = -40;
  ScheduleOptions opt;
  opt.per_node = 2;
  const RingSchedule sch = make_ring_schedule(l, l, m, opt);
  EXPECT_EQ(sch.steps, 4);
  EXPECT_EQ(sch.shift, (std::vector<int>{0, 1, 2, 3}));
  for (int r = 0; r < 8; ++r) EXPECT_TRUE(sch.step(r, 2).work.empty()) << r;
  int64_t pairs = 0;
  for (int r = 0; r < 8; ++r) pairs += sch.rank_pairs(r);
  EXPECT_EQ(pairs, visible_pairs(m, Positions{0, 1}, 512, Positions{0, 1}, 512));
}

// Dense, even blocks of T = 2 B (N / P) Hkv D 4 bytes: the double ring sends per rank
// (P / w - 1) blocks across nodes and P / w (w - 1) inside; the flat ring P - 1 blocks,
// across nodes from the last rank of each node only.
TEST(TwoLevel, DoubleRingAndFlatPerLevelBytesEqualTheAnalyticCounts) {
  for (const CommScheme scheme : {CommScheme::double_ring, CommScheme::flat})
    for (const int w : {1, 2, 4}) {
      const Case c{8, w, 1, 160, 160, 4, 2, 32, LayoutKind::contiguous, 0, scheme};
      std::vector<LevelTraffic> t;
      std::vector<int64_t> ring_bytes;
      run_case(c, &t, &ring_bytes);
      const int nodes = c.ranks / w;
      const int64_t block = 2 * c.b * (c.nq / c.ranks) * c.hkv * c.d * 4;
      for (int r = 0; r < c.ranks; ++r) {
        int64_t inter = 0, intra = 0;
        if (scheme == CommScheme::double_ring) {
          inter = nodes - 1, intra = int64_t(nodes) * (w - 1);
        } else {
          (r % w == w - 1 ? inter : intra) = c.ranks - 1;
        }
        EXPECT_EQ(t[at(r)].inter_bytes, inter * block) << name_of(c) << " rank " << r;
        EXPECT_EQ(t[at(r)].intra_bytes, intra * block) << name_of(c) << " rank " << r;
        EXPECT_EQ(t[at(r)].inter_messages, 2 * inter) << name_of(c) << " rank " << r;
        EXPECT_EQ(t[at(r)].intra_messages, 2 * intra) << name_of(c) << " rank " << r;
        EXPECT_EQ(ring_bytes[at(r)], (inter + intra) * block) << name_of(c) << " rank " << r;
      }
    }
}

TEST(TwoLevel, HeadSharesAndBadSplitsAreFieldErrors) {
  const HeadShare s = a2a_heads(8, 2, 2, 1);
  EXPECT_EQ(s.q0, 4);
  EXPECT_EQ(s.nq, 4);
  EXPECT_EQ(s.kv0, 1);
  EXPECT_EQ(s.nkv, 1);
  const HeadShare rep = a2a_heads(8, 1, 4, 3);  // MQA: the one K/V head on every rank
  EXPECT_EQ(rep.q0, 6);
  EXPECT_EQ(rep.kv0, 0);
  EXPECT_EQ(rep.nkv, 1);
  const auto field = [](CommScheme scheme, int p, int w, int64_t hq, int64_t hkv) {
    try {
      check_two_level(scheme, p, w, hq, hkv);
    } catch (const FieldError& e) {
      return e.field();
    }
    return std::string();
  };
  EXPECT_EQ(field(CommScheme::flat, 6, 4, 8, 8), "ranks_per_node");
  EXPECT_EQ(field(CommScheme::a2a_ring, 8, 4, 6, 6), "ranks_per_node");   // 4 does not divide Hq
  EXPECT_EQ(field(CommScheme::a2a_ring, 4, 2, 12, 3), "ranks_per_node");  // 6 heads, groups of 4
  EXPECT_EQ(field(CommScheme::a2a_ring, 4, 2, 8, 2), "");
  EXPECT_THROW(parse_comm_scheme("double", "hierarchy"), FieldError);
  EXPECT_EQ(parse_comm_scheme("double-ring", "hierarchy"), CommScheme::double_ring);
  ScheduleOptions opt;
  opt.per_node = 4;
  const Layout l(LayoutKind::contiguous, 60, 6);
  try {
    make_ring_schedule(l, l, Mask::none(), opt);
    ADD_FAILURE() << "4 ranks per node of 6 accepted";
  } catch (const FieldError& e) {
    EXPECT_EQ(e.field(), "ranks_per_node");
  }
}

TEST(TwoLevel, AFailingRankEndsTheJobInsideASubCommunicator) {
  const Case c{4, 2, 1, 64, 64, 4, 2, 32, LayoutKind::contiguous, 1};
  test::Problem g = test::make_problem(1, 64, 64, 4, 2, 32, DType::f32, 1);
  const Layout ql = Layout::nested(c.kind, 64, 2, 2);
  EXPECT_THROW(run_local(4,
                         [&](Communicator& comm) {
                           if (comm.rank() == 3) throw Error("rank 3 failed");
                           const Tensor q = test::slice_tokens(g.q, ql, comm.rank()),
                                        k = test::slice_tokens(g.k, ql, comm.rank()),
                                        v = test::slice_tokens(g.v, ql, comm.rank());
                           RingProblem rp(g.args);
                           rp.q_layout = &ql, rp.kv_layout = &ql;
                           rp.q = q.data.data(), rp.k = k.data.data(), rp.v = v.data.data();
                           std::vector<float> o(at(32 * 4 * 32)), lse(at(4 * 32));
                           a2a_ring_attention(comm, 2, rp, o.data(), lse.data(), {}, nullptr);
                         }),
               Error);
}

}  // namespace
}  // namespace ringattn
