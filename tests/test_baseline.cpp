// The materialised OpenBLAS baseline against the float64 reference.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "ringattn/baseline.hpp"
#include "ringattn/error.hpp"
#include "ringattn/memory.hpp"
#include "ringattn/reference.hpp"

namespace ringattn {
namespace {

constexpr double kORelTol = 1e-5;  // relative Frobenius error of O
constexpr double kLseTol = 1e-4;   // max |LSE error|
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct Case {
  int64_t batch, nq, nk, hq, hkv, d;
  bool causal;
  DType dtype = DType::f32;
};

const char* short_name(DType t) {
  switch (t) {
    case DType::f16:
      return "f16";
    case DType::bf16:
      return "bf16";
    default:
      return "f32";
  }
}

std::string case_name(const testing::TestParamInfo<Case>& info) {
  const Case& c = info.param;
  return "B" + std::to_string(c.batch) + "_q" + std::to_string(c.nq) + "_k" + std::to_string(c.nk) +
         "_h" + std::to_string(c.hq) + "x" + std::to_string(c.hkv) + "_d" + std::to_string(c.d) +
         (c.causal ? "_causal" : "_full") + "_" + short_name(c.dtype);
}

// Random inputs stored in `dtype` (16-bit inputs hold the rounded values).
struct Inputs {
  std::vector<uint8_t> q, k, v;
  AttentionArgs args;
};

std::vector<uint8_t> random_tensor(int64_t n, DType t, uint64_t seed) {
  std::vector<uint8_t> buf(static_cast<std::size_t>(n) * dtype_size(t));
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (int64_t i = 0; i < n; ++i)
    store_from_f32(buf.data(), t, static_cast<std::size_t>(i), dist(rng));
  return buf;
}

Inputs make_inputs(const Case& c, uint64_t seed) {
  Inputs in;
  in.q = random_tensor(c.batch * c.nq * c.hq * c.d, c.dtype, seed);
  in.k = random_tensor(c.batch * c.nk * c.hkv * c.d, c.dtype, seed + 1);
  in.v = random_tensor(c.batch * c.nk * c.hkv * c.d, c.dtype, seed + 2);
  AttentionArgs& a = in.args;
  a.batch = c.batch;
  a.nq = c.nq;
  a.nk = c.nk;
  a.hq = c.hq;
  a.hkv = c.hkv;
  a.head_dim = c.d;
  a.dtype = c.dtype;
  a.q = in.q.data();
  a.k = in.k.data();
  a.v = in.v.data();
  if (c.causal) a.mask = Mask::causal(c.nk - c.nq);
  return in;
}

class BaselineVsReference : public testing::TestWithParam<Case> {};

TEST_P(BaselineVsReference, MatchesReference) {
  const Case& c = GetParam();
  Inputs in = make_inputs(c, 1000 + static_cast<uint64_t>(c.nq * 31 + c.nk * 7 + c.d));
  const AttentionArgs& a = in.args;
  std::vector<float> o(static_cast<std::size_t>(c.batch * c.nq * c.hq * c.d), 123.0f);
  std::vector<float> lse(static_cast<std::size_t>(c.batch * c.hq * c.nq), 123.0f);
  baseline_attention(a, o.data(), lse.data(), 0);

  const ReferenceResult ref = reference_attention(a);
  const ErrorStats st = compare_to_reference(a, o.data(), lse.data(), ref);
  EXPECT_LE(st.o_rel_fro, kORelTol);
  EXPECT_LE(st.lse_max_abs, kLseTol);
  EXPECT_EQ(st.lse_mismatch, 0);

  // Causal with Nq > Nk: the first Nq - Nk rows see no key and must be exactly empty.
  const int64_t empty_rows = c.causal && c.nq > c.nk ? c.nq - c.nk : 0;
  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t h = 0; h < c.hq; ++h)
      for (int64_t i = 0; i < c.nq; ++i) {
        const float l = lse[static_cast<std::size_t>((b * c.hq + h) * c.nq + i)];
        if (i < empty_rows) {
          ASSERT_EQ(l, kNegInf) << "b " << b << " h " << h << " row " << i;
          for (int64_t d = 0; d < c.d; ++d)
            ASSERT_EQ(o[static_cast<std::size_t>(((b * c.nq + i) * c.hq + h) * c.d + d)], 0.0f);
        } else {
          ASSERT_TRUE(std::isfinite(l)) << "b " << b << " h " << h << " row " << i;
        }
      }
}

// Nq/Nk over {1, 7, 300, 1000} (equal and unequal, either larger, incl. more
// than one 512-row block), heads 8/8, 8/2, 4/1, D 16/64/128, none and causal.
INSTANTIATE_TEST_SUITE_P(
    Shapes, BaselineVsReference,
    testing::Values(Case{1, 1, 1, 8, 8, 16, false}, Case{1, 1, 1, 8, 8, 16, true},
                    Case{2, 7, 7, 8, 2, 64, true}, Case{1, 7, 300, 4, 1, 128, true},
                    Case{2, 300, 7, 8, 2, 16, true}, Case{1, 300, 300, 8, 8, 64, false},
                    Case{2, 300, 1000, 4, 1, 64, true}, Case{1, 1000, 1000, 8, 2, 128, true},
                    Case{1, 1000, 300, 4, 1, 16, false}, Case{2, 1000, 7, 8, 8, 16, true},
                    Case{1, 1, 1000, 8, 2, 128, false}, Case{1, 1000, 1, 4, 1, 64, true},
                    Case{2, 7, 1000, 8, 8, 16, false}, Case{1, 1000, 300, 8, 2, 64, true},
                    Case{1, 300, 1000, 8, 2, 64, true, DType::f16},
                    Case{2, 7, 300, 4, 1, 128, false, DType::bf16}),
    case_name);

// A band that masks everything, and no keys at all: every row is empty.
TEST(Baseline, FullyMaskedRows) {
  for (int64_t nk : {int64_t{0}, int64_t{9}}) {
    Inputs in = make_inputs(Case{2, 5, nk, 4, 2, 16, false}, 7);
    in.args.mask = Mask::band(5, 4);
    std::vector<float> o(2 * 5 * 4 * 16, 123.0f), lse(2 * 4 * 5, 123.0f);
    baseline_attention(in.args, o.data(), lse.data(), 1);
    for (float x : o) EXPECT_EQ(x, 0.0f);
    for (float l : lse) EXPECT_EQ(l, kNegInf);
  }
}

// Strided global positions and a band mask, checked against the reference.
TEST(Baseline, GlobalPositionsAndBand) {
  Inputs in = make_inputs(Case{1, 600, 500, 4, 2, 32, false}, 11);
  in.args.qpos = {1000, 3};
  in.args.kpos = {900, 4};
  in.args.mask = Mask::band(-300, 50);
  in.args.scale = 0.3f;
  std::vector<float> o(600 * 4 * 32), lse(4 * 600);
  baseline_attention(in.args, o.data(), lse.data(), 2);
  const ErrorStats st =
      compare_to_reference(in.args, o.data(), lse.data(), reference_attention(in.args));
  EXPECT_LE(st.o_rel_fro, kORelTol);
  EXPECT_LE(st.lse_max_abs, kLseTol);
  EXPECT_EQ(st.lse_mismatch, 0);
}

// Working memory is O(block_rows * Nk + Nk * D), never Nq x Nk.
TEST(Baseline, MemoryIsBlocked) {
  const int64_t nq = 2048, nk = 2048, d = 16;
  Inputs in = make_inputs(Case{1, nq, nk, 1, 1, d, true}, 13);
  std::vector<float> o(static_cast<std::size_t>(nq * d)), lse(static_cast<std::size_t>(nq));
  const std::size_t before = memory_in_use();
  memory_reset_peak();
  baseline_attention(in.args, o.data(), lse.data(), 0);
  const std::size_t used = memory_peak() - before;
  const std::size_t bound = sizeof(float) * static_cast<std::size_t>(512 * (nk + d) + 2 * nk * d);
  EXPECT_LE(used, bound + 4096);
  EXPECT_LT(used, sizeof(float) * static_cast<std::size_t>(nq * nk) / 2);
  EXPECT_EQ(memory_in_use(), before);
}

TEST(Baseline, RejectsBadArguments) {
  Inputs in = make_inputs(Case{1, 2, 2, 3, 2, 4, false}, 17);  // 3 % 2 != 0
  std::vector<float> o(2 * 3 * 4), lse(3 * 2);
  EXPECT_THROW(baseline_attention(in.args, o.data(), lse.data(), 1), Error);
}

// No timing thresholds: only that the measurement is a sane number.
TEST(Baseline, SgemmGflopsIsPositive) {
  const double g = measure_sgemm_gflops(1, 256, 1);
  EXPECT_TRUE(std::isfinite(g));
  EXPECT_GT(g, 0.0);
  EXPECT_THROW(measure_sgemm_gflops(1, 0, 1), Error);
}

}  // namespace
}  // namespace ringattn
