// The in-process communicator: point-to-point, collectives, and failure.
#include <gtest/gtest.h>

#include <chrono>
#include <numeric>

#include "ringattn/comm.hpp"
#include "ringattn/error.hpp"

namespace ringattn {
namespace {

TEST(LocalComm, RingExchangeAnyP) {
  for (int p : {1, 2, 3, 5, 8}) {
    run_local(p, [p](Communicator& c) {
      ASSERT_EQ(c.size(), p);
      const int next = (c.rank() + 1) % p, prev = (c.rank() + p - 1) % p;
      std::vector<int> out(100, c.rank()), in(100, -1);
      Request r = c.irecv(in.data(), in.size() * sizeof(int), prev, 7);
      Request s = c.isend(out.data(), out.size() * sizeof(int), next, 7);
      r.wait();
      s.wait();
      for (int x : in) ASSERT_EQ(x, prev);
    });
  }
}

TEST(LocalComm, MessagesKeepOrderPerTagAndZeroBytesWork) {
  run_local(2, [](Communicator& c) {
    if (c.rank() == 0) {
      for (int i = 0; i < 5; ++i) c.isend(&i, sizeof(i), 1, 3);
      c.isend(nullptr, 0, 1, 4);
    } else {
      Request z = c.irecv(nullptr, 0, 0, 4);  // posted first, matched by tag
      for (int i = 0; i < 5; ++i) {
        int x = -1;
        c.irecv(&x, sizeof(x), 0, 3).wait();
        ASSERT_EQ(x, i);
      }
      z.wait();
    }
  });
}

TEST(LocalComm, Collectives) {
  run_local(4, [](Communicator& c) {
    const int r = c.rank();
    double d[2] = {double(r), -double(r)};
    c.allreduce(d, 2, ReduceOp::sum);
    EXPECT_EQ(d[0], 6.0);
    EXPECT_EQ(d[1], -6.0);
    EXPECT_EQ(c.allreduce_one(int64_t{r}, ReduceOp::max), 3);
    EXPECT_EQ(c.allreduce_one(int64_t{r}, ReduceOp::min), 0);
    int all[4];
    c.allgather(&r, sizeof(int), all);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(all[i], i);
    // allgatherv: rank i contributes i+1 bytes of value i.
    std::vector<char> mine(static_cast<std::size_t>(r + 1), static_cast<char>(r));
    std::vector<std::size_t> counts = {1, 2, 3, 4};
    std::vector<char> got(10);
    c.allgatherv(mine.data(), counts, got.data());
    EXPECT_EQ(got, (std::vector<char>{0, 1, 1, 2, 2, 2, 3, 3, 3, 3}));
    // alltoallv: rank r sends value 10*r + k to rank k (one int each).
    std::vector<int> send(4), recv(4);
    for (int k = 0; k < 4; ++k) send[static_cast<std::size_t>(k)] = 10 * r + k;
    std::vector<std::size_t> bytes(4, sizeof(int));
    c.alltoallv(send.data(), bytes, recv.data(), bytes);
    for (int k = 0; k < 4; ++k) EXPECT_EQ(recv[static_cast<std::size_t>(k)], 10 * k + r);
    c.barrier();
  });
}

TEST(LocalComm, FailingRankEndsEveryRankQuickly) {
  const auto t0 = std::chrono::steady_clock::now();
  try {
    run_local(4, [](Communicator& c) {
      if (c.rank() == 2) throw Error("cannot open 'missing.npy'");
      int x = 0;
      c.irecv(&x, sizeof(x), (c.rank() + 3) % 4, 1).wait();  // would wait forever
      c.barrier();
    });
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rank 2"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("missing.npy"), std::string::npos) << e.what();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(60));  // hang guard
}

TEST(LocalComm, AbortStopsBarrierAndMismatchedSizesAreErrors) {
  EXPECT_THROW(run_local(3,
                         [](Communicator& c) {
                           if (c.rank() == 0) c.abort("bad config", 2);
                           c.barrier();
                         }),
               Error);
  EXPECT_THROW(run_local(2,
                         [](Communicator& c) {
                           int x = 1;
                           if (c.rank() == 0)
                             c.isend(&x, sizeof(x), 1, 0);
                           else
                             c.irecv(&x, 2 * sizeof(x), 0, 0).wait();
                         }),
               Error);
  EXPECT_THROW(run_local(0, [](Communicator&) {}), Error);
}

}  // namespace
}  // namespace ringattn
