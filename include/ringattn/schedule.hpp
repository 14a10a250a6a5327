// The ring schedule: which K/V block meets which queries at which step, which
// steps need no compute, and how many steps the ring must run. A pure function
// of (query layout, key layout, mask): no attention runs here, so it is
// unit-tested on its own, and the planner can evaluate it for any P.
//
// At step s (0 <= s < steps) rank r holds the K/V block that originated on rank
// (r - shift[s]) mod P; in the plain ring shift[s] = s and blocks move to rank r + 1
// after each step. For every pair of
// (query segment of r, key segment of the held block) the schedule records the
// mask's verdict on the whole pair (empty pairs are dropped) and the number of
// visible (query, key) pairs, the compute each rank will do.
//
// Sinks and global tokens (see SharedPart) are taken out of the rotation, and
// the transfer (ring or direct) is the one that sends fewer bytes. A transfer
// carries only the key rows some query of its receivers can see (RowSpan: a
// sliding window sends the W rows next to the boundary, not the whole block).
#pragma once

#include <cstdint>
#include <vector>

#include "ringattn/layout.hpp"
#include "ringattn/mask.hpp"

namespace ringattn {

struct SegmentWork {
  int q_seg = 0;  // index into the query layout's segments of this rank
  int k_seg = 0;  // index into the key layout's segments of the source rank
  TileClass cls = TileClass::full;
  int64_t pairs = 0;  // visible (query, key) pairs, per (batch, head)
  // Rows [k_lo, k_hi) of the key segment: every key of the segment that some
  // query of the query segment sees lies in them (the kernel attends only these).
  int64_t k_lo = 0, k_hi = 0;
};

// Rows [lo, hi) of key segment `seg` of a block (indices into the segment).
struct RowSpan {
  int seg = 0;
  int64_t lo = 0, hi = 0;
};

// How K/V blocks reach the ranks that need them.
//   ring    each step every rank passes the block it holds to rank r + 1 (only
//           neighbours talk); steps in the middle with no work still rotate.
//   direct  at step s rank r receives the block of rank r - shift[s] straight
//           from its owner, only if it has work with it; steps with no work
//           anywhere are dropped. Chosen when it sends fewer bytes than the ring.
//   double_ring  (ScheduleOptions::per_node = w, ranks r = n w + i in nodes of
//           w) rounds R = 0 .. P/w - 1 of w inner steps j: at (R, j) rank
//           (n, i) holds the block of rank ((n - R) mod P/w, (i - j) mod w).
//           Inside a round the blocks pass to (n, i + 1) as in the ring; at the
//           start of round R each rank also sends the block it holds to
//           (n + 1, i), which arrives for round R + 1: each transfer across
//           nodes is in flight during the w steps of a round. Inner steps after
//           the last one with work anywhere in their round are dropped, and so
//           are the rounds after the last one with work (a round's first step
//           stays while a later round needs the blocks it passes on).
enum class Transfer : uint8_t { ring, direct, double_ring };
const char* transfer_name(Transfer t);  // "ring", "direct", "double-ring"

struct RingStep {
  int source = 0;      // rank whose K/V block is held (computed on) at this step
  int recv_from = -1;  // the held block arrived from this rank before the step (-1: none)
  int send_to = -1;    // this rank sends a block to this rank for the step (-1: none):
                       // ring: the block it held at step `post`; direct: its own
  int post = -1;       // the step at which this step's transfers are posted (step - 1,
                       // or the round's first step for a double ring's transfer across
                       // nodes); -1 at step 0. Direct: the receive; the owner posts
                       // the send of its own block at its step 0 (ring.cpp)
  std::vector<SegmentWork> work;  // empty: nothing to compute at this step
  int64_t pairs = 0;
  // packed: the held block arrived as only these rows of the source's key
  // segments (in segment order; per batch entry, K then V, each [rows, Hkv, D]):
  // the rows some query sees at this step or, in the ring, at a later step the
  // block is passed on to. Not packed: the source's whole block in its local
  // order (step 0's own block, the double ring, and any quantized wire).
  bool packed = false;
  std::vector<RowSpan> rows;
  int64_t row_count() const;  // tokens in `rows`
};

// Tokens of one rank inside a set of position ranges: local indices
// [local, local + count) at positions pos.at(0 .. count - 1).
struct Chunk {
  int64_t local = 0, count = 0;
  Positions pos;
};

// Sinks and global tokens, computed outside the rotation:
//   keys     every rank receives the K/V rows of these positions once
//            (all-gather) and attends to them with the full mask;
//   queries  the rows of global queries are given to every rank (all-gather),
//            attended there against its own keys, and the partial states are
//            merged by LSE on the owner.
// The ring then runs `ring_mask`: the mask with both carved out (skipped).
struct SharedPart {
  std::vector<PosRange> keys, queries;           // sorted, disjoint
  std::vector<std::vector<Chunk>> key_chunks;    // [rank]: its tokens among `keys`
  std::vector<std::vector<Chunk>> query_chunks;  // [rank]: its tokens among `queries`
  int64_t key_tokens = 0, query_tokens = 0;      // totals over ranks
  bool on() const { return key_tokens > 0 || query_tokens > 0; }
};

struct RingSchedule {
  int ranks = 1;
  int steps = 1;  // steps run; a rank takes part in the transfers its steps name
  Transfer transfer = Transfer::ring;
  int per_node = 0;        // double_ring: ranks per node w (0 otherwise)
  std::vector<int> shift;  // [step]: the held block is from rank r - shift[step]
                           // (double_ring: R w + j; RingStep::source says which block)
  Mask ring_mask;          // the mask the rotating part runs (shared parts skipped)
  SharedPart shared;
  std::vector<std::vector<RingStep>> per_rank;  // [rank][step]

  const RingStep& step(int rank, int s) const {
    return per_rank[static_cast<std::size_t>(rank)][static_cast<std::size_t>(s)];
  }
  int64_t rank_pairs(int rank) const;  // visible pairs the rank computes in the ring
  int computed_steps(int rank) const;  // steps with work
  // K/V tokens `rank` sends during the rotation (multiply by 2 B Hkv D dtype
  // bytes for bytes); `kv` is the key layout the schedule was made with.
  // `packed`: only the rows receivers see (RingStep::rows), as an unquantized
  // wire sends them; otherwise whole blocks.
  int64_t tokens_sent(const Layout& kv, int rank, bool packed = true) const;
  // Tokens of the block that arrives at (rank, step), per batch entry: its rows
  // when packed, else the source's whole block.
  int64_t tokens_arriving(const Layout& kv, int rank, int step, bool packed = true) const;
  // max over ranks of rank_pairs / mean: 1.0 is perfectly balanced.
  double imbalance() const;
};

struct ScheduleOptions {
  // Share sinks and global tokens outside the ring (when P > 1 and they are
  // no more than one rank's tokens); off: they ride the ring like any key.
  bool share = true;
  // Allow the direct transfer when it sends fewer bytes.
  bool direct = true;
  // > 0: the double ring over nodes of per_node ranks (must divide P; 1 or P
  // give the plain ring's order of blocks).
  int per_node = 0;
};

// Where the key rows of a block held at a step sit: row i of key segment j is
// token seg_base[j] + i of each batch entry's `tokens` tokens. Packed (the
// step's rows, when `packed` allows) or the source's whole block in its local order.
struct HeldRows {
  bool packed = false;
  int64_t tokens = 0;
  std::vector<int64_t> seg_base;  // [key segment of the source]
};
HeldRows held_rows(const Layout& kv, const RingStep& st, bool packed = true);

// The runs of tokens a transfer carries: tokens [src, src + count) of the
// block as the sender holds it (`from`, its batch entries end to end) land at
// token dst of the block as the receiver holds it (`to`): per batch entry the
// receiver's rows in order, adjacent runs merged; a whole block is one run.
// Sender and receiver compute the same runs (one message each, K's then V's).
struct TokenRun {
  int64_t src = 0, dst = 0, count = 0;
};
std::vector<TokenRun> transfer_runs(const Layout& kv, const RingStep& from, const RingStep& to,
                                    int64_t batch, bool packed = true);

// Throws Error if the layouts have different rank counts.
RingSchedule make_ring_schedule(const Layout& q, const Layout& kv, const Mask& mask,
                                const ScheduleOptions& opt = {});

// The tokens of `rank` at positions inside `ranges`.
std::vector<Chunk> chunks_in(const Layout& l, int rank, const std::vector<PosRange>& ranges);

}  // namespace ringattn
