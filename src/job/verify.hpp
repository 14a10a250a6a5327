// The job's verify check (`ringattn run --verify`): rank 0 runs the single-rank kernel on the whole
// problem (O(N) memory on rank 0 only), timed: that time is T1 of the
// efficiency T1 / (P T_ring). Every rank's rows, as they stream to rank 0
// after the ring, are compared against it: relative Frobenius error of O and
// max |dLSE| (ErrorAccumulator), within the dtype's tolerance (ringattn/reference.hpp).
#pragma once

#include "ringattn/job.hpp"
#include "ringattn/kernel.hpp"
#include "ringattn/layout.hpp"
#include "ringattn/memory.hpp"
#include "ringattn/reference.hpp"

namespace ringattn::job {

class SingleRankCheck {
 public:
  // Loads (or generates) the whole problem and runs attention_forward once.
  // kvl: how the run splits K/V (KIVI keys stored quantized are grouped as its
  // ranks hold them).
  SingleRankCheck(const JobSpec& cfg, const KernelOptions& kopt, const Layout& kvl);

  double seconds() const { return seconds_; }  // T1
  // Compares rank `rank`'s rows (o [B, n, Hq, D], lse [B, Hq, n] in ql's local order).
  void compare(const Layout& ql, int rank, const float* o, const float* lse);
  // The errors over every row compared so far.
  ErrorStats errors() const { return acc_.stats(); }
  // K/V selection: flags of `keep` ([B, Hsel, Nk]) that differ from the single-rank run's.
  int64_t keep_differences(const std::vector<uint8_t>& keep) const;

 private:
  const JobSpec& cfg_;
  Buffer o_, lse_;  // the single-rank result [B, Nq, Hq, D], [B, Hq, Nq]
  double seconds_ = 0;
  std::vector<uint8_t> keep_;  // K/V selection: the single-rank run's kept set
  ErrorAccumulator acc_;
};

}  // namespace ringattn::job
