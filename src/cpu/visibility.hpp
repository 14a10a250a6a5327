// Which keys of a partial tile one query row sees: the one element-level
// visibility rule of the CPU kernels (the forward, the importance pass and the
// backward all call it, so they agree on every pair).
//
// ISA-free and header-only: it is included (through kernel_isa.hpp) before the
// ISA files switch their target on, so every translation unit compiles it for
// the baseline target.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "ringattn/mask.hpp"

namespace ringattn::cpu {

// Blocks of `block` indices among n at pos whose positions may lie in
// [lo_pos, hi_pos] (inclusive; +-kUnbounded: open): [*b0, *b1).
inline void index_tile_range(int64_t lo_pos, int64_t hi_pos, Positions pos, int64_t n,
                             int64_t block, int64_t* b0, int64_t* b1) {
  const int64_t nb = (n + block - 1) / block;
  *b0 = 0, *b1 = nb;
  if (lo_pos > -kUnbounded) {
    const int64_t j = std::clamp<int64_t>(ceil_div(lo_pos - pos.start, pos.stride), 0, n);
    *b0 = j / block;
  }
  if (hi_pos < kUnbounded) {
    const int64_t j = std::clamp<int64_t>(floor_div(hi_pos - pos.start, pos.stride) + 1, 0, n);
    *b1 = std::max(*b0, (j + block - 1) / block);
  }
}

// For the row of a query at qp against kvalid keys at kpos: the outer range
// [*j0, *j1) of visible keys (empty when *j0 == *j1). Returns whether some keys
// inside it are hidden (gaps between ranges, or an element-wise rule): then
// mask_row must also run on the row's scores.
inline bool row_range(const Mask& mask, int64_t qp, Positions kpos, int kvalid, int* j0, int* j1) {
  constexpr int kMaxRanges = 4 + 2 * kMaxGlobalRanges + kMaxRandomBlocks;
  int64_t b[kMaxRanges], e[kMaxRanges];
  bool elementwise = false;
  const int n = mask.key_ranges(qp, kpos, kvalid, b, e, kMaxRanges, &elementwise);
  if (n == 0) {
    *j0 = *j1 = 0;
    return false;
  }
  int64_t lo = b[0], hi = e[0];
  for (int i = 1; i < n; ++i) lo = std::min(lo, b[i]), hi = std::max(hi, e[i]);
  *j0 = static_cast<int>(lo);
  *j1 = static_cast<int>(hi);
  return elementwise || n > 1;
}

// For the row of a query at qp against kvalid keys at kpos: the outer range
// [*j0, *j1) of visible keys (empty when *j0 == *j1), with the invisible keys
// inside it set to -inf in s (s[0..kvalid) holds the row's scores; entries
// outside the range are left as they are).
inline void mask_row(const Mask& mask, int64_t qp, Positions kpos, int kvalid, float* s, int* j0,
                     int* j1) {
  constexpr int kMaxRanges = 4 + 2 * kMaxGlobalRanges + kMaxRandomBlocks;
  int64_t b[kMaxRanges], e[kMaxRanges];
  bool elementwise = false;
  const int n = mask.key_ranges(qp, kpos, kvalid, b, e, kMaxRanges, &elementwise);
  if (n == 0) {
    *j0 = *j1 = 0;
    return;
  }
  int64_t lo = b[0], hi = e[0];
  for (int i = 1; i < n; ++i) lo = std::min(lo, b[i]), hi = std::max(hi, e[i]);
  *j0 = static_cast<int>(lo);
  *j1 = static_cast<int>(hi);
  if (elementwise) {
    for (int64_t j = lo; j < hi; ++j)
      if (!mask.allows(qp, kpos.at(j))) s[j] = -INFINITY;
  } else if (n > 1) {  // mask the gaps between the ranges
    for (int64_t j = lo; j < hi; ++j) {
      bool in = false;
      for (int i = 0; i < n && !in; ++i) in = j >= b[i] && j < e[i];
      if (!in) s[j] = -INFINITY;
    }
  }
}

// The tiles of `block` keys at kpos (nk of them) that may hold a key visible
// to a query in [q_first, q_last]: [*t0, *t1) (Mask::key_bounds; every tile
// without documents). Tiles outside are empty and need no classify().
inline void key_tile_range(const Mask& mask, int64_t q_first, int64_t q_last, Positions kpos,
                           int64_t nk, int64_t block, int64_t* t0, int64_t* t1) {
  int64_t lo = 0, hi = 0;
  mask.key_bounds(q_first, q_last, &lo, &hi);
  index_tile_range(lo, hi, kpos, nk, block, t0, t1);
}
// The same for blocks of query rows that may see a key in [k_first, k_last].
inline void query_block_range(const Mask& mask, int64_t k_first, int64_t k_last, Positions qpos,
                              int64_t nq, int64_t block, int64_t* b0, int64_t* b1) {
  int64_t lo = 0, hi = 0;
  mask.query_bounds(k_first, k_last, &lo, &hi);
  index_tile_range(lo, hi, qpos, nq, block, b0, b1);
}

}  // namespace ringattn::cpu
