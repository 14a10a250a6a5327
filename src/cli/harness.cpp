#include "cli/harness.hpp"

#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <set>

#include "cli/options.hpp"
#include "ringattn/error.hpp"
#include "ringattn/hier_reference.hpp"

namespace ringattn::cli {
namespace {

// Rows checked at each end of the sequence, where mask edges and partial tiles sit.
constexpr int64_t kEdgeRows = 4;

void fill_normal(Tensor& t, std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int64_t i = 0; i < t.numel(); ++i) t.set(i, normal(rng));
}

// Adds the drifting mean to t [B, N, H, D] (see harness.hpp).
// Head h takes the phases of head h / group (query heads drift like their K/V head).
void add_drift(Tensor& t, uint64_t phase_seed, int64_t group) {
  constexpr double kTwoPi = 6.283185307179586;
  constexpr double kPeriods[] = {256.0, 4096.0, 65536.0};
  constexpr double kNoise = 0.5;
  const int64_t n = t.shape[1], h = t.shape[2], d = t.shape[3];
  std::mt19937_64 rng(phase_seed);
  std::uniform_real_distribution<double> phase(0.0, kTwoPi);
  std::vector<double> ph(static_cast<std::size_t>(h / group * d * 3));
  for (double& x : ph) x = phase(rng);
  const double amp = 1.0 / std::sqrt(3.0);
  for (int64_t b = 0; b < t.shape[0]; ++b)
    for (int64_t i = 0; i < n; ++i)
      for (int64_t e = 0; e < h * d; ++e) {
        double m = 0;
        for (int f = 0; f < 3; ++f)
          m += amp * std::sin(kTwoPi * double(i) / kPeriods[f] +
                              ph[static_cast<std::size_t>(((e / d / group) * d + e % d) * 3 + f)]);
        const int64_t at = (b * n + i) * h * d + e;
        t.set(at, static_cast<float>(kNoise * t.get(at) + m));
      }
}

}  // namespace

AttentionArgs make_args(const ProblemShape& s, const void* q, const void* k, const void* v) {
  return AttentionArgs(s.problem, q, k, v);
}

RandomProblem make_random_problem(const ProblemShape& shape, uint64_t seed, InputKind kind) {
  RandomProblem p;
  p.shape = shape;
  const AttentionProblem& s = shape.problem;
  p.q = Tensor(s.dtype, {s.batch, s.nq, s.hq, s.head_dim}, "random q");
  p.k = Tensor(s.dtype, {s.batch, s.nk, s.hkv, s.head_dim}, "random k");
  p.v = Tensor(s.dtype, {s.batch, s.nk, s.hkv, s.head_dim}, "random v");
  std::mt19937_64 rng(seed);
  fill_normal(p.q, rng);
  fill_normal(p.k, rng);
  fill_normal(p.v, rng);
  if (kind == InputKind::drift) {
    add_drift(p.q, seed + 1, s.hq / s.hkv);  // the phases of k
    add_drift(p.k, seed + 1, 1);
    add_drift(p.v, seed + 2, 1);
  }
  return p;
}

Outputs::Outputs(const AttentionArgs& a)
    : o(static_cast<std::size_t>(a.batch * a.nq * a.hq * a.head_dim) * sizeof(float), "output O"),
      lse(static_cast<std::size_t>(a.batch * a.hq * a.nq) * sizeof(float), "output LSE") {}

std::vector<int64_t> sample_rows(int64_t nq, int64_t count, uint64_t seed) {
  std::vector<int64_t> rows;
  if (count >= nq) {
    for (int64_t i = 0; i < nq; ++i) rows.push_back(i);
    return rows;
  }
  std::set<int64_t> picked;
  for (int64_t i = 0; i < std::min(kEdgeRows, count / 2); ++i) {
    picked.insert(i);
    picked.insert(nq - 1 - i);
  }
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int64_t> any(0, nq - 1);
  while (static_cast<int64_t>(picked.size()) < count) picked.insert(any(rng));
  return {picked.begin(), picked.end()};
}

ReferenceCheck::ReferenceCheck(const AttentionArgs& args, std::vector<int64_t> rows)
    : args_(args), rows_(std::move(rows)) {
  if (!args_.hier.on()) {
    ref_ = full() ? reference_attention(args_) : reference_attention_rows(args_, rows_);
    return;
  }
  if (full()) {
    ref_ = reference_hierarchical(args_);
    return;
  }
  // The hierarchy's reference on the sampled rows: o [B, rows, Hq, D], lse [B, Hq, rows].
  const AttentionArgs& a = args_;
  const int64_t row = a.hkv * a.head_dim, qrow = a.hq * a.head_dim,
                nr = static_cast<int64_t>(rows_.size());
  const HierarchyReference ref(
      a, [&](int64_t b, int64_t j0, int64_t n, std::vector<double>* k, std::vector<double>* v) {
        k->resize(static_cast<std::size_t>(n * row));
        v->resize(k->size());
        for (int64_t e = 0; e < n * row; ++e) {
          const std::size_t at = static_cast<std::size_t>((b * a.nk + j0) * row + e);
          (*k)[static_cast<std::size_t>(e)] = load_as_f32(a.k, a.dtype, at);
          (*v)[static_cast<std::size_t>(e)] = load_as_f32(a.v, a.dtype, at);
        }
      });
  ref_.o.assign(static_cast<std::size_t>(a.batch * nr * qrow), 0.0);
  ref_.lse.assign(static_cast<std::size_t>(a.batch * a.hq * nr), 0.0);
  std::vector<double> q(static_cast<std::size_t>(qrow)), lse(static_cast<std::size_t>(a.hq));
  for (int64_t b = 0; b < a.batch; ++b)
    for (int64_t ri = 0; ri < nr; ++ri) {
      const int64_t t = rows_[static_cast<std::size_t>(ri)];
      for (int64_t e = 0; e < qrow; ++e)
        q[static_cast<std::size_t>(e)] =
            load_as_f32(a.q, a.dtype, static_cast<std::size_t>((b * a.nq + t) * qrow + e));
      ref.row(b, t, q.data(), ref_.o.data() + (b * nr + ri) * qrow, lse.data());
      for (int64_t h = 0; h < a.hq; ++h)
        ref_.lse[static_cast<std::size_t>((b * a.hq + h) * nr + ri)] =
            lse[static_cast<std::size_t>(h)];
    }
}

ErrorStats ReferenceCheck::compare(const float* o, const float* lse) const {
  return compare_to_reference(args_, o, lse, ref_, full() ? std::vector<int64_t>{} : rows_);
}

double reference_work(const ProblemShape& shape) {
  const AttentionProblem& s = shape.problem;
  return double(s.batch) * double(s.hq) * double(s.nq) * double(s.nk) * double(s.head_dim);
}

std::string tolerance_help() {
  const Tolerance t = tolerance_for(DType::f32);
  return fmt::format(
      "Tolerance vs float64 (the CPU kernel accumulates in float32 and 16-bit inputs convert\n"
      "exactly, so it is the same for every dtype): O relative Frobenius error {:.0e}, max\n"
      "|dLSE| {:.0e} (relative where |LSE| > 1). The GPU kernel rounds P to the storage dtype:\n"
      "O {:.0e} (float16), {:.0e} (bfloat16).",
      t.o_rel_fro, t.lse_max_abs, tolerance_for(DType::f16, PRounding::storage).o_rel_fro,
      tolerance_for(DType::bf16, PRounding::storage).o_rel_fro);
}

Isa resolve_isa(const std::string& name) {
  const Isa isa = parse_isa(name);
  if (!isa_supported(isa))
    throw Error(fmt::format("option '--isa': this CPU does not support {}", name));
  return isa;
}

std::string effective_isa_name(Isa isa) {
  return isa == Isa::automatic ? isa_name(best_isa()) : isa_name(isa);
}

void apply_threads(int threads) {
  if (threads > 0) omp_set_num_threads(threads);
}

int effective_threads(int threads) {
  return threads > 0 ? threads : omp_get_max_threads();
}

}  // namespace ringattn::cli
