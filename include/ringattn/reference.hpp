// The independent float64 reference: a straightforward row-by-row attention
// in double precision, with no tiling, no online softmax and no shared code
// with the kernel beyond the Mask::allows predicate. It holds one row of
// scores (Nk doubles) at a time, never Nq x Nk.
//
// Inputs are read through their storage dtype (so float16/bfloat16 inputs are
// taken exactly as stored). Outputs: o [B, Nq, Hq, D] and lse [B, Hq, Nq] as
// doubles; empty rows give O = 0, LSE = -inf.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ringattn/attention.hpp"

namespace ringattn {

struct ReferenceResult {
  std::vector<double> o;    // [B, Nq, Hq, D]
  std::vector<double> lse;  // [B, Hq, Nq]
};

ReferenceResult reference_attention(const AttentionArgs& args);

// Only the listed query rows (local indices into Nq), for every batch and head:
// o is [B, rows.size(), Hq, D] and lse [B, Hq, rows.size()]. For sampling the
// error of runs too large to check in full.
ReferenceResult reference_attention_rows(const AttentionArgs& args,
                                         const std::vector<int64_t>& rows);

// Error of a float32 result against the reference, over the given rows
// (all rows when `rows` is empty). o_f32 [B, Nq, Hq, D], lse_f32 [B, Hq, Nq].
struct ErrorStats {
  double o_rel_fro = 0;       // ||O - O_ref||_F / ||O_ref||_F  (absolute if ||O_ref|| == 0)
  double o_max_abs = 0;       // max |O - O_ref|
  double lse_max_abs = 0;     // max |LSE - LSE_ref| over rows where both are finite
  double lse_max_scaled = 0;  // max |LSE - LSE_ref| / max(1, |LSE_ref|): what tolerances bound
  int64_t lse_mismatch = 0;   // rows where exactly one of LSE, LSE_ref is -inf, or any NaN
};
ErrorStats compare_to_reference(const AttentionArgs& args, const float* o_f32, const float* lse_f32,
                                const ReferenceResult& ref, const std::vector<int64_t>& rows = {});

// The one accumulator of errors that every check uses (compare_to_reference,
// run's --verify and --check-rows, the demo and benchmarks): one (row, head)
// at a time, in any order. A NaN anywhere fails: it makes o_max_abs and
// o_rel_fro NaN and counts the row as an LSE mismatch; so does an LSE pair
// that is neither both finite nor both -inf (an empty row on one side only).
class ErrorAccumulator {
 public:
  // d values of O against the reference's, and the row's LSE pair.
  void add_row(const float* o, const double* o_ref, int64_t d, double lse, double lse_ref);
  void add_row(const float* o, const float* o_ref, int64_t d, double lse, double lse_ref);
  ErrorStats stats() const;

 private:
  template <class T>
  void add(const float* o, const T* o_ref, int64_t d, double lse, double lse_ref);
  double err2_ = 0, ref2_ = 0;
  bool nan_ = false;
  ErrorStats st_;
};

// Accepted error of a result against the float64 reference on the same
// stored inputs, derived from the computation: 16-bit inputs convert to
// float32 exactly and every kernel accumulates in float32, so a float32
// result has the float32 bound whatever the storage dtype. Kernels that round
// P to the storage type before P V (the GPU kernel) add about one ulp of it
// to O; a result stored in a 16-bit dtype (an O file) adds half an ulp of it.
enum class PRounding : uint8_t { float32, storage };
struct Tolerance {
  double o_rel_fro;    // relative Frobenius norm of the O error
  double lse_max_abs;  // max |dLSE|, natural log; relative where |LSE| > 1 (lse_max_scaled)
};
Tolerance tolerance_for(DType dtype, PRounding p = PRounding::float32);
// tolerance_for plus half an ulp of `dtype` in O: for O rounded to the dtype.
Tolerance stored_tolerance(DType dtype, PRounding p = PRounding::float32);
double half_ulp(DType dtype);  // relative: 2^-24, 2^-11, 2^-8
// Within tolerance, and no row where LSE is NaN or empty on one side only.
bool within(const ErrorStats& e, const Tolerance& t);
// "O rel. Frobenius 1.2e-07 (tolerance 1e-05), max |dLSE| 4.8e-07 (tolerance 1e-04)", the
// LSE error also relative where |LSE| > 1, mismatched rows if any.
std::string error_text(const ErrorStats& e, const Tolerance& t);

}  // namespace ringattn
