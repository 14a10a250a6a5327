// The float64 reference of the attention backward pass (the formulas and
// shapes are in ringattn/backward.hpp; the CPU kernel is tested against this).
// Core layer: no kernel code.
#pragma once

#include <vector>

#include "ringattn/attention.hpp"

namespace ringattn {

// Gradients and the forward they were taken of, all float64:
//   dq, o [B, Nq, Hq, D];  dk, dv [B, Nk, Hkv, D];  lse [B, Hq, Nq] (-inf: empty row)
struct BackwardReference {
  std::vector<double> dq, dk, dv, o, lse;
};

// Written plainly from the formulas of ringattn/backward.hpp on the full Nq x Nk matrices of one
// (batch, head) at a time (memory O(Nq Nk): for tests, not for long
// sequences). Computes its own float64 forward; the inputs are read through
// the storage dtype (16-bit values taken exactly as stored). dO [B, Nq, Hq, D].
// Any head dim >= 1 (HeadDims::any); a hierarchy, kept keys or quantized K/V
// are refused (FieldError).
BackwardReference reference_attention_backward(const AttentionArgs& args, const float* dO);

// The same on float64 inputs (finite differences perturb them below float32's
// resolution): q, dO [B, Nq, Hq, D] and k, v [B, Nk, Hkv, D]; args gives the
// shapes, scale, mask and positions (its q, k, v and dtype are unused).
BackwardReference reference_attention_backward_f64(const AttentionArgs& args, const double* q,
                                                   const double* k, const double* v,
                                                   const double* dO);

}  // namespace ringattn
