#include "ringattn/synth.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>

namespace ringattn {
namespace {

// 2^-32: maps a 32-bit integer plus one half into the open interval (0, 1).
constexpr double kTwoToMinus32 = 1.0 / 4294967296.0;
constexpr double kTwoPi = 6.283185307179586476925286766559;
constexpr double kSqrt2 = 1.4142135623730950488016887242097;
// ln 2 split so that e * kLn2Hi is exact for |e| < 2^11.
constexpr double kLn2Hi = 6.93147180369123816490e-01, kLn2Lo = 1.90821492927058770002e-10;
constexpr uint64_t kLow32 = 0xffffffffull;
constexpr int kHalfBits = 32;
constexpr uint64_t kMantissa = 0x000fffffffffffffull, kOneExponent = 0x3ff0000000000000ull;
constexpr int kMantissaBits = 52;
constexpr int64_t kExponentMask = 0x7ff, kExponentBias = 1023;
// The nested series' factors from the inside out: 1 / ((2k - 1) 2k) for cos,
// 1 / (2k (2k + 1)) for sin, k = 8 .. 1.
constexpr int kSeriesTerms = 8;
constexpr double kCosFactor[kSeriesTerms] = {1.0 / 240, 1.0 / 182, 1.0 / 132, 1.0 / 90,
                                             1.0 / 56,  1.0 / 30,  1.0 / 12,  1.0 / 2};
constexpr double kSinFactor[kSeriesTerms] = {1.0 / 272, 1.0 / 210, 1.0 / 156, 1.0 / 110,
                                             1.0 / 72,  1.0 / 42,  1.0 / 20,  1.0 / 6};
constexpr int64_t kChunk = 1024;           // values made per vector loop
constexpr int64_t kParallelMin = 1 << 16;  // values worth OpenMP threads

// The math below is plain IEEE double arithmetic (this file is built with
// -ffp-contract=off: no fused multiply-adds), so every build, vector width and
// CPU gives the same bits: the inputs of a seed are the same everywhere.

// log(u) for u in (0, 1) (here u >= 2^-33): u = m 2^e with m in [sqrt(1/2),
// sqrt(2)), log(m) = 2 atanh(f) with f = (m - 1) / (m + 1), |f| <= 0.1716, by
// its odd series to f^23 (the next term is below 2^-60 of the sum).
inline double log_unit(double u) {
  uint64_t bits = 0;
  std::memcpy(&bits, &u, sizeof(bits));
  int64_t e = static_cast<int64_t>((bits >> kMantissaBits) & kExponentMask) - kExponentBias;
  bits = (bits & kMantissa) | kOneExponent;
  double m = 0;
  std::memcpy(&m, &bits, sizeof(m));
  const bool high = m > kSqrt2;
  m = high ? m * 0.5 : m;
  e += high ? 1 : 0;
  const double f = (m - 1.0) / (m + 1.0), f2 = f * f;
  double p = 1.0 / 23;
  p = p * f2 + 1.0 / 21;
  p = p * f2 + 1.0 / 19;
  p = p * f2 + 1.0 / 17;
  p = p * f2 + 1.0 / 15;
  p = p * f2 + 1.0 / 13;
  p = p * f2 + 1.0 / 11;
  p = p * f2 + 1.0 / 9;
  p = p * f2 + 1.0 / 7;
  p = p * f2 + 1.0 / 5;
  p = p * f2 + 1.0 / 3;
  p = p * f2 + 1.0;
  const double ed = static_cast<double>(e);
  return ed * kLn2Hi + (2.0 * f * p + ed * kLn2Lo);
}

// cos(2 pi u) for u in (0, 1): folded by symmetry to a in [0, pi / 4], where
// the Taylor series of cos (to a^16) or sin (to a^17) is exact to double.
inline double cos_turns(double u) {
  double y = u < 0.5 ? u : 1.0 - u;  // cos(2 pi (1 - u)) = cos(2 pi u); exact
  const bool negate = y > 0.25;      // cos(2 pi y) = -cos(2 pi (1/2 - y))
  y = negate ? 0.5 - y : y;
  const bool use_sin = y > 0.125;  // cos(2 pi y) = sin(2 pi (1/4 - y))
  const double a = kTwoPi * (use_sin ? 0.25 - y : y), a2 = a * a;
  // cos a = 1 - a^2/(1 2) (1 - a^2/(3 4) (... (1 - a^2/(15 16)))), sin a = a (1 - a^2/(2 3)
  // (... (1 - a^2/(16 17)))): nested from the inside.
  double c = 1.0, s = 1.0;
  for (int k = 0; k < kSeriesTerms; ++k) {
    c = 1.0 - a2 * kCosFactor[k] * c;
    s = 1.0 - a2 * kSinFactor[k] * s;
  }
  const double r = use_sin ? a * s : c;
  return negate ? -r : r;
}

// Standard normal number `index` of `key`: Box-Muller on two 32-bit uniforms.
inline float normal_at(uint64_t key, uint64_t index) {
  const uint64_t bits = splitmix64(key ^ splitmix64(index));
  const double u1 = (static_cast<double>(bits >> kHalfBits) + 0.5) * kTwoToMinus32;
  const double u2 = (static_cast<double>(bits & kLow32) + 0.5) * kTwoToMinus32;
  return static_cast<float>(std::sqrt(-2.0 * log_unit(u1)) * cos_turns(u2));
}

// out[i] = normal_at(key, first + i), i < n <= kChunk: one vector loop, built
// for the widest vectors this CPU has (same bits on each: see above).
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) void normals(
    uint64_t key, uint64_t first, int64_t n, float* out) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = normal_at(key, first + static_cast<uint64_t>(i));
}

}  // namespace

uint64_t synth_key(uint64_t seed, SynthStream stream) {
  return splitmix64(splitmix64(seed) ^ splitmix64(static_cast<uint64_t>(stream)));
}

float synth_normal_at(uint64_t key, uint64_t index) {
  return normal_at(key, index);
}

namespace {

// Values [i0, i0 + n) of the fill, n <= kChunk.
void fill_chunk(void* dst, DType dtype, uint64_t key, uint64_t first, int64_t i0, int64_t n) {
  float vals[kChunk];
  normals(key, first + static_cast<uint64_t>(i0), n, vals);
  if (dtype == DType::f32) {
    std::memcpy(static_cast<float*>(dst) + i0, vals, static_cast<std::size_t>(n) * sizeof(float));
    return;
  }
  for (int64_t i = 0; i < n; ++i)
    store_from_f32(dst, dtype, static_cast<std::size_t>(i0 + i), vals[i]);
}

}  // namespace

void synth_fill(void* dst, DType dtype, uint64_t key, uint64_t first, int64_t count) {
  const int64_t chunks = (count + kChunk - 1) / kChunk;
  if (count < kParallelMin || omp_in_parallel() || omp_get_max_threads() == 1) {
    for (int64_t c = 0; c < chunks; ++c)
      fill_chunk(dst, dtype, key, first, c * kChunk, std::min(kChunk, count - c * kChunk));
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < chunks; ++c)
    fill_chunk(dst, dtype, key, first, c * kChunk, std::min(kChunk, count - c * kChunk));
}

}  // namespace ringattn
