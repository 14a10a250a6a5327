// The float64 reference of K/V selection (ringattn/kv_select_reference.hpp)
// against a second, literal enumeration of the text of ringattn/kv_select.hpp
// written here differently: the full score and softmax matrices of each
// (batch, head), their column sums, a std::sort of (importance, index) pairs,
// and the final attention as full matrices again with the kept set folded into
// the mask (drop) or into the K/V values (int4). Tiny sizes; plus rules checked
// on their own: p = 1 is exact attention, sinks and recent keys are always
// kept, ties keep the lower index, the keep count, empty rows, and errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "ringattn/error.hpp"
#include "ringattn/kv_select.hpp"
#include "ringattn/kv_select_reference.hpp"
#include "ringattn/quant_reference.hpp"
#include "ringattn/reference.hpp"
#include "util.hpp"

namespace ringattn {
namespace {

constexpr double kTol = 1e-12;
constexpr double kNegInf = -std::numeric_limits<double>::infinity();

std::size_t at(int64_t i) {
  return static_cast<std::size_t>(i);
}

using Matrix = std::vector<std::vector<double>>;

KvSelect selection(double p, int64_t recent = 0, KeepRest rest = KeepRest::drop,
                   KeepPer per = KeepPer::kv_head) {
  KvSelect s;
  s.keep = p, s.keep_recent = recent, s.rest = rest, s.per = per;
  return s;
}

// The keep count of the text, counted up: the smallest n >= p Nk (1 - 1e-9).
int64_t literal_count(double p, int64_t nk) {
  int64_t n = 0;
  while (n < nk && static_cast<double>(n) < p * static_cast<double>(nk) * (1.0 - 1e-9)) ++n;
  return n;
}

// Softmax of one row of scores (-inf: invisible): probabilities and LSE.
std::pair<std::vector<double>, double> softmax_row(const std::vector<double>& s) {
  const double mx = *std::max_element(s.begin(), s.end());
  std::vector<double> pr(s.size(), 0.0);
  if (s.empty() || mx == kNegInf) return {pr, kNegInf};
  double z = 0.0;
  for (double x : s) z += x == kNegInf ? 0.0 : std::exp(x - mx);
  for (std::size_t j = 0; j < s.size(); ++j)
    pr[j] = s[j] == kNegInf ? 0.0 : std::exp(s[j] - mx) / z;
  return {pr, mx + std::log(z)};
}

// The text of ringattn/kv_select.hpp, enumerated literally.
SelectReference literal(const test::Problem& pb, const KvSelect& sel, const QuantFormat& fmt) {
  const AttentionArgs& a = pb.args;
  const int64_t B = a.batch, Nq = a.nq, Nk = a.nk, Hq = a.hq, Hkv = a.hkv, D = a.head_dim;
  const int64_t G = Hq / Hkv, Hsel = sel.per == KeepPer::head ? Hq : Hkv;
  const double scale =
      a.scale != 0.0f ? static_cast<double>(a.scale) : 1.0 / std::sqrt(static_cast<double>(D));
  auto q = [&](int64_t b, int64_t i, int64_t h) {
    std::vector<double> r(at(D));
    for (int64_t d = 0; d < D; ++d) r[at(d)] = pb.q.get(((b * Nq + i) * Hq + h) * D + d);
    return r;
  };
  auto kv = [&](const Tensor& t, int64_t b, int64_t j, int64_t g, bool int4) {
    std::vector<float> f(at(D));
    for (int64_t d = 0; d < D; ++d) f[at(d)] = t.get(((b * Nk + j) * Hkv + g) * D + d);
    if (int4) f = quantize_reference_row(fmt, f.data(), D).dequant;
    return std::vector<double>(f.begin(), f.end());
  };
  auto dot = [](const std::vector<double>& x, const std::vector<double>& y) {
    double s = 0.0;
    for (std::size_t e = 0; e < x.size(); ++e) s += x[e] * y[e];
    return s;
  };
  // The full score matrix of (b, h), with the visible pairs and the K/V rows chosen by `use`:
  // 0 invisible, 1 exact, 2 INT4.
  auto scores = [&](int64_t b, int64_t h, const std::vector<std::vector<int>>& use) {
    Matrix s(at(Nq), std::vector<double>(at(Nk), kNegInf));
    for (int64_t i = 0; i < Nq; ++i)
      for (int64_t j = 0; j < Nk; ++j)
        if (use[at(i)][at(j)] != 0)
          s[at(i)][at(j)] = scale * dot(q(b, i, h), kv(pb.k, b, j, h / G, use[at(i)][at(j)] == 2));
    return s;
  };
  auto mask_use = [&]() {
    std::vector<std::vector<int>> use(at(Nq), std::vector<int>(at(Nk), 0));
    for (int64_t i = 0; i < Nq; ++i)
      for (int64_t j = 0; j < Nk; ++j) use[at(i)][at(j)] = a.mask.allows(i, j) ? 1 : 0;
    return use;
  };

  SelectReference r;
  r.importance.assign(at(B * Hsel * Nk), 0.0);
  r.keep.assign(at(B * Hsel * Nk), 0);
  r.margin.assign(at(B * Hsel * Nk), 0.0);
  r.o.assign(at(B * Nq * Hq * D), 0.0);
  r.lse.assign(at(B * Hq * Nq), kNegInf);
  const int64_t n = literal_count(sel.keep, Nk);
  for (int64_t b = 0; b < B; ++b) {
    // 1. Importance: column sums of the full softmax matrix, per head, then per selection head.
    Matrix imp_h(at(Hq), std::vector<double>(at(Nk), 0.0));
    for (int64_t h = 0; h < Hq; ++h) {
      const Matrix s = scores(b, h, mask_use());
      for (int64_t i = 0; i < Nq; ++i) {
        const std::vector<double> pr = softmax_row(s[at(i)]).first;
        for (int64_t j = 0; j < Nk; ++j) imp_h[at(h)][at(j)] += pr[at(j)];
      }
    }
    for (int64_t h = 0; h < Hq; ++h) {
      const int64_t hs = sel.per == KeepPer::head ? h : h / G;
      for (int64_t j = 0; j < Nk; ++j)
        r.importance[at((b * Hsel + hs) * Nk + j)] += imp_h[at(h)][at(j)];
    }
    // 2. Kept set: sort (-importance, index) pairs, take n, add sinks and recent.
    for (int64_t hs = 0; hs < Hsel; ++hs) {
      const double* imp = r.importance.data() + (b * Hsel + hs) * Nk;
      std::vector<std::pair<double, int64_t>> ranked;
      for (int64_t j = 0; j < Nk; ++j) ranked.emplace_back(-imp[j], j);
      std::sort(ranked.begin(), ranked.end());
      uint8_t* keep = r.keep.data() + (b * Hsel + hs) * Nk;
      for (int64_t j = 0; j < Nk; ++j) {
        const bool sink = j < a.mask.sinks, recent = j >= Nk - sel.keep_recent;
        keep[j] = sink || recent ? 1 : 0;
      }
      for (int64_t k = 0; k < n; ++k) keep[ranked[at(k)].second] = 1;
      const double t = n > 0 ? -ranked[at(n - 1)].first : 0.0;
      for (int64_t j = 0; j < Nk; ++j)
        r.margin[at((b * Hsel + hs) * Nk + j)] =
            n > 0 ? std::abs(imp[j] - t) / std::max(t, std::numeric_limits<double>::min()) : 0.0;
    }
    // 3. Attention with the kept set folded into the mask (drop) or the K/V values (int4).
    for (int64_t h = 0; h < Hq; ++h) {
      const uint8_t* keep =
          r.keep.data() + (b * Hsel + (sel.per == KeepPer::head ? h : h / G)) * Nk;
      std::vector<std::vector<int>> use = mask_use();
      for (auto& row : use)
        for (int64_t j = 0; j < Nk; ++j)
          if (row[at(j)] != 0 && !keep[j]) row[at(j)] = sel.rest == KeepRest::int4 ? 2 : 0;
      const Matrix s = scores(b, h, use);
      for (int64_t i = 0; i < Nq; ++i) {
        const auto [pr, l] = softmax_row(s[at(i)]);
        r.lse[at((b * Hq + h) * Nq + i)] = l;
        for (int64_t j = 0; j < Nk; ++j) {
          if (use[at(i)][at(j)] == 0) continue;
          const std::vector<double> v = kv(pb.v, b, j, h / G, use[at(i)][at(j)] == 2);
          for (int64_t d = 0; d < D; ++d)
            r.o[at(((b * Nq + i) * Hq + h) * D + d)] += pr[at(j)] * v[at(d)];
        }
      }
    }
  }
  return r;
}

void expect_near_all(const std::vector<double>& x, const std::vector<double>& y,
                     const std::string& what) {
  ASSERT_EQ(x.size(), y.size()) << what;
  int64_t bad = 0;
  for (std::size_t e = 0; e < x.size(); ++e) {
    const bool same = x[e] == y[e] || std::abs(x[e] - y[e]) <= kTol * std::max(1.0, std::abs(y[e]));
    if (!same && ++bad <= 5) ADD_FAILURE() << what << "[" << e << "]: " << x[e] << " vs " << y[e];
  }
  EXPECT_EQ(bad, 0) << what;
}

void expect_matches(const SelectReference& r, const SelectReference& l) {
  expect_near_all(r.importance, l.importance, "importance");
  expect_near_all(r.margin, l.margin, "margin");
  EXPECT_EQ(r.keep, l.keep);
  expect_near_all(r.o, l.o, "O");
  expect_near_all(r.lse, l.lse, "LSE");
}

int64_t kept(const SelectReference& r, int64_t row, int64_t nk) {
  int64_t c = 0;
  for (int64_t j = 0; j < nk; ++j) c += r.keep[at(row * nk + j)];
  return c;
}

double max_abs_diff(const std::vector<double>& x, const std::vector<double>& y) {
  double m = 0.0;
  for (std::size_t e = 0; e < x.size(); ++e) m = std::max(m, std::abs(x[e] - y[e]));
  return m;
}

struct Case {
  std::string name;
  int64_t b, nq, nk, hq, hkv, d;
  DType dt;
  Mask mask;
  KvSelect sel;
  QuantFormat fmt = {QuantBits::int4, 32, false};
};

Mask with_sinks(Mask m, int64_t sinks) {
  m.sinks = sinks;
  return m;
}

std::vector<Case> cases() {
  const DType f32 = DType::f32, bf16 = DType::bf16, f16 = DType::f16;
  const KeepRest drop = KeepRest::drop, int4 = KeepRest::int4;
  const KeepPer kvh = KeepPer::kv_head, head = KeepPer::head;
  Mask window = Mask::causal(0);
  window.lo = -7;
  return {
      {"causal", 1, 32, 32, 2, 2, 32, f32, Mask::causal(0), selection(0.25)},
      {"no mask", 1, 24, 24, 1, 1, 32, f32, Mask::none(), selection(0.3, 2)},
      {"window band", 1, 32, 32, 2, 2, 32, f32, Mask::band(-6, 3), selection(0.3, 4)},
      {"causal window", 1, 40, 40, 1, 1, 32, f32, window, selection(0.2, 2)},
      {"causal + sinks", 1, 32, 32, 2, 1, 32, f32, with_sinks(Mask::causal(0), 3),
       selection(0.2, 2)},
      {"GQA per kv-head", 1, 24, 24, 4, 2, 32, f32, Mask::causal(0), selection(0.3)},
      {"GQA per head", 1, 24, 24, 4, 2, 32, f32, Mask::causal(0), selection(0.3, 1, drop, head)},
      {"MQA per kv-head", 1, 20, 20, 4, 1, 32, f32, Mask::causal(0), selection(0.25, 2)},
      {"MQA per head", 1, 20, 20, 4, 1, 32, f32, Mask::causal(0), selection(0.25, 2, drop, head)},
      {"cross Nq < Nk causal", 1, 12, 40, 2, 1, 32, f32, Mask::causal(28), selection(0.2, 3)},
      {"cross Nq > Nk causal", 1, 40, 24, 2, 2, 32, f32, Mask::causal(-16), selection(0.25, 2)},
      {"batch 2", 2, 20, 20, 4, 2, 32, f32, Mask::causal(0), selection(0.3, 2)},
      {"bfloat16", 2, 24, 24, 2, 1, 64, bf16, Mask::causal(0), selection(0.25, 2)},
      {"float16 per head", 1, 24, 24, 2, 1, 32, f16, Mask::band(-9, 0),
       selection(0.2, 0, drop, head)},
      {"int4 causal", 1, 32, 32, 2, 1, 32, f32, Mask::causal(0), selection(0.25, 2, int4)},
      {"int4 asym D64 g32",
       1,
       24,
       24,
       2,
       2,
       64,
       f32,
       with_sinks(Mask::causal(0), 2),
       selection(0.2, 1, int4),
       {QuantBits::int4, 32, true}},
      {"int4 GQA per head bf16",
       2,
       20,
       20,
       4,
       2,
       64,
       bf16,
       Mask::band(-5, 0),
       selection(0.3, 0, int4, head),
       {QuantBits::int4, 64, false}},
      {"int4 cross Nq < Nk", 1, 10, 30, 2, 1, 32, f32, Mask::causal(20),
       selection(0.2, 2, int4, kvh)},
  };
}

TEST(KvSelectReference, MatchesLiteralEnumeration) {
  uint64_t seed = 100;
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    test::Problem p = test::make_problem(c.b, c.nq, c.nk, c.hq, c.hkv, c.d, c.dt, seed += 3);
    p.args.mask = c.mask;
    const SelectReference r = kv_select_reference(p.args, c.sel, c.fmt);
    const SelectReference l = literal(p, c.sel, c.fmt);
    expect_matches(r, l);

    // The selection matters: some key is dropped, and the result is not exact attention.
    const int64_t hsel = c.sel.heads(c.hq, c.hkv);
    const int64_t n = literal_count(c.sel.keep, c.nk);
    const int64_t forced = std::min(c.mask.sinks, c.nk) + c.sel.keep_recent;
    for (int64_t row = 0; row < c.b * hsel; ++row) {
      EXPECT_GE(kept(r, row, c.nk), n);
      EXPECT_LE(kept(r, row, c.nk), std::min(c.nk, n + forced));
      EXPECT_LT(kept(r, row, c.nk), c.nk);
    }
    EXPECT_GT(max_abs_diff(r.o, reference_attention(p.args).o), 1e-6);
  }
}

TEST(KvSelectReference, KeepAllIsExactAttention) {
  uint64_t seed = 7;
  for (const Case& c : cases()) {
    for (KeepRest rest : {KeepRest::drop, KeepRest::int4}) {
      SCOPED_TRACE(c.name + (rest == KeepRest::int4 ? " int4" : " drop"));
      test::Problem p = test::make_problem(c.b, c.nq, c.nk, c.hq, c.hkv, c.d, c.dt, seed += 3);
      p.args.mask = c.mask;
      KvSelect s = c.sel;
      s.keep = 1.0, s.rest = rest;
      const SelectReference r = kv_select_reference(p.args, s, c.fmt);
      const ReferenceResult e = reference_attention(p.args);
      EXPECT_TRUE(std::all_of(r.keep.begin(), r.keep.end(), [](uint8_t k) { return k == 1; }));
      expect_near_all(r.o, e.o, "O");
      expect_near_all(r.lse, e.lse, "LSE");
    }
  }
}

// Rows of exact attention sum to one: the importance of all keys is the number of
// (query, head) rows that see something, per selection head.
TEST(KvSelectReference, ImportanceSumsToVisibleRows) {
  test::Problem p = test::make_problem(2, 30, 20, 4, 2, 32, DType::f32, 11);
  p.args.mask = Mask::causal(-10);  // the first 10 queries see nothing
  for (KeepPer per : {KeepPer::kv_head, KeepPer::head}) {
    const SelectReference r = kv_select_reference(p.args, selection(0.5, 0, KeepRest::drop, per));
    const int64_t hsel = per == KeepPer::head ? 4 : 2,
                  rows_per_sel = per == KeepPer::head ? 20 : 40;
    for (int64_t row = 0; row < 2 * hsel; ++row) {
      double sum = 0.0;
      for (int64_t j = 0; j < 20; ++j) sum += r.importance[at(row * 20 + j)];
      EXPECT_NEAR(sum, static_cast<double>(rows_per_sel),
                  1e-12 * static_cast<double>(rows_per_sel));
    }
  }
}

TEST(KvSelectReference, PerKvHeadIsTheSumOverItsGroup) {
  test::Problem p = test::make_problem(1, 24, 24, 4, 2, 32, DType::f32, 21);
  p.args.mask = Mask::causal(0);
  const SelectReference kv = kv_select_reference(p.args, selection(0.3, 0, KeepRest::drop));
  const SelectReference hd =
      kv_select_reference(p.args, selection(0.3, 0, KeepRest::drop, KeepPer::head));
  ASSERT_EQ(kv.importance.size(), 2u * 24u);
  ASSERT_EQ(hd.importance.size(), 4u * 24u);
  for (int64_t g = 0; g < 2; ++g)
    for (int64_t j = 0; j < 24; ++j)
      EXPECT_NEAR(kv.importance[at(g * 24 + j)],
                  hd.importance[at((2 * g) * 24 + j)] + hd.importance[at((2 * g + 1) * 24 + j)],
                  kTol * 10);
  // Heads of one group choose differently here (random Q): the per-head sets differ.
  EXPECT_NE(std::vector<uint8_t>(hd.keep.begin(), hd.keep.begin() + 24),
            std::vector<uint8_t>(hd.keep.begin() + 24, hd.keep.begin() + 48));
}

TEST(KvSelectReference, KeepCountRule) {
  struct C {
    double p;
    int64_t nk, want;
  };
  // 0.28 x 25 = 7.000000000000001 and 0.56 x 25 = 14.000000000000002 count as 7 and 14.
  for (const C& c : {C{0.28, 25, 7}, C{0.56, 25, 14}, C{0.1, 30, 3}, C{0.25, 10, 3}, C{1e-6, 10, 1},
                     C{0.5, 7, 4}, C{0.999999, 20, 20}, C{1.0, 9, 9}}) {
    SCOPED_TRACE(testing::Message() << "p " << c.p << " Nk " << c.nk);
    EXPECT_EQ(literal_count(c.p, c.nk), c.want);
    if (c.want == 7) {
      EXPECT_GT(c.p * static_cast<double>(c.nk), 7.0);  // the product is above 7 in double
    }
    const test::Problem p = test::make_problem(1, 8, c.nk, 1, 1, 16, DType::f32, 5);
    const SelectReference r = kv_select_reference(p.args, selection(c.p));
    EXPECT_EQ(kept(r, 0, c.nk), c.want);
  }
}

TEST(KvSelectReference, SinksAndRecentAlwaysKept) {
  test::Problem p = test::make_problem(2, 40, 40, 2, 1, 32, DType::f32, 31);
  p.args.mask = with_sinks(Mask::causal(0), 3);
  for (KeepPer per : {KeepPer::kv_head, KeepPer::head}) {
    const SelectReference r = kv_select_reference(p.args, selection(0.05, 5, KeepRest::drop, per));
    const SelectReference l = literal(p, selection(0.05, 5, KeepRest::drop, per), {});
    expect_matches(r, l);
    const int64_t hsel = per == KeepPer::head ? 2 : 1;
    bool forced_below = false;  // a forced key that rank alone would not keep
    for (int64_t row = 0; row < 2 * hsel; ++row) {
      const double* imp = r.importance.data() + row * 40;
      const double t = *std::max_element(imp, imp + 40);  // n = 2: the second largest
      double second = kNegInf;
      for (int64_t j = 0; j < 40; ++j)
        if (imp[j] < t) second = std::max(second, imp[j]);
      for (int64_t j = 0; j < 40; ++j) {
        const bool forced = j < 3 || j >= 35;
        if (forced && imp[j] < second) forced_below = true;
        EXPECT_EQ(r.keep[at(row * 40 + j)], forced || imp[j] >= second ? 1 : 0) << "key " << j;
      }
      EXPECT_LE(kept(r, row, 40), 2 + 8);
    }
    EXPECT_TRUE(forced_below);
  }
  // Sinks and recent beyond Nk clamp: everything is kept, exact attention.
  p.args.mask = with_sinks(Mask::causal(0), 100);
  const SelectReference all = kv_select_reference(p.args, selection(0.05, 0));
  EXPECT_EQ(kept(all, 0, 40) + kept(all, 1, 40), 80);
  p.args.mask = Mask::causal(0);
  const SelectReference recent = kv_select_reference(p.args, selection(0.05, 1000));
  EXPECT_EQ(kept(recent, 0, 40) + kept(recent, 1, 40), 80);
  expect_near_all(recent.o, reference_attention(p.args).o, "O");
}

TEST(KvSelectReference, TiesKeepTheLowerIndex) {
  // Keys j and j + 12 identical, no mask: equal importance, bit for bit.
  test::Problem p = test::make_problem(1, 16, 24, 2, 1, 32, DType::f32, 41);
  for (int64_t j = 0; j < 12; ++j)
    for (int64_t d = 0; d < 32; ++d) p.k.set((j + 12) * 32 + d, p.k.get(j * 32 + d));
  const KvSelect s = selection(5.0 / 24.0);  // n = 5, odd: one pair is split
  const SelectReference r = kv_select_reference(p.args, s);
  expect_matches(r, literal(p, s, {}));
  int split = 0;
  for (int64_t j = 0; j < 12; ++j) {
    EXPECT_EQ(r.importance[at(j)], r.importance[at(j + 12)]) << "key " << j;
    EXPECT_LE(r.keep[at(j + 12)], r.keep[at(j)]) << "key " << j;
    split += r.keep[at(j)] != r.keep[at(j + 12)];
  }
  EXPECT_EQ(split, 1);
  EXPECT_EQ(kept(r, 0, 24), 5);

  // All keys identical: every importance equal, the first n keys kept, O = their mean V.
  for (int64_t j = 1; j < 24; ++j)
    for (int64_t d = 0; d < 32; ++d) p.k.set(j * 32 + d, p.k.get(d));
  const SelectReference e = kv_select_reference(p.args, s);
  for (int64_t j = 0; j < 24; ++j) {
    EXPECT_EQ(e.importance[at(j)], e.importance[0]);
    EXPECT_EQ(e.keep[at(j)], j < 5 ? 1 : 0) << "key " << j;
  }
  for (int64_t i = 0; i < 16; ++i)
    for (int64_t h = 0; h < 2; ++h)
      for (int64_t d = 0; d < 32; ++d) {
        double mean = 0.0;
        for (int64_t j = 0; j < 5; ++j) mean += p.v.get(j * 32 + d) / 5.0;
        EXPECT_NEAR(e.o[at((i * 2 + h) * 32 + d)], mean, kTol);
      }
}

TEST(KvSelectReference, RowWithoutKeptKeysIsEmptyInDropMode) {
  test::Problem p = test::make_problem(1, 40, 40, 2, 2, 32, DType::f32, 51);
  p.args.mask = Mask::band(-2, 0);        // query i sees keys i - 2 .. i
  const KvSelect drop = selection(0.05);  // n = 2 keys per K/V head
  const SelectReference r = kv_select_reference(p.args, drop);
  expect_matches(r, literal(p, drop, {}));
  int64_t empty = 0, full = 0;
  for (int64_t h = 0; h < 2; ++h)
    for (int64_t i = 0; i < 40; ++i) {
      bool sees_kept = false;
      for (int64_t j = std::max<int64_t>(0, i - 2); j <= i; ++j)
        sees_kept |= r.keep[at(h * 40 + j)] != 0;
      const double lse = r.lse[at(h * 40 + i)];
      if (!sees_kept) {
        ++empty;
        EXPECT_EQ(lse, kNegInf) << "row " << i;
        for (int64_t d = 0; d < 32; ++d) EXPECT_EQ(r.o[at((i * 2 + h) * 32 + d)], 0.0);
      } else {
        ++full;
        EXPECT_TRUE(std::isfinite(lse)) << "row " << i;
      }
    }
  EXPECT_GT(empty, 60);
  EXPECT_GT(full, 0);

  // int4 keeps every visible key: no empty row, and the rows differ from drop's.
  const KvSelect int4 = selection(0.05, 0, KeepRest::int4);
  const QuantFormat fmt{QuantBits::int4, 32, false};
  const SelectReference q = kv_select_reference(p.args, int4, fmt);
  expect_matches(q, literal(p, int4, fmt));
  EXPECT_EQ(q.keep, r.keep);
  for (double lse : q.lse) EXPECT_TRUE(std::isfinite(lse));
  const ReferenceResult exact = reference_attention(p.args);
  EXPECT_GT(max_abs_diff(q.o, exact.o), 1e-4);  // INT4 values, not the exact ones
  EXPECT_LT(max_abs_diff(q.o, exact.o), 1.0);   // but close to them
}

TEST(KvSelectReference, MarginIsTheDistanceToTheThreshold) {
  test::Problem p = test::make_problem(1, 30, 30, 1, 1, 32, DType::f32, 61);
  p.args.mask = Mask::causal(0);
  const SelectReference r = kv_select_reference(p.args, selection(0.2));  // n = 6
  std::vector<double> imp = r.importance;
  std::sort(imp.begin(), imp.end(), std::greater<double>());
  const double t = imp[5];
  int zero = 0;
  for (int64_t j = 0; j < 30; ++j) {
    EXPECT_NEAR(r.margin[at(j)], std::abs(r.importance[at(j)] - t) / t, kTol);
    EXPECT_EQ(r.keep[at(j)], r.importance[at(j)] >= t ? 1 : 0);
    zero += r.margin[at(j)] == 0.0;
  }
  EXPECT_EQ(zero, 1);  // the last key kept by rank
}

TEST(KvSelectReference, Errors) {
  test::Problem p = test::make_problem(1, 8, 8, 2, 1, 32, DType::f32, 71);
  const AttentionArgs a = p.args;
  EXPECT_THROW(kv_select_reference(a, selection(0.0)), FieldError);
  EXPECT_THROW(kv_select_reference(a, selection(1.5)), FieldError);
  EXPECT_THROW(kv_select_reference(a, selection(std::nan(""))), FieldError);
  EXPECT_THROW(kv_select_reference(a, selection(0.5, -1)), FieldError);
  AttentionArgs shifted = a;
  shifted.kpos = {8, 1};
  EXPECT_THROW(kv_select_reference(shifted, selection(0.5)), Error);
  AttentionArgs strided = a;
  strided.kpos = {0, 2};
  EXPECT_THROW(kv_select_reference(strided, selection(0.5)), Error);
  // Valid quantized K/V arguments (8 keys x 1 K/V head, zero codes): refused as such.
  const QuantFormat int8{QuantBits::int8, 32, false};
  std::vector<uint8_t> kbuf(at(8 * int8.row_bytes(32))), vbuf(kbuf.size());
  AttentionArgs quantized = a;
  quantized.kq = QuantRows::in_buffer(int8, 8, 32, kbuf.data());
  quantized.vq = QuantRows::in_buffer(int8, 8, 32, vbuf.data());
  EXPECT_NO_THROW(quantized.validate_args(HeadDims::any));
  try {
    kv_select_reference(quantized, selection(0.5));
    ADD_FAILURE() << "quantized K/V are accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("quantized"), std::string::npos) << e.what();
  }
  AttentionArgs hier = a;
  hier.hier.route_block = 4, hier.hier.route_topk = 1;
  EXPECT_NO_THROW(hier.validate_args(HeadDims::any));
  try {
    kv_select_reference(hier, selection(0.5));
    ADD_FAILURE() << "a hierarchy is accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("hierarchy"), std::string::npos) << e.what();
  }
  const KvSelect int4 = selection(0.5, 0, KeepRest::int4);
  EXPECT_THROW(kv_select_reference(a, int4, {QuantBits::int8, 32, false}), Error);
  EXPECT_THROW(kv_select_reference(a, int4, {QuantBits::int4, 64, false}), FieldError);
  EXPECT_NO_THROW(kv_select_reference(a, int4, {QuantBits::int4, 32, false}));
  // The query positions are free: a query block at 4.. of a causal problem.
  AttentionArgs late = a;
  late.mask = Mask::causal(0);
  late.qpos = {4, 1};
  const SelectReference r = kv_select_reference(late, selection(1.0));
  expect_near_all(r.o, reference_attention(late).o, "O");
}

}  // namespace
}  // namespace ringattn
