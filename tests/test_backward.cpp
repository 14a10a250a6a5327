// The attention backward: the float64 reference against finite differences.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "ringattn/backward_reference.hpp"

namespace ringattn {
namespace {

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

}  // namespace
}  // namespace ringattn
