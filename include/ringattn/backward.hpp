// The attention backward pass (FlashAttention-2) on the CPU: gradients of Q, K and V
// given the forward's outputs and the gradient of O, for one AttentionArgs
// problem (one block of queries against one block of keys, the mask in global
// positions exactly as the forward applies it).
//
// Shapes (row-major, "bshd"):
//   q [B, Nq, Hq, D], k and v [B, Nk, Hkv, D] in the storage dtype (args)
//   o, dO [B, Nq, Hq, D] float32;  lse [B, Hq, Nq] float32, natural log
//   dq [B, Nq, Hq, D], dk and dv [B, Nk, Hkv, D] float32 (written, or added to
//   with GradWrite::add: a ring sums a rank's terms over the key blocks it holds)
//
// For each batch b and query head h (K/V head h / (Hq / Hkv)), with s the
// softmax scale and "visible" the mask's pairs:
//   Delta_i = sum_d dO_id O_id
//   P_ij    = exp(s q_i.k_j - LSE_i) on visible pairs, 0 elsewhere
//   dV_j   += sum_i P_ij dO_i          dP_ij = dO_i . v_j
//   dS_ij   = P_ij (dP_ij - Delta_i)
//   dQ_i   += s sum_j dS_ij k_j        dK_j += s sum_i dS_ij q_i
// dK/dV of a K/V head sum over the query heads of its group. A row with LSE =
// -inf (no visible key) contributes nothing and gets dQ = 0, never NaN.
//
// o and lse may be the final outputs of a longer key sequence of which this
// block is a part (a ring's merged state): then P is this block's share of the
// global softmax, dk/dv are exact for this block's keys and dq is this block's
// term of the sum over key blocks.
// Its float64 reference: ringattn/backward_reference.hpp.
#pragma once

#include "ringattn/attention.hpp"
#include "ringattn/kernel.hpp"

namespace ringattn {

// Tiled like the forward (kBlockQ query rows x kBlockK keys per tile, each
// tile classified by Mask::classify: empty tiles skipped, full tiles with no
// element mask, partial tiles masked per element by the forward's own
// visibility routine), float32 arithmetic for every storage dtype, never an
// Nq x Nk buffer. Returns the tile counters, which count the same (query
// block, key tile) pairs as attention_forward on the same args (each visited
// once). opt.threads and opt.isa as for the forward (an ISA this CPU lacks:
// FieldError("isa")); the result does not depend on the thread count. Throws
// FieldError for bad arguments, a hierarchy ("hier"), kept keys ("keep") or
// quantized K/V ("kq"): not supported yet.
enum class GradWrite { set, add };
KernelStats attention_backward(const AttentionArgs& args, const float* o, const float* lse,
                               const float* dO, float* dq, float* dk, float* dv,
                               const KernelOptions& opt = {}, GradWrite write = GradWrite::set);

// Bytes attention_backward allocates beyond its inputs and outputs for these
// args and options (packed K/V of one head, packed Q/dO/dQ of one query group
// with Delta and the base-2 LSE, dK/dV parts, per-thread tiles): O(N) for a
// fixed head dim, never Nq x Nk.
double backward_workspace_bytes(const AttentionArgs& args, const KernelOptions& opt = {});

}  // namespace ringattn
