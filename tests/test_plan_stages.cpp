// The stages' plans without the CLI: the MoE stage (bytes and FLOPs by hand,
// chunks, capacity) and quantized K/V on the wire and in memory.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "plan_util.hpp"
#include "ringattn/error.hpp"
#include "ringattn/plan.hpp"
#include "ringattn/quant.hpp"

namespace ringattn {
namespace {

using namespace test;  // NOLINT: the shared profile, problem and constants

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
    // A quantized wire sends whole blocks; the unquantized one only the rows
    // receivers see (the shared sinks' rows are not among them: a block at most
    // 4 rows smaller).
    const double sink_rows = 2.0 * double(in.hkv * in.mask.sinks * c.row);
    for (std::size_t s = 0; s < p.per_step.size(); ++s)
      EXPECT_NEAR(p.per_step[s].bytes, ref.per_step[s].bytes * ratio, sink_rows) << s;
    // bytes_per_step also counts the sinks' all-gather, in the storage dtype.
    const int rotations = in.ranks * (p.steps - 1);
    const Layout ql(in.layout, in.nq, in.ranks);
    const RingSchedule sch = make_ring_schedule(ql, ql, in.mask);
    double whole = 0, rows = 0;
    for (int r = 0; r < in.ranks; ++r) {
      whole += double(sch.tokens_sent(ql, r, false) * 2 * in.hkv);
      rows += double(sch.tokens_sent(ql, r) * 2 * in.hkv);
    }
    EXPECT_LT(rows, whole);
    EXPECT_DOUBLE_EQ(p.bytes_per_step - ref.bytes_per_step,
                     (whole * double(c.row) - rows * 512.0) / rotations);
    for (std::size_t r = 0; r < p.per_rank.size(); ++r) {
      const MemoryBreakdown &m = p.per_rank[r].mem, &m0 = ref.per_rank[r].mem;
      EXPECT_EQ(m.k, m0.k);  // held in the storage dtype
      // Whole blocks on a quantized wire; the unquantized one receives only rows.
      EXPECT_EQ(m.recv_buffers, m.recv_count * p.block_bytes);
      EXPECT_LE(m0.recv_buffers, m0.recv_count * ref.block_bytes);
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
