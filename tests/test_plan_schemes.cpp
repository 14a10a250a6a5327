// The planner over nodes (ringattn/plan.hpp, two_level.hpp): per-level bytes and
// messages equal what LevelCounter counts when the real scheme runs in-process
// (flat, double-ring, a2a-ring; dense, causal, window + sinks; contiguous and
// zigzag; P in {4, 8}, w in {1, 2, 4}); the scheme comparison and its winner;
// the double ring's model (the pool's buffers, one node equal to the flat ring);
// the inter-node link presets.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "ring_cases.hpp"
#include "ringattn/comm.hpp"
#include "ringattn/error.hpp"
#include "ringattn/hardware.hpp"
#include "ringattn/plan.hpp"
#include "ringattn/two_level.hpp"
#include "util.hpp"

namespace ringattn {
namespace {

std::size_t at(int64_t i) {
  return static_cast<std::size_t>(i);
}

const char* const kProfile = R"([device]
name = two-level
kind = gpu
devices-per-node = 8
memory-gib = 80
memory-bandwidth-gb-s = 3000

[kernel-gflops]
float16.d128 = 300000
float32.d32 = 40000
float32.d128 = 45000

[link.intra-node]
latency-us = 8
bandwidth-gb-s = 370

[link.inter-node]
latency-us = 12
bandwidth-gb-s = 46
)";

struct LevelCase {
  int ranks, w;
  CommScheme scheme;
  LayoutKind kind;
  int mask;  // 0 dense, 1 causal, 2 causal window + sinks
};

std::string name_of(const LevelCase& c) {
  return fmt::format("{} P={} w={} {} mask {}", comm_scheme_name(c.scheme), c.ranks, c.w,
                     layout_name(c.kind), c.mask);
}

// The real scheme in-process through a LevelCounter: each rank's traffic.
std::vector<LevelTraffic> run_levels(const LevelCase& c, const test::Problem& g) {
  const int nodes = c.ranks / c.w;
  const bool a2a = c.scheme == CommScheme::a2a_ring;
  const int64_t n = g.args.nq;
  const Layout ql = a2a ? Layout::nested(c.kind, n, nodes, c.w) : Layout(c.kind, n, c.ranks);
  const RingSchedule sch = make_ring_schedule(ql, ql, g.args.mask, scheme_options(c.scheme, c.w));
  std::vector<LevelTraffic> t(at(c.ranks));
  run_local(c.ranks, [&](Communicator& comm) {
    const int r = comm.rank();
    LevelCounter counter(comm, c.w, &t[at(r)]);
    const test::RankShare share = test::rank_share(g, ql, ql, r);
    const int64_t nl = ql.tokens(r);
    std::vector<float> o(at(g.args.batch * nl * g.args.hq * g.args.head_dim));
    std::vector<float> lse(at(g.args.batch * g.args.hq * nl));
    KernelOptions kopt;
    kopt.threads = 1;
    if (a2a)
      a2a_ring_attention(counter, c.w, share.rp, o.data(), lse.data(), kopt, &t[at(r)]);
    else
      ring_attention(counter, sch, share.rp, o.data(), lse.data(), kopt);
  });
  return t;
}

TEST(PlanSchemes, PerLevelCountsEqualWhatRunCounts) {
  const HardwareProfile hw = parse_hardware_profile(kProfile, "t.ini");
  int n = 0;
  for (const int ranks : {4, 8})
    for (const int w : {1, 2, 4})
      for (const CommScheme scheme :
           {CommScheme::flat, CommScheme::double_ring, CommScheme::a2a_ring})
        for (const LayoutKind kind : {LayoutKind::contiguous, LayoutKind::zigzag})
          for (const int mask : {0, 1, 2}) {
            const LevelCase c{ranks, w, scheme, kind, mask};
            SCOPED_TRACE(name_of(c));
            // Hq 8, Hkv 2: a2a-ring splits K/V heads (w 1, 2) or replicates them (w 4).
            test::Problem g = test::make_problem(1 + (n % 2), 157, 157, 8, 2, 32, DType::f32,
                                                 uint64_t(ranks * 100 + w * 10 + mask));
            ++n;
            if (mask > 0) g.args.mask = Mask::causal(0);
            if (mask == 2) g.args.mask.lo = -23, g.args.mask.sinks = 3;
            const std::vector<LevelTraffic> t = run_levels(c, g);
            PlanInput in(static_cast<const AttentionProblem&>(g.args));
            in.layout = kind, in.ranks = ranks, in.ranks_per_node = w, in.scheme = scheme;
            const Plan p = make_plan(in, hw);
            ASSERT_EQ(p.per_rank.size(), at(ranks));
            for (int r = 0; r < ranks; ++r) {
              const RankPlan& k = p.per_rank[at(r)];
              EXPECT_EQ(k.intra_bytes, t[at(r)].intra_bytes) << "rank " << r;
              EXPECT_EQ(k.inter_bytes, t[at(r)].inter_bytes) << "rank " << r;
              EXPECT_EQ(k.intra_messages, t[at(r)].intra_messages) << "rank " << r;
              EXPECT_EQ(k.inter_messages, t[at(r)].inter_messages) << "rank " << r;
              if (w == ranks) {
                EXPECT_EQ(k.inter_bytes, 0);
              }
              if (w == 1) {
                EXPECT_EQ(k.intra_bytes, 0);
              }
            }
          }
  EXPECT_EQ(n, 108);
}

PlanInput big_problem(int ranks, int w, int64_t n, bool causal) {
  PlanInput in;
  in.batch = 1, in.nq = in.nk = n, in.hq = 32, in.hkv = 8, in.head_dim = 128;
  in.dtype = DType::f16;
  in.mask = causal ? Mask::causal(0) : Mask::none();
  in.layout = causal ? LayoutKind::zigzag : LayoutKind::contiguous;
  in.ranks = ranks, in.ranks_per_node = w;
  return in;
}

TEST(PlanSchemes, ComparesTheThreeSchemesAndNamesTheFastest) {
  const HardwareProfile hw = parse_hardware_profile(kProfile, "t.ini");
  const PlanInput in = big_problem(16, 8, 1 << 18, true);
  const Plan p = make_plan(in, hw);
  ASSERT_EQ(p.nodes, 2);
  ASSERT_EQ(p.schemes.size(), 3u);
  double fastest = 1e300;
  for (const SchemeEstimate& e : p.schemes) {
    ASSERT_TRUE(e.ok) << comm_scheme_name(e.scheme) << ": " << e.why;
    EXPECT_GT(e.predicted_s, 0);
    EXPECT_GT(e.inter_bytes, 0);
    EXPECT_GT(e.memory, 0);
    fastest = std::min(fastest, e.predicted_s);
    PlanInput x = in;
    x.scheme = e.scheme;
    const Plan q = make_plan(x, hw);
    EXPECT_EQ(q.predicted_s, e.predicted_s);
    EXPECT_EQ(q.max_rank_memory, e.memory);
  }
  const auto best = std::find_if(p.schemes.begin(), p.schemes.end(),
                                 [&](const SchemeEstimate& e) { return e.predicted_s == fastest; });
  EXPECT_EQ(p.best, best->scheme);
  EXPECT_EQ(best_scheme(in, hw), p.best);
  // Per node across nodes: flat sends from each node's last rank P - 1 blocks; the
  // double ring from each rank P / w - 1 blocks; a2a-ring the node's K/V of its heads.
  const double block = 2.0 * (double(in.nq) / 16) * 8 * 128 * 2;  // K and V, float16
  EXPECT_EQ(p.schemes[0].inter_bytes, 15 * block);
  EXPECT_EQ(p.schemes[1].inter_bytes, 8 * (2 - 1) * block);
  EXPECT_EQ(p.schemes[2].inter_bytes, 8 * (2 - 1) * 2.0 * (double(in.nq) / 2) * 1 * 128 * 2);

  // a2a-ring cannot split 6 query heads over 4 ranks: not run, and why.
  PlanInput odd = big_problem(8, 4, 4096, false);
  odd.hq = 6, odd.hkv = 6;
  const Plan po = make_plan(odd, hw);
  ASSERT_EQ(po.schemes.size(), 3u);
  EXPECT_FALSE(po.schemes[2].ok);
  EXPECT_NE(po.schemes[2].why.find("divide Hq"), std::string::npos) << po.schemes[2].why;
  EXPECT_NE(po.best, CommScheme::a2a_ring);
  odd.scheme = CommScheme::a2a_ring;
  try {
    make_plan(odd, hw);
    ADD_FAILURE() << "a2a-ring planned with 6 heads over 4 ranks";
  } catch (const FieldError& e) {
    EXPECT_EQ(e.field(), "ranks_per_node");
  }
  // One node: no comparison, flat.
  const PlanInput one = big_problem(8, 8, 4096, true);
  EXPECT_TRUE(make_plan(one, hw).schemes.empty());
  EXPECT_EQ(best_scheme(one, hw), CommScheme::flat);
}

TEST(PlanSchemes, DoubleRingModel) {
  const HardwareProfile hw = parse_hardware_profile(kProfile, "t.ini");
  // One node: the double ring's order is the ring's, so is its plan.
  PlanInput in = big_problem(8, 8, 1 << 16, false);
  const Plan flat = make_plan(in, hw);
  in.scheme = CommScheme::double_ring;
  const Plan one = make_plan(in, hw);
  EXPECT_EQ(one.steps, flat.steps);
  EXPECT_DOUBLE_EQ(one.predicted_s, flat.predicted_s);
  // Nodes of 2: up to 4 receive buffers, the round's transfer across nodes in flight
  // for its w steps; the same bytes in all, fewer of them across nodes.
  in = big_problem(8, 2, 1 << 16, false);
  const Plan f2 = make_plan(in, hw);
  in.scheme = CommScheme::double_ring;
  const Plan d2 = make_plan(in, hw);
  EXPECT_EQ(d2.transfer, "double-ring");
  int most = 0;
  for (const RankPlan& r : d2.per_rank) {
    most = std::max(most, r.mem.recv_count);
    EXPECT_EQ(r.mem.recv_buffers, r.mem.recv_count * d2.block_bytes);
  }
  EXPECT_GT(most, 2);
  EXPECT_LE(most, 4);
  int64_t fi = 0, di = 0, fa = 0, da = 0;
  for (int r = 0; r < 8; ++r) {
    fi += f2.per_rank[at(r)].inter_bytes, di += d2.per_rank[at(r)].inter_bytes;
    fa += f2.per_rank[at(r)].intra_bytes + f2.per_rank[at(r)].inter_bytes;
    da += d2.per_rank[at(r)].intra_bytes + d2.per_rank[at(r)].inter_bytes;
  }
  EXPECT_EQ(fa, da);
  EXPECT_LT(di, fi);
  for (const RankPlan& r : d2.per_rank) EXPECT_GT(r.inter_s, 0);
}

TEST(PlanSchemes, A2aRingRefusesWhatItCannotRun) {
  const HardwareProfile hw = parse_hardware_profile(kProfile, "t.ini");
  PlanInput in = big_problem(8, 4, 4096, true);
  in.scheme = CommScheme::a2a_ring;
  in.kv_wire.bits = QuantBits::int8;
  try {
    make_plan(in, hw);
    ADD_FAILURE() << "a2a-ring planned with a quantized wire";
  } catch (const FieldError& e) {
    EXPECT_EQ(e.field(), "hierarchy");
  }
}

TEST(PlanSchemes, InterNodePresets) {
  const LinkSpec base = parse_hardware_profile(kProfile, "t.ini").inter;
  const LinkSpec ndr = inter_node_link("ndr", base), eth = inter_node_link("eth400", base);
  EXPECT_EQ(ndr.bandwidth_bps, 46e9);
  EXPECT_EQ(eth.bandwidth_bps, 44e9);
  EXPECT_LT(ndr.latency_s, eth.latency_s);
  const LinkSpec custom = inter_node_link("25", base);
  EXPECT_EQ(custom.bandwidth_bps, 25e9);
  EXPECT_EQ(custom.latency_s, base.latency_s);
  for (const char* bad : {"", "x", "0", "-3", "12GB"})
    EXPECT_THROW(inter_node_link(bad, base), Error) << bad;
}

}  // namespace
}  // namespace ringattn
