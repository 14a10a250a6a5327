// Attention masks in global token positions, and the closed-form tile
// classification the kernel and the ring schedule share.
//
// A block of tokens is described by Positions: token i of the block sits at
// global position start + i * stride (stride >= 1). Contiguous and zigzag
// chunks use stride 1; the striped layout uses stride P.
//
// A Mask is a band on the position difference: key at position kp is visible
// to the query at qp iff  lo <= kp - qp <= hi.  No mask is the unbounded band;
// causal is hi = diag (bottom-right aligned: diag = Nk - Nq), lo unbounded.
// Everything here is header-only and usable from host and device code.
#pragma once

#include <algorithm>
#include <cstdint>

#include "ringattn/dtype.hpp"  // RINGATTN_HD

namespace ringattn {

// Large enough to mean "no bound", small enough that adding any position
// (< 2^48) cannot overflow int64.
inline constexpr int64_t kUnbounded = int64_t{1} << 60;

struct Positions {
  int64_t start = 0;
  int64_t stride = 1;
  RINGATTN_HD int64_t at(int64_t i) const { return start + i * stride; }
  // Positions of the sub-block that begins at local index i.
  RINGATTN_HD Positions from(int64_t i) const { return {at(i), stride}; }
};

enum class TileClass : uint8_t { empty, partial, full };

// floor(a / b) and ceil(a / b) for b > 0.
RINGATTN_HD inline int64_t floor_div(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}
RINGATTN_HD inline int64_t ceil_div(int64_t a, int64_t b) {
  return -floor_div(-a, b);
}

struct Mask {
  int64_t lo = -kUnbounded;  // smallest visible kp - qp
  int64_t hi = kUnbounded;   // largest visible kp - qp

  static Mask none() { return {}; }
  // Query at qp sees keys at kp <= qp + diag.
  static Mask causal(int64_t diag = 0) { return {-kUnbounded, diag}; }

  RINGATTN_HD bool is_none() const { return lo <= -kUnbounded && hi >= kUnbounded; }
  RINGATTN_HD bool allows(int64_t qp, int64_t kp) const {
    const int64_t d = kp - qp;
    return d >= lo && d <= hi;
  }

  // Classify the tile of queries at positions [q_first, q_last] and keys at
  // [k_first, k_last] (inclusive extremes of each block).
  RINGATTN_HD TileClass classify(int64_t q_first, int64_t q_last, int64_t k_first,
                                 int64_t k_last) const {
    const int64_t dmin = k_first - q_last;
    const int64_t dmax = k_last - q_first;
    if (dmax < lo || dmin > hi || lo > hi) return TileClass::empty;
    if (dmin >= lo && dmax <= hi) return TileClass::full;
    return TileClass::partial;
  }

  // Visible keys of one query, as a half-open range [*j0, *j1) of local key
  // indices in a block of nk keys at positions kpos. Empty when *j0 >= *j1.
  RINGATTN_HD void key_range(int64_t qp, Positions kpos, int64_t nk, int64_t* j0,
                             int64_t* j1) const {
    int64_t a = 0, b = nk;
    if (lo > -kUnbounded) a = std::max(a, ceil_div(qp + lo - kpos.start, kpos.stride));
    if (hi < kUnbounded) b = std::min(b, floor_div(qp + hi - kpos.start, kpos.stride) + 1);
    *j0 = a;
    *j1 = std::max(a, b);
  }
};

}  // namespace ringattn
