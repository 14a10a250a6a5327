// The attention backward: the float64 reference against finite differences,
// and the CPU kernel against the reference on every head layout and mask.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "ringattn/backward.hpp"
#include "ringattn/backward_reference.hpp"
#include "ringattn/error.hpp"
#include "util.hpp"

namespace ringattn {
namespace {

using test::rel_fro;

using test::make_problem;
using test::random_tensor;

// ---- the reference against central differences ------------------------------

// L = sum(dO * O) on float64 inputs; its gradients are the reference's dq, dk, dv.
double loss(const AttentionArgs& a, const std::vector<double>& q, const std::vector<double>& k,
            const std::vector<double>& v, const std::vector<double>& g) {
  const BackwardReference r =
      reference_attention_backward_f64(a, q.data(), k.data(), v.data(), g.data());
  double s = 0.0;
  for (std::size_t i = 0; i < g.size(); ++i) s += g[i] * r.o[i];
  return s;
}

std::vector<double> normal(std::size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd(0.0, 1.0);
  std::vector<double> x(n);
  for (double& e : x) e = nd(rng);
  return x;
}

// Every entry of Q, K and V: (L(x + h) - L(x - h)) / 2h against the analytic
// gradient, as max |fd - grad| / max |grad| per tensor. With h = 1e-5 the
// truncation error (h^2 L''' / 6) and the rounding (eps L / h) are both ~1e-10.
TEST(BackwardReference, MatchesFiniteDifferences) {
  struct Case {
    const char* name;
    int64_t nq, nk, hq, hkv, d;
    Mask mask;
  };
  Mask window = Mask::band(-2, 1);
  window.sinks = 1;
  const Case cases[] = {
      {"no mask, GQA", 5, 7, 4, 2, 3, Mask::none()},
      {"bottom-right causal, Nq < Nk", 5, 7, 2, 1, 4, Mask::causal(2)},
      {"causal, Nq > Nk: empty rows", 7, 5, 2, 2, 3, Mask::causal(-2)},
      {"window -2..1 + 1 sink", 6, 6, 2, 1, 3, window},
  };
  constexpr double kStep = 1e-5;
  for (const Case& c : cases) {
    AttentionArgs a;
    a.nq = c.nq, a.nk = c.nk, a.hq = c.hq, a.hkv = c.hkv, a.head_dim = c.d, a.mask = c.mask;
    std::vector<double> q = normal(static_cast<std::size_t>(a.q_elems()), 1);
    std::vector<double> k = normal(static_cast<std::size_t>(a.kv_elems()), 2);
    std::vector<double> v = normal(static_cast<std::size_t>(a.kv_elems()), 3);
    const std::vector<double> g = normal(static_cast<std::size_t>(a.o_elems()), 4);
    const BackwardReference r =
        reference_attention_backward_f64(a, q.data(), k.data(), v.data(), g.data());
    struct Grad {
      const char* name;
      std::vector<double>* x;
      const std::vector<double>* grad;
    };
    for (const Grad& t : {Grad{"dq", &q, &r.dq}, Grad{"dk", &k, &r.dk}, Grad{"dv", &v, &r.dv}}) {
      double err = 0.0, scale = 0.0;
      for (std::size_t i = 0; i < t.x->size(); ++i) {
        const double x0 = (*t.x)[i];
        (*t.x)[i] = x0 + kStep;
        const double up = loss(a, q, k, v, g);
        (*t.x)[i] = x0 - kStep;
        const double down = loss(a, q, k, v, g);
        (*t.x)[i] = x0;
        const double fd = (up - down) / (2 * kStep);
        err = std::max(err, std::abs(fd - (*t.grad)[i]));
        scale = std::max(scale, std::abs((*t.grad)[i]));
      }
      ASSERT_GT(scale, 0.1) << c.name << " " << t.name;
      // Measured: at most 3e-10 relative over these cases.
      EXPECT_LT(err / scale, 1e-6) << c.name << " " << t.name;
    }
    // Rows with no visible key: exactly zero dQ.
    for (int64_t i = 0; i < a.nq; ++i) {
      for (int64_t h = 0; h < a.hq; ++h) {
        if (r.lse[static_cast<std::size_t>(h * a.nq + i)] != -INFINITY) continue;
        for (int64_t e = 0; e < a.head_dim; ++e)
          EXPECT_EQ(r.dq[static_cast<std::size_t>((i * a.hq + h) * a.head_dim + e)], 0.0);
      }
    }
  }
}

// ---- the kernel against the reference ---------------------------------------

struct Grads {
  std::vector<float> dq, dk, dv;
  KernelStats stats;
};

Grads run_backward(const AttentionArgs& a, const test::Output& fwd, const std::vector<float>& g,
                   int threads = 0, Isa isa = Isa::automatic) {
  Grads r;
  r.dq.assign(static_cast<std::size_t>(a.q_elems()), NAN);  // every element must be written
  r.dk.assign(static_cast<std::size_t>(a.kv_elems()), NAN);
  r.dv.assign(static_cast<std::size_t>(a.kv_elems()), NAN);
  KernelOptions opt;
  opt.threads = threads;
  opt.isa = isa;
  r.stats = attention_backward(a, fwd.o.data(), fwd.lse.data(), g.data(), r.dq.data(), r.dk.data(),
                               r.dv.data(), opt);
  return r;
}

std::vector<float> random_grad(const AttentionArgs& a, uint64_t seed) {
  const Tensor t = random_tensor(DType::f32, {a.batch, a.nq, a.hq, a.head_dim}, seed);
  return std::vector<float>(t.as<float>(), t.as<float>() + t.numel());
}

// Relative Frobenius error of each gradient against the float64 reference on
// the same stored inputs (standard-normal Q, K, V, dO; scale 1/sqrt(D)).
// Measured over the cases below: float32 2.8e-7 to 7.5e-7 (the largest with
// scale 0.37), N = 1000 causal at most 1e-6.
constexpr double kTolF32 = 1e-5;
// 16-bit storage: the reference reads the same rounded values, 16-bit inputs
// convert to float32 exactly and every product then runs in float32 as for
// float32 storage, so nothing adds error beyond the float32 bound (the forward
// argues the same, ringattn/reference.hpp). Measured: float16 3.0e-7 to
// 5.8e-7, bfloat16 2.6e-7 to 5.7e-7, the float32 figures. So the bound stays
// the float32 one: a looser one would only hide a conversion bug.
constexpr double kTol16 = kTolF32;

void expect_gradients(const AttentionArgs& a, const std::string& what, uint64_t seed = 7,
                      Isa isa = Isa::automatic) {
  const test::Output fwd = test::run_kernel(a);
  const std::vector<float> g = random_grad(a, seed);
  const Grads k = run_backward(a, fwd, g, 0, isa);
  const BackwardReference ref = reference_attention_backward(a, g.data());
  const double tol = a.dtype == DType::f32 ? kTolF32 : kTol16;
  const double eq = rel_fro(k.dq, ref.dq), ek = rel_fro(k.dk, ref.dk), ev = rel_fro(k.dv, ref.dv);
  std::printf("[  error   ] %-55s %-8s dq %.2e  dk %.2e  dv %.2e  tiles %lld/%lld\n", what.c_str(),
              std::string(dtype_name(a.dtype)).c_str(), eq, ek, ev,
              static_cast<long long>(k.stats.tiles_computed),
              static_cast<long long>(k.stats.tiles_total));
  EXPECT_LE(eq, tol) << what << " dq";
  EXPECT_LE(ek, tol) << what << " dk";
  EXPECT_LE(ev, tol) << what << " dv";
  // No NaN anywhere; rows that see nothing have exactly zero dQ.
  for (const std::vector<float>* x : {&k.dq, &k.dk, &k.dv})
    for (float e : *x) ASSERT_FALSE(std::isnan(e)) << what;
  for (int64_t b = 0; b < a.batch; ++b)
    for (int64_t h = 0; h < a.hq; ++h)
      for (int64_t i = 0; i < a.nq; ++i) {
        if (fwd.lse[static_cast<std::size_t>((b * a.hq + h) * a.nq + i)] != -INFINITY) continue;
        const float* row = k.dq.data() + ((b * a.nq + i) * a.hq + h) * a.head_dim;
        for (int64_t e = 0; e < a.head_dim; ++e) ASSERT_EQ(row[e], 0.0f) << what << " row " << i;
      }
  // The same tiles as the forward: skipped where it skips, masked where it masks.
  EXPECT_EQ(k.stats.tiles_total, fwd.stats.tiles_total) << what;
  EXPECT_EQ(k.stats.tiles_computed, fwd.stats.tiles_computed) << what;
  EXPECT_EQ(k.stats.tiles_partial, fwd.stats.tiles_partial) << what;
}

struct Shape {
  const char* name;
  int64_t batch, nq, nk, hq, hkv, d;
  Mask mask;
  Positions qpos = {}, kpos = {};
};

std::vector<Shape> shapes() {
  Mask window_left = Mask::causal(0);  // Mistral: causal + left window of 64
  window_left.lo = -63;
  return {
      {"MHA no mask, B=2, N=97", 2, 97, 97, 4, 4, 64, Mask::none()},
      {"MHA causal, B=2, N=203", 2, 203, 203, 4, 4, 64, Mask::causal(0)},
      {"GQA 8/2 causal, N=203", 1, 203, 203, 8, 2, 32, Mask::causal(0)},
      {"MQA 4/1 no mask, B=2, N=97", 2, 97, 97, 4, 1, 64, Mask::none()},
      {"cross Nq=97 Nk=203 bottom-right causal", 1, 97, 203, 4, 2, 32, Mask::causal(106)},
      {"cross Nq=203 Nk=97 bottom-right causal (empty rows)", 2, 203, 97, 2, 1, 32,
       Mask::causal(-106)},
      {"D=128 causal window 64, N=300", 1, 300, 300, 2, 1, 128, window_left},
      {"striped P=3 causal, N=111", 1, 111, 111, 4, 2, 32, Mask::causal(0), {1, 3}, {2, 3}},
      {"global positions: keys straddle the diagonal",
       1,
       150,
       260,
       2,
       2,
       32,
       Mask::causal(0),
       {5000, 1},
       {4500, 1}},
  };
}

AttentionArgs args_of(const test::Problem& p, const Shape& s) {
  AttentionArgs a = p.args;
  a.mask = s.mask;
  a.qpos = s.qpos;
  a.kpos = s.kpos;
  return a;
}

TEST(Backward, HeadLayoutsAndLengthsFloat32) {
  uint64_t seed = 100;
  for (const Shape& s : shapes()) {
    const test::Problem p =
        make_problem(s.batch, s.nq, s.nk, s.hq, s.hkv, s.d, DType::f32, seed += 3);
    expect_gradients(args_of(p, s), s.name);
  }
}

TEST(Backward, SparseMasksFloat32) {
  // Window (left, two-sided, aligned), dilation, sinks, global tokens,
  // block-sparse, nothing visible: 300 tokens span 4 query blocks x 3 key tiles.
  uint64_t seed = 200;
  for (const test::NamedMask& nm : test::sparse_patterns(300)) {
    test::Problem p = make_problem(2, 300, 300, 4, 2, 32, DType::f32, seed += 3);
    p.args.mask = nm.mask;
    expect_gradients(p.args, nm.name);
  }
}

TEST(Backward, HalfPrecisionStorage) {
  uint64_t seed = 300;
  for (DType dt : {DType::f16, DType::bf16}) {
    for (const Shape& s : shapes()) {
      const test::Problem p = make_problem(s.batch, s.nq, s.nk, s.hq, s.hkv, s.d, dt, seed += 3);
      expect_gradients(args_of(p, s), s.name);
    }
    const std::vector<test::NamedMask> masks = test::sparse_patterns(300);
    for (const test::NamedMask& nm : {masks[2], masks[3], masks[4], masks[6]}) {
      test::Problem p = make_problem(1, 300, 300, 4, 2, 32, dt, seed += 3);
      p.args.mask = nm.mask;
      expect_gradients(p.args, nm.name);
    }
  }
}

TEST(Backward, EveryIsaOfThisCpu) {
  // Each instantiation of the tile code (backward_impl.hpp) this CPU can run,
  // against the float64 reference: head layouts, empty rows, sparse masks, 16-bit.
  const std::vector<Shape> all = shapes();
  const std::vector<test::NamedMask> masks = test::sparse_patterns(300);
  for (Isa isa : {Isa::avx512, Isa::avx2, Isa::generic}) {
    if (!isa_supported(isa)) {
      std::printf("[  skip    ] %s: not supported by this CPU\n", isa_name(isa).c_str());
      continue;
    }
    uint64_t seed = 400;
    for (const Shape& s : {all[1], all[2], all[5], all[6], all[8]}) {
      for (DType dt : {DType::f32, DType::bf16}) {
        const test::Problem p = make_problem(s.batch, s.nq, s.nk, s.hq, s.hkv, s.d, dt, seed += 3);
        expect_gradients(args_of(p, s), isa_name(isa) + " " + s.name, 7, isa);
      }
    }
    for (const test::NamedMask& nm : {masks[2], masks[4], masks[6]}) {
      test::Problem p = make_problem(1, 300, 300, 4, 2, 32, DType::f32, seed += 3);
      p.args.mask = nm.mask;
      expect_gradients(p.args, isa_name(isa) + " " + nm.name, 7, isa);
    }
  }
}

TEST(Backward, WorkspaceGrowsLinearly) {
  // O(N) beyond inputs and outputs: doubling N at most doubles the extra memory
  // (never Nq x Nk), and at N = 8192, D = 128 it stays below one head's 4 N D
  // bytes times 10.
  AttentionArgs a;
  a.batch = 1, a.hq = 8, a.hkv = 8, a.head_dim = 128, a.mask = Mask::causal(0);
  a.nq = a.nk = 4096;
  const double b1 = backward_workspace_bytes(a);
  a.nq = a.nk = 8192;
  const double b2 = backward_workspace_bytes(a);
  EXPECT_LE(b2, 2.0 * b1);
  EXPECT_LE(b2, 10.0 * 4 * 8192 * 128);
}

TEST(Backward, LongerCausalSequence) {
  // Float32 sums over a thousand keys and queries per gradient entry.
  test::Problem p = make_problem(1, 1000, 1000, 2, 1, 64, DType::f32, 10);
  p.args.mask = Mask::causal(0);
  expect_gradients(p.args, "GQA 2/1 causal, N=1000");
}

TEST(Backward, ScaleOption) {
  test::Problem p = make_problem(1, 100, 130, 2, 1, 32, DType::f32, 11);
  p.args.scale = 0.37f;
  p.args.mask = Mask::causal(30);
  expect_gradients(p.args, "scale 0.37");
}

TEST(Backward, SkipsTilesOutsideTheWindow) {
  test::Problem p = make_problem(1, 1000, 1000, 1, 1, 16, DType::f32, 12);
  p.args.mask = Mask::causal(0);
  p.args.mask.lo = -100;
  const test::Output fwd = test::run_kernel(p.args);
  const Grads k = run_backward(p.args, fwd, random_grad(p.args, 13));
  EXPECT_EQ(k.stats.tiles_total, 11 * 8);  // 11 query blocks of 96 x 8 key tiles of 128
  EXPECT_LE(k.stats.tiles_computed, 11 * 3);
  EXPECT_EQ(k.stats.tiles_computed, fwd.stats.tiles_computed);
}

TEST(Backward, ResultIndependentOfThreadCount) {
  test::Problem p = make_problem(2, 250, 250, 4, 2, 32, DType::f32, 14);
  p.args.mask = Mask::causal(0);
  const test::Output fwd = test::run_kernel(p.args);
  const std::vector<float> g = random_grad(p.args, 15);
  const Grads one = run_backward(p.args, fwd, g, 1);
  const Grads three = run_backward(p.args, fwd, g, 3);
  EXPECT_EQ(one.dq, three.dq);
  EXPECT_EQ(one.dk, three.dk);
  EXPECT_EQ(one.dv, three.dv);
}

TEST(Backward, AddsToGradients) {
  // GradWrite::add adds each gradient to what the outputs hold: dq + the kernel's
  // dq, and the same for dk and dv (a ring sums a rank's terms this way); equal
  // up to one rounding (the add may fuse with the scale's product).
  test::Problem p = make_problem(2, 150, 170, 4, 2, 32, DType::f32, 24);
  p.args.mask = Mask::causal(20);
  const test::Output fwd = test::run_kernel(p.args);
  const std::vector<float> g = random_grad(p.args, 25);
  const Grads set = run_backward(p.args, fwd, g);
  Grads add;
  add.dq = random_grad(p.args, 26);
  const Tensor k0 = random_tensor(DType::f32, {2, 170, 2, 32}, 27);
  add.dk.assign(k0.as<float>(), k0.as<float>() + k0.numel());
  add.dv = add.dk;
  std::reverse(add.dv.begin(), add.dv.end());
  const Grads before = add;
  attention_backward(p.args, fwd.o.data(), fwd.lse.data(), g.data(), add.dq.data(), add.dk.data(),
                     add.dv.data(), {}, GradWrite::add);
  for (auto [got, was, term] :
       {std::tuple{&add.dq, &before.dq, &set.dq}, std::tuple{&add.dk, &before.dk, &set.dk},
        std::tuple{&add.dv, &before.dv, &set.dv}})
    for (std::size_t i = 0; i < got->size(); ++i)
      ASSERT_NEAR((*got)[i], (*was)[i] + (*term)[i], 1e-6f * (1.0f + std::fabs((*was)[i]))) << i;
}

TEST(Backward, EmptyBlocks) {
  // No keys (a rank holding none): dQ = 0. No queries: dK = dV = 0.
  test::Problem p = make_problem(1, 40, 30, 2, 1, 16, DType::f32, 16);
  AttentionArgs a = p.args;
  a.nk = 0;
  const test::Output fwd = test::run_kernel(a);
  const Grads k = run_backward(a, fwd, random_grad(a, 17));
  for (float x : k.dq) ASSERT_EQ(x, 0.0f);
  a = p.args;
  a.nq = 0;
  const test::Output none = test::run_kernel(a);
  const Grads k2 = run_backward(a, none, {});
  for (float x : k2.dk) ASSERT_EQ(x, 0.0f);
  for (float x : k2.dv) ASSERT_EQ(x, 0.0f);
}

TEST(Backward, RejectsWhatItDoesNotTake) {
  test::Problem p = make_problem(1, 10, 10, 2, 1, 16, DType::f32, 18);
  const test::Output fwd = test::run_kernel(p.args);
  std::vector<float> g = random_grad(p.args, 19), dq(fwd.o.size()), dk(160), dv(160);
  auto field = [&](const AttentionArgs& a, const float* gp) {
    try {
      attention_backward(a, fwd.o.data(), fwd.lse.data(), gp, dq.data(), dk.data(), dv.data());
    } catch (const FieldError& e) {
      return e.field();
    }
    return std::string("none");
  };
  EXPECT_EQ(field(p.args, g.data()), "none");
  EXPECT_EQ(field(p.args, nullptr), "data");
  AttentionArgs a = p.args;
  const std::vector<uint8_t> keep(20, 1);
  a.keep.flags = keep.data(), a.keep.heads = 2, a.keep.stride = 10;
  EXPECT_EQ(field(a, g.data()), "keep");
  a = p.args;
  a.head_dim = 12;
  EXPECT_EQ(field(a, g.data()), "head_dim");
}

}  // namespace
}  // namespace ringattn
