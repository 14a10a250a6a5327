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
//
// KIVI's layout (QuantFormat::kivi, --kv-kivi): V as above (per token), K per
// channel instead: a group is, for one batch entry and one K/V head, the tokens
// a block holds whose positions lie in one range [gG, (g + 1) G), and each
// channel has one scale (and lo) over those tokens' values of it, by the same
// formulas (max|x| over the group's values of the channel, and so on). A block
// holds whole ranges except where it is cut (a contiguous block's edges,
// zigzag's chunk edges); a striped block holds every P-th position of each
// range. The whole sequence on one process: the ranges [gG, (g + 1) G) ∩ [0, N).
// The groups of a block are numbered in local token order (kivi_groups); its K
// is stored as codes [B, n, H, code_bytes(D)] as above, then scales
// [B, m, H, D] float32, then (asymmetric) lo likewise, m = its groups.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "ringattn/dtype.hpp"
#include "ringattn/layout.hpp"

namespace ringattn {

enum class QuantBits : uint8_t { none = 0, int4 = 4, int8 = 8 };

struct QuantFormat {
  QuantBits bits = QuantBits::none;
  int group = 64;           // G channels per scale
  bool asymmetric = false;  // scale and lo per group instead of scale alone
  bool kivi = false;        // K per channel over groups of G token positions (V per token)

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
  // "int8 g64", "int4 g32 asym", "int4 g32 kivi", "none"
  std::string describe() const;
  // Bytes of a block's K (B batch entries of n tokens in m KIVI groups, H heads)
  // and of its V; without KIVI both are B n H row_bytes(D).
  int64_t k_bytes(int64_t batch, int64_t n, int64_t m, int64_t heads, int64_t d) const {
    if (!kivi) return batch * n * heads * row_bytes(d);
    return batch * (n * heads * code_bytes(d) +
                    m * heads * d * int64_t(sizeof(float)) * (asymmetric ? 2 : 1));
  }
  int64_t v_bytes(int64_t batch, int64_t n, int64_t heads, int64_t d) const {
    return batch * n * heads * row_bytes(d);
  }
};

// "int8" / "int4"; "none" and the storage dtypes (float32, float16, bfloat16)
// give QuantBits::none; anything else throws FieldError(field).
QuantBits parse_quant_bits(const std::string& s, const std::string& field);
// Throws FieldError("kv_group") unless the group is 32, 64 or 128 and divides d.
void validate_quant(const QuantFormat& f, int64_t d);

// The KIVI groups of a block whose local token j sits at position pos(j):
// group_of[j] for j < n (consecutive tokens in one range [gG, (g + 1) G) share
// a group; groups numbered from 0 in local order); *count gets their number.
std::vector<int32_t> kivi_groups(int64_t n, const std::function<int64_t(int64_t)>& pos,
                                 int64_t group, int64_t* count);
// The same for the block `rank` holds under layout l (segments in local order).
std::vector<int32_t> kivi_groups(const Layout& l, int rank, int64_t group, int64_t* count);
// Only the number of groups of that block (no table).
int64_t kivi_group_count(const Layout& l, int rank, int64_t group);
// The groups of the whole sequence (token j at position j) as the ranks of l
// hold them: token j is in group (j / G) P + (the rank holding j), so *count =
// ceil(N / G) P (some empty). For one process checking a ring's stored codes.
std::vector<int32_t> kivi_groups_by_rank(const Layout& l, int64_t group, int64_t* count);

// A quantized block of `rows` rows (token-heads) of d channels, in the layout above.
struct QuantRows {
  QuantFormat fmt;
  int64_t rows = 0, d = 0;
  uint8_t* codes = nullptr;  // rows x code_bytes(d)
  float* scales = nullptr;   // rows x groups(d); KIVI keys: [B, m, H, D]
  float* lo = nullptr;       // rows x groups(d), asymmetric only; KIVI keys: as scales
  // KIVI keys (per_channel()): the block's tokens per batch entry, heads, groups
  // and each token's group (any assignment of tokens to groups 0 .. m - 1);
  // row r of this view is row first + r of the block.
  const int32_t* group_of = nullptr;
  int64_t tokens = 0, heads = 0, groups_m = 0, first = 0;
  bool per_channel() const { return group_of != nullptr; }

  // Pointers into one buffer of rows x row_bytes(d) bytes: codes, then scales, then lo.
  static QuantRows in_buffer(const QuantFormat& f, int64_t rows, int64_t d, void* buffer);
  // K of a block in f's layout: KIVI (f.kivi: B x n tokens of H heads, groups
  // from kivi_groups) or, without it, in_buffer's. f.k_bytes(...) bytes.
  static QuantRows keys_in_buffer(const QuantFormat& f, int64_t batch, int64_t n, int64_t heads,
                                  int64_t d, const int32_t* group_of, int64_t m, void* buffer);
  std::size_t bytes() const {
    return per_channel() ? static_cast<std::size_t>(
                               fmt.k_bytes(rows / (tokens * heads), tokens, groups_m, heads, d))
                         : static_cast<std::size_t>(rows * fmt.row_bytes(d));
  }
  // The view of rows [r0, rows) (pointers advanced by r0 rows; KIVI keys: first += r0).
  QuantRows from(int64_t r0) const;
};

// Quantizes rows x[rows, d] (float32) into q (q.rows == rows, q.d == d; a KIVI
// view of a whole block: first == 0).
void quantize_rows(const float* x, int64_t rows, const QuantRows& q);
// The same for rows of a storage dtype (converted to float32 a chunk at a time).
void quantize_values(const void* x, DType dtype, int64_t rows, const QuantRows& q);
// Dequantizes rows [r0, r0 + n) of q into x[n, d] (float32).
void dequantize_rows(const QuantRows& q, int64_t r0, int64_t n, float* x);

}  // namespace ringattn
