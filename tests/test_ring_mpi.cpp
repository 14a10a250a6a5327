// Ring attention on the MPI backend against the float64 reference. Launched
// by ctest as `mpiexec -n P test_ring_mpi`; every rank runs every case and
// checks its own query rows; the exit code is the worst over ranks.
#include <gtest/gtest.h>

#include "ring_cases.hpp"
#include "ringattn/comm_mpi.hpp"

namespace ringattn {
namespace {

using test::RingCase;

void expect_ok(const RingCase& c) {
  Communicator& comm = mpi_world();
  const test::RingCheck chk = test::run_ring_case(comm, c);
  const std::string what = "rank " + std::to_string(comm.rank()) + " of " +
                           std::to_string(comm.size()) + ": " + c.name();
  EXPECT_LE(chk.err.o_rel_fro, 1e-5) << what;
  EXPECT_LE(chk.err.lse_max_abs, 1e-4) << what;
  EXPECT_EQ(chk.err.lse_mismatch, 0) << what;
}

TEST(RingMpi, EveryLayoutMaskAndHeadLayout) {
  const int p = mpi_world().size();
  const int64_t heads[][2] = {{8, 8}, {8, 2}, {8, 1}};
  int i = 0;
  for (LayoutKind layout : {LayoutKind::contiguous, LayoutKind::zigzag, LayoutKind::striped})
    for (bool causal : {false, true})
      for (int64_t n : {int64_t{1}, int64_t{p - 1 > 0 ? p - 1 : 1}, int64_t{1000},
                        int64_t{test::kSanitized ? 1499 : 4099}}) {
        RingCase c;
        c.nq = c.nk = n, c.causal = causal, c.layout = layout, c.seed = 50 + i;
        c.hq = heads[i % 3][0], c.hkv = heads[i % 3][1];
        c.d = n > 1000 ? 64 : 32;
        expect_ok(c);
        ++i;
      }
}

TEST(RingMpi, SparsePatterns) {
  const int64_t n = 777;
  const std::vector<test::NamedMask> patterns = test::sparse_patterns(n);
  for (const RingCase& c : test::sparse_ring_cases(patterns, n, 90)) expect_ok(c);
}

TEST(RingMpi, CrossAttention) {
  for (LayoutKind layout : {LayoutKind::contiguous, LayoutKind::zigzag, LayoutKind::striped}) {
    RingCase c;
    c.nq = 333, c.nk = 1000, c.hq = 8, c.hkv = 2, c.layout = layout, c.b = 2;
    expect_ok(c);
    c.nq = 1000, c.nk = 333, c.causal = true;
    expect_ok(c);
  }
}

TEST(RingMpi, TrafficShrinksWithKvHeads) {
  Communicator& comm = mpi_world();
  const int p = comm.size();
  int64_t sent[2];
  int idx = 0;
  for (int64_t hkv : {8, 1}) {
    RingCase c;
    c.nq = c.nk = 100 * p, c.hq = 8, c.hkv = hkv, c.d = 32;
    sent[idx++] = test::run_ring_case(comm, c).metrics.bytes_sent;
    EXPECT_EQ(sent[idx - 1], int64_t{p - 1} * 100 * hkv * 32 * 2 * 4);
  }
  if (p > 1) {
    EXPECT_EQ(sent[0], 8 * sent[1]);
  }
}

}  // namespace
}  // namespace ringattn

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  ringattn::Communicator& comm = ringattn::mpi_world();
  const int rc = RUN_ALL_TESTS();
  const int64_t worst = comm.allreduce_one(int64_t{rc}, ringattn::ReduceOp::max);
  return worst != 0 ? 1 : 0;
}
