// The partial-state merge: exact reassembly of attention over split key sets.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "ringattn/error.hpp"
#include "ringattn/reference.hpp"
#include "ringattn/state.hpp"
#include "util.hpp"

namespace ringattn {
namespace {

using test::make_problem;
using test::run_kernel;

// Attention of the problem's queries against keys [j0, j1) only (copied out,
// as a rank would hold them: [B, j1 - j0, Hkv, D]).
test::Output attend_keys(const test::Problem& p, int64_t j0, int64_t j1) {
  AttentionArgs a = p.args;
  const int64_t row = a.hkv * a.head_dim, n = j1 - j0;
  Tensor k(DType::f32, {a.batch, n, a.hkv, a.head_dim}),
      v(DType::f32, {a.batch, n, a.hkv, a.head_dim});
  for (int64_t b = 0; b < a.batch; ++b)
    for (int64_t i = 0; i < n * row; ++i) {
      k.as<float>()[b * n * row + i] = p.k.as<float>()[(b * a.nk + j0) * row + i];
      v.as<float>()[b * n * row + i] = p.v.as<float>()[(b * a.nk + j0) * row + i];
    }
  a.k = k.data.data();
  a.v = v.data.data();
  a.nk = n;
  a.kpos = p.args.kpos.from(j0);
  return run_kernel(a);
}

StateView view(const AttentionArgs& a, test::Output& s) {
  return {s.o.data(), s.lse.data(), a.batch, a.nq, a.hq, a.head_dim};
}

void expect_reference(const AttentionArgs& a, const test::Output& s, const std::string& what) {
  const ReferenceResult ref = reference_attention(a);
  const ErrorStats e = compare_to_reference(a, s.o.data(), s.lse.data(), ref);
  EXPECT_LE(e.o_rel_fro, 1e-5) << what;
  EXPECT_LE(e.lse_max_abs, 1e-4) << what;
  EXPECT_EQ(e.lse_mismatch, 0) << what;
}

TEST(Merge, TwoWaySplitsEqualWholeAttention) {
  std::mt19937_64 rng(5);
  for (int causal = 0; causal < 2; ++causal)
    for (int it = 0; it < 6; ++it) {
      const int64_t nk = 50 + static_cast<int64_t>(rng() % 400);
      test::Problem p = make_problem(2, 120, nk, 4, 2, 32, DType::f32, 300 + it);
      // Causal with keys after the queries: splits near the end leave the
      // second side fully masked for every row, splits near 0 the first side
      // for the early rows.
      if (causal) p.args.mask = Mask::causal(nk - 120);
      const int64_t split = it == 0 ? 0 : it == 1 ? nk : 1 + static_cast<int64_t>(rng() % (nk - 1));
      test::Output a = attend_keys(p, 0, split);
      test::Output b = attend_keys(p, split, nk);
      test::Output ab = a, ba = b;
      merge_states(view(p.args, ab), view(p.args, b));
      merge_states(view(p.args, ba), view(p.args, a));
      const std::string what = "nk=" + std::to_string(nk) + " split=" + std::to_string(split) +
                               " causal=" + std::to_string(causal);
      expect_reference(p.args, ab, what);
      EXPECT_EQ(ab.o, ba.o) << "merge must be commutative: " << what;
      EXPECT_EQ(ab.lse, ba.lse) << what;
    }
}

TEST(Merge, ManyWaySplitsAnyOrder) {
  test::Problem p = make_problem(1, 200, 1000, 8, 1, 64, DType::f32, 77);
  p.args.mask = Mask::causal(800);
  const int64_t cuts[] = {0, 130, 131, 400, 777, 1000};
  std::vector<test::Output> parts;
  for (int i = 0; i + 1 < 6; ++i) parts.push_back(attend_keys(p, cuts[i], cuts[i + 1]));
  // Left fold, right fold and a shuffled order all reproduce the whole.
  test::Output left = parts[0];
  for (std::size_t i = 1; i < parts.size(); ++i)
    merge_states(view(p.args, left), view(p.args, parts[i]));
  test::Output right = parts.back();
  for (std::size_t i = parts.size() - 1; i-- > 0;)
    merge_states(view(p.args, right), view(p.args, parts[i]));
  test::Output shuffled = parts[3];
  for (std::size_t i : {1u, 4u, 0u, 2u})
    merge_states(view(p.args, shuffled), view(p.args, parts[i]));
  // Tree: (0+1) + (2+(3+4))
  test::Output t01 = parts[0], t34 = parts[3];
  merge_states(view(p.args, t01), view(p.args, parts[1]));
  merge_states(view(p.args, t34), view(p.args, parts[4]));
  test::Output t234 = parts[2];
  merge_states(view(p.args, t234), view(p.args, t34));
  merge_states(view(p.args, t01), view(p.args, t234));
  for (const test::Output* s : {&left, &right, &shuffled, &t01})
    expect_reference(p.args, *s, "order");
}

TEST(Merge, EmptyStatesStayEmptyWithoutNan) {
  const int64_t d = 8;
  std::vector<float> oa(d, 0.0f), ob(d, 0.0f);
  float la = -INFINITY;
  merge_row(oa.data(), &la, ob.data(), -INFINITY, d);
  EXPECT_EQ(la, -INFINITY);
  for (float x : oa) EXPECT_EQ(x, 0.0f);

  // empty + x = x and x + empty = x, exactly.
  std::vector<float> ox = {1, -2, 3, -4, 5, -6, 7, -8};
  float lx = 1.25f;
  merge_row(oa.data(), &la, ox.data(), lx, d);
  EXPECT_EQ(oa, ox);
  EXPECT_EQ(la, lx);
  std::vector<float> oy = ox;
  float ly = lx;
  merge_row(oy.data(), &ly, ob.data(), -INFINITY, d);
  EXPECT_EQ(oy, ox);
  EXPECT_EQ(ly, lx);
}

TEST(Merge, RowFormulaOnHandNumbers) {
  // Two single-key states with scores s1 = ln 1 = 0 and s2 = ln 3: weights 1/4, 3/4.
  std::vector<float> o1 = {4.0f, 0.0f}, o2 = {0.0f, 8.0f};
  float l1 = 0.0f;
  merge_row(o1.data(), &l1, o2.data(), std::log(3.0f), 2);
  EXPECT_NEAR(o1[0], 1.0f, 1e-6);
  EXPECT_NEAR(o1[1], 6.0f, 1e-6);
  EXPECT_NEAR(l1, std::log(4.0f), 1e-6);
  // Large LSE differences do not overflow.
  std::vector<float> a = {1.0f}, b = {2.0f};
  float la = 1000.0f;
  merge_row(a.data(), &la, b.data(), -1000.0f, 1);
  EXPECT_FLOAT_EQ(a[0], 1.0f);
  EXPECT_FLOAT_EQ(la, 1000.0f);
}

TEST(Merge, ShapeMismatchIsAnError) {
  std::vector<float> o(16), l(2);
  StateView a{o.data(), l.data(), 1, 2, 1, 8}, b{o.data(), l.data(), 1, 1, 2, 8};
  EXPECT_THROW(merge_states(a, b), Error);
  clear_state(a);
  for (float x : l) EXPECT_EQ(x, -INFINITY);
}

}  // namespace
}  // namespace ringattn
