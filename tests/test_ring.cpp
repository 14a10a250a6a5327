// Ring attention on the in-process backend against the float64 reference.
#include <gtest/gtest.h>

#include <mutex>

#include "ring_cases.hpp"

namespace ringattn {
namespace {

using test::RingCase;

constexpr double kTolO = 1e-5, kTolLse = 1e-4;

// Runs the case on p in-process ranks; returns the worst error over ranks.
ErrorStats run_case(int p, const RingCase& c) {
  ErrorStats worst;
  std::mutex mu;
  run_local(p, [&](Communicator& comm) {
    const test::RingCheck chk = test::run_ring_case(comm, c);
    std::lock_guard<std::mutex> lk(mu);
    worst.o_rel_fro = std::max(worst.o_rel_fro, chk.err.o_rel_fro);
    worst.lse_max_abs = std::max(worst.lse_max_abs, chk.err.lse_max_abs);
    worst.lse_mismatch += chk.err.lse_mismatch;
  });
  return worst;
}

void expect_ok(int p, const RingCase& c) {
  const ErrorStats e = run_case(p, c);
  EXPECT_LE(e.o_rel_fro, kTolO) << "P=" << p << " " << c.name();
  EXPECT_LE(e.lse_max_abs, kTolLse) << "P=" << p << " " << c.name();
  EXPECT_EQ(e.lse_mismatch, 0) << "P=" << p << " " << c.name();
}

class RingP : public ::testing::TestWithParam<int> {};

TEST_P(RingP, EveryLayoutMaskAndHeadLayout) {
  const int p = GetParam();
  const int64_t heads[][2] = {{8, 8}, {8, 2}, {8, 1}};
  int i = 0;
  for (LayoutKind layout : {LayoutKind::contiguous, LayoutKind::zigzag, LayoutKind::striped})
    for (bool causal : {false, true})
      for (int64_t n : {int64_t{1}, int64_t{p > 1 ? p - 1 : 1}, int64_t{1000}}) {
        RingCase c;
        c.nq = c.nk = n, c.causal = causal, c.layout = layout, c.seed = 10 + i;
        c.hq = heads[i % 3][0], c.hkv = heads[i % 3][1];
        c.b = (i % 4 == 0) ? 2 : 1;
        expect_ok(p, c);
        ++i;
      }
}

TEST_P(RingP, LongUnevenSequence) {
  const int p = GetParam();
  RingCase c;
  c.nq = c.nk = test::kSanitized ? 1499 : 4099;
  c.hq = 8, c.hkv = 2, c.d = 64, c.causal = true, c.layout = LayoutKind::zigzag;
  expect_ok(p, c);
}

TEST_P(RingP, CrossAttention) {
  const int p = GetParam();
  for (LayoutKind layout : {LayoutKind::contiguous, LayoutKind::zigzag, LayoutKind::striped}) {
    RingCase c;
    c.nq = 333, c.nk = 1000, c.hq = 8, c.hkv = 1, c.layout = layout;
    expect_ok(p, c);
    c.nq = 1000, c.nk = 333, c.causal = true;  // bottom-right aligned: early rows see nothing
    expect_ok(p, c);
  }
}

TEST_P(RingP, SparsePatterns) {
  const int p = GetParam();
  const int64_t n = 777;
  const std::vector<test::NamedMask> patterns = test::sparse_patterns(n);
  for (const RingCase& c : test::sparse_ring_cases(patterns, n, 70)) expect_ok(p, c);
}

INSTANTIATE_TEST_SUITE_P(Ranks, RingP, ::testing::Values(1, 2, 3, 4, 5, 8));

TEST(Ring, ErrorDoesNotGrowWithRanks) {
  RingCase c;
  c.nq = c.nk = 512, c.hq = 2, c.hkv = 1, c.d = 64, c.causal = true, c.layout = LayoutKind::zigzag;
  const ErrorStats e1 = run_case(1, c);
  const ErrorStats e32 = run_case(32, c);
  EXPECT_LE(e32.o_rel_fro, kTolO);
  EXPECT_LE(e32.o_rel_fro, 4 * e1.o_rel_fro + 1e-7) << "P=1: " << e1.o_rel_fro;
  EXPECT_LE(e32.lse_max_abs, kTolLse);
}

TEST(Ring, WindowStopsRotationAfterTheNeededSteps) {
  // Contiguous, 8 ranks of 125 tokens, causal window of 200: each rank needs
  // its own block and ceil(199 / 125) = 2 earlier ones: 3 steps, 2 rotations.
  Mask m = Mask::causal(0);
  m.lo = -199;
  RingCase c;
  c.nq = c.nk = 1000, c.hq = 2, c.hkv = 1, c.d = 32, c.mask = &m, c.mask_name = "window 200";
  run_local(8, [&](Communicator& comm) {
    const test::RingCheck chk = test::run_ring_case(comm, c);
    EXPECT_EQ(chk.metrics.steps, 3);
    // Direct transfer: rank r sends only to r + 1 (all 125 rows) and r + 2
    // (the 74 rows from 125 r + 51 that its queries from 125 r + 250 see).
    const int r = comm.rank();
    EXPECT_EQ(chk.metrics.bytes_sent, (125 * (r + 1 < 8) + 74 * (r + 2 < 8)) * 1 * 32 * 2 * 4);
    EXPECT_LE(chk.err.o_rel_fro, kTolO);
  });
}

TEST(Ring, SharedSinksAndGlobalTokensWithBatchesAndGqa) {
  // Sinks and global keys gathered once, global queries merged by LSE on their
  // owner: checked with B = 2 and GQA (the batch and head offsets of the
  // shared rows), on every layout.
  const int64_t n = 600;
  Mask sinks = Mask::causal(0);
  sinks.lo = -40;
  sinks.sinks = 5;
  Mask lf = Mask::band(-16, 16);
  lf.n_global = 2;
  lf.global[0] = {0, 3};
  lf.global[1] = {299, 307};
  for (const Mask* m : {&sinks, &lf})
    for (LayoutKind layout : {LayoutKind::contiguous, LayoutKind::zigzag, LayoutKind::striped})
      for (int p : {2, 3, 4}) {
        RingCase c;
        c.b = 2, c.nq = c.nk = n, c.hq = 4, c.hkv = 2, c.d = 16, c.layout = layout, c.mask = m;
        c.mask_name = m == &sinks ? "causal window 41 + 5 sinks" : "window 16 + global";
        SCOPED_TRACE(c.name() + " P=" + std::to_string(p));
        run_local(p, [&](Communicator& comm) {
          const test::RingCheck chk = test::run_ring_case(comm, c);
          EXPECT_LE(chk.err.o_rel_fro, kTolO);
          EXPECT_LE(chk.err.lse_max_abs, kTolLse);
          // Only the ranks holding shared rows send them.
          EXPECT_GT(comm.allreduce_one(chk.metrics.shared_bytes, ReduceOp::sum), 0);
          if (layout == LayoutKind::contiguous && m == &sinks) {
            EXPECT_EQ(chk.metrics.steps, 2);
          }
        });
      }
}

TEST(Ring, TrafficIsOnlyKvHeadsAndStepsAreSkipped) {
  // Bytes sent per rank: (P - 1) blocks of B * n/P * Hkv * D * 2 (K and V) floats.
  for (int64_t hkv : {8, 1}) {
    RingCase c;
    c.nq = c.nk = 800, c.hq = 8, c.hkv = hkv, c.d = 32;
    run_local(4, [&](Communicator& comm) {
      const test::RingCheck chk = test::run_ring_case(comm, c);
      EXPECT_EQ(chk.metrics.bytes_sent, 3 * 200 * hkv * 32 * 2 * 4);
      EXPECT_EQ(chk.metrics.steps, 4);
      EXPECT_EQ(chk.metrics.computed_steps, 4);
    });
  }
  // Contiguous causal: rank r computes r + 1 of the P steps.
  RingCase c;
  c.nq = c.nk = 400, c.causal = true;
  run_local(4, [&](Communicator& comm) {
    const test::RingCheck chk = test::run_ring_case(comm, c);
    EXPECT_EQ(chk.metrics.computed_steps, comm.rank() + 1);
  });
}

}  // namespace
}  // namespace ringattn
