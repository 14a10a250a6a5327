// Checks the O and LSE files a command wrote (attend, run) against the float64
// reference of the same q, k, v: shapes and dtypes, float32 error within the
// ring tolerances, 16-bit outputs within one rounding of the reference, and
// empty rows (LSE = -inf) where the reference has them. Shared by the CLI tests.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "ringattn/npy.hpp"
#include "ringattn/reference.hpp"

namespace ringattn::test {

inline constexpr double kFileTolO = 1e-5, kFileTolLse = 1e-4;  // float32 vs float64

// The problem the files hold: q [B, Nq, Hq, D] (or 3-d without B), k/v likewise.
struct FileProblem {
  DType dtype = DType::f32;
  bool batched = true;  // 4-d files; 3-d otherwise (B = 1)
  int64_t b = 1, nq = 0, nk = 0, hq = 1, hkv = 1, d = 0;
  bool causal = false;
  float scale = 0.0f;  // 0: default
};

inline void expect_outputs_match_reference(const FileProblem& c, const Tensor& q, const Tensor& k,
                                           const Tensor& v, const std::string& o_path,
                                           const std::string& lse_path) {
  const Tensor o = read_npy(o_path);
  const Tensor lse = read_npy(lse_path);
  EXPECT_EQ(o.dtype, c.dtype);
  EXPECT_EQ(o.shape, q.shape);
  EXPECT_EQ(lse.dtype, DType::f32);
  const std::vector<int64_t> lse_shape =
      c.batched ? std::vector<int64_t>{c.b, c.hq, c.nq} : std::vector<int64_t>{c.hq, c.nq};
  EXPECT_EQ(lse.shape, lse_shape);

  AttentionArgs a;
  a.batch = c.b, a.nq = c.nq, a.nk = c.nk, a.hq = c.hq, a.hkv = c.hkv, a.head_dim = c.d;
  a.dtype = c.dtype, a.q = q.data.data(), a.k = k.data.data(), a.v = v.data.data();
  a.scale = c.scale;
  a.mask = c.causal ? Mask::causal(c.nk - c.nq) : Mask::none();
  const ReferenceResult ref = reference_attention(a);
  std::vector<float> o32(static_cast<std::size_t>(o.numel()));
  for (int64_t i = 0; i < o.numel(); ++i) o32[static_cast<std::size_t>(i)] = o.get(i);
  const float* l = lse.as<float>();
  if (c.dtype == DType::f32) {
    const ErrorStats e = compare_to_reference(a, o32.data(), l, ref);
    EXPECT_LE(e.o_rel_fro, kFileTolO);
    EXPECT_LE(e.lse_max_abs, kFileTolLse);
    EXPECT_EQ(e.lse_mismatch, 0);
  } else {  // each element is the float32 result rounded once to the 16-bit type
    const double ulp = c.dtype == DType::f16 ? std::ldexp(1.0, -10) : std::ldexp(1.0, -7);
    for (std::size_t i = 0; i < o32.size(); ++i)
      ASSERT_LE(std::abs(o32[i] - ref.o[i]), ulp * std::abs(ref.o[i]) + 1e-5) << "element " << i;
    for (std::size_t i = 0; i < ref.lse.size(); ++i)
      if (std::isfinite(ref.lse[i])) {
        ASSERT_NEAR(l[i], ref.lse[i], kFileTolLse) << "row " << i;
      }
  }
  for (std::size_t i = 0; i < ref.lse.size(); ++i)  // empty rows agree too
    if (std::isinf(ref.lse[i])) {
      EXPECT_TRUE(std::isinf(l[i]) && l[i] < 0) << "row " << i;
    }
}

}  // namespace ringattn::test
