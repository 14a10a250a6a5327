// K/V quantization: INT8 and INT4 codes with float32 scales, the formats the
// KV-compression stage keeps in memory (--kv-store) and sends over the ring
// (--kv-wire). The semantics every implementation and the float64 reference
// follow.
//
// Groups: one group is G consecutive channels of one token's one K/V head
// (G divides head_dim; G in {32, 64, 128}). Per group:
//   symmetric (default), qmax = 127 (INT8) or 7 (INT4):
//     scale = max|x| / qmax                      float32 division of float32 values
//     code  = clamp(round_half_even(x / scale), -qmax, qmax)      (x / scale in float32)
//     x'    = scale * code                       dequantized (float32 product)
//     a group of zeros (max|x| = 0): scale 0, codes 0, x' = 0
//   asymmetric (--kv-asymmetric), levels = 255 (INT8) or 15 (INT4):
//     lo = min x, scale = (max x - lo) / levels  float32 arithmetic
//     code = clamp(round_half_even((x - lo) / scale), 0, levels)
//     x'   = lo + scale * code                   (float32: one product, one sum,
//                                                 not fused into an FMA)
//     a constant group (scale 0): codes 0, x' = lo exactly
// The float64 reference computes x / scale in float64: a code may then differ
// by one only where x / scale lies within 1e-6 (relative) of a rounding tie.
// |x - x'| <= scale / 2 (plus float32 rounding of the product).
//
// Storage of a block of tokens [n, H, D] (one batch; batches follow each other):
//   codes  [n, H, D] int8 (INT8), or [n, H, D / 2] bytes for INT4: channel 2c
//          in the low nibble, 2c + 1 in the high nibble, two's complement
//          (symmetric) or unsigned (asymmetric)
//   scales [n, H, D / G] float32; asymmetric also lo [n, H, D / G] float32
// So one token's one head is code_bytes(D) bytes of codes and D / G scales (and
// D / G zero points): a block is `codes | scales | lo` for K, then the same for V.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "ringattn/dtype.hpp"

namespace ringattn {

enum class QuantBits : uint8_t { none = 0, int4 = 4, int8 = 8 };

struct QuantFormat {
  QuantBits bits = QuantBits::none;
  int group = 64;           // G channels per scale
  bool asymmetric = false;  // scale and lo per group instead of scale alone

  bool on() const { return bits != QuantBits::none; }
  // Codes of one token-head row of D channels, in bytes.
  int64_t code_bytes(int64_t d) const { return bits == QuantBits::int8 ? d : (d + 1) / 2; }
  // Groups (scales) per row.
  int64_t groups(int64_t d) const { return d / group; }
  // Bytes of one row: codes, scales and (asymmetric) lo values.
  int64_t row_bytes(int64_t d) const {
    return code_bytes(d) + groups(d) * int64_t(sizeof(float)) * (asymmetric ? 2 : 1);
  }
  int qmax() const { return bits == QuantBits::int8 ? 127 : 7; }     // symmetric
  int levels() const { return bits == QuantBits::int8 ? 255 : 15; }  // asymmetric
  // "int8 g64", "int4 g32 asym", "none"
  std::string describe() const;
};

// "int8" / "int4"; "none" and the storage dtypes (float32, float16, bfloat16)
// give QuantBits::none; anything else throws FieldError(field).
QuantBits parse_quant_bits(const std::string& s, const std::string& field);
// Throws FieldError("kv_group") unless the group is 32, 64 or 128 and divides d.
void validate_quant(const QuantFormat& f, int64_t d);

// A quantized block of `rows` rows (token-heads) of d channels, in the layout above.
struct QuantRows {
  QuantFormat fmt;
  int64_t rows = 0, d = 0;
  uint8_t* codes = nullptr;  // rows x code_bytes(d)
  float* scales = nullptr;   // rows x groups(d)
  float* lo = nullptr;       // rows x groups(d), asymmetric only
  // Pointers into one buffer of rows x row_bytes(d) bytes: codes, then scales, then lo.
  static QuantRows in_buffer(const QuantFormat& f, int64_t rows, int64_t d, void* buffer);
  std::size_t bytes() const { return static_cast<std::size_t>(rows * fmt.row_bytes(d)); }
  // The view of rows [r0, rows) (pointers advanced by r0 rows).
  QuantRows from(int64_t r0) const;
};

// Quantizes rows x[rows, d] (float32) into q (q.rows == rows, q.d == d).
void quantize_rows(const float* x, int64_t rows, const QuantRows& q);
// The same for rows of a storage dtype (converted to float32 a chunk at a time).
void quantize_values(const void* x, DType dtype, int64_t rows, const QuantRows& q);
// Dequantizes rows [r0, r0 + n) of q into x[n, d] (float32).
void dequantize_rows(const QuantRows& q, int64_t r0, int64_t n, float* x);

}  // namespace ringattn
