// What `demo` and `bench-kernel` share: a randomly generated attention
// problem, the check of a result against the float64 reference (in full, or on
// sampled query rows when the problem is large), per-dtype tolerances, the
// --isa/--threads resolution and a stopwatch.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "cli/metrics.hpp"
#include "cli/problem_options.hpp"
#include "ringattn/kernel.hpp"
#include "ringattn/reference.hpp"
#include "ringattn/tensor.hpp"

namespace ringattn::cli {

// ProblemShape (an AttentionProblem and its mask options), shape_record and
// the problem options are in cli/problem_options.hpp.

// Arguments for q [B, Nq, Hq, D], k/v [B, Nk, Hkv, D] in the problem's dtype,
// with its mask (bottom-right aligned, positions from 0) and scale.
AttentionArgs make_args(const ProblemShape& shape, const void* q, const void* k, const void* v);

// Inputs drawn from a standard normal distribution in float32 (seeded), then
// rounded to the storage dtype. Owns its tensors; args() points into them.
struct RandomProblem {
  ProblemShape shape;
  Tensor q, k, v;
  AttentionArgs args() const {
    return make_args(shape, q.data.data(), k.data.data(), v.data.data());
  }
  std::size_t bytes() const { return q.bytes() + k.bytes() + v.bytes(); }
};
// Inputs: i.i.d. standard normal, or with a drifting mean (InputKind::drift):
// x[t, h, d] = 0.5 n + m(t, h, d), m a sum of three sines of periods 256, 4096
// and 65536 tokens with seeded phases per (head, channel), the same for q and
// k (a query resembles the keys near it; v drifts with its own phases). Block
// means then carry information, as in real sequences: what hierarchical
// summaries are for.
enum class InputKind : uint8_t { normal, drift };
RandomProblem make_random_problem(const ProblemShape& shape, uint64_t seed,
                                  InputKind kind = InputKind::normal);

// Float32 kernel outputs for a problem: o [B, Nq, Hq, D], lse [B, Hq, Nq].
struct Outputs {
  Buffer o, lse;
  explicit Outputs(const AttentionArgs& a);
  std::size_t bytes() const { return o.size() + lse.size(); }
};

// Up to `count` query rows in [0, nq), sorted: the first and last few rows
// (where mask edges sit) and a seeded random spread between. All rows when
// count >= nq.
std::vector<int64_t> sample_rows(int64_t nq, int64_t count, uint64_t seed);

// The reference result for a problem, computed once and compared against any
// number of float32 results (kernel, baseline).
class ReferenceCheck {
 public:
  // rows empty: every row. Otherwise only those rows are computed and compared.
  ReferenceCheck(const AttentionArgs& args, std::vector<int64_t> rows);
  ErrorStats compare(const float* o, const float* lse) const;
  bool full() const { return rows_.empty() || static_cast<int64_t>(rows_.size()) == args_.nq; }
  int64_t rows_checked() const {
    return rows_.empty() ? args_.nq : static_cast<int64_t>(rows_.size());
  }

 private:
  AttentionArgs args_;
  std::vector<int64_t> rows_;
  ReferenceResult ref_;
};

// Work of a full reference check, in multiply-adds: B * Hq * Nq * Nk * D.
double reference_work(const ProblemShape& shape);
// Up to this much work `demo` checks every row; above it, sampled rows.
inline constexpr double kFullCheckMaxWork = double(int64_t{1} << 28);

// Tolerance, tolerance_for and within: ringattn/reference.hpp.
// A --help paragraph listing the tolerances.
std::string tolerance_help();

// --isa value: parsed and checked against the CPU (Error if unsupported).
Isa resolve_isa(const std::string& name);
// The ISA a run really uses: best_isa() for automatic.
std::string effective_isa_name(Isa isa);
// --threads N > 0 caps every OpenMP region of the process (kernel, reference,
// conversions) at N threads; 0 leaves the OpenMP default (all cores).
void apply_threads(int threads);
// --threads value: 0 means all cores (the OpenMP default), reported as that count.
int effective_threads(int threads);

class Stopwatch {
 public:
  Stopwatch() : t0_(std::chrono::steady_clock::now()) {}
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  }

 private:
  std::chrono::steady_clock::time_point t0_;
};

}  // namespace ringattn::cli
