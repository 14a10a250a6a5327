// Ring attention: exact attention of a sequence split over the ranks of a
// communicator, with K/V blocks moving between ranks.
//
//   gather shared rows (sinks, global keys; global queries)   if the schedule has any
//   for s in 0 .. steps-1:                       (steps from the RingSchedule)
//       post the transfers of step s + 1: irecv(block <- recv_from), isend(block -> send_to)
//       for each (query segment, key segment) the schedule lists for step s:
//           state = merge(state, kernel(Q segment, held K/V segment, ring mask))
//       at step 0 also: queries x shared keys; global queries x own keys
//       wait for the transfers; the received block is held next
//   send the global queries' partial states to their owners, merge them by LSE
//
// With a quantized wire format (RingProblem::kv_wire) the blocks travel as
// INT8/INT4 codes plus scales: each rank quantizes its own block once, up front.
//
// Step 0 computes on the caller's own K/V; later steps on two receive buffers
// that alternate (double buffering), so the next transfer is in flight during
// the current compute; the double ring (schedule.hpp) posts a round's transfer
// across nodes at its first step and holds two more buffers while it flies. K and V travel as two
// messages (tags 2s, 2s + 1). Sends and receives are all non-blocking and posted before any wait:
// deadlock-free for any P, including P = 1. Only the Hkv heads travel: GQA/MQA shrink the traffic
// by Hq / Hkv. The schedule picks the transfer (ring: neighbours pass blocks on; direct: owners
// send a block only to ranks that need it).
//
// All compute goes through a RingEngine (CPU, or CUDA on device buffers): this
// is the only copy of the loop.
//
// Memory per rank: local Q, K, V, O, LSE plus min(2, steps - 1) K/V blocks (a
// double ring: up to 4) of
// the largest rank's size, one segment's partial state, and the shared rows
// (at most one rank's share, else they ride the ring): O(N / P).
#pragma once

#include <cstdint>
#include <vector>

#include "ringattn/attention.hpp"
#include "ringattn/comm.hpp"
#include "ringattn/kernel.hpp"
#include "ringattn/layout.hpp"
#include "ringattn/ring_engine.hpp"
#include "ringattn/schedule.hpp"

namespace ringattn {

// One rank's part of a problem: the global problem (nq, nk are the whole
// sequences, the layouts' lengths), how it is split, and this rank's tensors.
struct RingProblem : AttentionProblem {
  RingProblem() = default;
  explicit RingProblem(const AttentionProblem& p) : AttentionProblem(p) {}
  const Layout* q_layout = nullptr;   // the query sequence over all ranks
  const Layout* kv_layout = nullptr;  // the key/value sequence over all ranks
  // Local tensors, in the engine's memory space:
  const void* q = nullptr;  // local [B, q_layout.tokens(rank), Hq, D], storage dtype
  const void* k = nullptr;  // local [B, kv_layout.tokens(rank), Hkv, D]
  const void* v = nullptr;
  // K/V on the wire (ringattn/quant.hpp; off: the storage dtype): blocks travel
  // as codes and scales, quantized once by their owner; the receiving kernel
  // dequantizes them while it packs its tiles. A rank's own block stays exact,
  // and so do the shared rows (sinks, global tokens: they travel once, in the
  // storage dtype). CPU engine only.
  QuantFormat kv_wire;
  // K/V held quantized (--kv-store): this rank's block in the kv_wire layout
  // (K codes, scales, zero points, then V likewise), k and v unused: every
  // attention, the own block's included, uses the dequantized values, and the
  // shared rows travel dequantized (in the storage dtype).
  const void* kv_stored = nullptr;
  // Kept keys beyond the mask (the K/V selection stage; AttentionArgs::keep),
  // over the whole problem: [B, keep.heads, Nk] flags by global key position.
  // Every kernel call of the ring (the shared keys' included) applies them.
  KeyKeep keep;
  // keep for the kernel call of batch entry b (a batch-1 block).
  KeyKeep keep_of(int64_t b) const {
    KeyKeep out = keep;
    if (out.on()) out.flags += b * out.heads * out.stride;
    return out;
  }
};

struct RingMetrics {
  double total_s = 0;        // wall time of the whole loop
  double compute_s = 0;      // in the kernel
  double merge_s = 0;        // merging partial states
  double wait_s = 0;         // blocked on transfers after compute
  int64_t bytes_sent = 0;    // K/V blocks plus this rank's share of the shared rows
  int64_t shared_bytes = 0;  // of which sinks, global keys, global queries and their states
  int steps = 0;             // steps run (rotations = steps - 1)
  int computed_steps = 0;    // steps with compute
  int64_t pairs = 0;         // visible (query, key) pairs computed per (batch, head)
  KernelStats tiles;
  std::vector<double> step_s;       // wall time of each step
  std::vector<double> step_wait_s;  // of which waiting, at its end, for the next step's block
  std::size_t block_bytes = 0;      // bytes of the largest K/V block in flight
  int64_t grad_bytes = 0;           // backward: of bytes_sent, the dK/dV accumulators (float32)
  int grad_messages = 0;            // backward: accumulators sent
};

// Bytes of the K/V block `rank` holds in p.kv_wire's format (K's part then V's;
// KIVI keys grouped by p.kv_layout), and that block quantized from p.k and p.v
// into `out` (what --kv-store keeps and the wire carries).
std::size_t kv_block_bytes(const RingProblem& p, int rank);
void quantize_kv_block(const RingProblem& p, int rank, void* out);

// Computes this rank's O [B, nq_local, Hq, D] and LSE [B, Hq, nq_local]
// (float32, in the engine's memory). Every rank of `comm` calls it with the
// same schedule (made from p's layouts and mask) and shapes.
RingMetrics ring_attention(Communicator& comm, RingEngine& engine, const RingSchedule& schedule,
                           const RingProblem& p, float* o, float* lse);
// The same on the CPU engine (host memory).
RingMetrics ring_attention(Communicator& comm, const RingSchedule& schedule, const RingProblem& p,
                           float* o, float* lse, const KernelOptions& kopt = {});

// The backward pass over the ring (ring_backward.cpp). Each rank keeps its Q,
// the forward's final O and LSE and dO (o, dO [B, nq_local, Hq, D], lse [B, Hq,
// nq_local], float32) and gets dq [B, nq_local, Hq, D] and the gradients of its
// own K/V block, dk and dv [B, nk_local, Hkv, D] (float32, overwritten).
//
// K/V blocks move exactly as in the forward (the same loop and schedule); the
// gradient of a block travels one step behind it: the ranks that compute on
// the block (in step order) form a chain, and each, after its compute, adds
// the accumulator it received from the previous one to its own term and sends
// the sum to the next, the last to the block's owner, which adds it to the
// term of its own queries. So dK/dV move between the same neighbours as the
// blocks (ring, direct, double ring), ranks with no work on a block neither
// relay nor wait for its accumulator, and the accumulator is sent only after
// the compute that adds to it: each message is in flight during the next
// step's compute instead of delaying the block it would travel with. Messages
// per rank: one per step with work on another rank's block, of 2 B n Hkv D
// float32 (n: that block's tokens; RingMetrics::grad_bytes).
//
// The schedule must have no shared part (ScheduleOptions::share = false: sinks
// and global tokens ride the ring as ordinary keys); quantized K/V, kept keys
// and hierarchies are refused (FieldError). Every rank calls it with the same
// schedule and shapes.
RingMetrics ring_attention_backward(Communicator& comm, RingEngine& engine,
                                    const RingSchedule& schedule, const RingProblem& p,
                                    const float* o, const float* lse, const float* dO, float* dq,
                                    float* dk, float* dv);
RingMetrics ring_attention_backward(Communicator& comm, const RingSchedule& schedule,
                                    const RingProblem& p, const float* o, const float* lse,
                                    const float* dO, float* dq, float* dk, float* dv,
                                    const KernelOptions& kopt = {});

}  // namespace ringattn
