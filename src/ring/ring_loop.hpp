// The ring loop, written once (ring.cpp), and the seam through which a pass
// says what it computes on the blocks it holds: the forward attends and merges
// (ring.cpp), the backward computes gradients and passes dK/dV accumulators on
// (ring_backward.cpp). Internal to the ring.
//
// The loop owns the schedule's K/V transfers (posts, receive buffers, waits)
// and the timing; a visitor adds its own messages at four points of a step:
//
//   step s:  v.begin_step(s)                  post what arrives during the step
//            post the K/V transfers of step s
//            for each work item: v.compute(...)
//            v.end_compute(s)                 after the step's compute
//            wait for the K/V that the next step holds
//            v.end_step(s)                    wait for the visitor's messages of the step
//   after the last step: v.finish()
//
// Every visitor hook that waits must only wait for messages posted by other
// ranks at an earlier point of the same or an earlier step (the deadlock-free
// rule the loop itself follows: everything a wait needs is posted before any
// rank can block on it).
#pragma once

#include <cstdint>

#include "ringattn/comm.hpp"
#include "ringattn/ring.hpp"

namespace ringattn::detail {

class RingVisitor {
 public:
  virtual ~RingVisitor() = default;
  virtual void begin_step(int /*s*/) {}
  // One (query segment, key segment) pair of batch entry b against the held
  // block: a holds the kernel's arguments (q, k, v or kq, vq set; batch 1),
  // q_row0 the segment's first local query row, k_row0 its first row in the
  // held block (of the source rank's tokens).
  virtual KernelStats compute(int s, const RingStep& st, const AttentionArgs& a, int64_t b,
                              int64_t q_row0, int64_t k_row0) = 0;
  virtual void end_compute(int /*s*/) {}
  virtual void end_step(int /*s*/) {}
  virtual void finish() {}
  // Seconds the visitor blocked on its own messages (added to the ring's wait).
  double waited_s = 0;
  // Bytes the visitor sent (added to RingMetrics::bytes_sent).
  int64_t bytes_sent = 0;
};

// Runs the schedule on comm: every rank calls it with the same schedule.
// Fills m's K/V figures (steps, bytes, waits, compute, tiles, pairs).
void run_ring(Communicator& comm, RingEngine& eng, const RingSchedule& sch, const RingProblem& p,
              RingVisitor& v, RingMetrics& m);

}  // namespace ringattn::detail
