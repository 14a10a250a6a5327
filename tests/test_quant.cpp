// The K/V quantizer (quantize_rows, dequantize_rows) against the float64
// reference written from quant.hpp's semantics text (quant_reference.hpp), in
// every format: INT8/INT4 x symmetric/asymmetric x G in {32, 64, 128} x
// D in {64, 128, 256}, on random rows (normal, uniform, outliers, tiny values,
// groups of zeros, constant groups, exact and near rounding ties). Codes equal
// the reference's exactly but where the quotient lies within 1e-6 of a rounding
// tie (the implementation divides in float32: one code off there is allowed and
// counted); scales and lo equal exactly; x' equals the text's float32 product
// (and sum) of the stored values exactly. The stored layout by hand, the buffer
// views and the format errors: test_quant_format.cpp.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "quant_util.hpp"
#include "ringattn/error.hpp"
#include "ringattn/quant.hpp"
#include "ringattn/quant_reference.hpp"
#include "util.hpp"

namespace ringattn {
namespace {

using test::Block;
using test::every_format;
using test::format;

constexpr double kTieTol = 1e-6;  // the text: one code off only within 1e-6 (relative) of a tie

// ---- inputs ---------------------------------------------------------------

enum class Gen {
  normal,
  uniform,
  outliers,
  tiny,
  zero_groups,
  constant_groups,
  exact_ties,
  near_ties
};
constexpr Gen kGens[] = {Gen::normal,      Gen::uniform,         Gen::outliers,   Gen::tiny,
                         Gen::zero_groups, Gen::constant_groups, Gen::exact_ties, Gen::near_ties};
const char* gen_name(Gen g) {
  switch (g) {
    case Gen::normal:
      return "normal";
    case Gen::uniform:
      return "uniform";
    case Gen::outliers:
      return "outliers";
    case Gen::tiny:
      return "tiny";
    case Gen::zero_groups:
      return "zero groups";
    case Gen::constant_groups:
      return "constant groups";
    case Gen::exact_ties:
      return "exact ties";
    case Gen::near_ties:
      return "near ties";
  }
  return "?";
}

// One group of g values at xs whose quotients x / scale (or (x - lo) / scale)
// are exactly k + 0.5, every value and the scale exact in float32: scale
// m * 2^e, the group's max|x| (or max and min) placed in channels 0 (and 1).
void exact_tie_group(const QuantFormat& f, int64_t g, float* xs, std::mt19937_64& rng) {
  std::uniform_int_distribution<int> pick_m(0, 2), pick_e(-8, -2), pick_lo(-16, 16);
  const int ms[] = {1, 3, 5};
  const double s = ms[pick_m(rng)] * std::ldexp(1.0, pick_e(rng));
  if (!f.asymmetric) {
    const int qmax = f.qmax();
    std::uniform_int_distribution<int> pick_k(-qmax, qmax - 1);
    for (int64_t c = 0; c < g; ++c) xs[c] = static_cast<float>(s * (pick_k(rng) + 0.5));
    xs[0] = static_cast<float>((rng() % 2 == 0 ? 1 : -1) * s * qmax);
  } else {
    const int levels = f.levels();
    const double lo = pick_lo(rng) / 8.0;
    std::uniform_int_distribution<int> pick_k(0, levels - 1);
    for (int64_t c = 0; c < g; ++c) xs[c] = static_cast<float>(lo + s * (pick_k(rng) + 0.5));
    xs[0] = static_cast<float>(lo);
    xs[1] = static_cast<float>(lo + s * levels);
  }
}

// One group whose quotients lie within ~6e-8 of k + 0.5: the tie value
// rounded to float32 (the scale as the text computes it).
void near_tie_group(const QuantFormat& f, int64_t g, float* xs, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> ud(0.1f, 4.0f), lod(-3.0f, 1.0f);
  if (!f.asymmetric) {
    const int qmax = f.qmax();
    const float amax = ud(rng);
    const float scale = amax / static_cast<float>(qmax);
    std::uniform_int_distribution<int> pick_k(-qmax, qmax - 1);
    for (int64_t c = 0; c < g; ++c) xs[c] = static_cast<float>(double(scale) * (pick_k(rng) + 0.5));
    xs[0] = amax;
  } else {
    const int levels = f.levels();
    const float lo = lod(rng), mx = lo + ud(rng);
    const float range = mx - lo;
    const float scale = range / static_cast<float>(levels);
    std::uniform_int_distribution<int> pick_k(0, levels - 1);
    for (int64_t c = 0; c < g; ++c) {
      const auto v = static_cast<float>(double(lo) + double(scale) * (pick_k(rng) + 0.5));
      xs[c] = std::min(std::max(v, lo), mx);
    }
    xs[0] = lo, xs[1] = mx;
  }
}

std::vector<float> make_rows(Gen gen, const QuantFormat& f, int64_t rows, int64_t d,
                             uint64_t seed) {
  std::vector<float> x(static_cast<std::size_t>(rows * d));
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_real_distribution<float> ud(-0.3f, 2.7f);
  const int64_t g = f.group, ng = d / g;
  for (int64_t r = 0; r < rows; ++r) {
    float* xr = x.data() + r * d;
    for (int64_t c = 0; c < d; ++c) xr[c] = nd(rng);
    for (int64_t k = 0; k < ng; ++k) {
      float* xs = xr + k * g;
      switch (gen) {
        case Gen::normal:
          break;
        case Gen::uniform:
          for (int64_t c = 0; c < g; ++c) xs[c] = ud(rng);
          break;
        case Gen::outliers:  // ~3% of channels 20-200 times larger
          for (int64_t c = 0; c < g; ++c)
            if (rng() % 32 == 0) xs[c] *= static_cast<float>(20 + rng() % 181);
          break;
        case Gen::tiny:  // scales ~1e-32: still normal float32
          for (int64_t c = 0; c < g; ++c) xs[c] *= 1e-30f;
          break;
        case Gen::zero_groups:  // every other group zeros (a few -0.0)
          if ((k + r) % 2 == 0)
            for (int64_t c = 0; c < g; ++c) xs[c] = (c % 5 == 0) ? -0.0f : 0.0f;
          break;
        case Gen::constant_groups:  // every group one value, some negative
          for (int64_t c = 1; c < g; ++c) xs[c] = xs[0];
          break;
        case Gen::exact_ties:
          exact_tie_group(f, g, xs, rng);
          break;
        case Gen::near_ties:
          near_tie_group(f, g, xs, rng);
          break;
      }
    }
  }
  return x;
}

// ---- the comparison -------------------------------------------------------

struct Counts {
  int64_t values = 0;
  int64_t near_tie = 0;  // values whose reference quotient is within 1e-6 of a tie
  int64_t one_off = 0;   // codes one off the reference's (each near a tie)
  int64_t exact_ties = 0;
  double worst_one_off = 0;  // the largest tie distance of a code one off
};

// Quantizes rows x[rows, d] in format f, whole and through from(r0), and checks
// every stored value and the dequantized rows against the reference.
void check_against_reference(const QuantFormat& f, int64_t rows, int64_t d,
                             const std::vector<float>& x, const std::string& what, Counts* n) {
  const int64_t ng = f.groups(d);
  Block blk(f, rows, d);
  const QuantRows& q = blk.q;
  quantize_rows(x.data(), rows, q);
  ASSERT_TRUE(blk.guard_intact()) << what << ": quantize_rows wrote past the block";

  // The same rows quantized in two calls, the second through from(r0): byte-equal.
  const int64_t r0 = rows / 3;
  Block two(f, rows, d);
  quantize_rows(x.data(), r0, two.q);
  quantize_rows(x.data() + r0 * d, rows - r0, two.q.from(r0));
  ASSERT_EQ(std::memcmp(blk.buf.data(), two.buf.data(), q.bytes()), 0)
      << what << ": quantizing rows [" << r0 << ", " << rows << ") through from(" << r0
      << ") differs from one call";

  std::vector<float> xq(static_cast<std::size_t>(rows * d), std::nanf(""));
  dequantize_rows(q, 0, rows, xq.data());

  int64_t failures = 0;
  for (int64_t r = 0; r < rows && failures < 10; ++r) {
    const float* xr = x.data() + r * d;
    const QuantReferenceRow ref = quantize_reference_row(f, xr, d);
    const std::vector<int> codes = unpack_codes(q, r);
    const std::vector<float> want_xq = dequantize_reference_row(q, r);
    for (int64_t k = 0; k < ng; ++k) {
      const auto ku = static_cast<std::size_t>(k);
      const float scale = q.scales[r * ng + k];
      if (scale != ref.scales[ku]) {
        ADD_FAILURE() << fmt::format("{}: row {} group {}: scale {:a}, the reference {:a}", what, r,
                                     k, scale, ref.scales[ku]);
        ++failures;
      }
      if (f.asymmetric && q.lo[r * ng + k] != ref.lo[ku]) {
        ADD_FAILURE() << fmt::format("{}: row {} group {}: lo {:a}, the reference {:a}", what, r, k,
                                     q.lo[r * ng + k], ref.lo[ku]);
        ++failures;
      }
    }
    for (int64_t c = 0; c < d; ++c) {
      const auto cu = static_cast<std::size_t>(c);
      const float scale = q.scales[r * ng + c / f.group];
      const int got = codes[cu], want = ref.codes[cu];
      const bool near_tie = ref.tie_distance[cu] <= kTieTol;
      ++n->values;
      n->near_tie += near_tie ? 1 : 0;
      n->exact_ties += ref.tie_distance[cu] == 0.0 ? 1 : 0;
      const bool one_off = got != want && std::abs(got - want) == 1 && near_tie;
      n->one_off += one_off ? 1 : 0;
      if (one_off) n->worst_one_off = std::max(n->worst_one_off, ref.tie_distance[cu]);
      if (got != want && !one_off) {
        ADD_FAILURE() << fmt::format(
            "{}: row {} channel {}: x {:a} ({}), scale {:a}{}: code {}, the reference {} "
            "(quotient {:.17g}, {:.3g} from a tie)",
            what, r, c, xr[c], xr[c], scale,
            f.asymmetric ? fmt::format(", lo {:a}", q.lo[r * ng + c / f.group]) : "", got, want,
            ref.ratio[cu], ref.tie_distance[cu]);
        ++failures;
      }
      const float xp = xq[static_cast<std::size_t>(r * d + c)];
      // x': the text's float32 product (and sum) of the stored code, scale and lo.
      if (!(xp == want_xq[cu])) {
        ADD_FAILURE() << fmt::format(
            "{}: row {} channel {}: dequantized {:a}, the text's float32 {:a} (code {}, scale "
            "{:a})",
            what, r, c, xp, want_xq[cu], got, scale);
        ++failures;
      }
      if (got == want && !(want_xq[cu] == ref.dequant[cu])) {
        ADD_FAILURE() << what << ": the reference's x' of equal codes differ";
        ++failures;
      }
      // |x - x'| <= scale / 2, widened by 1e-6 (and by the distance to the tie
      // where the code is one off), plus the float32 rounding of the product
      // and sum, plus what a subnormal scale can lose (none here: "tiny" keeps
      // scales normal).
      const double lo = f.asymmetric ? double(q.lo[r * ng + c / f.group]) : 0.0;
      const double prod = double(scale) * double(got);
      const double slack = one_off ? kTieTol * std::abs(ref.ratio[cu]) : 0.0;
      const double bound = double(scale) * (0.5 * (1 + 1e-6) + slack) +
                           std::ldexp(std::abs(prod) + std::abs(lo + prod), -24) +
                           std::numeric_limits<float>::denorm_min();
      const double err = std::abs(double(xr[c]) - double(xp));
      if (!(err <= bound)) {
        ADD_FAILURE() << fmt::format(
            "{}: row {} channel {}: |x - x'| = {:.6g} > {:.6g} (x {:a}, x' {:a}, scale {:a})", what,
            r, c, err, bound, xr[c], xp, scale);
        ++failures;
      }
    }
  }

  // Rows [r1, r1 + m) alone: the same values as the whole dequantization.
  const int64_t r1 = rows > 3 ? 2 : 0, m = rows - r1 - (rows > 3 ? 1 : 0);
  std::vector<float> part(static_cast<std::size_t>(m * d), std::nanf(""));
  dequantize_rows(q, r1, m, part.data());
  EXPECT_EQ(std::memcmp(part.data(), xq.data() + r1 * d, part.size() * sizeof(float)), 0)
      << what << ": dequantize_rows(q, " << r1 << ", " << m << ") differs from the whole";
}

TEST(Quant, MatchesReferenceInEveryFormat) {
  const int64_t rows = test::kSanitized ? 6 : 48;
  Counts total;
  int64_t formats = 0;
  for (int64_t d : {64, 128, 256}) {
    for (const QuantFormat& f : every_format(d)) {
      ++formats;
      Counts per_gen[std::size(kGens)];
      for (std::size_t gi = 0; gi < std::size(kGens); ++gi) {
        const Gen gen = kGens[gi];
        const uint64_t seed = 1000 * uint64_t(d) + 10 * uint64_t(f.group) + uint64_t(f.bits) * 7 +
                              (f.asymmetric ? 3 : 0) + gi * 100003;
        const std::vector<float> x = make_rows(gen, f, rows, d, seed);
        const std::string what = fmt::format("{} d {} {}", f.describe(), d, gen_name(gen));
        Counts& n = per_gen[gi];
        check_against_reference(f, rows, d, x, what, &n);
        if (HasFatalFailure()) return;
        // Constructed ties are exact: both sides round the same k + 0.5.
        if (gen == Gen::exact_ties) {
          EXPECT_GT(n.exact_ties, n.values / 2) << what;
          EXPECT_EQ(n.one_off, 0) << what << ": codes of exact ties differ";
        }
        // Random values near a tie are rare; the constructed near ties are not.
        if (gen != Gen::near_ties) {
          EXPECT_LE(n.one_off * 1000, n.values) << what;
        }
        total.values += n.values, total.near_tie += n.near_tie, total.one_off += n.one_off;
        total.exact_ties += n.exact_ties;
        total.worst_one_off = std::max(total.worst_one_off, n.worst_one_off);
      }
      std::string line;
      for (std::size_t gi = 0; gi < std::size(kGens); ++gi)
        line += fmt::format("{}{} {}/{}", gi ? ", " : "", gen_name(kGens[gi]), per_gen[gi].one_off,
                            per_gen[gi].near_tie);
      fmt::print("{:<16} d {:>3}: codes one off / values near a tie: {}\n", f.describe(), d, line);
    }
  }
  EXPECT_EQ(formats, 32);
  fmt::print(
      "{} formats, {} values: {} exact ties, {} within 1e-6 of a tie, {} codes one off (the "
      "farthest {:.3g} from its tie)\n",
      formats, total.values, total.exact_ties, total.near_tie, total.one_off, total.worst_one_off);
  RecordProperty("one_off", std::to_string(total.one_off));
  RecordProperty("near_tie", std::to_string(total.near_tie));
}

// The reference itself on rows worked out by hand: round half to even (not
// away from zero), the clamp, x' and the tie distance.
TEST(QuantReference, HandWorkedRows) {
  // INT8 symmetric, G 32: max|x| 12.7 -> scale float(12.7f / 127).
  const QuantFormat f8 = format(QuantBits::int8, 32, false);
  std::vector<float> x(32, 0.0f);
  x[0] = 12.7f;
  const QuantReferenceRow r = quantize_reference_row(f8, x.data(), 32);
  EXPECT_EQ(r.scales[0], 12.7f / 127.0f);
  EXPECT_EQ(r.codes[0], 127);
  // Scale 1 (max 127): 2.5 -> 2, 3.5 -> 4, -2.5 -> -2, -0.5 -> 0, 0.5 -> 0, 1.5 -> 2.
  const float xs[] = {127, 2.5f, 3.5f, -2.5f, -0.5f, 0.5f, 1.5f, -126.5f, 2.25f};
  const int want[] = {127, 2, 4, -2, 0, 0, 2, -126, 2};
  std::vector<float> y(32, 0.0f);
  std::copy(std::begin(xs), std::end(xs), y.begin());
  const QuantReferenceRow ry = quantize_reference_row(f8, y.data(), 32);
  EXPECT_EQ(ry.scales[0], 1.0f);
  for (std::size_t c = 0; c < std::size(want); ++c) {
    EXPECT_EQ(ry.codes[c], want[c]) << "x " << xs[c];
    EXPECT_EQ(ry.dequant[c], float(want[c])) << "x " << xs[c];
  }
  EXPECT_EQ(ry.tie_distance[1], 0.0);                 // 2.5: on a tie
  EXPECT_DOUBLE_EQ(ry.tie_distance[8], 0.25 / 2.25);  // 2.25: 0.25 from 2.5, relative
  EXPECT_DOUBLE_EQ(ry.tie_distance[0], 0.5 / 127);    // 127: 0.5 from 127.5
  // INT4 asymmetric, lo -1, max 14 -> scale 1: (x - lo) 0.5 -> 0, 1.5 -> 2, 15 -> 15.
  const QuantFormat f4 = format(QuantBits::int4, 32, true);
  std::vector<float> z(32, 3.0f);
  z[0] = -1, z[1] = 14, z[2] = -0.5f, z[3] = 0.5f, z[4] = 4.5f;
  const QuantReferenceRow rz = quantize_reference_row(f4, z.data(), 32);
  EXPECT_EQ(rz.lo[0], -1.0f);
  EXPECT_EQ(rz.scales[0], 1.0f);
  const int want4[] = {0, 15, 0, 2, 6, 4};
  for (std::size_t c = 0; c < std::size(want4); ++c) EXPECT_EQ(rz.codes[c], want4[c]) << c;
  EXPECT_EQ(rz.dequant[2], -1.0f);  // lo + 0
  EXPECT_EQ(rz.dequant[4], 5.0f);   // -1 + 6
}

// A group of zeros: scale 0, codes 0, x' = 0 (and lo 0); a constant group:
// asymmetric scale 0, codes 0, x' == lo exactly; symmetric codes +-qmax.
TEST(Quant, ZeroAndConstantGroups) {
  const int64_t d = 128;
  for (const QuantFormat& f : every_format(d)) {
    if (f.group == 128) continue;  // two groups at least: one zero, one constant
    const int64_t ng = f.groups(d), rows = 3;
    std::vector<float> x(static_cast<std::size_t>(rows * d));
    const float consts[] = {0.3f, -7.25f, 1e-20f};
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < d; ++c) {
        const int64_t k = c / f.group;
        float& v = x[static_cast<std::size_t>(r * d + c)];
        // group 0: zeros (and -0.0), group 1: a constant, the rest a ramp
        v = k == 0   ? (c % 3 == 0 ? -0.0f : 0.0f)
            : k == 1 ? consts[r]
                     : static_cast<float>(c - d / 2) * 0.01f;
      }
    Block blk(f, rows, d);
    quantize_rows(x.data(), rows, blk.q);
    std::vector<float> xq(x.size(), std::nanf(""));
    dequantize_rows(blk.q, 0, rows, xq.data());
    const std::string what = f.describe();
    for (int64_t r = 0; r < rows; ++r) {
      const std::vector<int> codes = unpack_codes(blk.q, r);
      EXPECT_EQ(blk.q.scales[r * ng], 0.0f) << what;
      if (f.asymmetric) {
        EXPECT_EQ(blk.q.lo[r * ng], 0.0f) << what;
      }
      for (int64_t c = 0; c < f.group; ++c) {
        EXPECT_EQ(codes[static_cast<std::size_t>(c)], 0) << what << " zero group";
        EXPECT_EQ(xq[static_cast<std::size_t>(r * d + c)], 0.0f) << what << " zero group";
      }
      const float cst = consts[r];
      for (int64_t c = f.group; c < 2 * f.group; ++c) {
        const int code = codes[static_cast<std::size_t>(c)];
        const float xp = xq[static_cast<std::size_t>(r * d + c)];
        if (f.asymmetric) {
          EXPECT_EQ(blk.q.scales[r * ng + 1], 0.0f) << what;
          EXPECT_EQ(blk.q.lo[r * ng + 1], cst) << what;
          EXPECT_EQ(code, 0) << what << " constant group";
          EXPECT_EQ(xp, cst) << what << " constant group: x' == lo exactly";
        } else {
          EXPECT_EQ(blk.q.scales[r * ng + 1], std::abs(cst) / float(f.qmax())) << what;
          EXPECT_EQ(code, cst > 0 ? f.qmax() : -f.qmax()) << what << " constant group";
          EXPECT_LE(std::abs(double(xp) - double(cst)), std::ldexp(std::abs(double(cst)), -22))
              << what << " constant group";
        }
      }
    }
  }
}

// Subnormal scales follow the text (and the reference) too: a symmetric group
// whose max|x| / qmax underflows to 0 gets scale 0 and codes 0 (the reference's
// reading of the text, quant_reference.hpp); a subnormal scale is coarse, so
// the |x - x'| <= scale / 2 bound does not hold there, but the codes, scales
// and x' still equal the reference's.
TEST(Quant, SubnormalScales) {
  const float tiny = std::numeric_limits<float>::denorm_min();  // 2^-149
  for (const QuantFormat& f : every_format(64)) {
    if (f.group != 32) continue;
    const int64_t d = 64;
    std::vector<float> x(static_cast<std::size_t>(d));
    for (int64_t c = 0; c < 32; ++c)  // group 0: max|x| = 3 * 2^-149 (scale 0 in every format)
      x[static_cast<std::size_t>(c)] = float(int(c % 7) - 3) * tiny;
    for (int64_t c = 32; c < 64; ++c)  // group 1: max|x| ~ 1050 * 2^-149, a subnormal scale
      x[static_cast<std::size_t>(c)] = float(int(c * 37 % 2101) - 1050) * tiny;
    const std::string what = f.describe() + " subnormal";
    const QuantReferenceRow ref = quantize_reference_row(f, x.data(), d);
    EXPECT_EQ(ref.scales[0], 0.0f) << what;
    EXPECT_GT(ref.scales[1], 0.0f) << what;
    EXPECT_LT(ref.scales[1], std::numeric_limits<float>::min()) << what;
    Block blk(f, 1, d);
    quantize_rows(x.data(), 1, blk.q);
    std::vector<float> xq(static_cast<std::size_t>(d));
    dequantize_rows(blk.q, 0, 1, xq.data());
    const std::vector<int> codes = unpack_codes(blk.q, 0);
    EXPECT_EQ(blk.q.scales[0], ref.scales[0]) << what;
    EXPECT_EQ(blk.q.scales[1], ref.scales[1]) << what;
    for (std::size_t c = 0; c < std::size_t(d); ++c) {
      EXPECT_EQ(codes[c], ref.codes[c]) << what << " channel " << c;
      EXPECT_EQ(xq[c], ref.dequant[c]) << what << " channel " << c;
    }
  }
}

}  // namespace
}  // namespace ringattn
