// Means of aligned key blocks over the keys of every rank (internal to the
// hierarchical stage). Block b covers global key positions [b s, (b + 1) s).
//
//   1. every rank sums its K (and V) rows per block it touches (float64)
//   2. the partial sums go to each block's owner (all-to-all): the rank that
//      holds the block's first position (striped layouts: b mod P)
//   3. each owner adds them up and rounds the means to the storage dtype
//   4. the owners' means and counts are all-gathered once
// Memory: the table, O(N / s); the partial sums, O(local tokens / s + segments).
#pragma once

#include <cstdint>

#include "ringattn/comm.hpp"
#include "ringattn/memory.hpp"
#include "ringattn/ring.hpp"

namespace ringattn::stage {

struct BlockMeans {
  int64_t size = 0;            // s, tokens per block
  int64_t blocks = 0;          // ceil(Nk / s)
  Buffer k, v;                 // [B, blocks, Hkv, D] storage dtype (v empty when not asked)
  std::vector<int64_t> count;  // [blocks] keys averaged (0: the block has none)
  int64_t bytes_sent = 0;      // this rank's share of the exchanges
};

// Collective. exclude_shared: sinks and global keys are left out of the means
// (the levels); otherwise every key counts (routing). with_v: also V.
BlockMeans gather_block_means(Communicator& comm, const RingProblem& p, int64_t s,
                              bool exclude_shared, bool with_v);

}  // namespace ringattn::stage
