// K/V selection (ringattn/kv_select.hpp): the kernel's kept-key sets and its
// importance (column sums of the softmax) against literal float64 loops, the
// selection rule, and the stage (one process and the ring, every layout)
// against the independent float64 reference (ringattn/kv_select_reference.hpp).
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <vector>

#include "ring_cases.hpp"
#include "ringattn/comm.hpp"
#include "ringattn/error.hpp"
#include "ringattn/kernel.hpp"
#include "ringattn/kv_select.hpp"
#include "ringattn/kv_select_reference.hpp"
#include "ringattn/kv_select_stage.hpp"
#include "ringattn/reference.hpp"
#include "ringattn/ring.hpp"
#include "ringattn/schedule.hpp"
#include "util.hpp"

namespace ringattn {
namespace {

std::size_t at(int64_t i) {
  return static_cast<std::size_t>(i);
}

std::vector<Isa> isas_here() {
  std::vector<Isa> v;
  for (Isa i : {Isa::avx512, Isa::avx2, Isa::generic})
    if (isa_supported(i)) v.push_back(i);
  return v;
}

// Literal float64 attention where query row i of head h sees key j iff the
// mask allows it and sees(b, h, j); positions from 0. Also the column sums of
// its softmax per (b, h, j).
struct Literal {
  ReferenceResult ref;
  std::vector<double> colsum;  // [B, Hq, Nk]
};
Literal literal(const AttentionArgs& a,
                const std::function<bool(int64_t, int64_t, int64_t)>& sees) {
  Literal r;
  const int64_t d = a.head_dim, g = a.hq / a.hkv;
  r.ref.o.assign(at(a.q_elems()), 0.0);
  r.ref.lse.assign(at(a.lse_elems()), -std::numeric_limits<double>::infinity());
  r.colsum.assign(at(a.batch * a.hq * a.nk), 0.0);
  const auto val = [&](const void* p, int64_t i) {
    return double(load_as_f32(p, a.dtype, static_cast<std::size_t>(i)));
  };
  const double scale = a.softmax_scale();
  for (int64_t b = 0; b < a.batch; ++b)
    for (int64_t h = 0; h < a.hq; ++h)
      for (int64_t i = 0; i < a.nq; ++i) {
        std::vector<double> s(at(a.nk), -std::numeric_limits<double>::infinity());
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < a.nk; ++j) {
          if (!a.mask.allows(i, j) || !sees(b, h, j)) continue;
          double dot = 0;
          for (int64_t c = 0; c < d; ++c)
            dot += val(a.q, ((b * a.nq + i) * a.hq + h) * d + c) *
                   val(a.k, ((b * a.nk + j) * a.hkv + h / g) * d + c);
          s[at(j)] = scale * dot;
          mx = std::max(mx, s[at(j)]);
        }
        if (mx == -std::numeric_limits<double>::infinity()) continue;
        double l = 0;
        for (int64_t j = 0; j < a.nk; ++j) l += std::exp(s[at(j)] - mx);
        const double lse = mx + std::log(l);
        r.ref.lse[at((b * a.hq + h) * a.nq + i)] = lse;
        for (int64_t j = 0; j < a.nk; ++j) {
          const double p = std::exp(s[at(j)] - lse);
          if (p == 0) continue;
          r.colsum[at((b * a.hq + h) * a.nk + j)] += p;
          for (int64_t c = 0; c < d; ++c)
            r.ref.o[at(((b * a.nq + i) * a.hq + h) * d + c)] +=
                p * val(a.v, ((b * a.nk + j) * a.hkv + h / g) * d + c);
        }
      }
  return r;
}

std::vector<uint8_t> random_flags(int64_t n, double density, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::bernoulli_distribution keep(density);
  std::vector<uint8_t> f(at(n));
  for (auto& x : f) x = keep(rng) ? 1 : 0;
  return f;
}

struct NamedMaskCase {
  const char* name;
  Mask mask;
};
std::vector<NamedMaskCase> masks(int64_t n) {
  Mask window = Mask::band(-37, 0);
  Mask sinks = Mask::causal();
  sinks.lo = -20, sinks.sinks = 4;
  Mask dil = Mask::band(-60, 0);
  dil.dilation = 3;
  (void)n;
  return {{"full", Mask::none()},
          {"causal", Mask::causal()},
          {"window", window},
          {"window+sinks", sinks},
          {"dilated", dil}};
}

TEST(KvSelectKernel, KeptKeySetsEqualTheLiteralAttention) {
  const int64_t b = 2, n = 150, d = 64;
  struct Sets {
    int64_t hkv;
    bool per_head, invert;
  };
  for (DType dt : {DType::f32, DType::bf16})
    for (const Sets& sets : {Sets{2, false, false}, Sets{2, true, true}, Sets{1, false, true}})
      for (const NamedMaskCase& mc : masks(n)) {
        const int64_t hkv = sets.hkv;
        const bool per_head = sets.per_head, invert = sets.invert;
        const int64_t hq = 4;
        test::Problem p = test::make_problem(b, n, n, hq, hkv, d, dt, 11 + hkv);
        p.args.mask = mc.mask;
        const int64_t heads = per_head ? hq : hkv;
        const std::vector<uint8_t> flags = random_flags(b * heads * n, 0.3, 5 + uint64_t(per_head));
        p.args.keep = {flags.data(), heads, n, invert};
        const Literal lit = literal(p.args, [&](int64_t bi, int64_t h, int64_t j) {
          return (flags[at((bi * heads + h / (hq / heads)) * n + j)] != 0) != invert;
        });
        for (Isa isa : isas_here()) {
          const test::Output out = test::run_kernel(p.args, isa, 2);
          const ErrorStats e = compare_to_reference(p.args, out.o.data(), out.lse.data(), lit.ref);
          EXPECT_TRUE(within(e, tolerance_for(dt)))
              << mc.name << " " << dtype_name(dt) << " hkv " << hkv << " per_head " << per_head
              << " invert " << invert << " " << isa_name(isa) << ": "
              << error_text(e, tolerance_for(dt));
        }
      }
}

TEST(KvSelectKernel, RowsWithNoKeptVisibleKeyAreEmptyAndTilesWithNoneAreSkipped) {
  const int64_t n = 300, d = 32;
  test::Problem p = test::make_problem(1, n, n, 2, 1, d, DType::f32, 3);
  p.args.mask = Mask::band(-5, 0);
  std::vector<uint8_t> flags(at(n), 0);
  for (int64_t j = 0; j < 128; ++j) flags[at(j)] = 1;  // only the first key tile is kept
  p.args.keep = {flags.data(), 1, n, false};
  const test::Output out = test::run_kernel(p.args);
  for (int64_t h = 0; h < 2; ++h)
    for (int64_t i = 0; i < n; ++i) {
      const float l = out.lse[at(h * n + i)];
      if (i >= 128 + 5) {
        EXPECT_EQ(l, -INFINITY) << "row " << i;
        for (int64_t c = 0; c < d; ++c) EXPECT_EQ(out.o[at((i * 2 + h) * d + c)], 0.0f);
      } else {
        EXPECT_TRUE(std::isfinite(l)) << "row " << i;
      }
    }
  // The band keeps few tiles; with the keys of tiles 1 and 2 dropped fewer are computed.
  AttentionArgs all = p.args;
  all.keep = {};
  EXPECT_LT(out.stats.tiles_computed, test::run_kernel(all).stats.tiles_computed);
}

TEST(KvSelectKernel, ImportanceEqualsTheLiteralColumnSums) {
  const int64_t n = 230, nk = 250, d = 64, hq = 4, hkv = 2;
  for (DType dt : {DType::f32, DType::f16})
    for (const NamedMaskCase& mc : masks(n)) {
      test::Problem p = test::make_problem(1, n, nk, hq, hkv, d, dt, 21);
      p.args.mask = mc.mask;
      if (mc.mask.limit < kUnbounded) p.args.mask.limit += nk - n, p.args.mask.hi += nk - n;
      const Literal lit = literal(p.args, [](int64_t, int64_t, int64_t) { return true; });
      std::vector<float> lse(lit.ref.lse.begin(), lit.ref.lse.end());
      for (Isa isa : isas_here()) {
        std::vector<double> imp(at(hq * nk), 0.0);
        KernelOptions opt;
        opt.isa = isa, opt.threads = 2;
        attention_importance(p.args, lse.data(), n, imp.data(), opt);
        double worst = 0, total = 0;
        for (std::size_t j = 0; j < imp.size(); ++j) {
          worst = std::max(worst, std::fabs(imp[j] - lit.colsum[j]) / std::max(1.0, lit.colsum[j]));
          total += imp[j];
        }
        EXPECT_LT(worst, 1e-5) << mc.name << " " << dtype_name(dt) << " " << isa_name(isa);
        // Every row that sees a key spreads exactly 1 over its keys.
        int64_t rows = 0;
        for (double l : lit.ref.lse) rows += std::isfinite(l) ? 1 : 0;
        EXPECT_NEAR(total, double(rows), 1e-4 * double(rows)) << mc.name;
      }
    }
}

TEST(KvSelectKernel, ImportanceRefusesWhatItCannotCompute) {
  test::Problem p = test::make_problem(2, 10, 10, 2, 2, 32, DType::f32, 1);
  std::vector<float> lse(40, 0.0f);
  std::vector<double> imp(40, 0.0);
  EXPECT_THROW(attention_importance(p.args, lse.data(), 10, imp.data()), FieldError);
  p.args.batch = 1;
  std::vector<uint8_t> flags(20, 1);
  p.args.keep = {flags.data(), 2, 10, false};
  EXPECT_THROW(attention_importance(p.args, lse.data(), 10, imp.data()), FieldError);
}

TEST(KvSelect, KeepCountRoundsProductsNearAnInteger) {
  EXPECT_EQ(keep_count(0.1, 1000), 100);
  EXPECT_EQ(keep_count(0.1, 1001), 101);
  EXPECT_EQ(keep_count(1.0, 7), 7);
  EXPECT_EQ(keep_count(0.3, 10), 3);
  EXPECT_EQ(keep_count(0.7, 10), 7);
  EXPECT_EQ(keep_count(1e-9, 5), 1);
  EXPECT_EQ(keep_count(0.5, 0), 0);
}

TEST(KvSelect, SelectKeysTakesTheLargestLowerIndexFirstPlusSinksAndRecent) {
  const std::vector<double> imp = {0.5, 2.0, 1.0, 2.0, 0.1, 1.0, 3.0, 0.0, 0.2, 1.0};
  std::vector<uint8_t> keep(imp.size());
  select_keys(imp.data(), 10, 4, 0, 0, keep.data());
  EXPECT_EQ(keep, (std::vector<uint8_t>{0, 1, 1, 1, 0, 0, 1, 0, 0, 0}));  // tie at 1.0: key 2
  select_keys(imp.data(), 10, 2, 1, 2, keep.data());
  EXPECT_EQ(keep, (std::vector<uint8_t>{1, 1, 0, 0, 0, 0, 1, 0, 1, 1}));
  select_keys(imp.data(), 10, 10, 0, 0, keep.data());
  EXPECT_EQ(keep, std::vector<uint8_t>(10, 1));
  select_keys(imp.data(), 10, 0, 20, 0, keep.data());  // sinks beyond Nk clamp
  EXPECT_EQ(keep, std::vector<uint8_t>(10, 1));
}

TEST(KvSelect, BadSettingsAreFieldErrors) {
  const auto field = [](const KvSelect& s, int64_t d) {
    try {
      validate_select(s, d);
    } catch (const FieldError& e) {
      return e.field();
    }
    return std::string();
  };
  KvSelect s;
  s.keep = 1.5;
  EXPECT_EQ(field(s, 64), "kv_keep");
  s.keep = -0.1;
  EXPECT_EQ(field(s, 64), "kv_keep");
  s.keep = std::nan("");
  EXPECT_EQ(field(s, 64), "kv_keep");
  s.keep = 0.5, s.keep_recent = -1;
  EXPECT_EQ(field(s, 64), "kv_keep_recent");
  s.keep_recent = 0, s.rest = KeepRest::int4, s.group = 64;
  EXPECT_EQ(field(s, 96), "kv_group");
  EXPECT_EQ(field(s, 128), "");
  EXPECT_THROW(parse_keep_rest("int8", "kv_rest"), FieldError);
  EXPECT_THROW(parse_keep_per("kv", "kv_keep_per"), FieldError);
  EXPECT_EQ(parse_keep_per("head", "x"), KeepPer::head);
}

// Kept flags equal the reference's except where the reference's importance is
// within 1e-4 (relative) of the threshold: float32 sums may order near-ties
// differently. Returns how many flags differ (near-ties included).
int64_t expect_same_keep(const std::vector<uint8_t>& keep, const SelectReference& ref,
                         const std::string& what) {
  EXPECT_EQ(keep.size(), ref.keep.size()) << what;
  int64_t differ = 0;
  for (std::size_t i = 0; i < std::min(keep.size(), ref.keep.size()); ++i) {
    if (keep[i] == ref.keep[i]) continue;
    ++differ;
    EXPECT_LT(ref.margin[i], 1e-4) << what << ": flag " << i << " differs away from a near-tie";
  }
  return differ;
}

ReferenceResult as_result(const SelectReference& r) {
  return ReferenceResult{r.o, r.lse};
}

KvSelect selection(double p, int64_t recent, KeepRest rest, KeepPer per, int group = 32) {
  KvSelect s;
  s.keep = p, s.keep_recent = recent, s.rest = rest, s.per = per, s.group = group;
  return s;
}

struct StageCase {
  const char* name;
  int64_t b, nq, nk, hq, hkv, d;
  DType dt;
  Mask mask;
  KvSelect sel;
};

// The INT4 rest runs on float32 storage here: the float64 quantizer reference
// divides in float64 where the implementation divides in float32 (as
// ringattn/quant.hpp defines it), so codes may differ by one within 1e-6 of a
// rounding tie, and 16-bit values hit exact ties (x = max|x| / 2) often enough
// to move O by ~1e-3. 16-bit storage is covered with the rest dropped.
std::vector<StageCase> stage_cases() {
  Mask ws = Mask::causal();
  ws.lo = -40, ws.sinks = 3;
  Mask cross = Mask::causal(190 - 150);
  return {
      {"causal gqa drop", 2, 157, 157, 4, 2, 64, DType::f32, Mask::causal(),
       selection(0.2, 8, KeepRest::drop, KeepPer::kv_head)},
      {"window+sinks per head int4", 1, 157, 157, 4, 2, 64, DType::f32, ws,
       selection(0.1, 4, KeepRest::int4, KeepPer::head)},
      {"full mqa int4 asym", 1, 120, 120, 2, 1, 32, DType::f32, Mask::none(),
       [] {
         KvSelect s = selection(0.3, 0, KeepRest::int4, KeepPer::kv_head);
         s.asymmetric = true;
         return s;
       }()},
      {"cross causal per head drop", 2, 150, 190, 2, 2, 32, DType::f16, cross,
       selection(0.15, 5, KeepRest::drop, KeepPer::head)},
  };
}

test::Problem stage_problem(const StageCase& c, uint64_t seed) {
  test::Problem p = test::make_problem(c.b, c.nq, c.nk, c.hq, c.hkv, c.d, c.dt, seed);
  p.args.mask = c.mask;
  return p;
}

TEST(KvSelectStage, OneProcessEqualsTheFloat64Reference) {
  uint64_t seed = 40;
  for (const StageCase& c : stage_cases()) {
    const test::Problem p = stage_problem(c, ++seed);
    const SelectReference ref = kv_select_reference(p.args, c.sel);
    std::vector<float> o(at(p.args.q_elems())), lse(at(p.args.lse_elems()));
    std::vector<uint8_t> keep;
    KernelOptions kopt;
    kopt.threads = 2;
    kv_select_attention(p.args, c.sel, o.data(), lse.data(), kopt, &keep);
    if (expect_same_keep(keep, ref, c.name) > 0) continue;  // a near-tie: O may differ
    const ErrorStats e = compare_to_reference(p.args, o.data(), lse.data(), as_result(ref));
    EXPECT_TRUE(within(e, tolerance_for(c.dt)))
        << c.name << ": " << error_text(e, tolerance_for(c.dt));
  }
}

TEST(KvSelectStage, KeepingEveryKeyIsExactAttention) {
  const StageCase c = stage_cases()[0];
  test::Problem p = stage_problem(c, 3);
  const ReferenceResult exact = reference_attention(p.args);
  for (KeepRest rest : {KeepRest::drop, KeepRest::int4}) {
    std::vector<float> o(at(p.args.q_elems())), lse(at(p.args.lse_elems()));
    std::vector<uint8_t> keep;
    kv_select_attention(p.args, selection(1.0, 0, rest, KeepPer::head), o.data(), lse.data(), {},
                        &keep);
    EXPECT_EQ(keep, std::vector<uint8_t>(keep.size(), 1));
    const ErrorStats e = compare_to_reference(p.args, o.data(), lse.data(), exact);
    EXPECT_TRUE(within(e, tolerance_for(c.dt))) << error_text(e, tolerance_for(c.dt));
  }
}

std::atomic<int> g_ring_compared{0};  // rank runs whose rows were compared (no near-tie)

// The stage on P in-process ranks after the exact ring pass; every rank's rows
// and kept set against the reference.
void run_ring_stage(int ranks, LayoutKind layout, const StageCase& c, uint64_t seed) {
  const test::Problem g = stage_problem(c, seed);
  const SelectReference ref = kv_select_reference(g.args, c.sel);
  const std::string what =
      std::string(c.name) + " P=" + std::to_string(ranks) + " " + layout_name(layout);
  run_local(ranks, [&](Communicator& comm) {
    const int r = comm.rank();
    const Layout ql(layout, c.nq, ranks), kl(layout, c.nk, ranks);
    const RingSchedule sch = make_ring_schedule(ql, kl, g.args.mask);
    const test::RankShare share = test::rank_share(g, ql, kl, r);
    const RingProblem& rp = share.rp;
    const int64_t nl = ql.tokens(r);
    std::vector<float> o(at(c.b * nl * c.hq * c.d)), lse(at(c.b * c.hq * nl));
    KernelOptions kopt;
    kopt.threads = 1;
    ring_attention(comm, sch, rp, o.data(), lse.data(), kopt);
    std::vector<uint8_t> keep;
    const SelectMetrics m =
        kv_select_stage(comm, sch, rp, c.sel, o.data(), lse.data(), kopt, &keep);
    EXPECT_EQ(m.keys, int64_t(keep.size()));
    if (expect_same_keep(keep, ref, what) > 0) return;
    ++g_ring_compared;
    // This rank's rows in global order against the reference's.
    const test::GlobalRows g_rows =
        test::to_global(ql, r, c.b, c.nq, c.hq, c.d, o.data(), lse.data());
    const std::vector<int64_t>& rows = g_rows.rows;
    const std::vector<float>&go = g_rows.o, &gl = g_rows.lse;
    if (rows.empty()) return;
    const ErrorStats e = compare_to_reference(g.args, go.data(), gl.data(), as_result(ref), rows);
    EXPECT_TRUE(within(e, tolerance_for(c.dt)))
        << what << " rank " << r << ": " << error_text(e, tolerance_for(c.dt));
  });
}

TEST(KvSelectStage, RingEqualsTheFloat64ReferenceForEveryLayoutAndP) {
  uint64_t seed = 70;
  const std::vector<StageCase> cases = stage_cases();
  int runs = 0;
  for (int ranks : {1, 2, 3, 4})
    for (LayoutKind layout : {LayoutKind::contiguous, LayoutKind::zigzag, LayoutKind::striped})
      for (std::size_t i = 0; i < cases.size(); ++i)
        if ((ranks + int(layout) + int(i)) % 2 == 0 || ranks == 3)  // half the grid, all of P = 3
          run_ring_stage(ranks, layout, cases[i], ++seed), runs += ranks;
  EXPECT_GE(g_ring_compared.load(), runs * 9 / 10) << "near-ties skipped too many comparisons";
}

TEST(KvSelectStage, WhatTheStageCannotRunIsAFieldError) {
  test::Problem p = test::make_problem(1, 40, 40, 2, 2, 32, DType::f32, 1);
  std::vector<float> o(at(p.args.q_elems())), lse(at(p.args.lse_elems()));
  const KvSelect sel = selection(0.5, 0, KeepRest::drop, KeepPer::kv_head);
  p.args.mask.n_global = 1, p.args.mask.global[0] = {0, 2};
  EXPECT_THROW(kv_select_attention(p.args, sel, o.data(), lse.data(), {}), FieldError);
  p.args.mask = Mask::causal();
  KvSelect bad = sel;
  bad.keep = 2;
  EXPECT_THROW(kv_select_attention(p.args, bad, o.data(), lse.data(), {}), FieldError);
  bad = selection(0.5, 0, KeepRest::int4, KeepPer::kv_head, 64);
  p.args.head_dim = 32;  // a group of 64 does not divide D = 32
  EXPECT_THROW(kv_select_attention(p.args, bad, o.data(), lse.data(), {}), FieldError);
}

}  // namespace
}  // namespace ringattn
