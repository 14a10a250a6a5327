// The shared part of a ring pass: sinks and global keys given to every rank
// once, and global queries attended on every rank and merged on their owner
// (see SharedPart in ringattn/schedule.hpp). Internal to the ring.
//
// Buffers (engine memory):
//   keys     rank-major: rank x contributes K [B, m_x, Hkv, D] then V likewise,
//            m_x = its tokens among the shared keys, in chunk order
//   queries  rank-major: rank x contributes Q [B, g_x, Hq, D]
//   states   owner-major partial states of the global queries: for owner x,
//            batch b, chunk c: O [count, Hq, D] then LSE [Hq, count] (float32)
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "ringattn/comm.hpp"
#include "ringattn/ring.hpp"

namespace ringattn::detail {

// Token-head rows of the K/V block held by `rank`.
int64_t block_rows(const RingProblem& p, int rank);

// Bytes of the K part and the V part of the block `rank` sends: K [B, n, Hkv, D]
// then V likewise, in the storage dtype or the wire format (codes, scales and
// zero points per row; KIVI keys: per group and channel).
struct BlockBytes {
  std::size_t k = 0, v = 0;
  std::size_t total() const { return k + v; }
};
BlockBytes block_bytes(const RingProblem& p, int rank);

// K and V of the block `rank` holds, quantized in the wire format at `base`
// (K's part, then V's).
struct QuantBlock {
  std::vector<int32_t> group_of;  // KIVI keys: each local token's group
  QuantRows k, v;
  QuantBlock(const RingProblem& p, int rank, char* base);
  QuantBlock(const QuantBlock&) = delete;  // k points into group_of
  QuantBlock& operator=(const QuantBlock&) = delete;
};

// The block held at st (ringattn/schedule.hpp: HeldRows): packed only for an
// unquantized wire.
HeldRows held_layout(const RingProblem& p, const RingStep& st);
// Bytes of the K and V parts of the block as held at st.
BlockBytes held_bytes(const RingProblem& p, const RingStep& st);

// One message of a transfer: `bytes` bytes of the K part (v = false) or the V
// part, from byte `src` of the sender's held part to byte `dst` of the receiver's.
struct Piece {
  bool v = false;
  std::size_t src = 0, dst = 0, bytes = 0;
};
// The messages that carry a block held as `from` (the sender's step) to a
// receiver that holds it as `to`: transfer_runs' runs of K, then of V; one per
// part for a quantized wire. Sender and receiver compute the same list; empty
// messages are left out.
std::vector<Piece> transfer_pieces(const RingProblem& p, const RingStep& from, const RingStep& to);

class SharedRows {
 public:
  // Gathers the shared keys and global query rows (collectives: every rank
  // calls it). Adds the bytes this rank sends to *bytes_sent.
  SharedRows(Communicator& comm, RingEngine& eng, const RingSchedule& sch, const RingProblem& p,
             int64_t* bytes_sent);

  // Local queries x shared keys (full mask), merged into acc; and global
  // queries x this rank's own keys (shared keys skipped), kept as partial states.
  KernelStats compute(const StateView& acc, EngineBuffer& work);
  // Sends the global queries' partial states to their owners and merges the
  // ones this rank owns into acc (a collective). Adds to *bytes_sent.
  void finish(const StateView& acc, int64_t* bytes_sent);

  // Largest batch-1 partial state compute() needs in `work`, in rows.
  int64_t max_rows() const;

 private:
  std::size_t kv_offset(int rank, int64_t b, int64_t chunk_off) const;
  std::size_t q_offset(int rank, int64_t b, int64_t chunk_off) const;
  std::size_t state_offset(int owner, int64_t b, int64_t chunk_off) const;  // in floats

  Communicator& comm_;
  RingEngine& eng_;
  const RingSchedule& sch_;
  const RingProblem& p_;
  std::size_t esz_;
  std::vector<int64_t> m_, g_;  // [rank] shared key tokens, global query tokens
  std::vector<std::size_t> kv_base_, q_base_, state_base_;
  std::unique_ptr<EngineBuffer> keys_, queries_, states_;
};

}  // namespace ringattn::detail
