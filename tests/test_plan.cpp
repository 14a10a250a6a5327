// The planner's arithmetic without the CLI: the source design's numbers,
// hardware profile parsing (and every kind of bad profile), and the plan's
// consistency with the ring schedule, the kernel's FLOP count, ring.hpp's
// memory description and the hiding condition. The stages' plans (MoE,
// quantized K/V): test_plan_stages.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "plan_util.hpp"
#include "ringattn/error.hpp"
#include "ringattn/hardware.hpp"
#include "ringattn/kernel.hpp"
#include "ringattn/layout.hpp"
#include "ringattn/plan.hpp"
#include "ringattn/quant.hpp"
#include "ringattn/schedule.hpp"

namespace ringattn {
namespace {

using namespace test;  // NOLINT: the shared profile, problem and constants

// ---- the source design's arithmetic ------------------------------------------

TEST(PlanArithmetic, ScoreMatrixOfAMillionTokensIsFourTerabytes) {
  EXPECT_EQ(score_matrix_bytes(kMillion, kMillion), 4 * kTB);
  EXPECT_EQ(score_matrix_bytes(kMi, kMi), 4 * kTiB);  // with binary millions: 4 TiB
}

TEST(PlanArithmetic, FlashBufferOfAMillionBy256IsOneGigabyte) {
  EXPECT_EQ(flash_block_bytes(kMillion), 1.024 * kGB);  // "1 GB"
  EXPECT_EQ(flash_block_bytes(kMi), 1 * kGiB);          // exactly 1 GiB
  EXPECT_EQ(flash_block_bytes(kMi, 256), flash_block_bytes(kMi));
  // 4000x less than the score matrix (binary millions: 4096x).
  EXPECT_EQ(score_matrix_bytes(kMi, kMi) / flash_block_bytes(kMi), 4096.0);
}

TEST(PlanArithmetic, KvCacheOfMhaMqaGqa) {
  // d_model 512, 32 heads of 16.
  const int64_t n = kMillion, d = 16;
  EXPECT_EQ(kv_cache_values(n, 32, d), n * 1024);  // MHA: 1B values for 1M tokens
  EXPECT_EQ(kv_cache_values(n, 1, d), n * 32);     // MQA: 32x less
  EXPECT_EQ(kv_cache_values(n, 8, d), n * 256);    // GQA, 8 groups of 4: 4x less
  EXPECT_EQ(kv_cache_values(n, 32, d), 1024000000);
}

// ---- hardware profiles --------------------------------------------------------

TEST(Hardware, ParsesAProfile) {
  const HardwareProfile p = parse_hardware_profile(kProfile, "t.ini");
  EXPECT_EQ(p.name, "test-gpu");
  EXPECT_EQ(p.kind, DeviceKind::gpu);
  EXPECT_EQ(p.devices_per_node, 4);
  EXPECT_EQ(p.memory_bytes, 16 * kGiB);
  EXPECT_EQ(p.memory_bw_bps, 1000 * kGB);
  EXPECT_TRUE(p.intra.present);
  EXPECT_TRUE(p.inter.present);
  EXPECT_FALSE(p.in_process.present);
  EXPECT_DOUBLE_EQ(p.intra.latency_s, 10e-6);
  EXPECT_DOUBLE_EQ(p.inter.bandwidth_bps, 10 * kGB);
  EXPECT_EQ(p.intra.overlap, 1.0);
}

TEST(Hardware, KernelRateInterpolatesOverHeadDim) {
  const HardwareProfile p = parse_hardware_profile(kProfile, "t.ini");
  EXPECT_EQ(p.kernel_rate(DType::f16, 64), 100000 * kGB);
  EXPECT_EQ(p.kernel_rate(DType::f16, 128), 200000 * kGB);
  EXPECT_EQ(p.kernel_rate(DType::f16, 96), 150000 * kGB);
  EXPECT_EQ(p.kernel_rate(DType::f16, 32), 100000 * kGB);   // below: nearest
  EXPECT_EQ(p.kernel_rate(DType::f16, 256), 200000 * kGB);  // above: nearest
  EXPECT_EQ(p.kernel_rate(DType::f32, 64), 50000 * kGB);
  try {
    p.kernel_rate(DType::bf16, 128);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bfloat16.d128"), std::string::npos) << e.what();
  }
}

TEST(Hardware, TextRoundTrips) {
  const HardwareProfile p = parse_hardware_profile(kProfile, "t.ini");
  const HardwareProfile q = parse_hardware_profile(hardware_profile_text(p, "header\nline 2"), "u");
  EXPECT_EQ(q.name, p.name);
  EXPECT_EQ(q.devices_per_node, p.devices_per_node);
  EXPECT_DOUBLE_EQ(q.memory_bytes, p.memory_bytes);
  EXPECT_EQ(q.kernel_flops, p.kernel_flops);
  EXPECT_DOUBLE_EQ(q.inter.latency_s, p.inter.latency_s);
  EXPECT_DOUBLE_EQ(q.intra.bandwidth_bps, p.intra.bandwidth_bps);
}

struct BadProfile {
  const char* name;
  std::string from, to;  // replace `from` in kProfile by `to`
  const char* expect;    // in the message
};

void PrintTo(const BadProfile& c, std::ostream* os) {
  *os << c.name;
}

class HardwareErrors : public ::testing::TestWithParam<BadProfile> {};

TEST_P(HardwareErrors, NameTheProblem) {
  const BadProfile c = GetParam();
  std::string text = kProfile;
  const auto at = text.find(c.from);
  ASSERT_NE(at, std::string::npos) << c.from;
  text.replace(at, c.from.size(), c.to);
  try {
    parse_hardware_profile(text, "bad.ini");
    FAIL() << "expected an error for " << c.name;
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_EQ(m.rfind("bad.ini", 0), 0u) << m;
    EXPECT_NE(m.find(c.expect), std::string::npos) << m;
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
  }
}

INSTANTIATE_TEST_SUITE_P(
    All, HardwareErrors,
    ::testing::Values(
        BadProfile{"unknown_section", "[link.inter-node]", "[link.outer]", "unknown section"},
        BadProfile{"bad_header", "[link.inter-node]", "[link.inter-node", "malformed section"},
        BadProfile{"no_equals", "latency-us = 20", "latency-us 20", "expected `key = value`"},
        BadProfile{"unknown_key", "overlap = 1", "overlop = 1", "unknown key 'overlop'"},
        BadProfile{"missing_key", "memory-gib = 16\n", "", "missing key 'memory-gib'"},
        BadProfile{"negative", "memory-gib = 16", "memory-gib = -16", "positive number"},
        BadProfile{"text_value", "bandwidth-gb-s = 10\n", "bandwidth-gb-s = fast\n", "got 'fast'"},
        BadProfile{"nan", "bandwidth-gb-s = 10\n", "bandwidth-gb-s = nan\n", "got 'nan'"},
        BadProfile{"overlap_range", "overlap = 1", "overlap = 2", "in [0, 1]"},
        BadProfile{"kind", "kind = gpu", "kind = tpu", "expected gpu or cpu"},
        BadProfile{"fraction_devices", "devices-per-node = 4", "devices-per-node = 2.5",
                   "devices-per-node"},
        BadProfile{"kernel_key", "float16.d64", "float16.64", "<dtype>.d<head dim>"},
        BadProfile{"kernel_dtype", "float16.d64", "float8.d64", "<dtype>.d<head dim>"},
        BadProfile{"kernel_dim", "float16.d64", "float16.d4", "<dtype>.d<head dim>"},
        BadProfile{"duplicate", "latency-us = 20", "latency-us = 20\nlatency-us = 30",
                   "more than once"},
        BadProfile{"outside", "# a test profile", "stray = 1", "outside any section"},
        BadProfile{"no_device", "[device]", "[link.in-process]", "missing section [device]"}),
    [](const ::testing::TestParamInfo<BadProfile>& p) { return std::string(p.param.name); });

TEST(Hardware, MissingSections) {
  EXPECT_THROW(parse_hardware_profile("", "e.ini"), Error);
  EXPECT_THROW(parse_hardware_profile("[device]\nname = x\nkind = cpu\ndevices-per-node = 1\n"
                                      "memory-gib = 1\nmemory-bandwidth-gb-s = 1\n",
                                      "e.ini"),
               Error);  // no kernel rates
  EXPECT_THROW(load_hardware_profile("/nonexistent/profile.ini"), Error);
  EXPECT_THROW(resolve_hardware_profile("no-such-profile", {"/nonexistent"}), Error);
  EXPECT_EQ(resolve_hardware_profile("dir/x.ini", {}), "dir/x.ini");
}

// ---- plans ---------------------------------------------------------------------

TEST(Plan, FlopsStepsAndImbalanceFollowTheSchedule) {
  const HardwareProfile hw = parse_hardware_profile(kProfile, "t.ini");
  for (const bool causal : {false, true})
    for (const LayoutKind lk : {LayoutKind::contiguous, LayoutKind::zigzag, LayoutKind::striped})
      for (const int np : {1, 3, 4}) {
        const PlanInput in = problem(1000, np, causal, lk);
        const Plan p = make_plan(in, hw);
        AttentionArgs a;
        a.batch = in.batch, a.nq = in.nq, a.nk = in.nk, a.hq = in.hq, a.hkv = in.hkv;
        a.head_dim = in.head_dim, a.mask = in.mask;
        EXPECT_DOUBLE_EQ(p.total_flops, attention_flops(a));
        const Layout ql(lk, in.nq, np);
        const RingSchedule sch = make_ring_schedule(ql, ql, in.mask);
        EXPECT_EQ(p.steps, sch.steps);
        EXPECT_DOUBLE_EQ(p.imbalance, sch.imbalance());
        ASSERT_EQ(p.per_rank.size(), static_cast<std::size_t>(np));
        for (const RankPlan& r : p.per_rank) EXPECT_EQ(r.pairs, sch.rank_pairs(r.rank));
        EXPECT_EQ(p.per_step.size(), static_cast<std::size_t>(p.steps));
      }
}

TEST(Plan, SharedRowsAndDirectTransfersFollowTheSchedule) {
  const HardwareProfile hw = parse_hardware_profile(kProfile, "t.ini");
  PlanInput in = problem(4000, 4, true, LayoutKind::zigzag);
  in.mask.lo = -300;  // causal window of 301 keys ...
  in.mask.sinks = 4;  // ... and 4 sinks, shared outside the rotation
  const Plan p = make_plan(in, hw);
  const Layout ql(in.layout, in.nq, in.ranks);
  const RingSchedule sch = make_ring_schedule(ql, ql, in.mask);
  ASSERT_TRUE(sch.shared.on());
  EXPECT_EQ(p.steps, sch.steps);
  EXPECT_EQ(p.transfer, sch.transfer == Transfer::direct ? "direct" : "ring");
  AttentionArgs a;
  a.batch = in.batch, a.nq = in.nq, a.nk = in.nk, a.hq = in.hq, a.hkv = in.hkv;
  a.head_dim = in.head_dim, a.mask = in.mask;
  // Shared pairs are spread over ranks by query tokens: at most one pair of rounding per rank.
  EXPECT_NEAR(p.total_flops, attention_flops(a), double(in.ranks * 4 * in.hq * in.head_dim));
  double sent = 0;
  for (int r = 0; r < in.ranks; ++r) {
    EXPECT_EQ(p.per_rank[static_cast<std::size_t>(r)].ring_pairs, sch.rank_pairs(r));
    EXPECT_GT(p.per_rank[static_cast<std::size_t>(r)].mem.shared, 0);
    sent += double(sch.tokens_sent(ql, r) * 2 * in.hkv * in.head_dim * 2);  // float16
  }
  // bytes_per_step also counts the shared rows' all-gather, as run does.
  EXPECT_GE(p.bytes_per_step * in.ranks * (p.steps - 1), sent);
}

TEST(Plan, WindowStopsTheRingEarly) {
  const HardwareProfile hw = parse_hardware_profile(kProfile, "t.ini");
  PlanInput in = problem(8000, 8, true, LayoutKind::contiguous);
  in.mask.lo = -1500;  // causal window of 1501 keys: ceil(1500 / 1000) = 2 rotations
  const Plan p = make_plan(in, hw);
  EXPECT_EQ(p.steps, 3);
  // Direct transfers, and ring.cpp's pool allocates a receive buffer only for a block
  // received: rank 0 receives none, rank 1 one (rank 0's), the others two.
  EXPECT_EQ(p.transfer, "direct");
  for (int r = 0; r < 8; ++r)
    EXPECT_EQ(p.per_rank[static_cast<std::size_t>(r)].mem.recv_count, std::min(r, 2)) << r;
}

TEST(Plan, MemoryBreakdownFollowsRingHpp) {
  const HardwareProfile hw = parse_hardware_profile(kProfile, "t.ini");
  for (const int np : {1, 2, 4}) {
    const Plan p = make_plan(problem(4096, np, false, LayoutKind::contiguous), hw);
    const RankPlan& r = p.per_rank[0];
    const double c = 4096.0 / np;
    EXPECT_EQ(r.mem.q, c * 8 * 128 * 2);            // B Nq Hq D, float16
    EXPECT_EQ(r.mem.k, c * 2 * 128 * 2);            // B Nk Hkv D
    EXPECT_EQ(r.mem.o, c * 8 * 128 * 4);            // float32 accumulator
    EXPECT_EQ(r.mem.lse, c * 8 * 4);                // float32
    EXPECT_EQ(p.block_bytes, 2 * c * 2 * 128 * 2);  // K and V of one rank
    EXPECT_EQ(r.mem.recv_count, std::min(2, np - 1));
    EXPECT_EQ(r.mem.recv_buffers, r.mem.recv_count * p.block_bytes);
    EXPECT_EQ(r.mem.partial, c * 8 * 129 * 4);
    EXPECT_EQ(r.mem.workspace, 0);  // gpu: on-chip
    EXPECT_DOUBLE_EQ(p.max_rank_memory, r.mem.total());
    EXPECT_TRUE(p.fits);
  }
}

TEST(Plan, ComparisonFiguresUseTheSourceDesignsArithmetic) {
  const HardwareProfile hw = parse_hardware_profile(kProfile, "t.ini");
  PlanInput in = problem(kMi, 1, false, LayoutKind::contiguous);
  in.hq = 32, in.hkv = 8, in.head_dim = 16, in.dtype = DType::f32;  // d_model 512, GQA 8
  in.ranks = 64;
  const Plan p = make_plan(in, hw);
  EXPECT_EQ(p.naive_scores_per_head, 4 * kTiB);
  EXPECT_EQ(p.naive_scores_total, 4 * kTiB * 32);
  EXPECT_EQ(p.flash_block_per_head, kGiB);
  EXPECT_EQ(p.kv_cache_bytes, double(kMi) * 256 * 4);
}

TEST(Plan, SingleRankTimeIsComputePlusMerge) {
  const HardwareProfile hw = slow_link_profile(1);
  const Plan p = make_plan(problem(2048, 1, false, LayoutKind::contiguous), hw);
  EXPECT_EQ(p.steps, 1);
  EXPECT_TRUE(p.all_hidden);
  EXPECT_EQ(p.min_tokens_hidden, 0);
  EXPECT_NEAR(p.predicted_s, p.total_flops / hw.kernel_rate(DType::f16, 128), 1e-12);
}

TEST(Plan, MinimumTokensIsTheHidingThreshold) {
  // RingAttention's case: MHA, 2-byte dtype, dense, no latency: c_min = R / BW.
  EXPECT_NEAR(double(min_hiding_tokens(4.0 * 128 / 1e12, 2.0 * 128 * 2 / 1e9, 0)), 1000, 1);
  const double a = 3e-9, b = 2e-6, lat = 4e-5;
  const double c = double(min_hiding_tokens(a, b, lat));
  EXPECT_GE(a * c * c, b * c + lat);
  EXPECT_LT(a * (c - 1) * (c - 1), b * (c - 1) + lat);
  EXPECT_EQ(min_hiding_tokens(0, b, lat), -1);

  for (const bool causal : {false, true}) {
    const HardwareProfile hw = slow_link_profile(20);
    const LayoutKind lk = causal ? LayoutKind::zigzag : LayoutKind::contiguous;
    const Plan probe = make_plan(problem(4 * 4096, 4, causal, lk), hw);
    const int64_t cmin = probe.min_tokens_hidden;
    ASSERT_GT(cmin, 0);
    if (causal) {
      EXPECT_NEAR(probe.visible_fraction, 0.5, 0.01);
    }
    // Even multiples of 2P tokens so every step has the same shape.
    const int64_t above = (cmin * 5 / 4 + 7) / 8 * 8, below = (cmin * 3 / 4) / 8 * 8;
    const Plan hidden = make_plan(problem(4 * above, 4, causal, lk), hw);
    const Plan exposed = make_plan(problem(4 * below, 4, causal, lk), hw);
    EXPECT_TRUE(hidden.all_hidden) << cmin;
    EXPECT_FALSE(exposed.all_hidden) << cmin;
    EXPECT_EQ(hidden.min_tokens_hidden, cmin);  // independent of N for full/causal
    // Hidden: the ring costs only compute; exposed: transfer-bound.
    EXPECT_NEAR(hidden.predicted_s, hidden.per_rank[0].compute_s + hidden.per_rank[0].merge_s,
                1e-9 * hidden.predicted_s + 1e-12);
    EXPECT_GT(exposed.predicted_s, exposed.per_rank[0].compute_s * 1.05);
  }
}

TEST(Plan, ANonOverlappingLinkNeverHides) {
  const Plan p =
      make_plan(problem(65536, 4, false, LayoutKind::contiguous), slow_link_profile(1e6, 0.0));
  EXPECT_FALSE(p.all_hidden);
  EXPECT_EQ(p.min_tokens_hidden, -1);
  // Serial transfers add to compute.
  EXPECT_GT(p.predicted_s, p.per_rank[0].compute_s + p.per_rank[0].merge_s);
}

TEST(Plan, MultiNodeRingsUseTheInterNodeLink) {
  const HardwareProfile hw = parse_hardware_profile(kProfile, "t.ini");
  const Plan one = make_plan(problem(8192, 4, false, LayoutKind::contiguous), hw);
  EXPECT_EQ(one.nodes, 1);
  EXPECT_EQ(one.link_name, "intra-node");
  const Plan two = make_plan(problem(8192, 8, false, LayoutKind::contiguous), hw);
  EXPECT_EQ(two.nodes, 2);
  EXPECT_EQ(two.link_name, "inter-node");
  EXPECT_DOUBLE_EQ(two.link.bandwidth_bps, 10 * kGB);
}

TEST(Plan, RejectsWhatItCannotPlan) {
  HardwareProfile hw = parse_hardware_profile(kProfile, "t.ini");
  EXPECT_THROW(make_plan(problem(100, kMaxPlanRanks + 1, false, LayoutKind::contiguous), hw),
               Error);
  PlanInput local = problem(100, 2, false, LayoutKind::contiguous);
  local.links = PlanLinks::in_process;
  EXPECT_THROW(make_plan(local, hw), Error);  // no [link.in-process]
  hw.inter.present = false;
  EXPECT_THROW(make_plan(problem(100, 8, false, LayoutKind::contiguous), hw), Error);
}

TEST(Plan, CpuRanksShareCores) {
  HardwareProfile hw = parse_hardware_profile(kProfile, "t.ini");
  hw.kind = DeviceKind::cpu;
  hw.devices_per_node = 2;
  hw.in_process = hw.intra;
  PlanInput in = problem(4096, 1, false, LayoutKind::contiguous);
  in.links = PlanLinks::in_process;
  const Plan p1 = make_plan(in, hw);
  EXPECT_EQ(p1.threads, 2);  // cores / P, as `run --ranks-local`
  EXPECT_EQ(p1.oversubscription, 1);
  in.ranks = 8;
  const Plan p8 = make_plan(in, hw);
  EXPECT_EQ(p8.threads, 1);
  EXPECT_EQ(p8.oversubscription, 4);  // 8 single-thread ranks on 2 cores
  EXPECT_DOUBLE_EQ(p8.rate, p1.rate / 2 / 4);
  EXPECT_GT(p8.per_rank[0].mem.workspace, 0);
}

}  // namespace
}  // namespace ringattn
