// The partial attention state and its merge.
//
// A partial state over a key set S, for one query row, is
//   LSE = log(sum_{j in S} exp(s_j))            (natural log, float32)
//   O   = sum_{j in S} exp(s_j - LSE) * v_j      (normalised, float32 [D])
// An empty key set is LSE = -inf, O = 0. For disjoint key sets A and B,
// merge(A, B) is the state over A u B:
//   m = max(LSE_a, LSE_b);  w_a = exp(LSE_a - m);  w_b = exp(LSE_b - m)
//   O = (w_a O_a + w_b O_b) / (w_a + w_b);  LSE = m + log(w_a + w_b)
// It is commutative and associative (up to float rounding), and
// merge(empty, empty) = empty without NaN. Every distributed path reduces to
// repeated merges of this one function.
//
// Tensor form: O [B, N, H, D] row-major, LSE [B, H, N].
#pragma once

#include <cmath>
#include <cstdint>

#include "ringattn/dtype.hpp"  // RINGATTN_HD

namespace ringattn {

// The weights of merge(a, b) for rows with LSEs la and lb, both finite:
// O = ca O_a + cb O_b, LSE = lse. (merge_row handles empty rows first; the GPU
// merge uses the same function, so both compute the same floats.)
struct MergeCoef {
  float ca, cb, lse;
};
RINGATTN_HD inline MergeCoef merge_coefficients(float la, float lb) {
  const float m = la > lb ? la : lb;
  const float wa = expf(la - m);
  const float wb = expf(lb - m);
  const float s = wa + wb;
  return {wa / s, wb / s, m + logf(s)};
}

// Merge the row (o_b, lse_b) into (o_a, *lse_a), d values each.
RINGATTN_HD inline void merge_row(float* o_a, float* lse_a, const float* o_b, float lse_b,
                                  int64_t d) {
  const float la = *lse_a;
  if (lse_b == -INFINITY) return;  // b empty: a unchanged (also covers empty + empty)
  if (la == -INFINITY) {           // a empty: take b
    for (int64_t i = 0; i < d; ++i) o_a[i] = o_b[i];
    *lse_a = lse_b;
    return;
  }
  const MergeCoef c = merge_coefficients(la, lse_b);
  for (int64_t i = 0; i < d; ++i) o_a[i] = c.ca * o_a[i] + c.cb * o_b[i];
  *lse_a = c.lse;
}

// A mutable view of a state [B, N, H, D] + [B, H, N] (both float32, row-major).
struct StateView {
  float* o;
  float* lse;
  int64_t batch, tokens, heads, head_dim;
};

// a <- merge(a, b); shapes must match (checked, throws Error).
void merge_states(const StateView& a, const StateView& b);

// Set every row of the state to empty (O = 0, LSE = -inf).
void clear_state(const StateView& s);

}  // namespace ringattn
