// The attention problem: one description of what is computed, shared by the
// kernels, the ring, the planner, the job and every command.
//
//   q [B, Nq, Hq, D], k and v [B, Nk, Hkv, D] in the storage dtype (row-major "bshd")
//   o [B, Nq, Hq, D] and lse [B, Hq, Nq] float32, natural log
//
// GQA/MQA: Hq % Hkv == 0, query head h uses K/V head h / (Hq / Hkv). The mask is
// in global token positions (ringattn/mask.hpp), bottom-right aligned when
// Nq != Nk. The softmax scale defaults to 1/sqrt(D).
//
// validate() throws FieldError naming the field ("head_dim", "hkv", ...) and
// the expected form; callers that took a value from an option rename it
// (the CLI: "option '--head-dim': ...").
//
// FLOPs: 4 B Hq D per visible (query, key) pair (QK^T and PV, multiply-add = 2).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "ringattn/documents.hpp"
#include "ringattn/dtype.hpp"
#include "ringattn/hierarchy.hpp"
#include "ringattn/mask.hpp"
#include "ringattn/quant.hpp"

namespace ringattn {

// Head dims every kernel supports: multiples of kHeadDimMultiple in [kMinHeadDim, kMaxHeadDim].
inline constexpr int64_t kMinHeadDim = 8;
inline constexpr int64_t kMaxHeadDim = 256;
inline constexpr int64_t kHeadDimMultiple = 8;
bool head_dim_supported(int64_t d);
// "a multiple of 8 in [8, 256]"
std::string head_dim_expected();

// Largest sequence length any command accepts (positions stay far below
// kUnbounded, and token x head x dim products fit int64).
inline constexpr int64_t kMaxSeqLen = int64_t{1} << 40;

// Number of visible (query, key) pairs for one (batch, head) of a block of nq
// queries at qpos against nk keys at kpos. Closed form per query row (no
// per-element scan except where the mask needs one).
int64_t visible_pairs(const Mask& mask, Positions qpos, int64_t nq, Positions kpos, int64_t nk);

// Which head dims validate() accepts: the kernels' (above), or any >= 1 (the
// float64 reference, which has no tiling).
enum class HeadDims : uint8_t { kernel, any };

struct AttentionProblem {
  int64_t batch = 1, nq = 0, nk = 0, hq = 1, hkv = 1, head_dim = 0;
  DType dtype = DType::f32;
  float scale = 0.0f;  // softmax scale; 0 means 1/sqrt(head_dim)
  Mask mask;           // in global positions
  Hierarchy hier;      // summaries or block routing beyond the mask (ringattn/hierarchy.hpp)
  // Documents (packed sequences, ringattn/documents.hpp): the offsets mask.docs
  // points into, shared by every copy of the problem (null: one document).
  std::shared_ptr<const DocOffsets> docs;

  // Checks the offsets against nq and nk (FieldError "documents" or
  // "kv_documents") and points mask.docs at them; null turns documents off.
  // Call it after the mask is built (a rebuilt mask has no documents).
  void set_documents(std::shared_ptr<const DocOffsets> d);
  void check_documents_combine() const;  // no BigBird blocks or hierarchy beside documents

  // Checks the fields; throws FieldError("batch" | "nq" | "nk" | "hq" | "hkv" |
  // "head_dim" | "scale" | a hierarchy field, ...). Lengths may be 0 (a rank
  // without tokens).
  void validate(HeadDims dims = HeadDims::kernel) const;
  float softmax_scale() const;  // scale, or 1/sqrt(head_dim) when 0
  int64_t group() const { return hq / hkv; }

  // Element counts of the tensors of the whole problem.
  int64_t q_elems() const { return batch * nq * hq * head_dim; }
  int64_t kv_elems() const { return batch * nk * hkv * head_dim; }  // one of K, V
  int64_t o_elems() const { return q_elems(); }
  int64_t lse_elems() const { return batch * hq * nq; }

  // Visible (query, key) pairs for one (batch, head), positions from 0, and the FLOPs.
  int64_t pairs() const;
  double flops() const;

  // "B=1 Nq=4096 Nk=4096 Hq=8 Hkv=2 D=128 float32"
  std::string shape_str() const;
};

// Kept keys (the K/V selection stage, ringattn/kv_select.hpp): with flags set,
// query head h of batch b sees a key at global position kp only where
//   (flags[(b * heads + h / (hq / heads)) * stride + kp] != 0) != invert,
// besides the mask. heads is Hq (a set per query head) or Hkv (per K/V head);
// stride covers every key position (Nk of the whole problem).
struct KeyKeep {
  const uint8_t* flags = nullptr;
  int64_t heads = 0;
  int64_t stride = 0;
  bool invert = false;  // the complement: the keys not kept
  bool on() const { return flags != nullptr; }
  // The flags of query head h of batch b, indexed by key position.
  const uint8_t* row(int64_t b, int64_t h, int64_t hq) const {
    return flags + (b * heads + h / (hq / heads)) * stride;
  }
};

// A problem with its data: one block of queries against one block of keys,
// at global positions qpos / kpos (the kernels' and the reference's argument).
struct AttentionArgs : AttentionProblem {
  const void* q = nullptr;  // [B, nq, Hq, D], storage dtype
  const void* k = nullptr;  // [B, nk, Hkv, D]
  const void* v = nullptr;
  Positions qpos;  // global positions of the queries
  Positions kpos;  // global positions of the keys
  // Quantized K and V instead of k and v (ringattn/quant.hpp; kq.fmt.on() when
  // set): row (b nk + j) Hkv + h holds key j of batch b, K/V head h. The kernel
  // dequantizes them while it packs its tiles; k and v are unused then.
  QuantRows kq, vq;
  bool quantized() const { return kq.fmt.on(); }
  // Keys left out beyond the mask (off unless keep.on()); batch b of this
  // block is batch b of keep.
  KeyKeep keep;

  AttentionArgs() = default;
  explicit AttentionArgs(const AttentionProblem& p) : AttentionProblem(p) {}
  AttentionArgs(const AttentionProblem& p, const void* q_, const void* k_, const void* v_,
                Positions qpos_ = {}, Positions kpos_ = {})
      : AttentionProblem(p), q(q_), k(k_), v(v_), qpos(qpos_), kpos(kpos_) {}
  // One batch entry of this problem: nq queries against nk keys under `m` (no data yet).
  static AttentionArgs block(const AttentionProblem& p, int64_t nq, int64_t nk, const Mask& m) {
    AttentionArgs a(p);
    a.batch = 1, a.nq = nq, a.nk = nk, a.mask = m;
    a.hier = {};  // a block is plain attention under m: stages split a hierarchy into blocks
    return a;
  }

  // validate() plus positions (strides >= 1) and data (non-null where non-empty).
  void validate_args(HeadDims dims = HeadDims::kernel) const;
  // Visible pairs of this block (at its positions) per (batch, head).
  int64_t block_pairs() const { return visible_pairs(mask, qpos, nq, kpos, nk); }
};

// Counters of one kernel call (CPU or GPU): what the mask let it skip.
struct KernelStats {
  int64_t tiles_total = 0;     // (query block, key tile) pairs over all heads
  int64_t tiles_computed = 0;  // of which not skipped as empty
  int64_t tiles_partial = 0;   // of which needed an element mask
  KernelStats& operator+=(const KernelStats& s) {
    tiles_total += s.tiles_total;
    tiles_computed += s.tiles_computed;
    tiles_partial += s.tiles_partial;
    return *this;
  }
};

// A result that is not a number: rows (of B x Hq x n) where O holds a NaN or
// an infinity, or LSE is NaN or +inf. They come from scores beyond float32
// (|scale q.k| > 3.4e38: a huge scale, or huge finite inputs), and an LSE that
// large cannot be stored. An empty row (O = 0, LSE = -inf) is a number.
// o [B, n, Hq, D], lse [B, Hq, n] float32.
int64_t nonfinite_rows(const float* o, const float* lse, int64_t batch, int64_t n, int64_t hq,
                       int64_t d);
// "K of M result rows are not finite (...): the scores scale x q.k overflow float32 ..."
std::string nonfinite_message(int64_t rows, int64_t total);

// 4 B Hq D x pairs.
double attention_flops(const AttentionProblem& p, int64_t pairs);
// FLOPs of one block: 4 B Hq D x block_pairs().
double attention_flops(const AttentionArgs& a);

}  // namespace ringattn
