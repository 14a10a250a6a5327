// The CPU flash-attention kernel: attention of a block of queries against one
// block of keys/values, with a mask in global positions. Knows nothing of ranks.
//
// Shapes (row-major, "bshd"):
//   q [B, Nq, Hq, D], k and v [B, Nk, Hkv, D] in the storage dtype `dtype`
//   o [B, Nq, Hq, D] float32 (normalised), lse [B, Hq, Nq] float32, natural log.
// GQA/MQA: Hq % Hkv == 0, query head h uses K/V head h / (Hq / Hkv).
// Rows with no visible key get O = 0 and LSE = -inf. The result is the partial
// state of ringattn/state.hpp, ready to merge with other key blocks.
//
// Memory: never allocates Nq x Nk. Besides the caller's tensors it uses one
// packed float32 copy of K and V for one K/V head at a time (2 Nk D floats)
// and a per-thread workspace of O(block_q * (block_k + D)) floats.
#pragma once

#include <cstdint>
#include <string>

#include "ringattn/dtype.hpp"
#include "ringattn/mask.hpp"

namespace ringattn {

struct AttentionArgs {
  int64_t batch = 1, nq = 0, nk = 0, hq = 1, hkv = 1, head_dim = 0;
  DType dtype = DType::f32;
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  float scale = 0.0f;  // softmax scale; 0 means 1/sqrt(head_dim)
  Mask mask;           // in global positions
  Positions qpos;      // global positions of the queries
  Positions kpos;      // global positions of the keys
};

enum class Isa : uint8_t { automatic, avx512, avx2, generic };

struct KernelOptions {
  int threads = 0;           // 0: all available (OpenMP default)
  Isa isa = Isa::automatic;  // automatic: best the CPU supports
};

// Counters of one call: what the mask let the kernel skip.
struct KernelStats {
  int64_t tiles_total = 0;     // (query block, key tile) pairs over all heads
  int64_t tiles_computed = 0;  // of which not skipped as empty
  int64_t tiles_partial = 0;   // of which needed an element mask
};

// Checks the arguments (throws Error naming the bad field) and runs.
KernelStats attention_forward(const AttentionArgs& args, float* o, float* lse,
                              const KernelOptions& opt = {});

Isa best_isa();                       // what automatic resolves to on this CPU
bool isa_supported(Isa isa);          // whether this CPU can run it
std::string isa_name(Isa isa);        // "avx512", "avx2", "generic"
Isa parse_isa(const std::string& s);  // inverse of isa_name plus "auto"; throws Error

// Exact FLOP count of the visible (query, key) pairs: 4 * D * Hq * B * pairs.
double attention_flops(const AttentionArgs& args);
// Number of visible (query, key) pairs for one (batch, head).
int64_t visible_pairs(const Mask& mask, Positions qpos, int64_t nq, Positions kpos, int64_t nk);

}  // namespace ringattn
