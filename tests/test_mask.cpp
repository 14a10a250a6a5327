// Closed-form mask logic checked against brute force over Mask::allows, for
// every part (band, causal bound, dilation, sinks, global ranges, block-sparse,
// skipped ranges)
// alone and combined.
#include <gtest/gtest.h>

#include <random>

#include "ringattn/kernel.hpp"
#include "ringattn/mask.hpp"
#include "util.hpp"

namespace ringattn {
namespace {

// Hand-picked masks plus random combinations of every part.
std::vector<Mask> sample_masks() {
  std::vector<Mask> v = {Mask::none(),
                         Mask::causal(0),
                         Mask::causal(5),
                         Mask::causal(-3),
                         Mask::band(-4, 0),
                         Mask::band(-10, 10),
                         Mask::band(2, 7),
                         Mask::band(-kUnbounded, -20),
                         Mask::band(3, kUnbounded),
                         Mask::band(5, 4) /* empty band */};
  std::mt19937_64 rng(11);
  auto pick = [&](int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  };
  for (int i = 0; i < 60; ++i) {
    Mask m = Mask::none();
    if (pick(0, 2) > 0) m.lo = -pick(0, 12), m.hi = pick(0, 2) ? pick(0, 12) : 0;  // window
    if (pick(0, 1)) m.limit = pick(-2, 3);                                         // causal
    if (pick(0, 3) == 0) m.dilation = pick(2, 4);
    if (pick(0, 2) == 0) m.sinks = pick(1, 6);
    if (pick(0, 3) == 0) {
      m.n_global = static_cast<int>(pick(1, 3));
      for (int g = 0; g < m.n_global; ++g) {
        const int64_t a = pick(-5, 45);
        m.global[g] = {a, a + pick(1, 4)};
      }
    }
    if (pick(0, 3) == 0) {
      if (m.lo <= -kUnbounded) m = Mask::band(1, 0), m.limit = pick(0, 1) ? 0 : kUnbounded;
      m.blocks.size = pick(2, 6);
      m.blocks.window = pick(0, 1);
      m.blocks.global = pick(0, 1);
      m.blocks.random = static_cast<int>(pick(0, 2));
      m.blocks.seed = static_cast<uint64_t>(pick(0, 1000));
      m.blocks.key_blocks = 60 / m.blocks.size + 1;
    }
    if (pick(0, 3) == 0) {  // skipped ranges, as the ring carves out shared parts
      m.n_skip_q = static_cast<int>(pick(0, 2));
      for (int k = 0; k < m.n_skip_q; ++k) {
        const int64_t a = pick(-5, 45);
        m.skip_q[k] = {a, a + pick(1, 8)};
      }
      m.n_skip_k = static_cast<int>(pick(1, 3));
      for (int k = 0; k < m.n_skip_k; ++k) {
        const int64_t a = pick(-5, 45);
        m.skip_k[k] = {a, a + pick(1, 8)};
      }
    }
    v.push_back(m);
  }
  // Aligned bands (hierarchical levels): ends rounded to block boundaries.
  for (int i = 0; i < 30; ++i) {
    Mask m = Mask::none();
    m.lo = -pick(0, 20);
    m.hi = pick(0, 2) ? pick(-4, 12) : kUnbounded;
    if (pick(0, 1)) m.limit = pick(-2, 3);
    m.align_lo = pick(1, 8), m.align_hi = pick(0, 1) ? pick(1, 8) : 1;
    if (pick(0, 2) == 0) m.lo = -kUnbounded;
    if (pick(0, 2) == 0) m.sinks = pick(1, 4);
    if (pick(0, 3) == 0) m.n_global = 1, m.global[0] = {pick(0, 40), 45};
    v.push_back(m);
  }
  return v;
}

TEST(Mask, KeyRangesMatchBruteForce) {
  constexpr int kMax = 4 + 2 * kMaxGlobalRanges + kMaxRandomBlocks;
  int mi = 0;
  for (const Mask& m : sample_masks()) {
    for (int64_t kstride : {1, 2, 3})
      for (int64_t kstart : {-5, 0, 4, 13})
        for (int64_t qp = -6; qp < 50; ++qp) {
          const int64_t nk = 17;
          const Positions kpos{kstart, kstride};
          int64_t b[kMax], e[kMax];
          bool elementwise = false;
          const int n = m.key_ranges(qp, kpos, nk, b, e, kMax, &elementwise);
          for (int64_t j = 0; j < nk; ++j) {
            bool in = false;
            for (int i = 0; i < n; ++i) in = in || (j >= b[i] && j < e[i]);
            const bool want = m.allows(qp, kpos.at(j));
            if (elementwise)
              ASSERT_TRUE(!want || in) << "mask " << mi << ": visible key outside the outer bound";
            else
              ASSERT_EQ(want, in) << "mask " << mi << " qp=" << qp << " kstart=" << kstart
                                  << " kstride=" << kstride << " j=" << j;
          }
        }
    ++mi;
  }
}

TEST(Mask, ClassifyIsExactForBlocks) {
  std::mt19937_64 rng(7);
  std::uniform_int_distribution<int64_t> pos(-10, 50), len(1, 12), stride(1, 4);
  int empties = 0, fulls = 0, partials = 0;
  for (const Mask& m : sample_masks())
    for (int it = 0; it < 300; ++it) {
      const Positions qp{pos(rng), stride(rng)}, kp{pos(rng), stride(rng)};
      const int64_t nq = len(rng), nk = len(rng);
      int64_t allowed = 0;
      for (int64_t i = 0; i < nq; ++i)
        for (int64_t j = 0; j < nk; ++j) allowed += m.allows(qp.at(i), kp.at(j));
      const TileClass c = m.classify(qp.at(0), qp.at(nq - 1), kp.at(0), kp.at(nk - 1));
      // Empty and full are exact; partial may be conservative.
      if (c == TileClass::empty) {
        ++empties;
        ASSERT_EQ(allowed, 0);
      } else if (c == TileClass::full) {
        ++fulls;
        ASSERT_EQ(allowed, nq * nk);
      } else {
        ++partials;
      }
    }
  EXPECT_GT(empties, 0);
  EXPECT_GT(fulls, 0);
  EXPECT_GT(partials, 0);
}

TEST(Mask, KeyAndQueryBoundsHoldEveryVisiblePair) {
  // Brute force over every mask of the set (bands, windows, dilation, causal
  // limits, sinks, global ranges, blocks, skips, aligned bands) and ranges of
  // queries and keys: every visible pair lies within the bounds, and a plain
  // band's bounds are tight enough to skip the tiles outside the window.
  for (const Mask& m : sample_masks()) {
    for (int64_t q0 = -3; q0 < 48; q0 += 5)
      for (int64_t len = 0; len < 12; len += 3) {
        const int64_t q1 = q0 + len;
        int64_t lo = 0, hi = 0;
        m.key_bounds(q0, q1, &lo, &hi);
        for (int64_t i = q0; i <= q1; ++i)
          for (int64_t j = -20; j < 80; ++j)
            if (m.allows(i, j)) {
              ASSERT_TRUE(j >= lo && j <= hi)
                  << "key_bounds(" << q0 << ", " << q1 << ") = [" << lo << ", " << hi
                  << "] misses (" << i << ", " << j << ")";
            }
        const int64_t k0 = q0, k1 = q1;
        m.query_bounds(k0, k1, &lo, &hi);
        for (int64_t j = k0; j <= k1; ++j)
          for (int64_t i = -20; i < 80; ++i)
            if (m.allows(i, j)) {
              ASSERT_TRUE(i >= lo && i <= hi)
                  << "query_bounds(" << k0 << ", " << k1 << ") = [" << lo << ", " << hi
                  << "] misses (" << i << ", " << j << ")";
            }
      }
  }
  Mask w = Mask::causal(0);
  w.lo = -7;
  int64_t lo = 0, hi = 0;
  w.key_bounds(100, 109, &lo, &hi);
  EXPECT_EQ(lo, 93);
  EXPECT_EQ(hi, 109);
  w.query_bounds(100, 109, &lo, &hi);
  EXPECT_EQ(lo, 100);
  EXPECT_EQ(hi, 116);
}

TEST(Mask, ContiguousBandTilesAreNeverConservative) {
  // For bands without dilation on contiguous blocks, partial means truly mixed.
  for (const Mask& m : {Mask::causal(0), Mask::band(-4, 0), Mask::band(-10, 10), Mask::band(2, 7)})
    for (int64_t q0 = -5; q0 < 20; ++q0)
      for (int64_t k0 = -5; k0 < 20; ++k0) {
        const int64_t nq = 6, nk = 5;
        int64_t allowed = 0;
        for (int64_t i = 0; i < nq; ++i)
          for (int64_t j = 0; j < nk; ++j) allowed += m.allows(q0 + i, k0 + j);
        if (m.classify(q0, q0 + nq - 1, k0, k0 + nk - 1) == TileClass::partial) {
          ASSERT_GT(allowed, 0);
          ASSERT_LT(allowed, nq * nk);
        }
      }
}

TEST(Mask, VisiblePairsMatchesBruteForce) {
  for (const Mask& m : sample_masks())
    for (int64_t qs : {1, 3})
      for (int64_t ks : {1, 2}) {
        const Positions qpos{-3, qs}, kpos{1, ks};
        const int64_t nq = 23, nk = 29;
        int64_t want = 0;
        for (int64_t i = 0; i < nq; ++i)
          for (int64_t j = 0; j < nk; ++j) want += m.allows(qpos.at(i), kpos.at(j));
        ASSERT_EQ(visible_pairs(m, qpos, nq, kpos, nk), want);
      }
  // Causal, Nq = Nk = n: n(n+1)/2 pairs; bottom-right alignment when Nq < Nk.
  for (int64_t n : {1, 2, 7, 100})
    EXPECT_EQ(visible_pairs(Mask::causal(0), {}, n, {}, n), n * (n + 1) / 2);
  EXPECT_EQ(visible_pairs(Mask::causal(7), {}, 3, {}, 10), 8 + 9 + 10);
  EXPECT_EQ(visible_pairs(Mask::band(5, 4), {}, 3, {}, 10), 0);
}

TEST(Mask, PartsBehaveAsDocumented) {
  Mask m = Mask::causal(0);
  m.lo = -3;  // Mistral-style: causal + left window of 4 keys (W - 1 = 3)
  m.sinks = 2;
  EXPECT_TRUE(m.allows(10, 10));
  EXPECT_TRUE(m.allows(10, 7));
  EXPECT_FALSE(m.allows(10, 6));
  EXPECT_TRUE(m.allows(10, 1));  // a sink
  EXPECT_FALSE(m.allows(0, 1));  // a sink in the future: the causal bound wins
  Mask g = Mask::band(0, 0);
  g.n_global = 1;
  g.global[0] = {5, 7};
  EXPECT_TRUE(g.allows(5, 100));  // a global query sees everything
  EXPECT_TRUE(g.allows(100, 6));  // a global key is seen by everyone
  EXPECT_FALSE(g.allows(100, 7));
  Mask d = Mask::band(-8, 8);
  d.dilation = 4;
  EXPECT_TRUE(d.allows(10, 14));
  EXPECT_FALSE(d.allows(10, 13));
  Mask b = Mask::band(1, 0);  // no band: only the block pattern
  b.blocks.size = 4, b.blocks.window = 0, b.blocks.global = 1, b.blocks.key_blocks = 10;
  EXPECT_TRUE(b.allows(9, 8));    // same block
  EXPECT_FALSE(b.allows(9, 12));  // next block
  EXPECT_TRUE(b.allows(30, 2));   // global block 0
  EXPECT_TRUE(b.allows(1, 30));   // global query block
  // Random blocks: every (query block, key block) against the definition written out
  // independently in tests/util.hpp, for several seeds and block counts.
  for (const uint64_t seed : {0ull, 42ull, 0xdeadbeefull})
    for (const int64_t kb : {1, 7, 10, 64}) {
      BlockSparse r;
      r.size = 4, r.window = 1, r.global = 1, r.random = 3, r.seed = seed, r.key_blocks = kb;
      for (int64_t bq = 0; bq < 70; ++bq)
        for (int64_t bk = 0; bk < kb; ++bk)
          ASSERT_EQ(r.allows_blocks(bq, bk), test::bigbird_reference(bq, bk, 1, 1, 3, seed, kb))
              << "seed " << seed << " blocks " << kb << " bq " << bq << " bk " << bk;
    }
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
