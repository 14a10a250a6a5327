// The ring schedule: which K/V block meets which queries at which step, which
// steps need no compute, and how many steps the ring must run. A pure function
// of (query layout, key layout, mask): no attention runs here, so it is
// unit-tested on its own, and the planner can evaluate it for any P.
//
// At step s (0 <= s < steps) rank r holds the K/V block that originated on rank
// (r - s) mod P; after each step blocks move to rank r + 1. For every pair of
// (query segment of r, key segment of the held block) the schedule records the
// mask's verdict on the whole pair (empty pairs are dropped) and the number of
// visible (query, key) pairs, the compute each rank will do.
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
};

struct RingStep {
  int source = 0;                 // rank whose K/V block is held at this step
  std::vector<SegmentWork> work;  // empty: nothing to compute at this step
  int64_t pairs = 0;
};

struct RingSchedule {
  int ranks = 1;
  int steps = 1;                                // steps run; rotations = steps - 1
  std::vector<std::vector<RingStep>> per_rank;  // [rank][step]

  const RingStep& step(int rank, int s) const {
    return per_rank[static_cast<std::size_t>(rank)][static_cast<std::size_t>(s)];
  }
  int64_t rank_pairs(int rank) const;  // visible pairs the rank computes
  int computed_steps(int rank) const;  // steps with work
  // max over ranks of rank_pairs / mean: 1.0 is perfectly balanced.
  double imbalance() const;
};

// Throws Error if the layouts have different rank counts.
RingSchedule make_ring_schedule(const Layout& q, const Layout& kv, const Mask& mask);

}  // namespace ringattn
