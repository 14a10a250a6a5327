// dtype names, the f16/bf16 <-> f32 conversions (against independent double-based references),
// and Tensor basics.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "ringattn/dtype.hpp"
#include "ringattn/error.hpp"
#include "ringattn/tensor.hpp"

namespace ringattn {
namespace {

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// binary16 value of bit pattern h by the textbook formula, in double.
double f16_value(uint16_t h) {
  const int sign = (h & 0x8000) ? -1 : 1;
  const int exp = (h >> 10) & 0x1f;
  const int man = h & 0x3ff;
  if (exp == 0x1f)
    return man ? std::numeric_limits<double>::quiet_NaN()
               : sign * std::numeric_limits<double>::infinity();
  if (exp == 0) return sign * std::ldexp(man, -24);
  return sign * std::ldexp(1024 + man, exp - 25);
}

// Round-to-nearest-even of finite x to binary16 by searching the table of all non-negative
// binary16 magnitudes. 0x7c00 stands for 2^16 there: the "next" value after 65504, whose even
// pattern wins the tie at 65520, and which is infinity.
uint16_t f16_reference(float x) {
  static const std::vector<double> table = [] {
    std::vector<double> t;
    for (uint32_t h = 0; h < 0x7c00; ++h) t.push_back(f16_value(static_cast<uint16_t>(h)));
    t.push_back(65536.0);
    return t;
  }();
  const uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  const double a = std::fabs(static_cast<double>(x));
  if (a >= 65536.0) return sign | 0x7c00;
  const auto hi =
      static_cast<std::size_t>(std::lower_bound(table.begin(), table.end(), a) - table.begin());
  std::size_t r = hi;
  if (table[hi] != a) {
    const std::size_t lo = hi - 1;
    const double dlo = a - table[lo], dhi = table[hi] - a;
    r = dlo < dhi ? lo : dhi < dlo ? hi : (lo % 2 == 0 ? lo : hi);
  }
  return static_cast<uint16_t>(sign | r);
}

// Round-to-nearest-even of finite x to bfloat16: the two neighbours are the float32 patterns
// with the low 16 bits cleared, one bfloat16 ulp apart.
uint16_t bf16_reference(float x) {
  const uint32_t u = bits(x);
  const uint32_t sign = u & 0x80000000u, a = u & 0x7fffffffu;
  const uint32_t lo = a & 0xffff0000u, hi = lo + 0x10000u;
  const double v = std::fabs(static_cast<double>(x));
  const double vlo = std::fabs(static_cast<double>(from_bits(lo)));
  const double vhi = hi == 0x7f800000u ? std::ldexp(1.0, 128) : static_cast<double>(from_bits(hi));
  const double dlo = v - vlo, dhi = vhi - v;
  const uint32_t r = dlo < dhi ? lo : dhi < dlo ? hi : (((lo >> 16) & 1u) == 0 ? lo : hi);
  return static_cast<uint16_t>((sign | r) >> 16);
}

bool f16_is_nan(uint16_t h) {
  return (h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0;
}
bool bf16_is_nan(uint16_t h) {
  return (h & 0x7f80) == 0x7f80 && (h & 0x7f) != 0;
}

TEST(DType, NamesAndSizes) {
  EXPECT_EQ(dtype_name(DType::f32), "float32");
  EXPECT_EQ(dtype_name(DType::f16), "float16");
  EXPECT_EQ(dtype_name(DType::bf16), "bfloat16");
  EXPECT_EQ(dtype_size(DType::f32), 4u);
  EXPECT_EQ(dtype_size(DType::f16), 2u);
  EXPECT_EQ(dtype_size(DType::bf16), 2u);
}

TEST(DType, ParseAcceptsEverySpelling) {
  for (const char* s : {"f32", "float32", "fp32", "FP32"})
    EXPECT_EQ(parse_dtype(s, "--dtype"), DType::f32) << s;
  for (const char* s : {"f16", "float16", "fp16", "half"})
    EXPECT_EQ(parse_dtype(s, "--dtype"), DType::f16) << s;
  for (const char* s : {"bf16", "bfloat16", "BF16"})
    EXPECT_EQ(parse_dtype(s, "--dtype"), DType::bf16) << s;
  // Round trip through the canonical name.
  for (const DType t : {DType::f32, DType::f16, DType::bf16})
    EXPECT_EQ(parse_dtype(dtype_name(t), "x"), t);
}

TEST(DType, ParseRejectsWithOptionAndSpellings) {
  for (const char* bad : {"f64", "", "float", "bf32", "f16 "}) {
    try {
      parse_dtype(bad, "--dtype");
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const Error& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find("--dtype"), std::string::npos) << m;
      EXPECT_NE(m.find(std::string("'") + bad + "'"), std::string::npos) << m;
      for (const char* s :
           {"f32", "float32", "fp32", "f16", "float16", "fp16", "half", "bf16", "bfloat16"})
        EXPECT_NE(m.find(s), std::string::npos) << m << " lacks " << s;
      EXPECT_EQ(m.find('\n'), std::string::npos) << m;
    }
  }
}

// Every binary16 pattern decodes to its textbook value and encodes back to itself.
TEST(F16, ExhaustiveRoundTrip) {
  for (uint32_t i = 0; i < 0x10000; ++i) {
    const auto h = static_cast<uint16_t>(i);
    const float f = f16_to_f32(h);
    const double want = f16_value(h);
    if (f16_is_nan(h)) {
      ASSERT_TRUE(std::isnan(f)) << std::hex << i;
      const uint16_t back = f32_to_f16(f);
      ASSERT_TRUE(f16_is_nan(back)) << std::hex << i;
      ASSERT_EQ(back & 0x8000, h & 0x8000) << std::hex << i;
      continue;
    }
    ASSERT_EQ(static_cast<double>(f), want) << std::hex << i;
    ASSERT_EQ(std::signbit(f), (h & 0x8000) != 0) << std::hex << i;
    ASSERT_EQ(f32_to_f16(f), h) << std::hex << i;
  }
}

// The exact midpoint between each pair of adjacent binary16 values (exactly representable in
// float32) rounds to the even one; a float32 ulp either side rounds to the nearer one.
TEST(F16, TiesToEvenAtEveryMidpoint) {
  for (uint32_t h = 0; h < 0x7c00; ++h) {
    const double lo = f16_value(static_cast<uint16_t>(h));
    const double hi = h + 1 == 0x7c00 ? 65536.0 : f16_value(static_cast<uint16_t>(h + 1));
    const auto mid = static_cast<float>((lo + hi) / 2);
    ASSERT_EQ(static_cast<double>(mid), (lo + hi) / 2) << h;
    const auto even = static_cast<uint16_t>(h % 2 == 0 ? h : h + 1);
    ASSERT_EQ(f32_to_f16(mid), even) << std::hex << h;
    ASSERT_EQ(f32_to_f16(-mid), even | 0x8000) << std::hex << h;
    ASSERT_EQ(f32_to_f16(std::nextafter(mid, 0.0f)), h) << std::hex << h;
    ASSERT_EQ(f32_to_f16(std::nextafter(mid, 1e9f)), h + 1) << std::hex << h;
  }
}

TEST(F16, MatchesReferenceOnRandomFloats) {
  std::mt19937 rng(12345);
  std::uniform_int_distribution<uint32_t> any_bits;
  std::uniform_int_distribution<int> exp_in_range(-27, 16);
  std::uniform_real_distribution<float> mant(1.0f, 2.0f);
  for (int i = 0; i < 1000000; ++i) {
    float x;
    if (i % 2 == 0) {
      x = from_bits(any_bits(rng));
      if (!std::isfinite(x)) continue;
    } else {  // concentrate on magnitudes binary16 can represent, subnormals included
      x = std::ldexp(mant(rng), exp_in_range(rng)) * (i % 4 == 1 ? 1.0f : -1.0f);
    }
    ASSERT_EQ(f32_to_f16(x), f16_reference(x)) << std::hexfloat << x;
  }
}

TEST(F16, SpecialValues) {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(f32_to_f16(0.0f), 0x0000);
  EXPECT_EQ(f32_to_f16(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(f32_to_f16(-2.0f), 0xc000);
  EXPECT_EQ(f32_to_f16(inf), 0x7c00);
  EXPECT_EQ(f32_to_f16(-inf), 0xfc00);
  EXPECT_TRUE(f16_is_nan(f32_to_f16(nan)));
  EXPECT_TRUE(f16_is_nan(f32_to_f16(-nan)));
  EXPECT_TRUE(f16_is_nan(f32_to_f16(from_bits(0x7f800001u))));  // signalling NaN stays NaN
  EXPECT_TRUE(std::isinf(f16_to_f32(0x7c00)) && f16_to_f32(0x7c00) > 0);
  EXPECT_TRUE(std::isinf(f16_to_f32(0xfc00)) && f16_to_f32(0xfc00) < 0);
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7e00)));
  // Overflow: 65504 is the largest finite value; 65520 is the tie with 2^16 and goes to inf.
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16(65519.996f), 0x7bff);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);
  EXPECT_EQ(f32_to_f16(1e10f), 0x7c00);
  EXPECT_EQ(f32_to_f16(-1e10f), 0xfc00);
  EXPECT_EQ(f32_to_f16(std::numeric_limits<float>::max()), 0x7c00);
  // Subnormals: 2^-24 is the smallest; 2^-25 ties with zero and goes to zero (even).
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(f16_to_f32(0x03ff), std::ldexp(1023.0f, -24));
  EXPECT_EQ(f16_to_f32(0x0400), std::ldexp(1.0f, -14));
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);
  EXPECT_EQ(f32_to_f16(-std::ldexp(1.0f, -25)), 0x8000);
  EXPECT_EQ(f32_to_f16(std::nextafter(std::ldexp(1.0f, -25), 1.0f)), 0x0001);
  EXPECT_EQ(f32_to_f16(std::ldexp(3.0f, -25)), 0x0002);     // 1.5 ulp: tie to even 2
  EXPECT_EQ(f32_to_f16(std::ldexp(5.0f, -25)), 0x0002);     // 2.5 ulp: tie to even 2
  EXPECT_EQ(f32_to_f16(std::ldexp(1023.5f, -24)), 0x0400);  // rounds up into the normals
  EXPECT_EQ(f32_to_f16(std::numeric_limits<float>::denorm_min()), 0x0000);
  EXPECT_EQ(f32_to_f16(-std::numeric_limits<float>::denorm_min()), 0x8000);
  EXPECT_EQ(f32_to_f16(std::numeric_limits<float>::min()), 0x0000);
}

TEST(BF16, ExhaustiveRoundTrip) {
  for (uint32_t i = 0; i < 0x10000; ++i) {
    const auto h = static_cast<uint16_t>(i);
    const float f = bf16_to_f32(h);
    ASSERT_EQ(bits(f), i << 16);
    const uint16_t back = f32_to_bf16(f);
    if (bf16_is_nan(h)) {
      ASSERT_TRUE(bf16_is_nan(back)) << std::hex << i;
      ASSERT_EQ(back & 0x8000, h & 0x8000) << std::hex << i;
    } else {
      ASSERT_EQ(back, h) << std::hex << i;
    }
  }
}

TEST(BF16, MatchesReferenceOnRandomFloats) {
  std::mt19937 rng(777);
  std::uniform_int_distribution<uint32_t> any_bits;
  for (int i = 0; i < 1000000; ++i) {
    uint32_t u = any_bits(rng);
    if (i % 4 == 0) u = (u & 0xffff0000u) | 0x8000u;  // exact ties
    const float x = from_bits(u);
    if (!std::isfinite(x)) continue;
    ASSERT_EQ(f32_to_bf16(x), bf16_reference(x)) << std::hex << u;
  }
}

TEST(BF16, SpecialValues) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(f32_to_bf16(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_bf16(inf), 0x7f80);
  EXPECT_EQ(f32_to_bf16(-inf), 0xff80);
  EXPECT_TRUE(bf16_is_nan(f32_to_bf16(std::numeric_limits<float>::quiet_NaN())));
  // A NaN whose payload lies only in the low 16 bits must not become infinity.
  EXPECT_TRUE(bf16_is_nan(f32_to_bf16(from_bits(0x7f800001u))));
  EXPECT_TRUE(bf16_is_nan(f32_to_bf16(from_bits(0xff800001u))));
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::max()), 0x7f80);  // rounds past the max
  EXPECT_EQ(f32_to_bf16(from_bits(0x3f808000u)), 0x3f80);             // tie, even stays
  EXPECT_EQ(f32_to_bf16(from_bits(0x3f818000u)), 0x3f82);             // tie, odd rounds up
  EXPECT_EQ(f32_to_bf16(from_bits(0x3f808001u)), 0x3f81);
}

TEST(DType, LoadStoreAndRoundTo) {
  float f32[3];
  uint16_t h16[3];
  for (std::size_t i = 0; i < 3; ++i) {
    const float v = 1.0f + static_cast<float>(i) / 3.0f;
    store_from_f32(f32, DType::f32, i, v);
    EXPECT_EQ(load_as_f32(f32, DType::f32, i), v);
    store_from_f32(h16, DType::f16, i, v);
    EXPECT_EQ(h16[i], f32_to_f16(v));
    EXPECT_EQ(load_as_f32(h16, DType::f16, i), round_to(DType::f16, v));
    store_from_f32(h16, DType::bf16, i, v);
    EXPECT_EQ(h16[i], f32_to_bf16(v));
    EXPECT_EQ(load_as_f32(h16, DType::bf16, i), round_to(DType::bf16, v));
    EXPECT_EQ(round_to(DType::f32, v), v);
  }
  EXPECT_EQ(round_to(DType::f16, 1.0f + 1.0f / 4096), 1.0f);
  EXPECT_EQ(round_to(DType::bf16, 1.0f + 1.0f / 512), 1.0f);
}

TEST(Tensor, ZeroFilledWithShape) {
  for (const DType t : {DType::f32, DType::f16, DType::bf16}) {
    Tensor x(t, {2, 3, 4});
    EXPECT_EQ(x.numel(), 24);
    EXPECT_EQ(x.bytes(), 24 * dtype_size(t));
    ASSERT_NE(x.data.data(), nullptr);
    for (int64_t i = 0; i < x.numel(); ++i) EXPECT_EQ(bits(x.get(i)), 0u);
    x.set(5, 1.5f);
    EXPECT_EQ(x.get(5), 1.5f);
  }
}

TEST(Tensor, ScalarAndEmptyShapes) {
  Tensor s(DType::f32, {});
  EXPECT_EQ(s.numel(), 1);
  EXPECT_EQ(s.bytes(), 4u);
  EXPECT_EQ(s.get(0), 0.0f);
  Tensor e(DType::f16, {3, 0, 5});
  EXPECT_EQ(e.numel(), 0);
  EXPECT_EQ(e.bytes(), 0u);
  // A zero dim makes the array empty even when the other dims' product would overflow.
  Tensor z(DType::f32, {int64_t{1} << 40, int64_t{1} << 40, 0});
  EXPECT_EQ(z.numel(), 0);
}

TEST(Tensor, RejectsNegativeAndOverflowingShapes) {
  try {
    Tensor x(DType::f32, {2, -1}, "q");
    ADD_FAILURE() << "accepted a negative dim";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("q: negative dimension"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[2, -1]"), std::string::npos) << e.what();
  }
  const int64_t big = int64_t{1} << 32;
  EXPECT_THROW(Tensor(DType::f32, {big, big, big}, "k"), Error);        // 2^96 elements
  EXPECT_THROW(Tensor(DType::f32, {int64_t{1} << 62, 4}, "k"), Error);  // 2^64 bytes
  Tensor manual;
  manual.shape = {4, -2};
  EXPECT_THROW(manual.numel(), Error);
}

TEST(Tensor, ShapeAndIndexStrings) {
  EXPECT_EQ(shape_str({2, 128, 8, 64}), "[2, 128, 8, 64]");
  EXPECT_EQ(shape_str({7}), "[7]");
  EXPECT_EQ(shape_str({}), "[]");
  EXPECT_EQ(index_str({2, 3, 4}, 0), "[0, 0, 0]");
  EXPECT_EQ(index_str({2, 3, 4}, 23), "[1, 2, 3]");
  EXPECT_EQ(index_str({2, 3, 4}, 1 * 12 + 2 * 4 + 1), "[1, 2, 1]");
  EXPECT_EQ(index_str({5}, 4), "[4]");
  EXPECT_EQ(index_str({}, 0), "[]");
  EXPECT_THROW(index_str({2, 3}, 6), Error);
  EXPECT_THROW(index_str({2, 3}, -1), Error);
}

}  // namespace
}  // namespace ringattn
