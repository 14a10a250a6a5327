// The float64 reference of K/V quantization (ringattn/quant.hpp), written from
// the semantics text at the top of that header alone: no code shared with
// quantize_rows / dequantize_rows.
//
// Per group of G channels of one row (finite float32 inputs):
//   scale  symmetric: float(max|x|) / float(qmax); asymmetric: lo = min x,
//          scale = float(float(max x) - lo) / float(levels). Each one float32
//          operation, as the text defines the scale.
//   ratio  t = x / scale (symmetric) or (x - lo) / scale (asymmetric) in float64
//          (x - lo in float64 too, not rounded to float32).
//   code   clamp(round_half_even(t), -qmax, qmax) or clamp(..., 0, levels); the
//          rounding is done by hand (floor and the exact remainder), independent
//          of the floating-point rounding mode.
//   scale 0 (a group of zeros, a constant asymmetric group, or a nonzero group
//          whose scale underflows to 0, which the text leaves open: see below):
//          codes 0, t = 0.
//   x'     symmetric float32(scale * code); asymmetric float32(lo + float32(scale
//          * code)). Each float32 operation is computed in float64 and rounded
//          to float32 with an explicit cast: the float64 product of a float32 by
//          a code of at most 9 bits is exact, and a float64 sum of two float32
//          values rounded to float32 is the correctly rounded float32 sum (53 >=
//          2 * 24 + 2 bits, so the double rounding is innocuous). The casts keep
//          a compiler from fusing the product into the sum (an FMA would give a
//          different x' than the text's "one product, one sum").
//
// tie_distance: how far t is from the nearest rounding tie (floor(t) + 0.5),
// relative: |t - tie| / max(|t|, 0.5). Ties lie at |t| >= 0.5, so near a tie
// this is the distance relative to |t|, the measure the text uses ("within
// 1e-6 (relative) of a rounding tie"); elsewhere it is merely large. An
// implementation that computes t in float32 (relative error ~6e-8 symmetric,
// ~1.2e-7 asymmetric with x - lo rounded) may differ from the reference code by
// one only where tie_distance <= 1e-6. +inf where the scale is 0 (no rounding).
//
// Open in the text: a symmetric group with max|x| > 0 whose scale
// max|x| / qmax underflows to float32 0 (max|x| <= qmax / 2 * 2^-149): the text's
// zero-group rule names max|x| = 0 only, and x / 0 is not a code. The
// reference treats every scale of 0 alike (codes 0, x' = 0), as the asymmetric
// text does ("a constant group (scale 0): codes 0").
#pragma once

#include <cstdint>
#include <vector>

#include "ringattn/quant.hpp"

namespace ringattn {

struct QuantReferenceRow {
  std::vector<int> codes;            // [d]: signed (symmetric) or unsigned (asymmetric)
  std::vector<float> scales;         // [d / G]
  std::vector<float> lo;             // [d / G]; empty when symmetric
  std::vector<float> dequant;        // [d]: x' from the codes above
  std::vector<double> ratio;         // [d]: t, the float64 quotient that was rounded
  std::vector<double> tie_distance;  // [d]: see above
};

// One row of d float32 values in format f (f.on(), f.group divides d).
QuantReferenceRow quantize_reference_row(const QuantFormat& f, const float* x, int64_t d);

// x' of one row from its codes [d], scales [d / G] and lo [d / G] (asymmetric;
// may be null when symmetric), by the text's definition as above.
std::vector<float> dequantize_reference_row(const QuantFormat& f, int64_t d, const int* codes,
                                            const float* scales, const float* lo);

// The codes of row `row` of q read from its stored bytes as the text lays them
// out: INT8 one byte per channel (two's complement symmetric, unsigned
// asymmetric); INT4 channel 2c in the low nibble and 2c + 1 in the high nibble
// of byte c (4-bit two's complement symmetric, unsigned asymmetric).
std::vector<int> unpack_codes(const QuantRows& q, int64_t row);

// x' of row `row` of q: its stored codes (unpack_codes), scales and lo.
std::vector<float> dequantize_reference_row(const QuantRows& q, int64_t row);

}  // namespace ringattn
