// A program built against an installed ringattn: the kernel on random inputs
// checked against a float64 attention written out here, then a 3-rank
// in-process ring job (the job library) with its own float64 check.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "ringattn/job.hpp"
#include "ringattn/kernel.hpp"

int main() {
  using namespace ringattn;
  const int64_t n = 300, hq = 4, hkv = 2, d = 64;
  std::mt19937 gen(7);
  std::normal_distribution<float> normal;
  std::vector<float> q(n * hq * d), k(n * hkv * d), v(n * hkv * d);
  for (float& x : q) x = normal(gen);
  for (float& x : k) x = normal(gen);
  for (float& x : v) x = normal(gen);

  AttentionProblem p;
  p.batch = 1, p.nq = p.nk = n, p.hq = hq, p.hkv = hkv, p.head_dim = d;
  p.mask = Mask::causal(0);
  const AttentionArgs a(p, q.data(), k.data(), v.data());
  std::vector<float> o(n * hq * d), lse(hq * n);  // o [N, Hq, D], lse [Hq, N]
  attention_forward(a, o.data(), lse.data());

  // float64 causal attention, query i of head h sees keys 0..i of head h / (hq / hkv).
  const double scale = 1.0 / std::sqrt(double(d));
  double err = 0, norm = 0, lse_err = 0;
  for (int64_t h = 0; h < hq; ++h)
    for (int64_t i = 0; i < n; ++i) {
      const int64_t g = h / (hq / hkv);
      std::vector<double> s(i + 1);
      double mx = -INFINITY;
      for (int64_t j = 0; j <= i; ++j) {
        double dot = 0;
        for (int64_t c = 0; c < d; ++c)
          dot += double(q[(i * hq + h) * d + c]) * k[(j * hkv + g) * d + c];
        s[j] = dot * scale;
        mx = std::max(mx, s[j]);
      }
      double sum = 0;
      for (double& x : s) sum += (x = std::exp(x - mx));
      for (int64_t c = 0; c < d; ++c) {
        double ref = 0;
        for (int64_t j = 0; j <= i; ++j) ref += s[j] * v[(j * hkv + g) * d + c];
        ref /= sum;
        const double e = o[(i * hq + h) * d + c] - ref;
        err += e * e, norm += ref * ref;
      }
      lse_err = std::max(lse_err, std::abs(lse[h * n + i] - (mx + std::log(sum))));  // [Hq, N]
    }
  const double rel = std::sqrt(err / norm);
  std::printf("consumer: kernel O rel. error %.2e, max |dLSE| %.2e vs float64\n", rel, lse_err);
  if (!(rel < 1e-5) || !(lse_err < 1e-4)) return 1;

  JobSpec s;
  s.batch = 1, s.nq = s.nk = 1000, s.hq = 4, s.hkv = 2, s.head_dim = 64;
  s.mask = Mask::causal(0);
  s.layout = LayoutKind::zigzag;
  s.seed = 3, s.check_rows = 32, s.threads = 1;
  const JobReport r = run_job_local(3, s);
  if (!r.sampled || !r.sampled->ok || !r.failure.empty()) {
    std::printf("consumer: the ring job's check failed: %s\n", r.failure.c_str());
    return 1;
  }
  std::printf("consumer: 3-rank ring job on %s, sampled check ok\n", r.isa.c_str());
  return 0;
}
