// KIVI's layout of quantized keys (ringattn/quant.hpp, --kv-kivi): K per channel
// over groups of token positions, checked group by group against the float64
// quantizer (ringattn/quant_reference.hpp).
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <random>
#include <vector>

#include "ringattn/quant.hpp"
#include "ringattn/quant_reference.hpp"

namespace ringattn {
namespace {

// KIVI keys: each channel of each group of tokens (runs cut at arbitrary points,
// and groups that are not runs) quantized as one "row" of the group's values by
// the float64 reference: scales equal exactly, codes equal except within 1e-6 of
// a rounding tie, and the dequantized values are the reference's from the codes.
TEST(Quant, KiviKeysEqualTheReferencePerChannelGroup) {
  const int64_t batch = 2, n = 100, heads = 2, d = 64;
  std::mt19937_64 rng(17);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(static_cast<std::size_t>(batch * n * heads * d));
  for (float& v : x) v = nd(rng);
  for (int64_t c = 0; c < d; ++c) x[static_cast<std::size_t>(c)] = 0.0f;  // some zeros
  for (QuantBits bits : {QuantBits::int8, QuantBits::int4})
    for (bool asym : {false, true})
      for (int grouping = 0; grouping < 2; ++grouping) {
        QuantFormat f;
        f.bits = bits, f.group = 32, f.asymmetric = asym, f.kivi = true;
        int64_t m = 0;
        const std::vector<int32_t> group_of =
            grouping == 0 ? kivi_groups(
                                n, [](int64_t j) { return 10 + j; }, f.group, &m)
                          : [&] {
                              std::vector<int32_t> g(static_cast<std::size_t>(n));
                              for (int64_t j = 0; j < n; ++j)
                                g[static_cast<std::size_t>(j)] = static_cast<int32_t>(j % 3);
                              m = 3;
                              return g;
                            }();
        if (grouping == 0) {
          EXPECT_EQ(m, 4);  // positions 10..109: ranges 0 (22 tokens), 1, 2 (32 each), 3 (14)
          EXPECT_EQ(group_of[21], 0);
          EXPECT_EQ(group_of[22], 1);
        }
        std::vector<uint8_t> buf(static_cast<std::size_t>(f.k_bytes(batch, n, m, heads, d)));
        const QuantRows q =
            QuantRows::keys_in_buffer(f, batch, n, heads, d, group_of.data(), m, buf.data());
        quantize_rows(x.data(), batch * n * heads, q);
        std::vector<float> deq(x.size());
        dequantize_rows(q, 0, batch * n * heads, deq.data());
        // A view from row r0 dequantizes the same rows.
        std::vector<float> tail_rows(static_cast<std::size_t>(5 * d));
        dequantize_rows(q.from(37), 0, 5, tail_rows.data());
        EXPECT_TRUE(std::equal(tail_rows.begin(), tail_rows.end(), deq.begin() + 37 * d));
        int64_t ties = 0;
        for (int64_t b = 0; b < batch; ++b)
          for (int64_t g = 0; g < m; ++g)
            for (int64_t h = 0; h < heads; ++h) {
              std::vector<int64_t> rows;
              for (int64_t j = 0; j < n; ++j)
                if (group_of[static_cast<std::size_t>(j)] == g)
                  rows.push_back((b * n + j) * heads + h);
              const auto len = static_cast<int64_t>(rows.size());
              QuantFormat one = f;
              one.group = static_cast<int>(len), one.kivi = false;
              for (int64_t c = 0; c < d; ++c) {
                std::vector<float> vals;
                for (int64_t r : rows) vals.push_back(x[static_cast<std::size_t>(r * d + c)]);
                const QuantReferenceRow ref = quantize_reference_row(one, vals.data(), len);
                const int64_t s0 = ((b * m + g) * heads + h) * d + c;
                ASSERT_EQ(q.scales[s0], ref.scales[0]) << "group " << g << " channel " << c;
                if (asym) {
                  ASSERT_EQ(q.lo[s0], ref.lo[0]);
                }
                for (int64_t i = 0; i < len; ++i) {
                  const int64_t r = rows[static_cast<std::size_t>(i)];
                  const int got = unpack_codes(q, r)[static_cast<std::size_t>(c)];
                  const int want = ref.codes[static_cast<std::size_t>(i)];
                  if (got != want) {
                    ++ties;
                    EXPECT_LE(ref.tie_distance[static_cast<std::size_t>(i)], 1e-6);
                    EXPECT_EQ(std::abs(got - want), 1);
                    continue;
                  }
                  EXPECT_EQ(deq[static_cast<std::size_t>(r * d + c)],
                            ref.dequant[static_cast<std::size_t>(i)]);
                }
              }
            }
        EXPECT_LE(ties, 2) << f.describe();
      }
}

}  // namespace
}  // namespace ringattn
