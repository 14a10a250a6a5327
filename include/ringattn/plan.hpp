// The planner: how long, how much memory, and whether communication hides
// behind compute, for one attention problem on P ranks of a hardware profile
// (ringattn/hardware.hpp) -- without running it.
//
// Steps, pairs, imbalance and who sends what to whom come from the real ring
// schedule (make_ring_schedule over the layouts and the Mask: ring or direct
// transfers, sinks and global tokens shared outside the rotation), so masks and
// layouts are honoured exactly. FLOPs follow attention.hpp: 4 B Hq D per visible pair. Memory
// follows ring.hpp: local Q, K, V (storage dtype), O and LSE (float32), min(2,
// steps - 1) receive buffers of the largest K/V block, one query segment's
// partial state, the gathered shared rows, and the kernel workspace (cpu: one
// packed float32 K/V head + per-thread tiles; gpu: on-chip, counted as 0).
//
// K/V quantization (ringattn/quant.hpp; PlanInput::kv_wire, kv_store): a K/V
// block travels as kv_wire.row_bytes(D) bytes per token-head instead of D esz
// (ring.cpp's block_bytes), so the bytes per step, the receive buffers and the
// hiding threshold use the wire's row; a rank also holds its own block
// quantized once for sending (MemoryBreakdown::wire_copy). With kv_store, K and
// V are held as those codes only (no wire copy), after a load that briefly
// holds Q, K and V in the storage dtype beside the codes
// (MemoryBreakdown::loading). The kernel workspace adds each thread's
// dequantized panel on a rank that attends held codes. The sinks and global
// tokens stay in the storage dtype. The kernel's dequantize-on-pack is not modelled (negligible),
// and a gpu profile plans the wire a device implementation would send (the CUDA engine runs only
// the storage dtype today).
//
// Time model, per rank r and step s (all seconds):
//   c(r,s) = 4 B Hq D pairs(r,s) / R            R = rate of one rank (below)
//   m(r,s) = merged rows x Hq x (3 D + 3) x 4 B / (memory bandwidth x threads)
//   x(r,s) = 2 latency + block bytes / bandwidth  (K and V: two messages; the block r
//            sends during step s for step s + 1, if any)
//   end(r,s) = max(start + c + m + (1 - overlap) x,  start + x,  start(src,s) + x(src,s))
//            src = the rank r receives its next block from (r - 1 in the ring)
// Shared rows (sinks, global tokens) add an all-gather before step 0 and their
// pairs to step 0.
//   start(r,s+1) = end(r,s); predicted total = max over ranks of the last end.
// R is the profile's kernel rate for (dtype, head dim), times the rank's
// threads (cpu; x parallel efficiency when > 1), divided by the
// oversubscription max(1, ranks per node x threads / devices per node) when
// ranks share devices (which also scales the non-overlapped part of x on cpu).
//
// Hiding (RingAttention's block-size condition, generalised): with c tokens
// per rank, a step computes f c^2 pairs (f = the visible fraction of the
// steps that overlap a transfer, from the schedule: 1 dense, ~1/2 causal
// zigzag) and sends 2 c Hkv w bytes (w = D esz, or kv_wire.row_bytes(D)), so
// it hides when
//   4 B Hq D f c^2 / R  >=  2 B Hkv w c / BW + 2 latency,
// i.e. c >= c_min = (b + sqrt(b^2 + 4 a L)) / (2 a), a = 4 B Hq D f / R,
// b = 2 B Hkv w / BW, L = 2 latency. For MHA, bf16, f = 1 and no latency
// this is RingAttention's c >= R / BW.
//
// Transfers posted earlier (RingStep::post < s, the double ring's transfer
// across nodes, posted at its round's first step): it starts at start(sender,
// post), the sender's step s ends no earlier than its completion (ring.cpp waits
// for the sends delivering s + 1 at the end of s), nor the receiver's; the bytes
// are the block the sender held at `post`. With post = s this is the above.
// Receive buffers: ring.cpp's pool simulated per rank (<= 2 ring/direct, <= 4
// double ring; a rank that receives nothing allocates none).
//
// Schemes over nodes of w ranks (PlanInput::scheme, two_level.hpp):
//   flat         the schedule over Layout(kind, N, P); each transfer on the link
//                between its two ranks (intra- or inter-node).
//   double-ring  the schedule of scheme_options(double_ring, w), same model.
//   a2a-ring     all-to-all 1 inside each node (Q of the peer's heads, K and V
//                of its K/V heads for the own tokens: (w - 1) latencies + max(sent,
//                received) / bandwidth on the intra-node link), then the ring of
//                P / w ranks across nodes on Layout(kind, N, P / w) with Hq / w
//                query heads (and their K/V heads) over the inter-node link,
//                then all-to-all 2 (O and LSE, float32). Memory adds the node's
//                tokens for the rank's heads and the all-to-alls' staging.
// Per level (RankPlan::intra_*, inter_*): LevelCounter's exact counts of the
// attention pass. With more than one node, Plan::schemes compares all three
// (compare_schemes) and Plan::best names the fastest that can run.
//
// Stages after the ring (StagePlan, MoePlan below) start when every rank has
// finished what came before (their first step is a collective); their time,
// FLOPs and memory add to each rank's.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "ringattn/attention.hpp"
#include "ringattn/dtype.hpp"
#include "ringattn/hardware.hpp"
#include "ringattn/kv_select.hpp"
#include "ringattn/layout.hpp"
#include "ringattn/mask.hpp"
#include "ringattn/moe.hpp"
#include "ringattn/quant.hpp"
#include "ringattn/two_level.hpp"

namespace ringattn {

// ---- the source design's arithmetic (bytes, values) -------------------------

inline constexpr int64_t kScoreBytes = 4;        // float32 scores
inline constexpr int64_t kFlashBlockKeys = 256;  // the source design's flash block
// One nq x nk float32 score matrix (per head, per layer): 1M x 1M = 4 TB.
inline constexpr double score_matrix_bytes(int64_t nq, int64_t nk) {
  return double(nq) * double(nk) * double(kScoreBytes);
}
// A flash buffer of nq rows x `block` keys, float32 (1M x 256 = 1 GB).
inline constexpr double flash_block_bytes(int64_t nq, int64_t block = kFlashBlockKeys) {
  return double(nq) * double(block) * double(kScoreBytes);
}
// Values in one layer's K/V cache: n tokens x Hkv heads x D x 2 (K and V).
// d_model 512, 32 heads of 16: MHA (Hkv 32) n x 1024, GQA 8 groups n x 256, MQA n x 32.
inline constexpr int64_t kv_cache_values(int64_t n, int64_t hkv, int64_t head_dim) {
  return n * hkv * head_dim * 2;
}

// ---- planning ---------------------------------------------------------------

enum class PlanLinks : uint8_t { network, in_process };  // MPI/NCCL ranks, or threads

// Hard cap on P: the planner evaluates the full P x P schedule.
inline constexpr int kMaxPlanRanks = 2048;

// The problem (ringattn/attention.hpp) and how it would run.
struct PlanInput : AttentionProblem {
  PlanInput() = default;
  explicit PlanInput(const AttentionProblem& p) : AttentionProblem(p) {}
  LayoutKind layout = LayoutKind::contiguous;
  int ranks = 1;
  int ranks_per_node = 0;  // 0: min(P, devices per node)
  int threads = 0;         // cpu kernel threads per rank; 0: as `run` (see plan.cpp)
  PlanLinks links = PlanLinks::network;
  MoeConfig moe;    // the MoE stage after attention (MoePlan); off by default
  KvSelect select;  // K/V selection after the exact pass (SelectPlan); off by default
  // K/V on the wire (JobSpec::kv_wire; off: the storage dtype), and held as its
  // codes in memory (JobSpec::kv_store; needs kv_wire on).
  QuantFormat kv_wire;
  bool kv_store = false;
  // Communication over nodes of ranks_per_node ranks (two_level.hpp; the plan's
  // ranks per node is w). best_scheme() picks the fastest.
  CommScheme scheme = CommScheme::flat;
  bool backward = false;  // the backward pass after the forward (BackwardPlan)
};

// The hierarchical stage (ringattn/hierarchy_stage.hpp), after the ring:
//   levels   all-gather of the block means (N / s1 + N / s2 blocks x 2 B Hkv D
//            bytes), then (query, summary) scores at the kernel's rate
//   routing  all-gather of the block means of K, then each query's own block
//            (causal part) and min(k - 1, earlier blocks) whole blocks at the
//            kernel's rate; the fetched bytes are an upper bound: every
//            earlier block a rank does not hold (choices depend on the data)
// The ring runs the exact part only (the window extended to block
// boundaries, or the window, sinks and global tokens for routing).
struct StagePlan {
  bool on = false;
  std::string what;             // Hierarchy::describe()
  int64_t summaries = 0;        // block summaries (levels) or key blocks (routing)
  double gathered_bytes = 0;    // the block means every rank ends up holding
  std::vector<double> scores;   // [rank] query x head x key-or-summary scores
  std::vector<double> sent;     // [rank] bytes sent (its share of the means, fetched blocks served)
  std::vector<double> memory;   // [rank] bytes: means table, partial sums, choices, fetched blocks
  std::vector<double> seconds;  // [rank] collectives + scores
  bool fetch_bound = false;     // routing: sent/fetched are upper bounds
};

// The MoE stage (ringattn/moe_stage.hpp), after attention (and the
// hierarchical stage), on the attention output: T = B Nq tokens of width
// d_model = Hq D, each rank holding its query rows of the ring's layout, rank
// r holding experts moe_experts_of(E, P, r) (h_r of them). The prediction
// assumes balanced routing: every token's k assignments spread uniformly over
// the experts, so each expert is requested k T / E times and accepts
// A = min(k T / E, C) (C = moe_capacity; dropless: all), a fraction
// a = A / (k T / E) of what it is asked; a rank's experts receive their share
// h_r / E of every rank's assignments, so the fraction of its assignments that
// goes to other ranks is (E - h_r) / E ((P - 1) / P when P divides E).
// Expert choice: each rank sends its local top min(C, rows) per expert; each
// expert keeps min(C, T), from every rank in proportion to its rows. The chunk
// policy's capacity in whole chunks is not modelled (as tokens). Figures are
// real numbers (expected values), not rounded.
//
// All-to-all bytes a rank sends to other ranks (what MoeMetrics::bytes_sent
// counts, moe_stage.cpp):
//   counts     8 B to every other rank per count exchange (1; chunk policy 2)
//   records    24 B per assignment sent to another rank's expert
//   flags      1 B back per assignment received from another rank
//   rows       d_model x 4 B per accepted row sent, and the same per output
//              returned for the rows other ranks sent it
//   chunk      (1 + d_model) x 8 B per chunk part (a chunk's partial row sum)
//              owned by another rank, and E x 4 B of logits back per part
//              received; parts and owners follow the layout exactly
// FFN FLOPs = 6 rows d_model d_ff (three GEMMs of 2 rows d_model d_ff; rows:
// those its experts accept), router FLOPs = 2 rows E d_model (chunk policy:
// the chunks it owns instead of rows). Both run at
// `gemm_rate`; the profile lists no GEMM rate, so the planner uses its
// float32 attention kernel rate at the largest listed head dim (the kernel's
// most GEMM-like point; the stage's GEMMs are float32), times the rank's
// threads over the oversubscription as for the ring (make_plan; the
// problem's own rate when float32 is not listed). On a gpu profile this is the
// device's rate, while the stage today runs its GEMMs on the host's OpenBLAS
// (moe_ffn.cpp): the plan is then what a device implementation would reach.
// All-to-all time = alltoalls x (P - 1) x latency + bytes sent / bandwidth over
// the plan's link (the slowest the ranks use); the final all-reduces of the
// statistics (a few E x 8 B) are not counted.
// Memory: the held experts' weights (3 d_model d_ff x 4 B each) and the router,
// the probabilities (rows x E x 4 B), the records (sent, grouped, received: 24 B
// each) with their flags, slots and gates, the rows dispatched, received,
// grouped and computed (d_model x 4 B each), Y (rows x d_model x 4 B), the
// chunk sums, and two FFN tiles of min(1024, A) x d_ff x 4 B. X is the
// attention's O (counted there).
struct MoeRankPlan {
  int rank = 0;
  int experts = 0;              // h_r: experts held
  double rows = 0;              // tokens held (B x its query tokens)
  double assignments = 0;       // records it dispatches (k rows; expert choice: E min(C, rows))
  double records_sent = 0;      // of which to other ranks
  double records_received = 0;  // from other ranks (it returns their flags)
  double rows_sent = 0;         // accepted rows dispatched to other ranks
  double rows_received = 0;     // rows other ranks dispatch to it (their outputs go back)
  double rows_computed = 0;     // rows its experts run (h_r A)
  double chunk_parts_sent = 0;  // chunk policy: partial sums to other ranks' chunks
  double chunk_parts_received = 0;
  double bytes_sent = 0;  // all-to-all bytes to other ranks (above)
  double ffn_flops = 0, router_flops = 0;
  double ffn_s = 0, router_s = 0, alltoall_s = 0;
  double seconds = 0;  // router + FFN + all-to-all
  double memory = 0;   // bytes
};

struct MoePlan {
  bool on = false;
  std::string what;      // MoeConfig::describe()
  int64_t tokens = 0;    // T
  int64_t d_model = 0;   // Hq D
  int64_t capacity = 0;  // C (INT64_MAX: dropless)
  double requested = 0;  // per expert: k T / E (expert choice: min(C, T))
  double accepted = 0;   // per expert: A
  int alltoalls = 0;     // all-to-all calls of one pass
  double gemm_rate = 0;  // FLOP/s of one rank for the router and the FFN
  std::vector<MoeRankPlan> per_rank;
  const MoeRankPlan& slowest() const;  // the largest seconds (per_rank non-empty)
  double max_bytes_sent() const;
  double max_memory() const;
};

struct MemoryBreakdown {                       // bytes, one rank
  double q = 0, k = 0, v = 0, o = 0, lse = 0;  // k, v: the codes with kv_store
  double recv_buffers = 0;                     // recv_count K/V blocks (in the wire format)
  int recv_count = 0;  // the ring's buffer pool (ring.cpp): <= 2 (ring, direct), <= 4 (double ring)
  double wire_copy = 0;  // kv_wire without kv_store, steps > 1: the own block quantized once
  double partial = 0;    // one query segment's (or global query chunk's) partial O and LSE
  double shared = 0;     // sinks / global keys and global queries gathered from every rank
  double workspace = 0;  // kernel: packed K/V head + thread tiles (cpu)
  double stage = 0;      // the hierarchical stage (StagePlan::memory)
  double moe = 0;        // the MoE stage (MoeRankPlan::memory)
  double select = 0;     // K/V selection (SelectPlan): importance, kept flags, INT4 rest
  // a2a-ring: the node's tokens for this rank's heads (Q, K, V in the storage
  // dtype, O and LSE float32) held through the ring, and how far the all-to-alls'
  // staging (send and receive buffers) raises the peak above the ring's.
  double node_share = 0, a2a_staging = 0;
  // kv_store: while K/V are quantized as they load, Q, K and V in the storage
  // dtype and the codes, before O exists (0 otherwise).
  double loading = 0;
  double total() const {
    return q + k + v + o + lse + recv_buffers + wire_copy + partial + shared + workspace + stage +
           moe + select + node_share + a2a_staging;
  }
  double peak() const { return std::max(total(), loading); }  // what run's peak_bytes measures
};

// K/V selection (ringattn/kv_select_stage.hpp; in.select on), after the exact
// ring pass, on the same schedule: the importance pass (the ring again with Q
// K^T only: half the compute per pair, the same blocks), the all-reduce of the
// B Hsel Nk float64 importances (a ring all-reduce: 2 (P - 1) latencies and
// 2 (P - 1) / P of the bytes per rank), then the final pass over the kept keys,
// modelled at the exact pass's compute (it runs the mask's tiles; only tiles
// with no kept key are skipped), and with the INT4 rest a second final pass
// whose blocks travel as INT4 codes. Memory per rank adds the importance and
// the kept flags (9 bytes per key and selection head), and with the INT4 rest
// the own block's codes and the rest pass's state.
struct SelectPlan {
  bool on = false;
  int passes = 0;              // ring passes after the exact one (2, or 3 with the INT4 rest)
  double importance_s = 0;     // the importance pass, slowest rank
  double allreduce_s = 0;      // the importances' all-reduce
  double final_s = 0;          // the final pass(es), slowest rank
  double sent = 0;             // bytes all ranks send in the stage
  double allreduce_bytes = 0;  // B Hsel Nk x 8
};

// The backward pass (in.backward; ring_attention_backward, ringattn/ring.hpp)
// after the forward, on the forward's schedule without shared rows (sinks and
// global tokens ride the ring as ordinary keys). Per rank:
//   compute   2.5 x the forward's FLOPs of its pairs (5 of the backward's 7 tile
//             GEMMs are new) at the forward kernel's rate x kBackwardRateRatio
//   bytes     the K/V blocks its schedule sends (as the forward's), and one
//             accumulator per step with work on another rank's block: dK and dV
//             of that block, 2 B n Hkv D float32 (what run's bwd_bytes counts)
//   time      each step max(its compute, its sends: K/V plus the accumulator of
//             the step before over the slowest link) summed over the steps,
//             slowest rank: the accumulators fly during the next step's compute
//   memory    beyond the forward: dO and dQ (B nq Hq D float32 each), the own
//             dK, dV (2 B nk Hkv D float32), and two accumulators of the largest
//             block (one being filled, one received)
struct BackwardPlan {
  bool on = false;
  int steps = 0;
  std::string transfer;                // of its schedule
  double rate = 0;                     // FLOP/s of one rank's backward
  std::vector<double> seconds;         // [rank]
  std::vector<double> sent;            // [rank] bytes: K/V blocks and accumulators
  std::vector<double> grad_sent;       // [rank] of which accumulators
  std::vector<int64_t> grad_messages;  // [rank]
  std::vector<double> memory;          // [rank] bytes beyond the forward's
  double predicted_s = 0;              // slowest rank
  // Over all ranks.
  double total_sent() const;
  double total_grad_sent() const;
  int64_t total_grad_messages() const;
};
// The backward kernel's FLOP rate over the forward's (bench-kernel --backward,
// FLOPs counted as 2.5x the forward's): the plan assumes 0.95, measured 0.88 to
// 1.09 at N = 8192, H = 8, D = 64 and 128, full and causal, 2 threads, on a
// 2-core AMD EPYC (AVX2); the AVX-512 backward is not measured yet.
inline constexpr double kBackwardRateRatio = 0.95;

struct RankPlan {
  int rank = 0;
  int64_t q_tokens = 0, kv_tokens = 0;
  int64_t pairs = 0;       // visible pairs per (batch, head), shared rows included
  int64_t ring_pairs = 0;  // of which in the rotation (what run reports as pairs)
  // Kernel tiles of the rotation's calls, all (batch, head) (cpu; run's
  // tiles_computed and tiles_partial without shared rows): partial tiles are
  // priced at HardwareProfile::partial_tile_cost on top of their pairs.
  int64_t tiles_computed = 0, tiles_partial = 0;
  double flops = 0;
  int computed_steps = 0;
  MemoryBreakdown mem;
  double compute_s = 0, merge_s = 0, transfer_s = 0, wait_s = 0, total_s = 0;
  // Per level (LevelCounter's counts in run: every point-to-point message this
  // rank sends with at least one byte, by the destination's node): K and V of a
  // block are two messages; an all-gather(v) or all-to-all(v) is one message per
  // other rank. Covers the attention pass: the ring, the shared rows' all-gathers
  // and their states' all-to-all, a2a-ring's two node all-to-alls (the stages
  // after it -- hierarchy, K/V selection, MoE -- are not counted).
  int64_t intra_bytes = 0, inter_bytes = 0, intra_messages = 0, inter_messages = 0;
  // Seconds this rank spends transferring on each level (the sum of its
  // transfers' link times; a2a-ring: intra_s is its two all-to-alls).
  double intra_s = 0, inter_s = 0;
};

struct StepPlan {
  int step = 0;
  double bytes = 0;       // max over ranks of bytes sent during this step (0 at the last)
  double compute_s = 0;   // max over ranks of compute + merge
  double transfer_s = 0;  // max over ranks
  bool hidden = true;     // every rank's transfer fits behind its compute (and the link overlaps)
};

// One scheme's figures in the comparison (Plan::schemes).
struct SchemeEstimate {
  CommScheme scheme = CommScheme::flat;
  bool ok = false;         // false: cannot run; `why` says why
  std::string why;         // the FieldError's text
  double predicted_s = 0;  // Plan::predicted_s
  double inter_bytes = 0;  // max over nodes of the bytes its ranks send to other nodes
  double intra_bytes = 0;  // max over nodes of the bytes its ranks send inside it
  double memory = 0;       // Plan::max_rank_memory
  bool fits = true;
};

struct Plan {
  PlanInput in;
  std::string link_name;  // "in-process", "intra-node", "inter-node"
  LinkSpec link;          // the slowest link the ring uses
  int nodes = 1, ranks_per_node = 1, threads = 1;
  double oversubscription = 1;  // ranks x threads per device (>= 1)
  double rate = 0;              // FLOP/s of one rank
  int steps = 1;                // ring steps run; rotations = steps - 1
  std::string transfer;         // "ring" or "direct" (schedule.hpp: which sends fewer bytes)
  double imbalance = 1;         // schedule: max / mean pairs per rank
  double total_flops = 0;
  double block_bytes = 0;     // largest K/V block in flight
  int64_t kv_row_bytes = 0;   // one token-head row of K (or V) on the wire: D esz or row_bytes(D)
  double bytes_per_step = 0;  // mean over ranks and rotations of the bytes a rank sends (as run)
  std::vector<RankPlan> per_rank;
  std::vector<StepPlan> per_step;
  StagePlan stage;
  MoePlan moe;            // in.moe on
  SelectPlan select;      // in.select on
  BackwardPlan backward;  // in.backward on (not in predicted_s: run reports it apart)
  double predicted_s = 0;
  // Hiding.
  bool all_hidden = true;         // every transfer step hidden
  double visible_fraction = 1;    // f
  int64_t tokens_per_rank = 0;    // c: largest rank's query tokens
  int64_t min_tokens_hidden = 0;  // c_min; -1: never (no overlap, or f = 0)
  // For comparison (whole problem unless noted).
  double naive_scores_per_head = 0;  // score_matrix_bytes(nq, nk)
  double naive_scores_total = 0;     // x B x Hq
  double flash_block_per_head = 0;   // flash_block_bytes(nq)
  double kv_cache_bytes = 0;         // kv_cache_values(nk, hkv, D) x B x esz
  double max_rank_memory = 0;        // max over ranks of MemoryBreakdown::peak()
  double memory_available = 0;       // per rank: device memory (cpu: node memory / ranks per node)
  bool fits = true;
  // Levels: the links inside and across nodes (present = false: not used), and
  // the a2a-ring's all-to-alls (slowest node; 0 for the ring schemes).
  LinkSpec intra_link, inter_link;
  double a2a_s = 0;
  // With more than one node: every scheme's estimate (flat, double-ring,
  // a2a-ring), and the fastest that can run.
  std::vector<SchemeEstimate> schemes;
  CommScheme best = CommScheme::flat;
};

// Throws FieldError naming the field (ranks, ranks_per_node, hardware, a
// problem field, a moe_* field of validate_moe, kv_group or kv_store) when the
// input cannot be planned (P too large, a link the ring needs is missing, E < P,
// a group that does not divide D, kv_store without a format or with a hierarchy).
Plan make_plan(const PlanInput& in, const HardwareProfile& hw);

// Every scheme's estimate for `in` (its scheme ignored), in the order flat,
// double-ring, a2a-ring; a scheme that cannot run has ok = false and why.
std::vector<SchemeEstimate> compare_schemes(const PlanInput& in, const HardwareProfile& hw);
// The fastest scheme that can run (flat on one node, or when no other can).
// Throws what make_plan throws for the flat scheme.
CommScheme best_scheme(const PlanInput& in, const HardwareProfile& hw);

// The stage's figures for P ranks of the layouts (in.hier on), at `rate`
// FLOP/s per rank over `link`.
StagePlan plan_hierarchy_stage(const PlanInput& in, const Layout& ql, const Layout& kvl,
                               double rate, const LinkSpec& link);

// The MoE stage's figures (in.moe on; above) for P ranks of the query layout,
// at `gemm_rate` FLOP/s per rank over `link` (unused for one rank).
MoePlan plan_moe_stage(const PlanInput& in, const Layout& ql, double gemm_rate,
                       const LinkSpec& link);
// The rate plan_moe_stage's GEMMs run at (see MoePlan): the profile's float32
// kernel rate at its largest listed head dim x rank_rate / the problem's
// kernel rate (threads, oversubscription); rank_rate when float32 is not listed.
double moe_gemm_rate(const HardwareProfile& hw, const PlanInput& in, double rank_rate);

// Smallest c >= 1 with a c^2 >= b c + L (see above); -1 when a <= 0.
int64_t min_hiding_tokens(double a, double b, double latency_total);

}  // namespace ringattn
