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

}  // namespace ringattn::cpu
