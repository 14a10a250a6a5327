// The float64 reference of K/V quantization (ringattn/quant_reference.hpp),
// from the semantics text in ringattn/quant.hpp alone.
#include "ringattn/quant_reference.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>

namespace ringattn {
namespace {

// round_half_even of a float64 value, by hand: floor(t) and the remainder
// t - floor(t) (exact in float64) decide; a remainder of exactly 0.5 goes to
// the even neighbour. Independent of the rounding mode.
double round_half_even(double t) {
  const double fl = std::floor(t);
  const double rem = t - fl;
  if (rem < 0.5) return fl;
  if (rem > 0.5) return fl + 1.0;
  return std::fmod(fl, 2.0) == 0.0 ? fl : fl + 1.0;
}

int clamp_code(double r, int lo, int hi) {
  if (r < double(lo)) return lo;
  if (r > double(hi)) return hi;
  return static_cast<int>(r);
}

// |t - (floor(t) + 0.5)| relative to max(|t|, 0.5).
double tie_distance(double t) {
  const double tie = std::floor(t) + 0.5;
  return std::abs(t - tie) / std::max(std::abs(t), 0.5);
}

// One float32 product scale * code and (asymmetric) one float32 sum lo + that,
// each the float64 operation rounded to float32 (see the header: exact product,
// innocuous double rounding of the sum).
float dequant_value(bool asymmetric, float scale, int code, float lo) {
  const auto prod = static_cast<float>(double(scale) * double(code));
  if (!asymmetric) return prod;
  return static_cast<float>(double(lo) + double(prod));
}

}  // namespace

QuantReferenceRow quantize_reference_row(const QuantFormat& f, const float* x, int64_t d) {
  const int64_t g = f.group, ng = d / g;
  QuantReferenceRow r;
  r.codes.assign(static_cast<std::size_t>(d), 0);
  r.ratio.assign(static_cast<std::size_t>(d), 0.0);
  r.tie_distance.assign(static_cast<std::size_t>(d), std::numeric_limits<double>::infinity());
  r.scales.assign(static_cast<std::size_t>(ng), 0.0f);
  if (f.asymmetric) r.lo.assign(static_cast<std::size_t>(ng), 0.0f);
  for (int64_t k = 0; k < ng; ++k) {
    const float* xs = x + k * g;
    float scale = 0, lo = 0;
    if (!f.asymmetric) {
      float amax = 0;  // max |x|: exact in float32
      for (int64_t c = 0; c < g; ++c)
        if (std::fabs(xs[c]) > amax) amax = std::fabs(xs[c]);
      const auto qmax = static_cast<float>(f.qmax());
      scale = amax / qmax;  // the text: a float32 division of float32 values
    } else {
      float mn = xs[0], mx = xs[0];
      for (int64_t c = 1; c < g; ++c) {
        if (xs[c] < mn) mn = xs[c];
        if (xs[c] > mx) mx = xs[c];
      }
      lo = mn;
      const float range = mx - lo;  // float32 subtraction (its own statement: no fusing)
      const auto levels = static_cast<float>(f.levels());
      scale = range / levels;  // float32 division
      r.lo[static_cast<std::size_t>(k)] = lo;
    }
    r.scales[static_cast<std::size_t>(k)] = scale;
    if (scale == 0.0f) continue;  // codes 0, ratio 0, tie distance +inf
    for (int64_t c = 0; c < g; ++c) {
      const auto i = static_cast<std::size_t>(k * g + c);
      const double t = f.asymmetric ? (double(xs[c]) - double(lo)) / double(scale)
                                    : double(xs[c]) / double(scale);
      r.ratio[i] = t;
      r.tie_distance[i] = tie_distance(t);
      r.codes[i] = f.asymmetric ? clamp_code(round_half_even(t), 0, f.levels())
                                : clamp_code(round_half_even(t), -f.qmax(), f.qmax());
    }
  }
  r.dequant = dequantize_reference_row(f, d, r.codes.data(), r.scales.data(),
                                       f.asymmetric ? r.lo.data() : nullptr);
  return r;
}

std::vector<float> dequantize_reference_row(const QuantFormat& f, int64_t d, const int* codes,
                                            const float* scales, const float* lo) {
  std::vector<float> out(static_cast<std::size_t>(d));
  for (int64_t c = 0; c < d; ++c) {
    const int64_t k = c / f.group;
    out[static_cast<std::size_t>(c)] =
        dequant_value(f.asymmetric, scales[k], codes[c], f.asymmetric ? lo[k] : 0.0f);
  }
  return out;
}

std::vector<int> unpack_codes(const QuantRows& q, int64_t row) {
  const int64_t d = q.d;
  const bool int8 = q.fmt.bits == QuantBits::int8;
  const int64_t row_code_bytes = int8 ? d : (d + 1) / 2;
  const uint8_t* bytes = q.codes + row * row_code_bytes;
  std::vector<int> codes(static_cast<std::size_t>(d));
  for (int64_t c = 0; c < d; ++c) {
    int v = 0;
    if (int8) {
      v = bytes[c];                                 // 0..255
      if (!q.fmt.asymmetric && v >= 128) v -= 256;  // two's complement
    } else {
      const int byte = bytes[c / 2];
      v = (c % 2 == 0) ? (byte % 16) : (byte / 16);  // low nibble: even channel
      if (!q.fmt.asymmetric && v >= 8) v -= 16;      // 4-bit two's complement
    }
    codes[static_cast<std::size_t>(c)] = v;
  }
  return codes;
}

std::vector<float> dequantize_reference_row(const QuantRows& q, int64_t row) {
  const int64_t ng = q.d / q.fmt.group;
  const std::vector<int> codes = unpack_codes(q, row);
  return dequantize_reference_row(q.fmt, q.d, codes.data(), q.scales + row * ng,
                                  q.fmt.asymmetric ? q.lo + row * ng : nullptr);
}

}  // namespace ringattn
