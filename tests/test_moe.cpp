// The MoE stage (ringattn/moe_stage.hpp) against the float64 reference
// (ringattn/moe_reference.hpp) on random inputs, over P in-process ranks and
// every layout: routing, counts and drops equal exactly; gates and Y within
// float32 tolerance; losses within 1e-6; results independent of P.
//
// Inputs lie on a coarse grid (x in k/8, router in k/16) so the router's
// logits are exact in float32 and float64 alike: routing decisions (ties
// included) are then the same in both, and any difference is a bug.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "ringattn/comm.hpp"
#include "ringattn/error.hpp"
#include "ringattn/job.hpp"
#include "ringattn/layout.hpp"
#include "ringattn/moe.hpp"
#include "ringattn/moe_job.hpp"
#include "ringattn/moe_reference.hpp"
#include "ringattn/moe_stage.hpp"
#include "ringattn/npy.hpp"
#include "util.hpp"

namespace ringattn {
namespace {

constexpr double kTol = 1e-5;      // gates (absolute, they are <= 1) and Y (relative Frobenius)
constexpr double kLossTol = 1e-6;  // aux and z losses

std::size_t at(int64_t i) {
  return static_cast<std::size_t>(i);
}

struct Problem {
  int64_t tokens = 120, seq_len = 60, d_model = 16, d_ff = 24;
  std::vector<float> x;  // [T, d_model]
  MoeWeights w;          // every expert
};

Problem make_problem(int experts, uint64_t seed, int64_t tokens = 120, int64_t seq_len = 60) {
  Problem p;
  p.tokens = tokens, p.seq_len = seq_len;
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> xk(-8, 8), rk(-16, 16);
  std::normal_distribution<float> nd(0.0f, 0.3f);
  p.x.resize(at(p.tokens * p.d_model));
  for (float& v : p.x) v = float(xk(rng)) / 8.0f;
  MoeWeights& w = p.w;
  w.d_model = p.d_model, w.d_ff = p.d_ff, w.experts = experts, w.first = 0, w.count = experts;
  w.router.resize(at(p.d_model * experts));
  for (float& v : w.router) v = float(rk(rng)) / 16.0f;
  w.bias.assign(at(experts), 0.0f);
  const int64_t per = p.d_model * p.d_ff * experts;
  for (auto* m : {&w.w1, &w.w3, &w.w2}) {
    m->resize(at(per));
    for (float& v : *m) v = nd(rng);
  }
  return p;
}

// The experts rank `rank` of P holds, cut from all of them.
MoeWeights held_weights(const MoeWeights& all, int ranks, int rank) {
  const ExpertRange h = moe_experts_of(all.experts, ranks, rank);
  MoeWeights w = all;
  w.first = h.first, w.count = h.count;
  const auto per = static_cast<std::ptrdiff_t>(all.d_model * all.d_ff);
  for (auto [dst, src] :
       {std::pair{&w.w1, &all.w1}, std::pair{&w.w3, &all.w3}, std::pair{&w.w2, &all.w2}})
    dst->assign(src->begin() + per * h.first, src->begin() + per * (h.first + h.count));
  return w;
}

struct StageRun {
  std::vector<float> y, gates;  // global order
  std::vector<int32_t> routing;
  MoeMetrics m;                              // rank 0's (global figures)
  int64_t rows_computed = 0, rows_sent = 0;  // summed over ranks
};

StageRun run_stage(const MoeConfig& c, const Problem& p, int ranks, LayoutKind kind) {
  StageRun out;
  const int64_t w = c.width(), dm = p.d_model;
  out.y.assign(at(p.tokens * dm), 0.0f);
  out.gates.assign(at(p.tokens * w), 0.0f);
  out.routing.assign(at(p.tokens * w), -2);
  const int64_t sequences = p.tokens / p.seq_len;
  const Layout l(kind, p.seq_len, ranks);
  std::vector<int64_t> computed(at(ranks)), sent(at(ranks));
  run_local(ranks, [&](Communicator& comm) {
    const int r = comm.rank();
    std::vector<int64_t> index;  // batch-major, layout order within a sequence
    for (int64_t b = 0; b < sequences; ++b)
      for (const Segment& s : l.segments(r))
        for (int64_t i = 0; i < s.count; ++i)
          index.push_back(b * p.seq_len + s.start + i * s.stride);
    const auto rows = static_cast<int64_t>(index.size());
    std::vector<float> x(at(rows * dm)), y(at(rows * dm)), g(at(rows * w));
    std::vector<int32_t> route(at(rows * w));
    for (int64_t i = 0; i < rows; ++i)
      std::copy_n(p.x.data() + index[at(i)] * dm, dm, x.data() + i * dm);
    MoeTokens in;
    in.x = x.data(), in.rows = rows, in.index = index.data(), in.tokens = p.tokens;
    in.seq_len = p.seq_len;
    const MoeWeights mine = held_weights(p.w, ranks, r);
    const MoeMetrics m = moe_stage(comm, c, mine, in, y.data(), route.data(), g.data());
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t t = index[at(i)];
      std::copy_n(y.data() + i * dm, dm, out.y.data() + t * dm);
      std::copy_n(route.data() + i * w, w, out.routing.data() + t * w);
      std::copy_n(g.data() + i * w, w, out.gates.data() + t * w);
    }
    computed[at(r)] = m.rows_computed, sent[at(r)] = m.rows_sent;
    if (r == 0) out.m = m;
  });
  out.rows_computed = std::accumulate(computed.begin(), computed.end(), int64_t{0});
  out.rows_sent = std::accumulate(sent.begin(), sent.end(), int64_t{0});
  return out;
}

double rel_frobenius(const std::vector<float>& got, const std::vector<double>& want) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double e = double(got[i]) - want[i];
    num += e * e, den += want[i] * want[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

void expect_matches(const MoeConfig& c, const Problem& p, const StageRun& s,
                    const MoeReferenceResult& ref, const std::string& what) {
  SCOPED_TRACE(what);
  ASSERT_EQ(s.routing, ref.routing);
  double gate_err = 0;
  for (std::size_t i = 0; i < s.gates.size(); ++i)
    gate_err = std::max(gate_err, std::abs(double(s.gates[i]) - ref.gates[i]));
  EXPECT_LE(gate_err, kTol);
  EXPECT_LE(rel_frobenius(s.y, ref.y), kTol);
  EXPECT_EQ(s.m.requested, ref.requested);
  EXPECT_EQ(s.m.load, ref.load);
  EXPECT_EQ(s.m.dropped, ref.dropped);
  EXPECT_EQ(s.m.unrouted, ref.unrouted);
  EXPECT_EQ(s.m.capacity, ref.capacity);
  EXPECT_NEAR(s.m.aux_loss, ref.aux_loss, kLossTol);
  EXPECT_NEAR(s.m.z_loss, ref.z_loss, kLossTol);
  EXPECT_EQ(s.m.next_bias, ref.next_bias);
  // Conservation: every accepted assignment's row was computed once, on its expert's rank.
  const int64_t accepted = std::accumulate(ref.load.begin(), ref.load.end(), int64_t{0});
  EXPECT_EQ(s.rows_computed, accepted);
  EXPECT_LE(s.rows_sent, accepted);
  (void)c, (void)p;
}

struct Case {
  MoePolicy policy;
  MoePriority priority;
  double cf;
  int64_t chunk;
  double bias;
};

std::string name_of(const Case& k, int experts, int topk, int ranks, LayoutKind kind) {
  return moe_policy_name(k.policy) + "/" + moe_priority_name(k.priority) + " cf " +
         std::to_string(k.cf) + " E " + std::to_string(experts) + " k " + std::to_string(topk) +
         " P " + std::to_string(ranks) + " " + layout_name(kind);
}

TEST(MoeStage, MatchesReferenceForEveryPolicyRankCountAndLayout) {
  const std::vector<Case> cases = {
      {MoePolicy::token, MoePriority::order, 1.0, 0, 0},   // drops
      {MoePolicy::token, MoePriority::score, 0.75, 0, 0},  // more drops, by score
      {MoePolicy::token, MoePriority::order, 0.0, 0, 0},   // dropless
      {MoePolicy::chunk, MoePriority::order, 1.0, 8, 0},   // 60 = 7 x 8 + 4: a short last chunk
      {MoePolicy::chunk, MoePriority::score, 1.25, 4, 0},
      {MoePolicy::expert, MoePriority::order, 1.0, 0, 0},
  };
  const std::vector<int> rank_counts =
      test::kSanitized ? std::vector<int>{1, 3, 8} : std::vector<int>{1, 2, 3, 4, 8};
  for (int experts : {8, 16})
    for (int topk : {1, 2}) {
      const Problem p = make_problem(experts, 1000 + uint64_t(experts) * 10 + uint64_t(topk));
      for (const Case& k : cases) {
        MoeConfig c;
        c.experts = experts, c.topk = topk, c.d_ff = p.d_ff, c.policy = k.policy;
        c.priority = k.priority, c.capacity_factor = k.cf, c.min_capacity = 2, c.chunk = k.chunk;
        const MoeReferenceResult ref =
            reference_moe(c, p.x.data(), p.tokens, p.d_model, p.seq_len, p.w);
        if (k.cf > 0 && k.policy != MoePolicy::expert) {
          EXPECT_GT(ref.dropped, 0) << "the case should exercise capacity";
        }
        for (int ranks : rank_counts)
          for (LayoutKind kind :
               {LayoutKind::contiguous, LayoutKind::zigzag, LayoutKind::striped}) {
            if (ranks == 1 && kind != LayoutKind::contiguous) continue;
            expect_matches(c, p, run_stage(c, p, ranks, kind), ref,
                           name_of(k, experts, topk, ranks, kind));
          }
      }
    }
}

TEST(MoeStage, BalanceBiasSelectsAndMoves) {
  const Problem p = make_problem(8, 77);
  MoeConfig c;
  c.experts = 8, c.topk = 2, c.d_ff = p.d_ff, c.capacity_factor = 1.0, c.min_capacity = 2;
  c.bias_rate = 0.125;
  Problem q = p;
  // A bias on the grid, large enough to move choices.
  for (int e = 0; e < 8; ++e) q.w.bias[at(e)] = float((e % 3) - 1) * 0.0625f;
  const MoeReferenceResult ref = reference_moe(c, q.x.data(), q.tokens, q.d_model, q.seq_len, q.w);
  ASSERT_GT(ref.min_margin, 1e-5) << "pick another seed: a decision is within rounding of a tie";
  for (int ranks : {1, 3, 4})
    expect_matches(c, q, run_stage(c, q, ranks, LayoutKind::zigzag), ref, "bias");
}

// Identical experts: y = (sum of accepted gates) x y_1(x) = y_1(x) when nothing drops.
TEST(MoeStage, IdenticalExpertsGiveTheSingleExpert) {
  Problem p = make_problem(8, 5);
  const auto per = static_cast<std::ptrdiff_t>(p.d_model * p.d_ff);
  for (auto* m : {&p.w.w1, &p.w.w3, &p.w.w2})
    for (int e = 1; e < 8; ++e) std::copy_n(m->begin(), per, m->begin() + per * e);
  MoeConfig c;
  c.experts = 8, c.topk = 2, c.d_ff = p.d_ff, c.capacity_factor = 0;  // dropless
  MoeConfig one = c;
  one.experts = 1, one.topk = 1;
  Problem single = p;
  single.w.experts = 1, single.w.count = 1;
  single.w.router.assign(at(p.d_model), 0.0f);
  single.w.bias.assign(1, 0.0f);
  for (auto* m : {&single.w.w1, &single.w.w3, &single.w.w2}) m->resize(at(per));
  const MoeReferenceResult ref =
      reference_moe(one, single.x.data(), p.tokens, p.d_model, p.seq_len, single.w);
  const StageRun s = run_stage(c, p, 4, LayoutKind::contiguous);
  EXPECT_LE(rel_frobenius(s.y, ref.y), kTol);
  for (int64_t t = 0; t < p.tokens; ++t)
    EXPECT_NEAR(s.gates[at(2 * t)] + s.gates[at(2 * t + 1)], 1.0, 1e-6);
}

TEST(MoeStage, UniformRouterHasUnitAuxLossAndBalancedLoad) {
  Problem p = make_problem(8, 9);
  std::fill(p.w.router.begin(), p.w.router.end(), 0.0f);
  MoeConfig c;
  c.experts = 8, c.topk = 1, c.d_ff = p.d_ff, c.capacity_factor = 0;
  const StageRun s = run_stage(c, p, 2, LayoutKind::contiguous);
  // Every probability is 1/8: aux = E sum f_e P_e = sum f_e = 1; ties go to expert 0.
  EXPECT_NEAR(s.m.aux_loss, 1.0, 1e-9);
  EXPECT_NEAR(s.m.z_loss, std::log(8.0) * std::log(8.0), 1e-5);
  EXPECT_EQ(s.m.load[0], p.tokens);
}

TEST(MoeStage, RejectsWhatCannotRun) {
  const Problem p = make_problem(8, 3);
  MoeConfig c;
  c.experts = 8, c.topk = 2, c.d_ff = p.d_ff;
  auto field_of = [&](MoeConfig bad, int ranks) {
    try {
      validate_moe(bad, ranks);
    } catch (const FieldError& e) {
      return e.field();
    }
    return std::string("none");
  };
  MoeConfig bad = c;
  EXPECT_EQ(field_of(c, 16), "moe_experts");  // E < P
  bad.topk = 9;
  EXPECT_EQ(field_of(bad, 2), "moe_topk");
  bad = c, bad.capacity_factor = -1;
  EXPECT_EQ(field_of(bad, 2), "moe_capacity_factor");
  bad = c, bad.policy = MoePolicy::chunk;
  EXPECT_EQ(field_of(bad, 2), "moe_chunk");
  bad = c, bad.policy = MoePolicy::expert, bad.bias_rate = 0.1;
  EXPECT_EQ(field_of(bad, 2), "moe_bias_rate");
  bad = c, bad.policy = MoePolicy::expert, bad.capacity_factor = 0;
  EXPECT_EQ(field_of(bad, 2), "moe_capacity_factor");
  bad = c, bad.d_ff = 0;
  EXPECT_EQ(field_of(bad, 2), "moe_ffn");
  // Weights that do not match what the rank holds: an Error on every rank, no hang.
  EXPECT_THROW(run_local(2,
                         [&](Communicator& comm) {
                           std::vector<int64_t> index = {comm.rank() * 2, comm.rank() * 2 + 1};
                           std::vector<float> y(at(2 * p.d_model));
                           MoeTokens in;
                           in.x = p.x.data(), in.rows = 2, in.index = index.data();
                           in.tokens = 4, in.seq_len = 4;
                           moe_stage(comm, c, p.w /* all experts, not the held ones */, in,
                                     y.data(), nullptr, nullptr);
                         }),
               Error);
}

TEST(MoePlacement, ContiguousGroupsAsEvenAsPossible) {
  for (int e = 1; e <= 17; ++e)
    for (int r = 1; r <= e; ++r) {
      int next = 0;
      for (int k = 0; k < r; ++k) {
        const ExpertRange h = moe_experts_of(e, r, k);
        EXPECT_EQ(h.first, next);
        EXPECT_GE(h.count, e / r);
        EXPECT_LE(h.count, e / r + 1);
        for (int x = h.first; x < h.first + h.count; ++x) EXPECT_EQ(moe_owner(e, r, x), k);
        next = h.first + h.count;
      }
      EXPECT_EQ(next, e);
    }
}

// The job (ringattn moe's library call): its own check passes, independent of P.
TEST(MoeJob, ChecksAgainstTheReferenceOnEveryRankCount) {
  MoeJobSpec spec;
  spec.moe.experts = 8, spec.moe.topk = 2, spec.moe.d_ff = 64;
  spec.tokens = 192, spec.d_model = 32, spec.seed = 11, spec.check_rows = 24;
  std::vector<int64_t> load;
  for (int ranks : {1, 2, 3}) {
    const MoeJobReport r = run_moe_job_local(ranks, spec);
    ASSERT_TRUE(r.check.has_value());
    EXPECT_TRUE(r.check->ok) << r.check->failure;
    EXPECT_EQ(r.check->routing_mismatches, 0);
    if (load.empty()) load = r.metrics.load;
    EXPECT_EQ(r.metrics.load, load);
    EXPECT_EQ(r.stats.size(), std::size_t(ranks));
  }
}

// The balance bias moves between passes; the check follows the last pass's bias.
// The chunk policy through the job keeps chunks inside sequences of seq_len.
TEST(MoeJob, BiasAcrossPassesAndChunksWithinSequences) {
  MoeJobSpec spec;
  spec.moe.experts = 4, spec.moe.topk = 1, spec.moe.d_ff = 32, spec.moe.bias_rate = 0.05;
  spec.tokens = 256, spec.d_model = 16, spec.seed = 4, spec.check_rows = 32, spec.repeats = 3;
  const MoeJobReport a = run_moe_job_local(2, spec);
  ASSERT_TRUE(a.check);
  EXPECT_TRUE(a.check->ok) << a.check->failure;
  EXPECT_NE(a.metrics.next_bias, std::vector<float>(4, 0.0f));
  spec.moe.bias_rate = 0, spec.repeats = 1;
  spec.moe.policy = MoePolicy::chunk, spec.moe.chunk = 16, spec.seq_len = 64;
  for (int ranks : {1, 3}) {
    const MoeJobReport b = run_moe_job_local(ranks, spec);
    ASSERT_TRUE(b.check);
    EXPECT_TRUE(b.check->ok) << b.check->failure;
    for (int64_t l : b.metrics.load) EXPECT_EQ(l % 16, 0);  // whole chunks only
  }
}

// The stage after attention in the ring job: X = the ring's output; the job's
// check (the float64 reference on the gathered X) passes for every P and
// layout, and Y, routing and gates do not depend on them.
TEST(MoeJob, RunsAfterAttentionIndependentOfRanksAndLayout) {
  const std::string dir = ::testing::TempDir() + "moe_run_job";
  std::filesystem::create_directories(dir);
  JobSpec s;
  s.batch = 2, s.nq = s.nk = 45, s.hq = 4, s.hkv = 2, s.head_dim = 8;
  s.mask = Mask::causal(0);
  s.seed = 3, s.threads = 1, s.check_rows = 20;
  s.moe.experts = 4, s.moe.topk = 2, s.moe.d_ff = 40, s.moe.capacity_factor = 1.0;
  std::vector<float> y0;
  std::vector<int32_t> r0;
  for (int ranks : {1, 2, 3, 4})
    for (LayoutKind kind : {LayoutKind::contiguous, LayoutKind::zigzag, LayoutKind::striped}) {
      if (ranks == 1 && kind != LayoutKind::contiguous) continue;
      SCOPED_TRACE(std::to_string(ranks) + " " + layout_name(kind));
      s.layout = kind;
      s.moe_out_path = dir + "/y.npy", s.moe_routing_path = dir + "/r.npy";
      s.moe_gates_path = dir + "/g.npy";
      const JobReport r = run_job_local(ranks, s);
      ASSERT_TRUE(r.failure.empty()) << r.failure;
      ASSERT_TRUE(r.moe && r.moe_check);
      EXPECT_TRUE(r.moe_check->ok) << r.moe_check->failure;
      EXPECT_EQ(r.moe_check->tokens, s.batch * s.nq);
      EXPECT_GT(r.moe->dropped, 0);  // cf 1 on 90 tokens: some expert overflows
      const Tensor y = read_npy(s.moe_out_path);
      const test::IntArray routing = test::read_npy_i32(s.moe_routing_path);
      EXPECT_EQ(routing.shape, (std::vector<int64_t>{2, 45, 2}));
      const std::vector<int32_t>& rv = routing.v;
      ASSERT_EQ(rv.size(), std::size_t(s.batch * s.nq * 2));
      EXPECT_EQ(y.shape, (std::vector<int64_t>{s.batch, s.nq, s.hq * s.head_dim}));
      const std::vector<float> yv(y.as<float>(), y.as<float>() + y.numel());
      if (y0.empty()) {
        y0 = yv, r0 = rv;
        continue;
      }
      EXPECT_EQ(rv, r0);
      double num = 0, den = 0;
      for (std::size_t i = 0; i < yv.size(); ++i)
        num += (yv[i] - y0[i]) * (yv[i] - y0[i]), den += y0[i] * y0[i];
      EXPECT_LE(std::sqrt(num / den), kTol);
    }
}

}  // namespace
}  // namespace ringattn
