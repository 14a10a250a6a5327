// The backward pass in a job (JobSpec::backward): rank 0's gradient files and
// the gradients' checks. Gradients stream to rank 0 one rank at a time like O
// (job/outputs.hpp): dQ rows in the query layout, dK and dV rows in the key layout.
#pragma once

#include <optional>
#include <vector>

#include "ringattn/comm.hpp"
#include "ringattn/job.hpp"
#include "ringattn/kernel.hpp"
#include "ringattn/layout.hpp"
#include "ringattn/memory.hpp"
#include "ringattn/npy_out.hpp"

namespace ringattn::job {

// dQ [B, Nq, Hq, D] and dK, dV [B, Nk, Hkv, D] files in the run's dtype or
// float32 (JobSpec::grad_f32), rows placed by global position.
class GradOutputs {
 public:
  explicit GradOutputs(const JobSpec& cfg);
  static void check_writable(const JobSpec& cfg);
  void write_q_rows(const Layout& ql, int rank, const float* dq);
  void write_kv_rows(const Layout& kvl, int rank, const float* dk, const float* dv);
  void commit();

 private:
  const JobSpec& cfg_;
  std::optional<NpyOutFile> dq_, dk_, dv_;
};

// Sums of squared differences and of squared references of one gradient.
struct GradError {
  double diff2 = 0, ref2 = 0;
  void add(double x, double ref) {
    diff2 += (x - ref) * (x - ref);
    ref2 += ref * ref;
  }
  double rel() const;  // sqrt(diff2 / ref2) (absolute when ref2 is 0)
};

// verify: rank 0 runs the single-rank kernel forward and backward on the whole
// problem (O(N) memory there) and compares every rank's rows with them.
class GradVerify {
 public:
  GradVerify(const JobSpec& cfg, const KernelOptions& kopt);
  void compare_q(const Layout& ql, int rank, const float* dq);
  void compare_kv(const Layout& kvl, int rank, const float* dk, const float* dv);
  GradCheck result() const;

 private:
  const JobSpec& cfg_;
  Buffer dq_, dk_, dv_;  // the single-rank gradients
  double seconds_ = 0;
  GradError eq_, ek_, ev_;
};

// check_rows: the float64 reference of dQ on sampled query rows and of dK, dV
// on sampled keys (per batch and head), on rank 0, streaming the inputs in
// windows (O(window) memory besides O(N Hq) of LSE and Delta).
//   dQ rows: independent of the run: each row's forward (LSE, O, Delta =
//     dO . O) and then dQ, in float64 from the stored inputs.
//   dK, dV rows: sum over every query that sees the key, with that query's
//     LSE and Delta taken from the run (its float32 O and LSE, which the
//     forward's own check covers: recomputing every query's LSE in float64
//     would cost the whole attention).
class GradSampled {
 public:
  GradSampled(const JobSpec& cfg, int64_t rows);
  // Every rank's LSE [B, Hq, n] and Delta [B, Hq, n] rows (ql's local order).
  void take_rows(const Layout& ql, int rank, const float* lse, const float* delta);
  void compare_q(const Layout& ql, int rank, const float* dq);
  // After every take_rows: the keys' reference, then each rank's dK, dV.
  void compare_kv(const Layout& kvl, int rank, const float* dk, const float* dv);
  GradCheck result() const;

 private:
  void reference_keys();
  const JobSpec& cfg_;
  std::vector<int64_t> q_rows_, k_rows_;  // sampled global positions
  std::vector<double> ref_dq_;            // [B, q_rows, Hq, D]
  std::vector<double> ref_dk_, ref_dv_;   // [B, k_rows, Hkv, D]
  std::vector<float> lse_, delta_;        // [B, Hq, Nq] from the run
  bool keys_done_ = false;
  GradError eq_, ek_, ev_;
};

// Rank 0's consumers of the gradients, each present only where the job asks
// for it (JobSpec::backward: files, verify, check_rows); on other ranks none.
struct GradCollector {
  std::optional<GradOutputs> outputs;
  std::optional<GradVerify> verify;
  std::optional<GradSampled> sampled;

  GradCollector(const JobSpec& spec, const KernelOptions& kopt, int rank);
  // Every rank's rows to rank 0, one rank at a time (a collective: every rank
  // calls it): for the sampled check each query's LSE and Delta = dO . O, then
  // dQ, then dK and dV. This rank's rows: o, lse, d_o, dq in ql's local order
  // (ql.tokens(this rank) of them), dkv: dK then dV of its keys in kvl's.
  void gather(Communicator& comm, const Layout& ql, const Layout& kvl, const float* o,
              const float* lse, const float* d_o, const float* dq, const float* dkv);

 private:
  const JobSpec& spec_;
};

// The gradients' relative Frobenius tolerance: float32 accumulation whatever
// the storage dtype, as the kernel's O (ringattn/reference.hpp's tolerance).
double grad_tolerance(const JobSpec& cfg);

}  // namespace ringattn::job
