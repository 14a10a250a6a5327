// Two-level communication for clusters: ranks grouped in nodes of w (fast links
// inside a node, slower ones across), rank = node x w + local index.
//
// Schemes (--hierarchy):
//   flat      the ring over all P ranks, as without nodes.
//   double-ring  the ring over all P ranks in rounds (schedule.hpp,
//             Transfer::double_ring): inside a node the blocks pass between its
//             w ranks for w steps, while each rank's block of the round's first
//             step crosses to the same local rank of the next node, so every
//             transfer across nodes is in flight during a whole round (w steps
//             of compute), and a rank holds up to 4 K/V blocks instead of 2.
//   a2a-ring  inside each node an all-to-all trades tokens for heads: local rank
//             i gets every token of its node for query heads [i Hq / w, (i + 1)
//             Hq / w) and the K/V heads they use; then the ring runs across the
//             P / w nodes among the ranks of the same local index (the ring loop
//             itself, ring_attention, on the node-level layout Layout(kind, N,
//             P / w) and a sub-communicator); then the inverse all-to-all brings
//             each token's O (all heads) and LSE back to its rank.
//             K/V heads: with Hq / w a multiple of the group g = Hq / Hkv, rank i
//             gets the Hq / (w g) K/V heads of its query heads (each K/V head goes
//             to exactly one rank); with Hq / w dividing g (Hkv < w), rank i gets
//             the one K/V head of its query heads, so each K/V head is replicated
//             on the g w / Hq ranks that share it (it crosses the node's links
//             that many times). w must divide Hq, and one of the two must hold.
// Tokens: the nested layout (Layout::nested): the layout kind splits the
// sequence over the nodes (zigzag balances causal work across nodes), and each
// node's tokens are split contiguously over its w ranks.
//
// Per level: bytes and messages each rank sends inside its node and across nodes
// (counted on every point-to-point message, whatever the scheme).
#pragma once

#include <cstdint>
#include <string>

#include "ringattn/comm.hpp"
#include "ringattn/kernel.hpp"
#include "ringattn/ring.hpp"
#include "ringattn/schedule.hpp"

namespace ringattn {

enum class CommScheme : uint8_t { flat, double_ring, a2a_ring };
const char* comm_scheme_name(CommScheme s);  // "flat", "double-ring", "a2a-ring"
CommScheme parse_comm_scheme(const std::string& s, const std::string& field);  // FieldError

// The schedule options of a scheme over nodes of per_node ranks (double-ring:
// ScheduleOptions::per_node; the others: the defaults).
ScheduleOptions scheme_options(CommScheme s, int per_node);

// Throws FieldError("ranks_per_node") unless w >= 1 divides P, and for a2a-ring
// the heads split over w as described above.
void check_two_level(CommScheme s, int ranks, int per_node, int64_t hq, int64_t hkv);

// The query and K/V heads local rank i of a node gets under a2a-ring.
struct HeadShare {
  int64_t q0 = 0, nq = 0;    // query heads [q0, q0 + nq)
  int64_t kv0 = 0, nkv = 0;  // K/V heads [kv0, kv0 + nkv)
};
HeadShare a2a_heads(int64_t hq, int64_t hkv, int per_node, int local);

// Bytes and messages one rank sends, by level.
struct LevelTraffic {
  int64_t intra_bytes = 0, intra_messages = 0;  // to ranks of its node
  int64_t inter_bytes = 0, inter_messages = 0;  // to ranks of other nodes
  double a2a_s = 0;                             // a2a-ring: in the node all-to-alls
};

// A communicator that counts every point-to-point message it sends by level
// (the destination's node: rank / per_node), forwarding everything to `inner`.
class LevelCounter final : public Communicator {
 public:
  LevelCounter(Communicator& inner, int per_node, LevelTraffic* traffic)
      : inner_(inner), per_node_(per_node), t_(traffic) {}
  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  std::string backend() const override { return inner_.backend(); }
  Request isend(const void* buf, std::size_t bytes, int dest, int tag) override;
  Request irecv(void* buf, std::size_t bytes, int src, int tag) override {
    return inner_.irecv(buf, bytes, src, tag);
  }
  void allreduce(double* d, std::size_t n, ReduceOp op) override { inner_.allreduce(d, n, op); }
  void allreduce(int64_t* d, std::size_t n, ReduceOp op) override { inner_.allreduce(d, n, op); }
  void allgather(const void* in, std::size_t bytes, void* out) override;
  void allgatherv(const void* in, const std::vector<std::size_t>& counts, void* out) override;
  void alltoallv(const void* in, const std::vector<std::size_t>& send_counts, void* out,
                 const std::vector<std::size_t>& recv_counts) override;
  void barrier() override { inner_.barrier(); }
  [[noreturn]] void abort(const std::string& message, int exit_code) override;

 private:
  void count(int dest, std::size_t bytes);
  Communicator& inner_;
  int per_node_;
  LevelTraffic* t_;
};

// The a2a-ring scheme for this rank: p is the whole problem with its layouts
// Layout::nested(kind, N, P / w, w) and this rank's tensors (CPU engine, exact
// K/V in the storage dtype). O [B, n, Hq, D] and LSE [B, Hq, n] of this rank's
// tokens; the returned metrics are the node-level ring's (across nodes), with
// the all-to-alls' time in *traffic (and its messages counted there when comm
// is a LevelCounter).
RingMetrics a2a_ring_attention(Communicator& comm, int per_node, const RingProblem& p, float* o,
                               float* lse, const KernelOptions& kopt, LevelTraffic* traffic);

}  // namespace ringattn
