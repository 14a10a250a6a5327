// The planner's arithmetic without the CLI: the source design's numbers,
// hardware profile parsing (and every kind of bad profile), and the plan's
// consistency with the ring schedule, the kernel's FLOP count, ring.hpp's
// memory description and the hiding condition.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "ringattn/error.hpp"
#include "ringattn/hardware.hpp"
#include "ringattn/kernel.hpp"
#include "ringattn/layout.hpp"
#include "ringattn/plan.hpp"
#include "ringattn/quant.hpp"
#include "ringattn/schedule.hpp"

namespace ringattn {
namespace {

constexpr int64_t kMillion = 1000000;
constexpr int64_t kMi = int64_t{1} << 20;
constexpr double kTB = 1e12, kGB = 1e9;
constexpr double kTiB = 1024.0 * 1024 * 1024 * 1024, kGiB = 1024.0 * 1024 * 1024;

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

const char* const kProfile = R"(# a test profile
[device]
name = test-gpu
kind = gpu
description = made up
devices-per-node = 4
memory-gib = 16
memory-bandwidth-gb-s = 1000   ; trailing comment

[kernel-gflops]
float16.d64 = 100000
float16.d128 = 200000
float32.d128 = 50000

[link.intra-node]
latency-us = 10
bandwidth-gb-s = 100

[link.inter-node]
latency-us = 20
bandwidth-gb-s = 10
overlap = 1
)";

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

PlanInput problem(int64_t n, int ranks, bool causal, LayoutKind layout) {
  PlanInput in;
  in.batch = 1, in.nq = n, in.nk = n, in.hq = 8, in.hkv = 2, in.head_dim = 128;
  in.dtype = DType::f16;
  in.mask = causal ? Mask::causal(0) : Mask::none();
  in.layout = layout;
  in.ranks = ranks;
  return in;
}

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

// A fast device behind a slow link: transfers cannot hide at small c.
HardwareProfile slow_link_profile(double gbps, double overlap = 1.0) {
  HardwareProfile hw = parse_hardware_profile(kProfile, "t.ini");
  hw.memory_bw_bps = 1e30;  // merge time ~0: compute alone decides hiding
  hw.intra.bandwidth_bps = gbps * kGB;
  hw.intra.overlap = overlap;
  return hw;
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

// ---- the MoE stage ---------------------------------------------------------------

// T = 1024 tokens of d_model = 4 x 32 = 128, E = 8 experts, k = 2, P = 4 (two
// experts per rank, 256 tokens each), d_ff = 256.
PlanInput moe_problem(double capacity_factor, LayoutKind layout = LayoutKind::contiguous) {
  PlanInput in = problem(1024, 4, false, layout);
  in.hq = 4, in.hkv = 4, in.head_dim = 32;
  in.moe.experts = 8, in.moe.topk = 2, in.moe.d_ff = 256;
  in.moe.capacity_factor = capacity_factor;
  return in;
}

TEST(PlanMoe, BytesAndFlopsByHand) {
  const HardwareProfile hw = parse_hardware_profile(kProfile, "t.ini");
  // cf 1.25: C = ceil(2 x 1.25 x 1024 / 8) = 320 >= k T / E = 256, nothing dropped.
  // cf 0.5:  C = 128, half of each expert's 256 assignments accepted.
  struct Case {
    double cf;
    int64_t capacity;
    double accepted, rows_sent;
  };
  for (const Case& c : {Case{1.25, 320, 256, 384}, Case{0.5, 128, 128, 192}}) {
    const Plan p = make_plan(moe_problem(c.cf), hw);
    ASSERT_TRUE(p.moe.on);
    EXPECT_EQ(p.moe.tokens, 1024);
    EXPECT_EQ(p.moe.d_model, 128);
    EXPECT_EQ(p.moe.capacity, c.capacity);
    EXPECT_DOUBLE_EQ(p.moe.requested, 256);
    EXPECT_DOUBLE_EQ(p.moe.accepted, c.accepted);
    EXPECT_EQ(p.moe.alltoalls, 5);
    ASSERT_EQ(p.moe.per_rank.size(), 4u);
    for (const MoeRankPlan& r : p.moe.per_rank) {
      EXPECT_EQ(r.experts, 2);
      EXPECT_DOUBLE_EQ(r.rows, 256);
      EXPECT_DOUBLE_EQ(r.assignments, 512);       // k x 256
      EXPECT_DOUBLE_EQ(r.records_sent, 384);      // 512 x (P - 1) / P
      EXPECT_DOUBLE_EQ(r.records_received, 384);  // 3 ranks x 512 x 2 / 8
      EXPECT_DOUBLE_EQ(r.rows_sent, c.rows_sent);
      EXPECT_DOUBLE_EQ(r.rows_received, c.rows_sent);
      EXPECT_DOUBLE_EQ(r.rows_computed, 2 * c.accepted);
      // counts 8 x 3, records 24 x 384, flags 1 x 384, rows out and back 128 x 4 each.
      const double bytes = 8.0 * 3 + 24.0 * 384 + 384 + 512.0 * 2 * c.rows_sent;
      EXPECT_DOUBLE_EQ(r.bytes_sent, bytes);
      EXPECT_DOUBLE_EQ(r.ffn_flops, 6.0 * 2 * c.accepted * 128 * 256);
      EXPECT_DOUBLE_EQ(r.router_flops, 2.0 * 256 * 128 * 8);
      // The GEMMs at the profile's float32 rate (50 TFLOP/s at D 128; a GPU rank).
      EXPECT_DOUBLE_EQ(p.moe.gemm_rate, 50000 * kGB);
      EXPECT_DOUBLE_EQ(r.ffn_s, r.ffn_flops / (50000 * kGB));
      // Intra-node: 10 us, 100 GB/s; five all-to-alls over three peers.
      EXPECT_NEAR(r.alltoall_s, 5 * 3 * 10e-6 + bytes / (100 * kGB), 1e-15);
      EXPECT_DOUBLE_EQ(r.seconds, r.router_s + r.ffn_s + r.alltoall_s);
      EXPECT_GT(r.memory, 2 * 3 * 128 * 256 * 4.0);  // at least the held experts' weights
    }
    EXPECT_DOUBLE_EQ(p.moe.max_bytes_sent(), 8.0 * 3 + 24.0 * 384 + 384 + 512.0 * 2 * c.rows_sent);
  }
}

TEST(PlanMoe, OffLeavesThePlanUnchangedAndOnAddsTheStage) {
  const HardwareProfile hw = parse_hardware_profile(kProfile, "t.ini");
  PlanInput off = moe_problem(1.25);
  off.moe.experts = 0;  // the other MoE fields set, but no stage
  PlanInput plain = problem(1024, 4, false, LayoutKind::contiguous);
  plain.hq = 4, plain.hkv = 4, plain.head_dim = 32;
  const Plan ref = make_plan(plain, hw), p = make_plan(off, hw);
  EXPECT_FALSE(p.moe.on);
  EXPECT_TRUE(p.moe.per_rank.empty());
  EXPECT_EQ(p.predicted_s, ref.predicted_s);
  EXPECT_EQ(p.total_flops, ref.total_flops);
  EXPECT_EQ(p.max_rank_memory, ref.max_rank_memory);
  for (std::size_t r = 0; r < p.per_rank.size(); ++r) {
    EXPECT_EQ(p.per_rank[r].mem.moe, 0);
    EXPECT_EQ(p.per_rank[r].total_s, ref.per_rank[r].total_s);
  }

  const Plan on = make_plan(moe_problem(1.25), hw);
  double ffn = 0, slowest = 0;
  for (std::size_t r = 0; r < on.per_rank.size(); ++r) {
    const MoeRankPlan& m = on.moe.per_rank[r];
    EXPECT_EQ(on.per_rank[r].mem.moe, m.memory);
    EXPECT_DOUBLE_EQ(on.per_rank[r].mem.total() - m.memory, ref.per_rank[r].mem.total());
    ffn += m.ffn_flops + m.router_flops;
    slowest = std::max(slowest, m.seconds);
  }
  EXPECT_DOUBLE_EQ(on.total_flops, ref.total_flops + ffn);
  EXPECT_DOUBLE_EQ(on.predicted_s, ref.predicted_s + slowest);  // after the ring, everywhere
}

TEST(PlanMoe, ChunkPartsFollowTheLayoutAndExpertChoiceKeepsC) {
  const HardwareProfile hw = parse_hardware_profile(kProfile, "t.ini");
  // Zigzag over 4 ranks: pieces of 128 tokens, rank 0 holds pieces 0 and 7; chunks of 64 are
  // owned 4 per rank in order, so rank 0 sends its chunks 14, 15 to rank 3 and receives
  // chunks 2, 3 from rank 1.
  PlanInput in = moe_problem(1.25, LayoutKind::zigzag);
  in.moe.policy = MoePolicy::chunk, in.moe.chunk = 64;
  const Plan chunk = make_plan(in, hw);
  const Plan token = make_plan(moe_problem(1.25, LayoutKind::zigzag), hw);
  const MoeRankPlan& r0 = chunk.moe.per_rank[0];
  EXPECT_EQ(chunk.moe.alltoalls, 8);
  EXPECT_DOUBLE_EQ(r0.chunk_parts_sent, 2);
  EXPECT_DOUBLE_EQ(r0.chunk_parts_received, 2);
  EXPECT_DOUBLE_EQ(r0.bytes_sent - token.moe.per_rank[0].bytes_sent,
                   8.0 * 3 + 2 * (1 + 128) * 8.0 + 2 * 8 * 4.0);
  // Contiguous: every rank owns its own chunks.
  in.layout = LayoutKind::contiguous;
  EXPECT_DOUBLE_EQ(make_plan(in, hw).moe.per_rank[0].chunk_parts_sent, 0);

  // Expert choice: C = 320 per expert; each rank offers min(C, 256) = 256 per expert and
  // every expert keeps 320, a quarter from each rank.
  PlanInput ec = moe_problem(1.25);
  ec.moe.policy = MoePolicy::expert;
  const Plan e = make_plan(ec, hw);
  const MoeRankPlan& m = e.moe.per_rank[1];
  EXPECT_DOUBLE_EQ(e.moe.accepted, 320);
  EXPECT_DOUBLE_EQ(m.assignments, 8 * 256);
  EXPECT_DOUBLE_EQ(m.records_sent, 6 * 256);
  EXPECT_DOUBLE_EQ(m.records_received, 2 * 3 * 256);
  EXPECT_DOUBLE_EQ(m.rows_sent, 6 * 320 / 4.0);
  EXPECT_DOUBLE_EQ(m.rows_computed, 2 * 320);
}

TEST(PlanMoe, RejectsFewerExpertsThanRanks) {
  const HardwareProfile hw = parse_hardware_profile(kProfile, "t.ini");
  PlanInput in = moe_problem(1.25);
  in.moe.experts = 3;
  try {
    make_plan(in, hw);
    ADD_FAILURE() << "expected FieldError";
  } catch (const FieldError& e) {
    EXPECT_EQ(e.field(), "moe_experts");
  }
}

// ---- K/V quantization (kv_wire, kv_store) ------------------------------------------

QuantFormat kv_format(QuantBits bits, int group, bool asymmetric = false) {
  QuantFormat f;
  f.bits = bits, f.group = group, f.asymmetric = asymmetric;
  return f;
}

TEST(PlanKv, WireBytesAreTheFormatsRow) {
  const HardwareProfile hw = slow_link_profile(20);
  PlanInput plain = problem(4 * 4096, 4, true, LayoutKind::zigzag);
  plain.dtype = DType::f32;  // D = 128: 512 B per token-head
  plain.mask.sinks = 4;      // shared rows, which stay in the storage dtype
  const Plan ref = make_plan(plain, hw);
  EXPECT_EQ(ref.kv_row_bytes, 512);
  struct Case {
    QuantFormat f;
    int64_t row;
  };
  // int8 g64: 128 codes + 2 scales x 4 B; int4 asym g32: 64 codes + 4 (scale, lo) x 4 B.
  for (const Case& c : {Case{kv_format(QuantBits::int8, 64), 136},
                        Case{kv_format(QuantBits::int4, 32, true), 96}}) {
    PlanInput in = plain;
    in.kv_wire = c.f;
    const Plan p = make_plan(in, hw);
    const double ratio = double(c.row) / 512.0;
    EXPECT_EQ(p.kv_row_bytes, c.row) << c.f.describe();
    EXPECT_EQ(p.block_bytes, ref.block_bytes * ratio);
    ASSERT_EQ(p.per_step.size(), ref.per_step.size());
    for (std::size_t s = 0; s < p.per_step.size(); ++s)
      EXPECT_EQ(p.per_step[s].bytes, ref.per_step[s].bytes * ratio) << s;
    // bytes_per_step also counts the sinks' all-gather, in the storage dtype.
    const int rotations = in.ranks * (p.steps - 1);
    const Layout ql(in.layout, in.nq, in.ranks);
    const RingSchedule sch = make_ring_schedule(ql, ql, in.mask);
    double ring_sent = 0;
    for (int r = 0; r < in.ranks; ++r) ring_sent += double(sch.tokens_sent(ql, r) * 2 * in.hkv);
    EXPECT_DOUBLE_EQ(p.bytes_per_step - ref.bytes_per_step,
                     ring_sent * double(c.row - 512) / rotations);
    for (std::size_t r = 0; r < p.per_rank.size(); ++r) {
      const MemoryBreakdown &m = p.per_rank[r].mem, &m0 = ref.per_rank[r].mem;
      EXPECT_EQ(m.k, m0.k);  // held in the storage dtype
      EXPECT_EQ(m.recv_buffers, m0.recv_buffers * ratio);
      EXPECT_EQ(m.wire_copy, 2.0 * double(p.per_rank[r].kv_tokens * in.hkv * c.row));
      EXPECT_EQ(m.shared, m0.shared);
      EXPECT_EQ(m.loading, 0);
      EXPECT_EQ(p.per_rank[r].compute_s, ref.per_rank[r].compute_s);
      EXPECT_LT(p.per_rank[r].transfer_s, ref.per_rank[r].transfer_s);
    }
    EXPECT_EQ(p.total_flops, ref.total_flops);
    // The hiding threshold with the wire's bytes per token-head.
    const double a = 4.0 * double(in.hq * in.head_dim) * p.visible_fraction / p.rate;
    const double b = 2.0 * double(in.hkv * c.row) / p.link.bandwidth_bps;
    EXPECT_EQ(p.min_tokens_hidden, min_hiding_tokens(a, b, 2 * p.link.latency_s));
    EXPECT_LT(p.min_tokens_hidden, ref.min_tokens_hidden);
  }
}

TEST(PlanKv, StoredKvIsTheCodes) {
  const HardwareProfile hw = parse_hardware_profile(kProfile, "t.ini");
  PlanInput in = problem(4096, 4, false, LayoutKind::contiguous);
  in.dtype = DType::f32;
  in.kv_wire = kv_format(QuantBits::int8, 64);
  in.kv_store = true;
  const Plan p = make_plan(in, hw);
  const double c = 1024;  // tokens per rank; B = 1, Hkv = 2, 136 B per token-head
  for (const RankPlan& r : p.per_rank) {
    EXPECT_EQ(r.mem.k, c * 2 * 136);
    EXPECT_EQ(r.mem.v, c * 2 * 136);
    EXPECT_EQ(r.mem.recv_buffers, 2 * (2 * c * 2 * 136));  // two blocks of the wire's codes
    EXPECT_EQ(r.mem.wire_copy, 0);                         // the stored codes are sent
    // Loading: Q, the float32 K and V, and their codes.
    EXPECT_EQ(r.mem.loading, c * 8 * 128 * 4 + 2 * c * 2 * 512 + 2 * c * 2 * 136);
    EXPECT_EQ(r.mem.peak(), std::max(r.mem.total(), r.mem.loading));
  }
  EXPECT_DOUBLE_EQ(p.max_rank_memory, p.per_rank[0].mem.peak());

  const auto field_of = [&](const PlanInput& x) {
    try {
      make_plan(x, hw);
    } catch (const FieldError& e) {
      return e.field();
    }
    return std::string("none");
  };
  PlanInput bad = in;
  bad.kv_wire = {};  // stored without a format
  EXPECT_EQ(field_of(bad), "kv_store");
  bad = in, bad.kv_store = false, bad.kv_wire.group = 48;
  EXPECT_EQ(field_of(bad), "kv_group");
  bad = in, bad.mask = Mask::causal(0), bad.mask.lo = -24;
  bad.hier.regional_block = 8, bad.hier.regional_window = 64, bad.hier.global_block = 32;
  EXPECT_EQ(field_of(bad), "kv_store");  // as run: the stages read exact K/V rows
  bad.kv_store = false;
  EXPECT_EQ(field_of(bad), "none");
}

TEST(PlanKv, StagesAreUnaffected) {
  const HardwareProfile hw = parse_hardware_profile(kProfile, "t.ini");
  // The MoE stage works on the attention output.
  PlanInput moe = moe_problem(1.25);
  const Plan m0 = make_plan(moe, hw);
  moe.kv_wire = kv_format(QuantBits::int8, 32);
  const Plan m1 = make_plan(moe, hw);
  ASSERT_TRUE(m1.moe.on);
  for (std::size_t r = 0; r < m1.moe.per_rank.size(); ++r) {
    EXPECT_EQ(m1.moe.per_rank[r].bytes_sent, m0.moe.per_rank[r].bytes_sent);
    EXPECT_EQ(m1.moe.per_rank[r].memory, m0.moe.per_rank[r].memory);
    EXPECT_EQ(m1.moe.per_rank[r].seconds, m0.moe.per_rank[r].seconds);
  }
  // The hierarchical stage gathers float block means and reads exact K/V; only its ring shrinks.
  PlanInput h = problem(4096, 4, true, LayoutKind::zigzag);
  h.mask.lo = -24;
  h.hier.regional_block = 8, h.hier.regional_window = 64, h.hier.global_block = 32;
  const Plan h0 = make_plan(h, hw);
  h.kv_wire = kv_format(QuantBits::int4, 64);
  const Plan h1 = make_plan(h, hw);
  ASSERT_TRUE(h1.stage.on);
  EXPECT_EQ(h1.stage.gathered_bytes, h0.stage.gathered_bytes);
  EXPECT_EQ(h1.stage.sent, h0.stage.sent);
  EXPECT_EQ(h1.stage.memory, h0.stage.memory);
  EXPECT_EQ(h1.stage.seconds, h0.stage.seconds);
  EXPECT_LT(h1.block_bytes, h0.block_bytes);
}

}  // namespace
}  // namespace ringattn
