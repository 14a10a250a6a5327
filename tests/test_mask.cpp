// Closed-form mask logic checked against brute force over Mask::allows.
#include <gtest/gtest.h>

#include <random>

#include "ringattn/kernel.hpp"
#include "ringattn/mask.hpp"

namespace ringattn {
namespace {

std::vector<Mask> sample_masks() {
  return {Mask::none(),        Mask::causal(0), Mask::causal(5), Mask::causal(-3),
          Mask{-4, 0},         Mask{-10, 10},   Mask{2, 7},      Mask{-kUnbounded, -20},
          Mask{3, kUnbounded}, Mask{5, 4} /* empty band */};
}

TEST(Mask, KeyRangeMatchesBruteForce) {
  for (const Mask& m : sample_masks())
    for (int64_t kstride : {1, 2, 3, 7})
      for (int64_t kstart : {-5, 0, 4, 13})
        for (int64_t qp = -10; qp < 40; ++qp) {
          const int64_t nk = 17;
          const Positions kpos{kstart, kstride};
          int64_t j0, j1;
          m.key_range(qp, kpos, nk, &j0, &j1);
          ASSERT_LE(j0, j1);
          for (int64_t j = 0; j < nk; ++j)
            ASSERT_EQ(m.allows(qp, kpos.at(j)), j >= j0 && j < j1)
                << "lo=" << m.lo << " hi=" << m.hi << " qp=" << qp << " kstart=" << kstart
                << " kstride=" << kstride << " j=" << j;
        }
}

TEST(Mask, ClassifyIsExactForBlocks) {
  std::mt19937_64 rng(7);
  std::uniform_int_distribution<int64_t> pos(-50, 50), len(1, 12), stride(1, 4);
  int empties = 0, fulls = 0, partials = 0;
  for (const Mask& m : sample_masks())
    for (int it = 0; it < 400; ++it) {
      const Positions qp{pos(rng), stride(rng)}, kp{pos(rng), stride(rng)};
      const int64_t nq = len(rng), nk = len(rng);
      int64_t allowed = 0;
      for (int64_t i = 0; i < nq; ++i)
        for (int64_t j = 0; j < nk; ++j) allowed += m.allows(qp.at(i), kp.at(j));
      const TileClass c = m.classify(qp.at(0), qp.at(nq - 1), kp.at(0), kp.at(nk - 1));
      // Empty and full must be exact; partial may be conservative only for
      // strided blocks (gaps between positions), never for contiguous ones.
      if (c == TileClass::empty) {
        ++empties;
        ASSERT_EQ(allowed, 0);
      }
      if (c == TileClass::full) {
        ++fulls;
        ASSERT_EQ(allowed, nq * nk);
      }
      if (c == TileClass::partial) {
        ++partials;
        if (qp.stride == 1 && kp.stride == 1) {
          ASSERT_GT(allowed, 0);
          ASSERT_LT(allowed, nq * nk);
        }
      }
    }
  EXPECT_GT(empties, 0);
  EXPECT_GT(fulls, 0);
  EXPECT_GT(partials, 0);
}

TEST(Mask, VisiblePairsCountsCausalTriangle) {
  // Causal, Nq = Nk = n: n(n+1)/2 pairs; bottom-right alignment when Nq < Nk.
  for (int64_t n : {1, 2, 7, 100}) {
    EXPECT_EQ(visible_pairs(Mask::causal(0), {}, n, {}, n), n * (n + 1) / 2);
  }
  const int64_t nq = 3, nk = 10;  // rows see 8, 9, 10 keys
  EXPECT_EQ(visible_pairs(Mask::causal(nk - nq), {}, nq, {}, nk), 8 + 9 + 10);
  EXPECT_EQ(visible_pairs(Mask::none(), {}, nq, {}, nk), nq * nk);
  EXPECT_EQ(visible_pairs(Mask{5, 4}, {}, nq, {}, nk), 0);
}

TEST(Mask, FloorCeilDiv) {
  for (int64_t a = -20; a <= 20; ++a)
    for (int64_t b = 1; b <= 6; ++b) {
      int64_t f = a / b;
      if (f * b > a) --f;
      EXPECT_EQ(floor_div(a, b), f);
      EXPECT_EQ(ceil_div(a, b), (f * b == a) ? f : f + 1);
    }
}

}  // namespace
}  // namespace ringattn
