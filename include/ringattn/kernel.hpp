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

#include "ringattn/attention.hpp"

namespace ringattn {

enum class Isa : uint8_t { automatic, avx512, avx2, generic };

struct KernelOptions {
  int threads = 0;           // 0: all available (OpenMP default)
  Isa isa = Isa::automatic;  // automatic: best the CPU supports
};

// Checks the arguments (AttentionArgs::validate_args: FieldError naming the
// field; an unsupported ISA is FieldError("isa")) and runs.
KernelStats attention_forward(const AttentionArgs& args, float* o, float* lse,
                              const KernelOptions& opt = {});

// The importance of each key (ringattn/kv_select.hpp, step 1) from one block
// of queries of batch 1: imp[h nk + j] += sum over the queries i the mask lets
// see key j of exp(scale q_i.k_j - lse_i), for every query head h. lse holds
// each head's final LSE (natural log) of these queries: head h's row at
// lse + h lse_stride (rows with -inf add nothing). imp [Hq, nk] float64, added
// to. Same packing, tiles and threads as attention_forward; a.keep must be off.
KernelStats attention_importance(const AttentionArgs& args, const float* lse, int64_t lse_stride,
                                 double* imp, const KernelOptions& opt = {});

// The float32 FMA peak of `isa` on `threads` threads (GFLOP/s): every thread
// runs independent FMAs in registers in rounds of ~2 ms for `seconds`; the sum
// over threads of each one's best round.
double measure_fma_peak_gflops(Isa isa, int threads, double seconds = 0.3);

Isa best_isa();                       // what automatic resolves to on this CPU
bool isa_supported(Isa isa);          // whether this CPU can run it
std::string isa_name(Isa isa);        // "avx512", "avx2", "generic"
Isa parse_isa(const std::string& s);  // inverse of isa_name plus "auto"; FieldError("isa")

// Keys one attention_forward call of nq queries at qpos against nk keys at
// kpos packs at once: its query rows go in chunks, each packing only the keys
// Mask::key_bounds lets it see (whole panels; a window packs its chunk plus
// the window), so the most over the chunks; nk without bounds.
int64_t kernel_packed_keys(const Mask& mask, Positions qpos, int64_t nq, Positions kpos,
                           int64_t nk);

// The tiles (kKernelTileRows x kKernelTileCols query-key pairs each) one attention_forward
// call computes per (batch, query head), found as the call finds them: its
// query blocks, within each pack chunk the key tiles Mask::key_bounds leaves,
// classified by the mask. computed: not empty; partial: masked per element (a
// diagonal's, a window edge's), which cost more per visible pair. The planner
// prices them (HardwareProfile::partial_tile_cost).
struct KernelTiles {
  int64_t computed = 0, partial = 0;
};
inline constexpr int64_t kKernelTileRows = 96, kKernelTileCols = 128;
KernelTiles kernel_tiles(const Mask& mask, Positions qpos, int64_t nq, Positions kpos, int64_t nk);

// Bytes of workspace one attention_forward call allocates for `nk` packed keys, at
// most `rows` query rows and `group` query heads per K/V head, on `threads`
// threads (capped at the task count, as the call does) with the ISA that
// automatic picks: the packed float32 K/V of one head plus per-thread tiles
// (and, for quantized K/V, each thread's dequantized panel of K and V rows).
double kernel_workspace_bytes(int64_t nk, int64_t head_dim, int64_t rows, int64_t group,
                              int threads, bool quantized = false);

}  // namespace ringattn
