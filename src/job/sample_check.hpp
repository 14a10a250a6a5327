// The job's sampled check (check_rows K; `ringattn run --check-rows K`): the float64 reference on K
// sampled query rows (per batch and head), for problems too large for --verify. Rank 0 computes
// each sampled row from only the keys the mask lets it see (generated on demand, or read from the
// files in windows), so it needs O(visible keys) memory, not O(N); every rank's rows are compared
// as they stream to rank 0.
#pragma once

#include <vector>

#include "ringattn/job.hpp"
#include "ringattn/layout.hpp"
#include "ringattn/reference.hpp"
#include "ringattn/schedule.hpp"

namespace ringattn::job {

// What a quantized wire (JobSpec::kv_wire) did to the keys a query saw: a key
// row crossed the wire (and is dequantized in the reference) unless the
// query's rank holds it, it is a shared row (sinks, global keys), or the query
// is a global one (attended on every rank against its own keys).
struct WireView {
  const Layout* ql = nullptr;
  const Layout* kvl = nullptr;
  const SharedPart* shared = nullptr;
};

// k positions of [0, n): the first and the last and an even spread between
// (mask edges sit there); all of them when k >= n.
std::vector<int64_t> sample_rows(int64_t n, int64_t k);

class SampledReferenceCheck {
 public:
  // keep: the K/V selection's kept set [B, Hsel, Nk] (cfg.select.on()): the
  // reference attends over it (drop) or uses the INT4 round trip of the rest.
  SampledReferenceCheck(const JobSpec& cfg, int64_t rows, const WireView& wire = {},
                        const uint8_t* keep = nullptr);
  // Compares the sampled rows that `rank` holds (o [B, n, Hq, D], lse [B, Hq, n]).
  void compare(const Layout& ql, int rank, const float* o, const float* lse);
  int64_t rows() const { return static_cast<int64_t>(rows_.size()); }
  ErrorStats errors() const { return acc_.stats(); }

 private:
  // One key/value row [Hkv, D] (as double) of batch b at position j.
  void load_kv(int64_t b, int64_t j0, int64_t n, std::vector<double>* k,
               std::vector<double>* v) const;
  std::vector<double> load_q(int64_t b, int64_t t) const;  // [Hq, D]
  // KIVI keys: K of keys [w0, w0 + wn) of batch b [wn, Hkv, D] after their owner's
  // quantization (per channel over its tokens of each range [gG, (g + 1) G)) and back.
  std::vector<double> kivi_keys(int64_t b, int64_t w0, int64_t wn, const Layout& kvl) const;

  const JobSpec& cfg_;
  std::vector<int64_t> rows_;    // sampled global query positions
  std::vector<double> ref_o_;    // [B, rows, Hq, D]
  std::vector<double> ref_lse_;  // [B, rows, Hq]
  ErrorAccumulator acc_;
};

}  // namespace ringattn::job
