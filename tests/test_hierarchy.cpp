// The hierarchical stage over the ring (levels and block routing) against the
// independent float64 reference (ringattn/hier_reference.hpp): P in {1, 2, 3,
// 4, 8}, every layout, GQA, causal and two-sided, odd lengths, batch 2, sinks
// and global tokens; and the degenerate cases that prove the design.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <mutex>

#include "ring_cases.hpp"
#include "ringattn/error.hpp"
#include "ringattn/hier_reference.hpp"
#include "ringattn/hierarchy_stage.hpp"
#include "util.hpp"

namespace ringattn::test {
namespace {

struct Result {
  std::vector<float> o, lse;   // global order [B, Nq, Hq, D], [B, Hq, Nq]
  std::vector<int32_t> route;  // [B, Nq, Hq, topk]
  StageMetrics stage;          // rank 0's
};

// The whole problem on P in-process ranks: the ring on the exact part, then the stage.
Result run_hier(const AttentionArgs& g, const Tensor& q, const Tensor& k, const Tensor& v, int np,
                LayoutKind layout) {
  Result res;
  const int64_t b = g.batch, hq = g.hq, d = g.head_dim, topk = g.hier.route_topk;
  res.o.assign(static_cast<std::size_t>(g.batch * g.nq * hq * d), NAN);
  res.lse.assign(static_cast<std::size_t>(g.batch * hq * g.nq), NAN);
  res.route.assign(static_cast<std::size_t>(g.batch * g.nq * hq * std::max<int64_t>(topk, 0)), -2);
  std::mutex mu;
  run_local(np, [&](Communicator& comm) {
    const int r = comm.rank();
    const Layout ql(layout, g.nq, np), kl(layout, g.nk, np);
    const Tensor lq = slice_tokens(q, ql, r), lk = slice_tokens(k, kl, r),
                 lv = slice_tokens(v, kl, r);
    RingProblem p(static_cast<const AttentionProblem&>(g));
    p.q_layout = &ql, p.kv_layout = &kl;
    p.q = lq.data.data(), p.k = lk.data.data(), p.v = lv.data.data();
    RingProblem ring_p = p;
    ring_p.mask = hierarchy_ring_mask(p), ring_p.hier = {};
    const int64_t nl = ql.tokens(r);
    std::vector<float> o(static_cast<std::size_t>(b * nl * hq * d)),
        lse(static_cast<std::size_t>(b * hq * nl));
    std::vector<int32_t> route(static_cast<std::size_t>(b * nl * hq * std::max<int64_t>(topk, 0)));
    KernelOptions kopt;
    kopt.threads = 1;
    ring_attention(comm, make_ring_schedule(ql, kl, ring_p.mask), ring_p, o.data(), lse.data(),
                   kopt);
    const StageMetrics st = hierarchy_stage(comm, p, o.data(), lse.data(), kopt, route.data());
    std::lock_guard<std::mutex> lock(mu);
    if (r == 0) res.stage = st;
    for (const Segment& s : ql.segments(r))
      for (int64_t i = 0; i < s.count; ++i) {
        const int64_t pos = s.start + i * s.stride, li = s.local_offset + i;
        for (int64_t bi = 0; bi < b; ++bi) {
          std::memcpy(&res.o[static_cast<std::size_t>((bi * g.nq + pos) * hq * d)],
                      &o[static_cast<std::size_t>((bi * nl + li) * hq * d)],
                      static_cast<std::size_t>(hq * d) * sizeof(float));
          for (int64_t h = 0; h < hq; ++h)
            res.lse[static_cast<std::size_t>((bi * hq + h) * g.nq + pos)] =
                lse[static_cast<std::size_t>((bi * hq + h) * nl + li)];
          if (topk > 0)
            std::memcpy(&res.route[static_cast<std::size_t>((bi * g.nq + pos) * hq * topk)],
                        &route[static_cast<std::size_t>((bi * nl + li) * hq * topk)],
                        static_cast<std::size_t>(hq * topk) * sizeof(int32_t));
        }
      }
  });
  return res;
}

// A route that differs from the reference's only where the reference calls it a near-tie.
int64_t route_mismatches(const std::vector<int32_t>& got, const std::vector<int32_t>& want,
                         const std::vector<double>& gap, int64_t topk) {
  int64_t bad = 0;
  for (std::size_t row = 0; row < gap.size(); ++row) {
    const bool same = std::equal(got.begin() + static_cast<std::ptrdiff_t>(row * topk),
                                 got.begin() + static_cast<std::ptrdiff_t>((row + 1) * topk),
                                 want.begin() + static_cast<std::ptrdiff_t>(row * topk));
    bad += !same && !(gap[row] < 1e-4);
  }
  return bad;
}

struct HierCase {
  int64_t nq = 203, nk = 203;
  bool causal = true;
  int64_t w1 = 20, wr = -1, sinks = 0;
  bool global = false;
  Hierarchy hier;
  int64_t batch = 2;
  DType dtype = DType::f32;
  std::string name;
};

AttentionArgs make_args(const HierCase& c, Problem* g) {
  *g = make_problem(c.batch, c.nq, c.nk, 4, 2, 32, c.dtype, 7);
  AttentionArgs a = g->args;
  const int64_t diag = c.nk - c.nq;
  a.mask = c.causal ? Mask::causal(diag) : Mask::none();
  if (c.w1 >= 0) a.mask.lo = diag - c.w1;
  if (c.wr >= 0) a.mask.hi = std::min(a.mask.hi, diag + c.wr);
  a.mask.sinks = c.sinks;
  if (c.global) a.mask.n_global = 1, a.mask.global[0] = {90, 94};
  a.hier = c.hier;
  return a;
}

std::vector<HierCase> level_cases() {
  std::vector<HierCase> v;
  HierCase c;
  c.hier.regional_block = 8, c.hier.regional_window = 40, c.hier.global_block = 32;
  c.name = "causal levels 20/8/40/32";
  v.push_back(c);
  c.sinks = 3, c.global = true, c.name = "causal levels + sinks + global";
  v.push_back(c);
  HierCase t = c;
  t.causal = false, t.wr = 12, t.sinks = 0, t.global = false, t.name = "two-sided levels";
  v.push_back(t);
  HierCase n3 = c;
  n3.hier.global_block = 0, n3.sinks = 0, n3.global = false, n3.name = "levels without level 3";
  v.push_back(n3);
  HierCase x = c;
  x.nq = 150, x.nk = 203, x.sinks = 0, x.global = false, x.name = "cross-attention levels";
  v.push_back(x);
  return v;
}

std::vector<HierCase> routing_cases() {
  std::vector<HierCase> v;
  HierCase c;
  c.w1 = -1, c.hier.route_block = 16, c.hier.route_topk = 4, c.name = "causal routing 16 top 4";
  v.push_back(c);
  c.w1 = 10, c.sinks = 2, c.global = true, c.name = "causal routing + window + sinks + global";
  v.push_back(c);
  HierCase n = c;
  n.causal = false, n.w1 = 10, n.wr = 6, n.sinks = 0, n.global = false;
  n.name = "two-sided routing";
  v.push_back(n);
  HierCase x = v[0];
  x.nq = 120, x.name = "cross-attention routing";
  v.push_back(x);
  return v;
}

void check_case(const HierCase& c, int np, LayoutKind layout) {
  SCOPED_TRACE(c.name + " P=" + std::to_string(np) + " " + layout_name(layout));
  Problem g;
  const AttentionArgs a = make_args(c, &g);
  std::vector<int32_t> want_route;
  std::vector<double> gap;
  const ReferenceResult ref = reference_hierarchical(a, &want_route, &gap);
  const Result got = run_hier(a, g.q, g.k, g.v, np, layout);
  const ErrorStats err = compare_to_reference(a, got.o.data(), got.lse.data(), ref);
  EXPECT_TRUE(within(err, tolerance_for(c.dtype))) << error_text(err, tolerance_for(c.dtype));
  if (a.hier.routing()) {
    EXPECT_EQ(route_mismatches(got.route, want_route, gap, a.hier.route_topk), 0);
  }
}

TEST(Hierarchy, LevelsMatchReferenceEveryLayoutAndRankCount) {
  for (const HierCase& c : level_cases())
    for (int np : {1, 2, 3, 4, 8})
      for (LayoutKind l : {LayoutKind::contiguous, LayoutKind::zigzag, LayoutKind::striped})
        check_case(c, np, l);
}

TEST(Hierarchy, RoutingMatchesReferenceEveryLayoutAndRankCount) {
  for (const HierCase& c : routing_cases())
    for (int np : {1, 2, 3, 4, 8})
      for (LayoutKind l : {LayoutKind::contiguous, LayoutKind::zigzag, LayoutKind::striped})
        check_case(c, np, l);
}

// Dense attention under the problem's causal bound (or none), from the plain reference.
ReferenceResult dense(AttentionArgs a, bool causal) {
  a.hier = {};
  a.mask = causal ? Mask::causal(a.nk - a.nq) : Mask::none();
  return reference_attention(a);
}

TEST(Hierarchy, HalfPrecisionStorage) {
  // Summaries rounded to the storage dtype on both sides; float32 accumulation.
  for (DType dt : {DType::bf16, DType::f16}) {
    HierCase lv = level_cases()[1], rt = routing_cases()[1];
    lv.dtype = rt.dtype = dt;
    check_case(lv, 3, LayoutKind::zigzag);
    check_case(rt, 3, LayoutKind::striped);
  }
}

TEST(Hierarchy, WindowCoveringEverythingIsDense) {
  for (bool causal : {true, false}) {
    HierCase c = level_cases()[0];
    c.causal = causal, c.w1 = 400, c.wr = causal ? -1 : 400;
    c.hier.regional_window = 1000;
    Problem g;
    const AttentionArgs a = make_args(c, &g);
    const Result got = run_hier(a, g.q, g.k, g.v, 3, LayoutKind::zigzag);
    const ErrorStats err = compare_to_reference(a, got.o.data(), got.lse.data(), dense(a, causal));
    EXPECT_TRUE(within(err, tolerance_for(DType::f32)))
        << error_text(err, tolerance_for(DType::f32));
  }
}

TEST(Hierarchy, BlocksOfIdenticalKeysGiveTheDenseResult) {
  HierCase c = level_cases()[0];
  Problem g;
  AttentionArgs a = make_args(c, &g);
  // Every key row inside a level-3 block (hence inside each level-2 block) equal.
  const int64_t row = a.hkv * a.head_dim, s2 = a.hier.global_block;
  float* k = g.k.as<float>();
  for (int64_t b = 0; b < a.batch; ++b)
    for (int64_t j = 0; j < a.nk; ++j)
      std::memcpy(k + (b * a.nk + j) * row, k + (b * a.nk + j / s2 * s2) * row,
                  static_cast<std::size_t>(row) * sizeof(float));
  const Result got = run_hier(a, g.q, g.k, g.v, 4, LayoutKind::striped);
  const ErrorStats err = compare_to_reference(a, got.o.data(), got.lse.data(), dense(a, true));
  EXPECT_TRUE(within(err, tolerance_for(DType::f32))) << error_text(err, tolerance_for(DType::f32));
}

TEST(Hierarchy, TopkCoveringEveryBlockIsDenseCausal) {
  HierCase c = routing_cases()[0];
  c.hier.route_topk = 50;  // more than the 13 blocks
  Problem g;
  const AttentionArgs a = make_args(c, &g);
  const Result got = run_hier(a, g.q, g.k, g.v, 3, LayoutKind::contiguous);
  const ErrorStats err = compare_to_reference(a, got.o.data(), got.lse.data(), dense(a, true));
  EXPECT_TRUE(within(err, tolerance_for(DType::f32))) << error_text(err, tolerance_for(DType::f32));
}

TEST(Hierarchy, RoutingFetchesOnlyChosenBlocks) {
  // 8 ranks, contiguous: a rank's queries choose at most topk - 1 earlier blocks each,
  // so it receives far fewer key tokens than the ring's (P - 1) / P of the sequence.
  HierCase c = routing_cases()[0];
  c.nq = c.nk = 1024, c.hier.route_block = 32, c.hier.route_topk = 2, c.batch = 1;
  Problem g;
  const AttentionArgs a = make_args(c, &g);
  const Result got = run_hier(a, g.q, g.k, g.v, 8, LayoutKind::contiguous);
  EXPECT_EQ(got.stage.summaries, 32);
  EXPECT_EQ(got.stage.fetched_tokens, 0);  // rank 0's queries only choose its own blocks
}

TEST(Hierarchy, TheStageAddsWhatTheWindowAloneDoesNotSee) {
  // Not vacuous: the window alone is far from the levels' result and from routing's, and
  // routing picks blocks other than the query's own.
  for (const HierCase& c : {level_cases()[0], routing_cases()[0]}) {
    Problem g;
    const AttentionArgs a = make_args(c, &g);
    const Result got = run_hier(a, g.q, g.k, g.v, 2, LayoutKind::zigzag);
    AttentionArgs window = a;
    window.hier = {};
    const ErrorStats err =
        compare_to_reference(a, got.o.data(), got.lse.data(), reference_attention(window));
    EXPECT_GT(err.o_rel_fro, 100 * tolerance_for(DType::f32).o_rel_fro) << c.name;
    if (a.hier.routing()) {
      int64_t other = 0;
      for (std::size_t i = 0; i + 1 < got.route.size(); ++i) other += got.route[i] >= 0;
      EXPECT_GT(other, a.nq * a.hq * a.batch);  // more than one block per row on average
    }
  }
}

TEST(Hierarchy, ValidationNamesTheField) {
  HierCase c = level_cases()[0];
  Problem g;
  AttentionArgs a = make_args(c, &g);
  a.hier.regional_window = 20;  // < W1 + s1 = 28
  try {
    a.validate();
    FAIL() << "accepted";
  } catch (const FieldError& e) {
    EXPECT_EQ(e.field(), "regional_window");
  }
  a = make_args(c, &g);
  a.hier.global_block = 12;  // not a multiple of 8
  EXPECT_THROW(a.validate(), FieldError);
  a = make_args(c, &g);
  a.mask.lo = -kUnbounded;  // no window
  EXPECT_THROW(a.validate(), FieldError);
  a = make_args(c, &g);
  a.hier.route_block = 16, a.hier.route_topk = 2;  // both
  EXPECT_THROW(a.validate(), FieldError);
}

}  // namespace
}  // namespace ringattn::test
