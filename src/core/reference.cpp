// The float64 reference (see ringattn/reference.hpp).
//
// For each batch b, query head h (K/V head hk = h / (Hq / Hkv)) and query row i
// at global position qp = qpos.at(i):
//   s_j = scale * sum_d q[b,i,h,d] * k[b,j,hk,d]    for keys j with mask.allows(qp, kpos.at(j))
//   LSE = m + log(sum_j exp(s_j - m)),  m = max_j s_j
//   O   = sum_j exp(s_j - m) v[b,j,hk,:] / sum_j exp(s_j - m)
// A row with no visible key gets O = 0, LSE = -inf. Everything is double;
// inputs are read through load_as_f32, so 16-bit inputs are taken exactly as
// stored. The K/V of one head are converted to double once per (b, hk), and
// the rows of the heads that share it are spread over OpenMP threads, each
// holding one row of Nk scores.
#include "ringattn/reference.hpp"

#include <fmt/format.h>

#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

#include "ringattn/error.hpp"

namespace ringattn {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

double softmax_scale(const AttentionArgs& a) {
  return a.scale != 0.0f ? static_cast<double>(a.scale)
                         : 1.0 / std::sqrt(static_cast<double>(a.head_dim));
}

// Attention of the listed rows; o is [B, R, Hq, D] and lse [B, Hq, R], R = rows.size().
void compute(const AttentionArgs& a, const std::vector<int64_t>& rows, double* o, double* lse) {
  const int64_t B = a.batch, Nk = a.nk, Hq = a.hq, Hkv = a.hkv, D = a.head_dim;
  const int64_t R = static_cast<int64_t>(rows.size());
  const int64_t group = Hq / Hkv;
  const double scale = softmax_scale(a);
  std::vector<double> kd(static_cast<std::size_t>(Nk * D));  // K of one head, [Nk, D]
  std::vector<double> vd(static_cast<std::size_t>(Nk * D));  // V of one head, [Nk, D]

  for (int64_t b = 0; b < B; ++b) {
    for (int64_t hk = 0; hk < Hkv; ++hk) {
#pragma omp parallel for schedule(static)
      for (int64_t j = 0; j < Nk; ++j) {
        const std::size_t src = static_cast<std::size_t>(((b * Nk + j) * Hkv + hk) * D);
        for (int64_t d = 0; d < D; ++d) {
          kd[static_cast<std::size_t>(j * D + d)] = load_as_f32(a.k, a.dtype, src + d);
          vd[static_cast<std::size_t>(j * D + d)] = load_as_f32(a.v, a.dtype, src + d);
        }
      }

#pragma omp parallel
      {
        std::vector<double> s(static_cast<std::size_t>(Nk));  // one row of scores
        std::vector<double> q(static_cast<std::size_t>(D));
        std::vector<double> acc(static_cast<std::size_t>(D));
#pragma omp for schedule(dynamic, 4)
        for (int64_t t = 0; t < group * R; ++t) {
          const int64_t h = hk * group + t / R;
          const int64_t r = t % R;
          const int64_t i = rows[static_cast<std::size_t>(r)];
          const int64_t qp = a.qpos.at(i);
          const std::size_t qsrc = static_cast<std::size_t>(((b * a.nq + i) * Hq + h) * D);
          for (int64_t d = 0; d < D; ++d) q[d] = load_as_f32(a.q, a.dtype, qsrc + d);

          double m = kNegInf;
          for (int64_t j = 0; j < Nk; ++j) {
            if (!a.mask.allows(qp, a.kpos.at(j))) {
              s[j] = kNegInf;
              continue;
            }
            const double* kj = kd.data() + j * D;
            double dot = 0.0;
#pragma omp simd reduction(+ : dot)
            for (int64_t d = 0; d < D; ++d) dot += q[d] * kj[d];
            s[j] = scale * dot;
            if (s[j] > m) m = s[j];
          }

          for (int64_t d = 0; d < D; ++d) acc[d] = 0.0;
          double out_lse = kNegInf;
          if (m != kNegInf) {  // at least one visible key
            double sum = 0.0;
            for (int64_t j = 0; j < Nk; ++j) {
              if (s[j] == kNegInf) continue;
              const double p = std::exp(s[j] - m);
              sum += p;
              const double* vj = vd.data() + j * D;
#pragma omp simd
              for (int64_t d = 0; d < D; ++d) acc[d] += p * vj[d];
            }
            for (int64_t d = 0; d < D; ++d) acc[d] /= sum;
            out_lse = m + std::log(sum);
          }
          double* orow = o + ((b * R + r) * Hq + h) * D;
          for (int64_t d = 0; d < D; ++d) orow[d] = acc[d];
          lse[(b * Hq + h) * R + r] = out_lse;
        }
      }
    }
  }
}

ReferenceResult run(const AttentionArgs& a, const std::vector<int64_t>& rows) {
  a.validate_args(HeadDims::any);
  for (int64_t i : rows)
    if (i < 0 || i >= a.nq)
      throw Error(fmt::format("reference: row {} is out of range [0, {})", i, a.nq));
  const std::size_t R = rows.size();
  ReferenceResult res;
  res.o.assign(static_cast<std::size_t>(a.batch * a.hq * a.head_dim) * R, 0.0);
  res.lse.assign(static_cast<std::size_t>(a.batch * a.hq) * R, kNegInf);
  if (R > 0) compute(a, rows, res.o.data(), res.lse.data());
  return res;
}

}  // namespace

ReferenceResult reference_attention(const AttentionArgs& args) {
  std::vector<int64_t> rows(static_cast<std::size_t>(args.nq > 0 ? args.nq : 0));
  for (std::size_t i = 0; i < rows.size(); ++i) rows[i] = static_cast<int64_t>(i);
  return run(args, rows);
}

ReferenceResult reference_attention_rows(const AttentionArgs& args,
                                         const std::vector<int64_t>& rows) {
  return run(args, rows);
}

// `ref` is either a full result ([B, Nq, ...]) or the output of
// reference_attention_rows for exactly `rows` ([B, rows.size(), ...]); when
// both sizes agree (rows.size() == Nq) it is taken as the latter.
// A row counts in lse_mismatch when LSE or any O element of it is NaN, or when
// the pair is neither both finite nor both -inf (e.g. exactly one is -inf).
// NaN in O also propagates into o_rel_fro and o_max_abs, so tolerances fail.
ErrorStats compare_to_reference(const AttentionArgs& args, const float* o_f32, const float* lse_f32,
                                const ReferenceResult& ref, const std::vector<int64_t>& rows) {
  args.validate_args(HeadDims::any);
  const int64_t B = args.batch, Nq = args.nq, Hq = args.hq, D = args.head_dim;
  std::vector<int64_t> sel = rows;
  if (sel.empty()) {
    sel.resize(static_cast<std::size_t>(Nq));
    for (std::size_t i = 0; i < sel.size(); ++i) sel[i] = static_cast<int64_t>(i);
  }
  for (int64_t i : sel)
    if (i < 0 || i >= Nq)
      throw Error(fmt::format("compare_to_reference: row {} is out of range [0, {})", i, Nq));
  const int64_t R = static_cast<int64_t>(sel.size());
  const auto lse_size = [&](int64_t n) { return static_cast<std::size_t>(B * Hq * n); };
  const bool ref_is_rows = !rows.empty() && ref.lse.size() == lse_size(R);
  const int64_t ref_n = ref_is_rows ? R : Nq;
  if (ref.lse.size() != lse_size(ref_n) || ref.o.size() != lse_size(ref_n) * D)
    throw Error(fmt::format(
        "compare_to_reference: reference holds {} LSE values; expected {} (all rows) or {} "
        "(the {} selected rows)",
        ref.lse.size(), lse_size(Nq), lse_size(R), R));

  ErrorAccumulator acc;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t r = 0; r < R; ++r) {
      const int64_t i = sel[static_cast<std::size_t>(r)];
      const int64_t ri = ref_is_rows ? r : i;
      for (int64_t h = 0; h < Hq; ++h)
        acc.add_row(o_f32 + ((b * Nq + i) * Hq + h) * D,
                    ref.o.data() + ((b * ref_n + ri) * Hq + h) * D, D,
                    lse_f32[(b * Hq + h) * Nq + i],
                    ref.lse[static_cast<std::size_t>((b * Hq + h) * ref_n + ri)]);
    }
  }
  return acc.stats();
}

template <class T>
void ErrorAccumulator::add(const float* o, const T* o_ref, int64_t d, double lse, double lse_ref) {
  bool row_nan = false;
  for (int64_t e = 0; e < d; ++e) {
    const double x = static_cast<double>(o[e]), y = static_cast<double>(o_ref[e]);
    const double diff = std::abs(x - y);
    row_nan = row_nan || std::isnan(diff);
    err2_ += diff * diff;
    ref2_ += y * y;
    if (diff > st_.o_max_abs) st_.o_max_abs = diff;
  }
  nan_ = nan_ || row_nan;
  const bool both_finite = std::isfinite(lse) && std::isfinite(lse_ref);
  const bool both_empty = lse == kNegInf && lse_ref == kNegInf;
  if (row_nan || std::isnan(lse) || std::isnan(lse_ref) || !(both_finite || both_empty))
    ++st_.lse_mismatch;
  else if (both_finite) {
    const double e = std::abs(lse - lse_ref);
    st_.lse_max_abs = std::max(st_.lse_max_abs, e);
    st_.lse_max_scaled = std::max(st_.lse_max_scaled, e / std::max(1.0, std::abs(lse_ref)));
  }
}

void ErrorAccumulator::add_row(const float* o, const double* o_ref, int64_t d, double lse,
                               double lse_ref) {
  add(o, o_ref, d, lse, lse_ref);
}

void ErrorAccumulator::add_row(const float* o, const float* o_ref, int64_t d, double lse,
                               double lse_ref) {
  add(o, o_ref, d, lse, lse_ref);
}

ErrorStats ErrorAccumulator::stats() const {
  ErrorStats st = st_;
  st.o_rel_fro = ref2_ > 0.0 ? std::sqrt(err2_) / std::sqrt(ref2_) : std::sqrt(err2_);
  if (nan_) st.o_max_abs = std::numeric_limits<double>::quiet_NaN();
  return st;
}

namespace {
// float32 accumulation over up to ~10^6 keys: measured errors are ~1e-7 (O) and ~1e-6 (LSE).
constexpr Tolerance kTolF32{1e-5, 1e-4};
// P rounded to the storage type before P V: about one ulp of it in O.
constexpr Tolerance kTolF16P{1e-3, 1e-4};   // ~ 1 ulp of float16 (2^-10)
constexpr Tolerance kTolBF16P{8e-3, 1e-4};  // ~ 1 ulp of bfloat16 (2^-7)
}  // namespace

double half_ulp(DType dtype) {
  switch (dtype) {
    case DType::f16:
      return 0x1p-11;  // 10 stored mantissa bits
    case DType::bf16:
      return 0x1p-8;  // 7 stored mantissa bits
    case DType::f32:
      break;
  }
  return 0x1p-24;
}

Tolerance tolerance_for(DType dtype, PRounding p) {
  if (p == PRounding::float32 || dtype == DType::f32) return kTolF32;
  return dtype == DType::f16 ? kTolF16P : kTolBF16P;
}

Tolerance stored_tolerance(DType dtype, PRounding p) {
  Tolerance t = tolerance_for(dtype, p);
  t.o_rel_fro += half_ulp(dtype);
  return t;
}

std::string error_text(const ErrorStats& e, const Tolerance& t) {
  const std::string lse =
      e.lse_max_scaled < e.lse_max_abs
          ? fmt::format("{:.2e} ({:.2e} relative to |LSE|)", e.lse_max_abs, e.lse_max_scaled)
          : fmt::format("{:.2e}", e.lse_max_abs);
  return fmt::format(
      "O rel. Frobenius {:.2e} (tolerance {:.0e}), max |dLSE| {} (tolerance {:.0e}){}", e.o_rel_fro,
      t.o_rel_fro, lse, t.lse_max_abs,
      e.lse_mismatch ? fmt::format(", {} mismatched rows", e.lse_mismatch) : std::string());
}

bool within(const ErrorStats& e, const Tolerance& t) {
  // Written so that NaN errors fail.
  return e.o_rel_fro <= t.o_rel_fro && e.lse_max_scaled <= t.lse_max_abs && e.lse_mismatch == 0;
}

}  // namespace ringattn
