#include "ringattn/synth.hpp"

#include <cmath>

namespace ringattn {
namespace {

// 2^-32: maps a 32-bit integer plus one half into the open interval (0, 1).
constexpr double kTwoToMinus32 = 1.0 / 4294967296.0;
constexpr double kTwoPi = 6.283185307179586476925286766559;
constexpr uint64_t kLow32 = 0xffffffffull;
constexpr int kHalfBits = 32;

}  // namespace

uint64_t synth_key(uint64_t seed, SynthStream stream) {
  return splitmix64(splitmix64(seed) ^ splitmix64(static_cast<uint64_t>(stream)));
}

float synth_normal_at(uint64_t key, uint64_t index) {
  const uint64_t bits = splitmix64(key ^ splitmix64(index));
  // Two independent uniforms in (0, 1); u1 > 0 keeps the log finite.
  const double u1 = (static_cast<double>(bits >> kHalfBits) + 0.5) * kTwoToMinus32;
  const double u2 = (static_cast<double>(bits & kLow32) + 0.5) * kTwoToMinus32;
  return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(kTwoPi * u2));
}

void synth_fill(void* dst, DType dtype, uint64_t key, uint64_t first, int64_t count) {
  for (int64_t i = 0; i < count; ++i)
    store_from_f32(dst, dtype, static_cast<std::size_t>(i),
                   synth_normal_at(key, first + static_cast<uint64_t>(i)));
}

}  // namespace ringattn
