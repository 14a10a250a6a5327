// The float64 reference on cases small enough to check by hand.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "ringattn/error.hpp"
#include "ringattn/reference.hpp"

namespace ringattn {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kTol = 1e-12;

// Inputs of one call, float32, owned by the test.
struct Inputs {
  std::vector<float> q, k, v;
  AttentionArgs args;
};

Inputs make_inputs(int64_t B, int64_t Nq, int64_t Nk, int64_t Hq, int64_t Hkv, int64_t D) {
  Inputs in;
  in.q.assign(static_cast<std::size_t>(B * Nq * Hq * D), 0.0f);
  in.k.assign(static_cast<std::size_t>(B * Nk * Hkv * D), 0.0f);
  in.v.assign(static_cast<std::size_t>(B * Nk * Hkv * D), 0.0f);
  in.args.batch = B;
  in.args.nq = Nq;
  in.args.nk = Nk;
  in.args.hq = Hq;
  in.args.hkv = Hkv;
  in.args.head_dim = D;
  in.args.q = in.q.data();
  in.args.k = in.k.data();
  in.args.v = in.v.data();
  return in;
}

void fill_random(std::vector<float>& x, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (float& e : x) e = dist(rng);
}

// Index helpers for [B, N, H, D] and [B, H, N].
std::size_t idx4(int64_t b, int64_t i, int64_t h, int64_t d, int64_t N, int64_t H, int64_t D) {
  return static_cast<std::size_t>(((b * N + i) * H + h) * D + d);
}
std::size_t idx3(int64_t b, int64_t h, int64_t i, int64_t H, int64_t N) {
  return static_cast<std::size_t>((b * H + h) * N + i);
}

// (a) All keys equal: every visible key has the same score s, so O is the mean
// of V over the visible keys and LSE = log(count) + s.
TEST(Reference, EqualKeysGiveMeanOfVisibleValues) {
  const int64_t Nq = 3, Nk = 5, D = 4;
  for (bool causal : {false, true}) {
    Inputs in = make_inputs(1, Nq, Nk, 1, 1, D);
    fill_random(in.q, 1);
    fill_random(in.v, 2);
    const float k0[D] = {0.5f, -1.0f, 0.25f, 2.0f};
    for (int64_t j = 0; j < Nk; ++j)
      for (int64_t d = 0; d < D; ++d) in.k[static_cast<std::size_t>(j * D + d)] = k0[d];
    if (causal) in.args.mask = Mask::causal(Nk - Nq);
    const ReferenceResult r = reference_attention(in.args);
    for (int64_t i = 0; i < Nq; ++i) {
      const int64_t count = causal ? i + Nk - Nq + 1 : Nk;
      double s = 0.0;
      for (int64_t d = 0; d < D; ++d) s += double(in.q[i * D + d]) * double(k0[d]);
      s *= 0.5;  // 1 / sqrt(4)
      EXPECT_NEAR(r.lse[i], std::log(double(count)) + s, kTol) << "row " << i;
      for (int64_t d = 0; d < D; ++d) {
        double mean = 0.0;
        for (int64_t j = 0; j < count; ++j) mean += in.v[j * D + d];
        mean /= double(count);
        EXPECT_NEAR(r.o[i * D + d], mean, kTol) << "row " << i << " d " << d;
      }
    }
  }
}

// (b) Causal row 0 sees only key 0: O = v_0 and LSE = s_00 (default scale).
TEST(Reference, SingleVisibleKey) {
  const int64_t N = 4, D = 8;
  Inputs in = make_inputs(1, N, N, 1, 1, D);
  fill_random(in.q, 3);
  fill_random(in.k, 4);
  fill_random(in.v, 5);
  in.args.mask = Mask::causal();
  const ReferenceResult r = reference_attention(in.args);
  double s00 = 0.0;
  for (int64_t d = 0; d < D; ++d) s00 += double(in.q[d]) * double(in.k[d]);
  s00 /= std::sqrt(double(D));
  EXPECT_NEAR(r.lse[0], s00, kTol);
  for (int64_t d = 0; d < D; ++d) EXPECT_EQ(r.o[d], double(in.v[d]));
}

// (c) Rows with no visible key: O = 0 and LSE = -inf, without NaN.
TEST(Reference, FullyMaskedRows) {
  {  // an empty band masks everything
    Inputs in = make_inputs(2, 3, 4, 2, 1, 4);
    fill_random(in.q, 6);
    fill_random(in.k, 7);
    fill_random(in.v, 8);
    in.args.mask = Mask::band(5, 4);
    const ReferenceResult r = reference_attention(in.args);
    for (double x : r.o) EXPECT_EQ(x, 0.0);
    for (double l : r.lse) EXPECT_EQ(l, -kInf);
  }
  {  // causal with diag -1: row 0 sees nothing, row 1 sees key 0 only
    Inputs in = make_inputs(1, 3, 3, 1, 1, 2);
    fill_random(in.q, 9);
    fill_random(in.k, 10);
    fill_random(in.v, 11);
    in.args.mask = Mask::causal(-1);
    const ReferenceResult r = reference_attention(in.args);
    EXPECT_EQ(r.lse[0], -kInf);
    EXPECT_EQ(r.o[0], 0.0);
    EXPECT_EQ(r.o[1], 0.0);
    EXPECT_TRUE(std::isfinite(r.lse[1]));
    EXPECT_EQ(r.o[2], double(in.v[0]));
    EXPECT_EQ(r.o[3], double(in.v[1]));
  }
  {  // no keys at all
    Inputs in = make_inputs(1, 2, 0, 1, 1, 3);
    fill_random(in.q, 12);
    const ReferenceResult r = reference_attention(in.args);
    for (double x : r.o) EXPECT_EQ(x, 0.0);
    for (double l : r.lse) EXPECT_EQ(l, -kInf);
  }
}

// (d) Two queries, three keys, D = 2, scale 1, worked out by hand:
//   q = [1 0; 0 1], k = [1 0; 0 1; 1 1], v = [1 2; 3 4; 5 6]
//   scores row 0 = [1 0 1], row 1 = [0 1 1]
TEST(Reference, TwoByThreeByHand) {
  Inputs in = make_inputs(1, 2, 3, 1, 1, 2);
  in.q = {1, 0, 0, 1};
  in.k = {1, 0, 0, 1, 1, 1};
  in.v = {1, 2, 3, 4, 5, 6};
  in.args.q = in.q.data();
  in.args.k = in.k.data();
  in.args.v = in.v.data();
  in.args.scale = 1.0f;
  const double e = std::exp(1.0);
  {  // no mask
    const ReferenceResult r = reference_attention(in.args);
    const double z = 2 * e + 1;  // both rows: exp(1) + exp(0) + exp(1) in some order
    EXPECT_NEAR(r.lse[0], std::log(z), kTol);
    EXPECT_NEAR(r.lse[1], std::log(z), kTol);
    EXPECT_NEAR(r.o[0], (e * 1 + 3 + e * 5) / z, kTol);  // (6e + 3) / (2e + 1)
    EXPECT_NEAR(r.o[1], (e * 2 + 4 + e * 6) / z, kTol);  // (8e + 4) / (2e + 1) = 4
    EXPECT_NEAR(r.o[1], 4.0, kTol);
    EXPECT_NEAR(r.o[2], (1 + e * 3 + e * 5) / z, kTol);
    EXPECT_NEAR(r.o[3], (2 + e * 4 + e * 6) / z, kTol);
  }
  {  // causal, bottom-right: diag = Nk - Nq = 1, row 0 sees keys 0 and 1, row 1 all
    in.args.mask = Mask::causal(1);
    const ReferenceResult r = reference_attention(in.args);
    EXPECT_NEAR(r.lse[0], std::log(e + 1), kTol);
    EXPECT_NEAR(r.o[0], (e * 1 + 3) / (e + 1), kTol);
    EXPECT_NEAR(r.o[1], (e * 2 + 4) / (e + 1), kTol);
    EXPECT_NEAR(r.lse[1], std::log(2 * e + 1), kTol);
    EXPECT_NEAR(r.o[2], (1 + e * 3 + e * 5) / (2 * e + 1), kTol);
  }
}

// (e) GQA: Hq = 4, Hkv = 2, so heads 0, 1 use K/V head 0 and heads 2, 3 use
// K/V head 1 (not h % Hkv). K = 0 makes the weights uniform, so O is the mean
// of the V column of the right head: 2 for head 0 and 20 for head 1.
TEST(Reference, GqaHeadMapping) {
  const int64_t Nq = 2, Nk = 3, Hq = 4, Hkv = 2, D = 2;
  Inputs in = make_inputs(1, Nq, Nk, Hq, Hkv, D);
  fill_random(in.q, 13);
  for (int64_t j = 0; j < Nk; ++j)
    for (int64_t d = 0; d < D; ++d) {
      in.v[idx4(0, j, 0, d, Nk, Hkv, D)] = float(j + 1);         // 1, 2, 3
      in.v[idx4(0, j, 1, d, Nk, Hkv, D)] = float(10 * (j + 1));  // 10, 20, 30
      in.k[idx4(0, j, 1, d, Nk, Hkv, D)] = 0.0f;
    }
  // K of head 0 is non-zero: makes its LSE differ from head 1's log(3).
  for (int64_t j = 0; j < Nk; ++j) in.k[idx4(0, j, 0, 0, Nk, Hkv, D)] = 1.0f;
  const ReferenceResult r = reference_attention(in.args);
  for (int64_t i = 0; i < Nq; ++i) {
    for (int64_t h = 2; h < Hq; ++h) {  // K/V head 1: K = 0, uniform weights
      for (int64_t d = 0; d < D; ++d)
        EXPECT_NEAR(r.o[idx4(0, i, h, d, Nq, Hq, D)], 20.0, kTol) << i << " " << h;
      EXPECT_NEAR(r.lse[idx3(0, h, i, Hq, Nq)], std::log(3.0), kTol);
    }
    for (int64_t h = 0; h < 2; ++h) {  // K head 0 is the same for every key: uniform too
      for (int64_t d = 0; d < D; ++d) EXPECT_NEAR(r.o[idx4(0, i, h, d, Nq, Hq, D)], 2.0, kTol);
      const double s = double(in.q[idx4(0, i, h, 0, Nq, Hq, D)]) / std::sqrt(2.0);
      EXPECT_NEAR(r.lse[idx3(0, h, i, Hq, Nq)], std::log(3.0) + s, kTol);
    }
  }
}

// (f) Global positions: strides and offsets decide visibility exactly as
// Mask::allows. K = 0 (uniform weights) and v_j = j make O the mean index of
// the visible keys and LSE = log(count).
TEST(Reference, GlobalPositions) {
  const int64_t Nq = 3, Nk = 6;
  Inputs in = make_inputs(1, Nq, Nk, 1, 1, 1);
  fill_random(in.q, 14);
  for (int64_t j = 0; j < Nk; ++j) in.v[j] = float(j);
  in.args.qpos = {10, 2};  // 10, 12, 14
  in.args.kpos = {3, 3};   // 3, 6, 9, 12, 15, 18
  in.args.mask = Mask::band(-4, 1);
  // By hand: q 10 sees kp in [6, 11] = {6, 9} = keys {1, 2}; q 12: [8, 13] = {9, 12}
  // = keys {2, 3}; q 14: [10, 15] = {12, 15} = keys {3, 4}.
  {
    const ReferenceResult r = reference_attention(in.args);
    const double expect_o[Nq] = {1.5, 2.5, 3.5};
    for (int64_t i = 0; i < Nq; ++i) {
      EXPECT_NEAR(r.o[i], expect_o[i], kTol) << "row " << i;
      EXPECT_NEAR(r.lse[i], std::log(2.0), kTol) << "row " << i;
    }
  }
  // Several masks and layouts against a brute-force count through Mask::allows.
  const Mask masks[] = {Mask::none(), Mask::causal(), Mask::causal(-7), Mask::band(-5, 2),
                        Mask::band(3, 3)};
  const Positions qps[] = {{0, 1}, {10, 2}, {4, 3}};
  const Positions kps[] = {{0, 1}, {3, 3}, {7, 2}};
  for (const Mask& m : masks)
    for (const Positions& qp : qps)
      for (const Positions& kp : kps) {
        in.args.mask = m;
        in.args.qpos = qp;
        in.args.kpos = kp;
        const ReferenceResult r = reference_attention(in.args);
        for (int64_t i = 0; i < Nq; ++i) {
          int64_t count = 0;
          double sum = 0.0;
          for (int64_t j = 0; j < Nk; ++j)
            if (m.allows(qp.at(i), kp.at(j))) {
              ++count;
              sum += double(j);
            }
          if (count == 0) {
            EXPECT_EQ(r.lse[i], -kInf);
            EXPECT_EQ(r.o[i], 0.0);
          } else {
            EXPECT_NEAR(r.lse[i], std::log(double(count)), kTol);
            EXPECT_NEAR(r.o[i], sum / double(count), kTol);
          }
        }
      }
}

// (g) The row-sampled reference equals the same rows of the full one.
TEST(Reference, RowsMatchFull) {
  const int64_t B = 2, Nq = 9, Nk = 11, Hq = 4, Hkv = 2, D = 8;
  Inputs in = make_inputs(B, Nq, Nk, Hq, Hkv, D);
  fill_random(in.q, 15);
  fill_random(in.k, 16);
  fill_random(in.v, 17);
  in.args.mask = Mask::causal(-3);  // row i sees keys j <= i - 3: rows 0..2 are empty
  const ReferenceResult full = reference_attention(in.args);
  const std::vector<int64_t> rows = {7, 0, 3, 3, 8};
  const ReferenceResult part = reference_attention_rows(in.args, rows);
  const int64_t R = static_cast<int64_t>(rows.size());
  ASSERT_EQ(part.o.size(), static_cast<std::size_t>(B * R * Hq * D));
  ASSERT_EQ(part.lse.size(), static_cast<std::size_t>(B * Hq * R));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t r = 0; r < R; ++r)
      for (int64_t h = 0; h < Hq; ++h) {
        const int64_t i = rows[static_cast<std::size_t>(r)];
        EXPECT_EQ(part.lse[idx3(b, h, r, Hq, R)], full.lse[idx3(b, h, i, Hq, Nq)]);
        for (int64_t d = 0; d < D; ++d)
          EXPECT_EQ(part.o[idx4(b, r, h, d, R, Hq, D)], full.o[idx4(b, i, h, d, Nq, Hq, D)]);
      }
  EXPECT_THROW(reference_attention_rows(in.args, {Nq}), Error);
  EXPECT_THROW(reference_attention_rows(in.args, {-1}), Error);
}

// 16-bit inputs are read exactly as stored.
TEST(Reference, ReadsStorageDtype) {
  Inputs in = make_inputs(1, 5, 6, 2, 1, 4);
  fill_random(in.q, 18);
  fill_random(in.k, 19);
  fill_random(in.v, 20);
  for (DType t : {DType::f16, DType::bf16}) {
    std::vector<uint16_t> q16(in.q.size()), k16(in.k.size()), v16(in.v.size());
    Inputs rounded = in;
    for (std::size_t i = 0; i < in.q.size(); ++i) {
      store_from_f32(q16.data(), t, i, in.q[i]);
      rounded.q[i] = round_to(t, in.q[i]);
    }
    for (std::size_t i = 0; i < in.k.size(); ++i) {
      store_from_f32(k16.data(), t, i, in.k[i]);
      store_from_f32(v16.data(), t, i, in.v[i]);
      rounded.k[i] = round_to(t, in.k[i]);
      rounded.v[i] = round_to(t, in.v[i]);
    }
    rounded.args.q = rounded.q.data();
    rounded.args.k = rounded.k.data();
    rounded.args.v = rounded.v.data();
    AttentionArgs a16 = in.args;
    a16.dtype = t;
    a16.q = q16.data();
    a16.k = k16.data();
    a16.v = v16.data();
    const ReferenceResult r16 = reference_attention(a16);
    const ReferenceResult r32 = reference_attention(rounded.args);
    EXPECT_EQ(r16.o, r32.o);
    EXPECT_EQ(r16.lse, r32.lse);
  }
}

TEST(Reference, RejectsBadArguments) {
  Inputs in = make_inputs(1, 2, 2, 3, 2, 4);
  EXPECT_THROW(reference_attention(in.args), Error);  // 3 % 2 != 0
  in.args.hq = 2;
  in.args.head_dim = 0;
  EXPECT_THROW(reference_attention(in.args), Error);
}

// (h) compare_to_reference: ~zero error on the reference itself, and it sees
// an injected O error, an LSE error, a -inf mismatch either way and NaN.
TEST(Reference, CompareToReference) {
  const int64_t B = 2, Nq = 6, Nk = 5, Hq = 2, Hkv = 1, D = 4;
  Inputs in = make_inputs(B, Nq, Nk, Hq, Hkv, D);
  fill_random(in.q, 21);
  fill_random(in.k, 22);
  fill_random(in.v, 23);
  in.args.mask = Mask::causal(Nk - Nq);  // row 0 of every head is empty
  const ReferenceResult ref = reference_attention(in.args);
  std::vector<float> o(ref.o.begin(), ref.o.end()), lse(ref.lse.begin(), ref.lse.end());
  double norm = 0.0;
  for (double x : ref.o) norm += x * x;
  norm = std::sqrt(norm);

  const ErrorStats same = compare_to_reference(in.args, o.data(), lse.data(), ref);
  EXPECT_LT(same.o_rel_fro, 1e-7);  // float rounding only
  EXPECT_LT(same.o_max_abs, 1e-6);
  EXPECT_LT(same.lse_max_abs, 1e-6);
  EXPECT_EQ(same.lse_mismatch, 0);

  {  // O error in row 3 of batch 1, head 1
    std::vector<float> o2 = o;
    o2[idx4(1, 3, 1, 2, Nq, Hq, D)] += 0.5f;
    const ErrorStats st = compare_to_reference(in.args, o2.data(), lse.data(), ref);
    EXPECT_NEAR(st.o_max_abs, 0.5, 1e-6);
    EXPECT_NEAR(st.o_rel_fro, 0.5 / norm, 1e-6);
    EXPECT_EQ(st.lse_mismatch, 0);
    // Only rows {3} see it; rows {2, 4} do not. Against a full or a row reference alike.
    EXPECT_NEAR(compare_to_reference(in.args, o2.data(), lse.data(), ref, {3}).o_max_abs, 0.5,
                1e-6);
    EXPECT_LT(compare_to_reference(in.args, o2.data(), lse.data(), ref, {2, 4}).o_max_abs, 1e-6);
    const ReferenceResult part = reference_attention_rows(in.args, {4, 3});
    EXPECT_NEAR(compare_to_reference(in.args, o2.data(), lse.data(), part, {4, 3}).o_max_abs, 0.5,
                1e-6);
  }
  {  // LSE error
    std::vector<float> l2 = lse;
    l2[idx3(0, 1, 4, Hq, Nq)] += 0.25f;
    const ErrorStats st = compare_to_reference(in.args, o.data(), l2.data(), ref);
    EXPECT_NEAR(st.lse_max_abs, 0.25, 1e-6);
    EXPECT_EQ(st.lse_mismatch, 0);
  }
  {  // -inf where the reference is finite, and finite where it is -inf
    std::vector<float> l2 = lse;
    ASSERT_TRUE(std::isfinite(l2[idx3(0, 0, 2, Hq, Nq)]));
    ASSERT_EQ(l2[idx3(1, 1, 0, Hq, Nq)], -std::numeric_limits<float>::infinity());
    l2[idx3(0, 0, 2, Hq, Nq)] = -std::numeric_limits<float>::infinity();
    l2[idx3(1, 1, 0, Hq, Nq)] = 0.0f;
    const ErrorStats st = compare_to_reference(in.args, o.data(), l2.data(), ref);
    EXPECT_EQ(st.lse_mismatch, 2);
    EXPECT_LT(st.lse_max_abs, 1e-6);
  }
  {  // NaN in O and in LSE
    std::vector<float> o2 = o, l2 = lse;
    o2[idx4(0, 5, 0, 1, Nq, Hq, D)] = std::numeric_limits<float>::quiet_NaN();
    l2[idx3(1, 0, 1, Hq, Nq)] = std::numeric_limits<float>::quiet_NaN();
    const ErrorStats st = compare_to_reference(in.args, o2.data(), l2.data(), ref);
    EXPECT_EQ(st.lse_mismatch, 2);
    EXPECT_TRUE(std::isnan(st.o_rel_fro));
    EXPECT_TRUE(std::isnan(st.o_max_abs));
  }
  // A reference of the wrong size is an error, not a silent misread.
  const ReferenceResult part = reference_attention_rows(in.args, {1, 2});
  EXPECT_THROW(compare_to_reference(in.args, o.data(), lse.data(), part), Error);
}

// LSE errors are bounded relative to |LSE| where it is large (scores near 1e37 are
// finite, and their float32 LSE is exact only to ~1e30), absolutely below 1.
TEST(ErrorAccumulator, LseToleranceIsRelativeWhereLseIsLarge) {
  const float o[2] = {1.0f, 2.0f};
  const double ref[2] = {1.0, 2.0};
  ErrorAccumulator big;
  big.add_row(o, ref, 2, 1.0e37 + 1.0e30, 1.0e37);
  EXPECT_TRUE(within(big.stats(), tolerance_for(DType::f32)));
  EXPECT_NEAR(big.stats().lse_max_scaled, 1e-7, 1e-9);
  ErrorAccumulator small;
  small.add_row(o, ref, 2, 0.5 + 2e-4, 0.5);
  EXPECT_FALSE(within(small.stats(), tolerance_for(DType::f32)));
  ErrorAccumulator nan;
  const float bad[2] = {1.0f, std::nanf("")};
  nan.add_row(bad, ref, 2, 0.5, 0.5);
  EXPECT_FALSE(within(nan.stats(), tolerance_for(DType::f32)));
  EXPECT_EQ(nan.stats().lse_mismatch, 1);
}

// Result rows that are not numbers: NaN or inf in O, NaN or +inf LSE; an empty row is fine.
TEST(NonFinite, RowsAreCounted) {
  const float inf = std::numeric_limits<float>::infinity();
  // B = 1, n = 3, Hq = 1, D = 2
  const float o[6] = {0.0f, 0.0f, 1.0f, std::nanf(""), 1.0f, 2.0f};
  const float lse[3] = {-inf, 0.5f, inf};
  EXPECT_EQ(nonfinite_rows(o, lse, 1, 3, 1, 2), 2);
  const float ok_lse[3] = {-inf, 0.5f, 1.0f};
  const float ok_o[6] = {0.0f, 0.0f, 1.0f, 1.0f, 1.0f, 2.0f};
  EXPECT_EQ(nonfinite_rows(ok_o, ok_lse, 1, 3, 1, 2), 0);
}

}  // namespace
}  // namespace ringattn
