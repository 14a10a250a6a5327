// The float64 reference of the MoE stage against expectations worked out by
// hand from the semantics in ringattn/moe.hpp: tiny problems whose router is
// the identity (the logits are the token's row, so every probability is a
// softmax of chosen numbers), routing decisions constructed to exercise one
// rule each (top-k and its ties, GShard order and score priority, dropless,
// the capacity floor, whole-chunk drops, expert choice), the losses, the
// balance bias, SwiGLU experts evaluated term by term, and row subsets.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "ringattn/error.hpp"
#include "ringattn/moe.hpp"
#include "ringattn/moe_reference.hpp"

namespace ringattn {
namespace {

constexpr double kTol = 1e-12;
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr int64_t kUnlimited = std::numeric_limits<int64_t>::max();

std::size_t at(int64_t i) {
  return static_cast<std::size_t>(i);
}

double sigmoid(double a) {
  return 1.0 / (1.0 + std::exp(-a));
}
double silu(double a) {
  return a * sigmoid(a);
}

// E experts of width d_ff, all zero; the router is the identity where
// d_model = E (logits = the row) and `identity`, else zero.
MoeWeights weights(int experts, int64_t d_model, int64_t d_ff, bool identity = true) {
  MoeWeights w;
  w.d_model = d_model, w.d_ff = d_ff, w.experts = experts, w.first = 0, w.count = experts;
  w.router.assign(at(d_model * experts), 0.0f);
  if (identity)
    for (int64_t i = 0; i < d_model && i < experts; ++i) w.router[at(i * experts + i)] = 1.0f;
  w.w1.assign(at(experts * d_model * d_ff), 0.0f);
  w.w3.assign(at(experts * d_model * d_ff), 0.0f);
  w.w2.assign(at(experts * d_ff * d_model), 0.0f);
  return w;
}

MoeConfig config(int experts, int topk, double cf, int64_t min_capacity,
                 MoePolicy policy = MoePolicy::token, MoePriority priority = MoePriority::order) {
  MoeConfig c;
  c.experts = experts, c.topk = topk, c.d_ff = 2, c.policy = policy, c.priority = priority;
  c.capacity_factor = cf, c.min_capacity = min_capacity;
  return c;
}

// The reference on rows x [T, d_model] (T = x.size() / d_model, one sequence).
MoeReferenceResult run(const MoeConfig& c, const std::vector<float>& x, int64_t d_model,
                       const MoeWeights& w, int64_t seq_len = 0) {
  const int64_t T = static_cast<int64_t>(x.size()) / d_model;
  return reference_moe(c, x.data(), T, d_model, seq_len > 0 ? seq_len : T, w);
}

void expect_routing(const MoeReferenceResult& r, const std::vector<int32_t>& want) {
  ASSERT_EQ(r.routing.size(), want.size());
  for (std::size_t i = 0; i < want.size(); ++i) EXPECT_EQ(r.routing[i], want[i]) << "entry " << i;
}

void expect_gates(const MoeReferenceResult& r, const std::vector<double>& want) {
  ASSERT_EQ(r.gates.size(), want.size());
  for (std::size_t i = 0; i < want.size(); ++i)
    EXPECT_NEAR(r.gates[i], want[i], kTol) << "entry " << i;
}

TEST(MoeReference, TokenChoiceTop1) {
  const MoeWeights w = weights(3, 3, 2);
  const std::vector<float> x = {2, 0, 0, 0, 1, 0, 0, 0, 3, 1, 0, 0};
  const MoeReferenceResult r = run(config(3, 1, 0.0, 4), x, 3, w);
  EXPECT_EQ(r.width, 1);
  expect_routing(r, {0, 1, 2, 0});
  expect_gates(r, {1, 1, 1, 1});  // renormalised over the one choice
  EXPECT_EQ(r.requested, (std::vector<int64_t>{2, 1, 1}));
  EXPECT_EQ(r.load, (std::vector<int64_t>{2, 1, 1}));
  EXPECT_EQ(r.dropped, 0);
  EXPECT_EQ(r.unrouted, 0);
  EXPECT_EQ(r.capacity, kUnlimited);
  // The closest decision: a row with one logit 1 (p e/(e+2) vs 1/(e+2)).
  const double e = std::exp(1.0);
  EXPECT_NEAR(r.min_margin, (e - 1) / (e + 2), kTol);
  // Experts are zero: every output is zero.
  ASSERT_EQ(r.y.size(), 12u);
  for (double v : r.y) EXPECT_EQ(v, 0.0);
}

TEST(MoeReference, TokenChoiceTop2GatesAreRenormalised) {
  const MoeWeights w = weights(4, 4, 2);
  const std::vector<float> x = {2, 1, 0, 0, 0, 0, 1, 3};
  const MoeReferenceResult r = run(config(4, 2, 0.0, 0), x, 4, w);
  EXPECT_EQ(r.width, 2);
  expect_routing(r, {0, 1, 3, 2});
  const double e1 = std::exp(1.0), e2 = std::exp(2.0), e3 = std::exp(3.0);
  expect_gates(r, {e2 / (e2 + e1), e1 / (e2 + e1), e3 / (e3 + e1), e1 / (e3 + e1)});
  EXPECT_EQ(r.requested, (std::vector<int64_t>{1, 1, 1, 1}));
  EXPECT_EQ(r.dropped, 0);
  // Second vs third: token 0 (e - 1) / (e^2 + e + 2), token 1 (e - 1) / (e^3 + e + 2).
  EXPECT_NEAR(r.min_margin, (e1 - 1) / (e3 + e1 + 2), kTol);
  // k = E: no expert is passed over, no decision compared scores.
  const MoeReferenceResult all = run(config(2, 2, 0.0, 0), {1, 0, 0, 1}, 2, weights(2, 2, 2));
  EXPECT_EQ(all.min_margin, kInf);
  expect_routing(all, {0, 1, 1, 0});
}

TEST(MoeReference, TiesGoToTheLowestExpert) {
  const MoeWeights w = weights(4, 4, 2);
  const std::vector<float> x = {1, 1, 0, 0, 0, 0, 2, 2, 0, 1, 1, 1};
  const MoeReferenceResult top1 = run(config(4, 1, 0.0, 0), x, 4, w);
  expect_routing(top1, {0, 2, 1});
  EXPECT_EQ(top1.min_margin, 0.0);  // every row's first place is a tie
  const MoeReferenceResult top2 = run(config(4, 2, 0.0, 0), x, 4, w);
  expect_routing(top2, {0, 1, 2, 3, 1, 2});
  expect_gates(top2, {0.5, 0.5, 0.5, 0.5, 0.5, 0.5});
  EXPECT_EQ(top2.min_margin, 0.0);  // row 2: second and third place tie
}

// Every token chooses both of two experts; C = ceil(2 * 0.5 * 4 / 2) = 2. In
// GShard order every first choice goes before any second choice, so each
// expert fills up with first choices and drops every second choice (in plain
// token order, token 0's second choice would have reached expert 1 before
// tokens 2 and 3).
TEST(MoeReference, OrderPriorityTakesFirstChoicesBeforeSecondChoices) {
  const MoeWeights w = weights(2, 2, 2);
  const std::vector<float> x = {3, 0, 3, 0, 0, 3, 0, 3};
  const MoeReferenceResult r = run(config(2, 2, 0.5, 0), x, 2, w);
  EXPECT_EQ(r.capacity, 2);
  expect_routing(r, {0, -1, 0, -1, 1, -1, 1, -1});
  const double hi = sigmoid(3.0);  // gates are not redistributed over the dropped choice
  expect_gates(r, {hi, 0, hi, 0, hi, 0, hi, 0});
  EXPECT_EQ(r.requested, (std::vector<int64_t>{4, 4}));
  EXPECT_EQ(r.load, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(r.dropped, 4);
  EXPECT_EQ(r.unrouted, 0);
  EXPECT_EQ(r.min_margin, kInf);  // k = E

  // C = ceil(2 * 0.75 * 4 / 2) = 3: the second choices then go in token order,
  // each expert accepting the earlier one (expert 0 token 2, expert 1 token 0).
  const MoeReferenceResult r3 = run(config(2, 2, 0.75, 0), x, 2, w);
  EXPECT_EQ(r3.capacity, 3);
  expect_routing(r3, {0, 1, 0, -1, 1, 0, 1, -1});
  EXPECT_EQ(r3.load, (std::vector<int64_t>{3, 3}));
  EXPECT_EQ(r3.dropped, 2);
}

TEST(MoeReference, ScorePriorityTakesTheLargestProbabilityFirst) {
  // k = 1, C = ceil(0.5 * 4 / 2) = 1: expert 0 is wanted by tokens 0 (p
  // sigmoid(1)) and 1 (sigmoid(3)); expert 1 by tokens 2 (sigmoid(2)) and 3 (sigmoid(1)).
  const MoeWeights w = weights(2, 2, 2);
  const std::vector<float> x = {1, 0, 3, 0, 0, 2, 0, 1};
  const MoeReferenceResult order = run(config(2, 1, 0.5, 0), x, 2, w);
  EXPECT_EQ(order.capacity, 1);
  expect_routing(order, {0, -1, 1, -1});
  const MoeReferenceResult score =
      run(config(2, 1, 0.5, 0, MoePolicy::token, MoePriority::score), x, 2, w);
  expect_routing(score, {-1, 0, 1, -1});
  expect_gates(score, {0, 1, 1, 0});
  EXPECT_EQ(score.dropped, 2);
  EXPECT_EQ(score.unrouted, 2);

  // Score crosses choice indices: token 0's second choice (expert 1, p 0.44)
  // outranks token 1's first choice (expert 1, p 0.39). C = ceil(2 * 0.5 * 2 / 3) = 1.
  const MoeWeights w3 = weights(3, 3, 2);
  const std::vector<float> x3 = {5, 4.75f, -5, 0, 0.25f, 0};
  const double s0 = std::exp(5.0) + std::exp(4.75) + std::exp(-5.0);
  const double p00 = std::exp(5.0) / s0, p01 = std::exp(4.75) / s0;
  const double s1 = 2 + std::exp(0.25), p11 = std::exp(0.25) / s1;
  ASSERT_GT(p01, p11);
  const MoeReferenceResult o3 = run(config(3, 2, 0.5, 0), x3, 3, w3);
  EXPECT_EQ(o3.capacity, 1);
  // Token 1 chooses expert 1, then expert 0 (tied with expert 2).
  expect_routing(o3, {0, -1, 1, -1});
  expect_gates(o3, {p00 / (p00 + p01), 0, p11 / (p11 + 1 / s1), 0});
  EXPECT_EQ(o3.unrouted, 0);
  const MoeReferenceResult sc3 =
      run(config(3, 2, 0.5, 0, MoePolicy::token, MoePriority::score), x3, 3, w3);
  expect_routing(sc3, {0, 1, -1, -1});
  expect_gates(sc3, {p00 / (p00 + p01), p01 / (p00 + p01), 0, 0});
  EXPECT_EQ(sc3.requested, (std::vector<int64_t>{2, 2, 0}));
  EXPECT_EQ(sc3.load, (std::vector<int64_t>{1, 1, 0}));
  EXPECT_EQ(sc3.dropped, 2);
  EXPECT_EQ(sc3.unrouted, 1);
  EXPECT_EQ(sc3.min_margin, 0.0);  // token 1: experts 0 and 2 tie for second place
}

TEST(MoeReference, DroplessDropsNothing) {
  const MoeWeights w = weights(4, 4, 2);
  std::vector<float> x;
  for (int t = 0; t < 8; ++t) x.insert(x.end(), {3, 1, 0, 0});
  const MoeReferenceResult r = run(config(4, 2, 0.0, 0), x, 4, w);
  EXPECT_EQ(r.capacity, kUnlimited);
  EXPECT_EQ(r.load, (std::vector<int64_t>{8, 8, 0, 0}));
  EXPECT_EQ(r.requested, r.load);
  EXPECT_EQ(r.dropped, 0);
  EXPECT_EQ(r.unrouted, 0);
  for (int t = 0; t < 8; ++t) {
    EXPECT_EQ(r.routing[at(2 * t)], 0);
    EXPECT_EQ(r.routing[at(2 * t + 1)], 1);
  }
  // The same with cf = 1: C = ceil(2 * 8 / 4) = 4.
  const MoeReferenceResult capped = run(config(4, 2, 1.0, 0), x, 4, w);
  EXPECT_EQ(capped.capacity, 4);
  EXPECT_EQ(capped.load, (std::vector<int64_t>{4, 4, 0, 0}));
  EXPECT_EQ(capped.dropped, 8);
  EXPECT_EQ(capped.unrouted, 4);
}

TEST(MoeReference, MinCapacityFloorsTheCapacity) {
  const MoeWeights w = weights(2, 2, 2);
  const std::vector<float> x = {1, 0, 1, 0, 1, 0, 1, 0};  // all to expert 0
  // ceil(1 * 0.25 * 4 / 2) = 1, floored at 3.
  const MoeReferenceResult floored = run(config(2, 1, 0.25, 3), x, 2, w);
  EXPECT_EQ(floored.capacity, 3);
  expect_routing(floored, {0, 0, 0, -1});
  EXPECT_EQ(floored.load, (std::vector<int64_t>{3, 0}));
  EXPECT_EQ(floored.dropped, 1);
  EXPECT_EQ(floored.unrouted, 1);
  const MoeReferenceResult plain = run(config(2, 1, 0.25, 0), x, 2, w);
  EXPECT_EQ(plain.capacity, 1);
  expect_routing(plain, {0, -1, -1, -1});
  // The floor only raises: ceil(1 * 2 * 4 / 2) = 4 > 3.
  EXPECT_EQ(run(config(2, 1, 2.0, 3), x, 2, w).capacity, 4);
}

// Two sequences of 5 tokens in chunks of 4: [0, 4) [4, 5) [5, 9) [9, 10).
// C = max(ceil(1 * 0.1 * 10 / 2), 5) = 5 tokens.
TEST(MoeReference, ChunksRouteByTheirMeanAndDropWhole) {
  const MoeWeights w = weights(2, 2, 2);
  const std::vector<float> x = {
      8, 0, 0, 1, 0, 1, 0, 1,   // chunk 0: mean (2, 0.75) -> expert 0 (rows 1-3 alone: expert 1)
      0, 5,                     // chunk 1: token 4 alone -> expert 1 (were chunks to cross
                                // sequences, [4, 8) would have mean (2.25, 1.5) -> expert 0)
      2, 0, 4, 0, 3, 1, 3, -1,  // chunk 2: mean (3, 0) -> expert 0: 4 + 4 > 5, dropped
      1, 0};                    // chunk 3: shorter, 4 + 1 <= 5: accepted
  MoeConfig c = config(2, 1, 0.1, 5, MoePolicy::chunk);
  c.chunk = 4;
  const MoeReferenceResult r = run(c, x, 2, w, 5);
  EXPECT_EQ(r.capacity, 5);
  expect_routing(r, {0, 0, 0, 0, 1, -1, -1, -1, -1, 0});
  expect_gates(r, {1, 1, 1, 1, 1, 0, 0, 0, 0, 1});
  EXPECT_EQ(r.requested, (std::vector<int64_t>{9, 1}));  // in tokens
  EXPECT_EQ(r.load, (std::vector<int64_t>{5, 1}));
  EXPECT_EQ(r.dropped, 4);
  EXPECT_EQ(r.unrouted, 4);
  // Chunk 3's logits differ by 1: p 0 - p 1 = 2 sigmoid(1) - 1 (the others differ by more).
  EXPECT_NEAR(r.min_margin, 2 * sigmoid(1.0) - 1, kTol);
  // One sequence of 10: the chunks are [0, 4) [4, 8) [8, 10), and [4, 8) asks for expert 0.
  const MoeReferenceResult one = run(c, x, 2, w, 10);
  EXPECT_EQ(one.requested, (std::vector<int64_t>{10, 0}));
}

TEST(MoeReference, ChunkGatesAndLossesAreThoseOfTheMean) {
  const MoeWeights w = weights(3, 3, 2);
  // Chunk 0: mean (1, 1, 0); chunk 1: mean (0, 0.5, 2).
  const std::vector<float> x = {2, 0, 0, 0, 2, 0, 0, 0, 3, 0, 1, 1};
  MoeConfig c = config(3, 2, 0.0, 0, MoePolicy::chunk);
  c.chunk = 2;
  const MoeReferenceResult r = run(c, x, 3, w, 4);
  expect_routing(r, {0, 1, 0, 1, 2, 1, 2, 1});
  const double e = std::exp(1.0), eh = std::exp(0.5), e2 = std::exp(2.0);
  const double g2 = e2 / (e2 + eh), g1 = eh / (e2 + eh);
  expect_gates(r, {0.5, 0.5, 0.5, 0.5, g2, g1, g2, g1});
  EXPECT_EQ(r.requested, (std::vector<int64_t>{2, 4, 2}));
  const double s0 = 2 * e + 1, s1 = 1 + eh + e2;
  const double p0[3] = {e / s0, e / s0, 1 / s0}, p1[3] = {1 / s1, eh / s1, e2 / s1};
  EXPECT_NEAR(r.min_margin, (eh - 1) / s1, kTol);  // chunk 1: second vs third
  // Every token counts its chunk's p: P_e = (p0_e + p1_e) / 2; f = (1/4, 1/2, 1/4).
  const double f[3] = {0.25, 0.5, 0.25};
  double aux = 0;
  for (int k = 0; k < 3; ++k) aux += f[k] * (p0[k] + p1[k]) / 2;
  EXPECT_NEAR(r.aux_loss, 3 * aux, kTol);
  const double l0 = std::log(s0), l1 = std::log(s1);
  EXPECT_NEAR(r.z_loss, (l0 * l0 + l1 * l1) / 2, kTol);
}

// C = ceil(1 * 1 * 6 / 3) = 2 tokens per expert.
//   p        t0   t1    t2    t3    t4    t5
//   e0      1/3  .721  .007  .359  .018  1/3   -> t1, t3
//   e1      1/3  .265  .987  .049  .018  1/3   -> t2, t0 (tied with t5: lowest token)
//   e2      1/3  .013  .007  .592  .965  1/3   -> t4, t3
TEST(MoeReference, ExpertChoiceTakesTheTopCOfEachExpert) {
  const MoeWeights w = weights(3, 3, 2);
  const std::vector<float> x = {0, 0, 0, 4, 3, 0, 0, 5, 0, 2, 0, 2.5f, -1, -1, 3, 0, 0, 0};
  const MoeReferenceResult r = run(config(3, 1, 1.0, 0, MoePolicy::expert), x, 3, w);
  EXPECT_EQ(r.width, 3);
  EXPECT_EQ(r.capacity, 2);
  // t3 was taken by experts 0 and 2: by gate descending, expert 2 first.
  expect_routing(r, {1, -1, -1, 0, -1, -1, 1, -1, -1, 2, 0, -1, 2, -1, -1, -1, -1, -1});
  const double s1 = std::exp(4.0) + std::exp(3.0) + 1, s2 = std::exp(5.0) + 2;
  const double s3 = std::exp(2.0) + 1 + std::exp(2.5), s4 = std::exp(3.0) + 2 * std::exp(-1.0);
  expect_gates(r, {1.0 / 3, 0, 0, std::exp(4.0) / s1, 0, 0, std::exp(5.0) / s2, 0, 0,
                   std::exp(2.5) / s3, std::exp(2.0) / s3, 0, std::exp(3.0) / s4, 0, 0, 0, 0, 0});
  EXPECT_EQ(r.requested, (std::vector<int64_t>{2, 2, 2}));
  EXPECT_EQ(r.load, (std::vector<int64_t>{2, 2, 2}));
  EXPECT_EQ(r.dropped, 0);
  EXPECT_EQ(r.unrouted, 1);      // t5
  EXPECT_EQ(r.min_margin, 0.0);  // expert 1: t0 and t5 tie at the cut
}

TEST(MoeReference, ExpertChoiceMargin) {
  const MoeWeights w = weights(2, 2, 2);
  const std::vector<float> x = {1, 0, 0, 0, -1, 0};
  // C = ceil(3 / 2) = 2: expert 0 takes t0, t1; expert 1 t2, t1; the cut is 1/2 vs sigmoid(-1).
  const MoeReferenceResult r = run(config(2, 1, 1.0, 0, MoePolicy::expert), x, 2, w);
  EXPECT_EQ(r.capacity, 2);
  expect_routing(r, {0, -1, 0, 1, 1, -1});  // t1: gates tie at 1/2, expert 0 first
  EXPECT_NEAR(r.min_margin, 0.5 - sigmoid(-1.0), kTol);
  // C = ceil(2 * 3 / 2) = 3 = T: every expert takes every token, no cut.
  const MoeReferenceResult all = run(config(2, 1, 2.0, 0, MoePolicy::expert), x, 2, w);
  EXPECT_EQ(all.capacity, 3);
  EXPECT_EQ(all.min_margin, kInf);
  expect_routing(all, {0, 1, 0, 1, 1, 0});
  EXPECT_EQ(all.unrouted, 0);
}

// A zero router: every p is 1/E and every logsumexp log E.
TEST(MoeReference, UniformRouterLosses) {
  const MoeWeights w = weights(4, 3, 2, false);
  std::vector<float> x;
  for (int t = 0; t < 8; ++t) x.insert(x.end(), {0.5f * static_cast<float>(t), -1.0f, 2.0f});
  const double z = std::log(4.0) * std::log(4.0);
  const MoeReferenceResult tok = run(config(4, 2, 0.0, 0), x, 3, w);
  EXPECT_NEAR(tok.aux_loss, 1.0, kTol);
  EXPECT_NEAR(tok.z_loss, z, kTol);
  EXPECT_EQ(tok.requested, (std::vector<int64_t>{8, 8, 0, 0}));  // ties: experts 0 and 1
  // Expert choice, C = ceil(2 * 8 / 4) = 4: each expert takes tokens 0-3 (ties: lowest token).
  const MoeReferenceResult ex = run(config(4, 2, 1.0, 0, MoePolicy::expert), x, 3, w);
  EXPECT_NEAR(ex.aux_loss, 1.0, kTol);
  EXPECT_NEAR(ex.z_loss, z, kTol);
  for (int t = 0; t < 8; ++t)
    for (int i = 0; i < 4; ++i) {
      EXPECT_EQ(ex.routing[at(t * 4 + i)], t < 4 ? i : -1);
      EXPECT_NEAR(ex.gates[at(t * 4 + i)], t < 4 ? 0.25 : 0.0, kTol);
    }
  EXPECT_EQ(ex.unrouted, 4);
}

TEST(MoeReference, AuxAndZLossByHand) {
  const MoeWeights w = weights(2, 2, 2);
  const std::vector<float> x = {1, 0, 1, 0, 0, 2};
  const MoeReferenceResult r = run(config(2, 1, 0.0, 0), x, 2, w);
  EXPECT_EQ(r.requested, (std::vector<int64_t>{2, 1}));
  const double P0 = (2 * sigmoid(1.0) + sigmoid(-2.0)) / 3;
  const double P1 = (2 * sigmoid(-1.0) + sigmoid(2.0)) / 3;
  EXPECT_NEAR(r.aux_loss, 2 * (2.0 / 3 * P0 + 1.0 / 3 * P1), kTol);
  const double l1 = std::log(1 + std::exp(1.0)), l2 = std::log(1 + std::exp(2.0));
  EXPECT_NEAR(r.z_loss, (2 * l1 * l1 + l2 * l2) / 3, kTol);
}

TEST(MoeReference, BiasSelectsButDoesNotWeight) {
  MoeWeights w = weights(3, 3, 2);
  const std::vector<float> x = {1, 0.5f, 0};
  const double s = std::exp(1.0) + std::exp(0.5) + 1;
  const double p0 = std::exp(1.0) / s, p1 = std::exp(0.5) / s, p2 = 1 / s;
  const MoeReferenceResult plain = run(config(3, 2, 0.0, 0), x, 3, w);
  expect_routing(plain, {0, 1});
  expect_gates(plain, {p0 / (p0 + p1), p1 / (p0 + p1)});
  // p + bias: (.51, .31, .69): experts 2 then 0, weighted by p alone.
  w.bias = {0, 0, 0.5f};
  const MoeReferenceResult biased = run(config(3, 2, 0.0, 0), x, 3, w);
  expect_routing(biased, {2, 0});
  expect_gates(biased, {p2 / (p2 + p0), p0 / (p2 + p0)});
  EXPECT_NEAR(biased.min_margin, p0 - p1, kTol);          // second (p0 + 0) vs third (p1 + 0)
  EXPECT_NEAR(biased.aux_loss, 3 * (p2 + p0) / 2, kTol);  // f = (1/2, 0, 1/2), P = p
}

TEST(MoeReference, NextBiasMovesTowardTheMeanLoad) {
  MoeWeights w = weights(3, 3, 2);
  // Choices {0, 2}, {0, 1}, {0, 2}: requested (3, 1, 2), mean 2.
  const std::vector<float> x = {2, 0, 1, 2, 1, 0, 2, 0, 1};
  MoeConfig c = config(3, 2, 0.0, 0);
  c.bias_rate = 0.25;
  const MoeReferenceResult r = run(c, x, 3, w);
  EXPECT_EQ(r.requested, (std::vector<int64_t>{3, 1, 2}));
  EXPECT_EQ(r.next_bias, (std::vector<float>{-0.25f, 0.25f, 0.0f}));
  // From a bias that does not change the choices.
  w.bias = {0.1f, 0.0f, 0.0f};
  const MoeReferenceResult b = run(c, x, 3, w);
  EXPECT_EQ(b.requested, (std::vector<int64_t>{3, 1, 2}));
  EXPECT_EQ(b.next_bias, (std::vector<float>{static_cast<float>(0.1f - 0.25), 0.25f, 0.0f}));
  // Rate 0 leaves it.
  c.bias_rate = 0;
  EXPECT_EQ(run(c, x, 3, w).next_bias, w.bias);
}

// Two experts, d_model = d_ff = 2 (w[d][f] row-major), evaluated term by term.
//   W1_0 = [[0.5, -1], [0.25, 2]]   W3_0 = [[1, 0], [0, 1]]      W2_0 = [[1, 2], [0.5, -1]]
//   W1_1 = [[-0.5, 1], [1, 0]]      W3_1 = [[2, 0.5], [-1, 1]]   W2_1 = [[0.25, 0], [1, 1]]
MoeWeights swiglu_weights() {
  MoeWeights w = weights(2, 2, 2);
  w.w1 = {0.5f, -1, 0.25f, 2, -0.5f, 1, 1, 0};
  w.w3 = {1, 0, 0, 1, 2, 0.5f, -1, 1};
  w.w2 = {1, 2, 0.5f, -1, 0.25f, 0, 1, 1};
  return w;
}

TEST(MoeReference, SwigluExpertsByHand) {
  const MoeWeights w = swiglu_weights();
  const std::vector<float> x = {1, -0.5f, 0.5f, 2};
  // x0 = (1, -0.5): expert 0: x W1 = (0.375, -2), x W3 = (1, -0.5);
  //                 expert 1: x W1 = (-1, 1), x W3 = (2.5, 0).
  const double h00 = silu(0.375), h01 = -0.5 * silu(-2.0);
  const double y00[2] = {h00 + 0.5 * h01, 2 * h00 - h01};
  const double h10 = 2.5 * silu(-1.0);
  const double y10[2] = {0.25 * h10, 0.0};
  // x1 = (0.5, 2): expert 0: x W1 = (0.75, 3.5), x W3 = (0.5, 2);
  //                expert 1: x W1 = (1.75, 0.5), x W3 = (-1, 2.25).
  const double g00 = 0.5 * silu(0.75), g01 = 2 * silu(3.5);
  const double y01[2] = {g00 + 0.5 * g01, 2 * g00 - g01};
  const double g10 = -silu(1.75), g11 = 2.25 * silu(0.5);
  const double y11[2] = {0.25 * g10 + g11, g11};
  const double hi = sigmoid(1.5), lo = sigmoid(-1.5);  // x0 prefers expert 0, x1 expert 1

  const MoeReferenceResult all = run(config(2, 2, 0.0, 0), x, 2, w);
  expect_routing(all, {0, 1, 1, 0});
  ASSERT_EQ(all.y.size(), 4u);
  EXPECT_NEAR(all.y[0], hi * y00[0] + lo * y10[0], kTol);
  EXPECT_NEAR(all.y[1], hi * y00[1] + lo * y10[1], kTol);
  EXPECT_NEAR(all.y[2], hi * y11[0] + lo * y01[0], kTol);
  EXPECT_NEAR(all.y[3], hi * y11[1] + lo * y01[1], kTol);

  // C = 1: the second choices are dropped and their gates not redistributed.
  const MoeReferenceResult dropped = run(config(2, 2, 0.5, 0), x, 2, w);
  expect_routing(dropped, {0, -1, 1, -1});
  EXPECT_NEAR(dropped.y[0], hi * y00[0], kTol);
  EXPECT_NEAR(dropped.y[1], hi * y00[1], kTol);
  EXPECT_NEAR(dropped.y[2], hi * y11[0], kTol);
  EXPECT_NEAR(dropped.y[3], hi * y11[1], kTol);

  // Expert choice, C = 1: expert 0 takes x0, expert 1 takes x1, gate p.
  const MoeReferenceResult ex = run(config(2, 1, 1.0, 0, MoePolicy::expert), x, 2, w);
  expect_routing(ex, {0, -1, 1, -1});
  EXPECT_NEAR(ex.y[0], hi * y00[0], kTol);
  EXPECT_NEAR(ex.y[1], hi * y00[1], kTol);
  EXPECT_NEAR(ex.y[2], hi * y11[0], kTol);
  EXPECT_NEAR(ex.y[3], hi * y11[1], kTol);

  // Every assignment dropped: y = 0 (C = 1, both tokens want expert 0 only).
  const std::vector<float> same = {1, -0.5f, 2, 0};
  const MoeReferenceResult one = run(config(2, 1, 0.5, 0), same, 2, w);
  expect_routing(one, {0, -1});
  EXPECT_EQ(one.unrouted, 1);
  EXPECT_NEAR(one.y[0], y00[0], kTol);  // gate 1 (top-1 renormalised)
  EXPECT_EQ(one.y[2], 0.0);
  EXPECT_EQ(one.y[3], 0.0);
}

// Deterministic, unremarkable weights and tokens for T 12, E 4, d_model 4, d_ff 3.
MoeWeights wavy_weights() {
  MoeWeights w = weights(4, 4, 3, false);
  for (std::size_t i = 0; i < w.router.size(); ++i)
    w.router[i] = static_cast<float>(std::sin(1.3 * static_cast<double>(i) + 0.2));
  for (std::size_t i = 0; i < w.w1.size(); ++i) {
    w.w1[i] = static_cast<float>(0.5 * std::sin(0.7 * static_cast<double>(i)));
    w.w3[i] = static_cast<float>(0.5 * std::cos(0.9 * static_cast<double>(i)));
    w.w2[i] = static_cast<float>(0.5 * std::sin(1.1 * static_cast<double>(i) + 1));
  }
  return w;
}

TEST(MoeReference, RowsSubsetEqualsTheFullRows) {
  const MoeWeights w = wavy_weights();
  std::vector<float> x(48);
  for (std::size_t i = 0; i < x.size(); ++i)
    x[i] = static_cast<float>(2 * std::sin(0.37 * static_cast<double>(i) + 0.1));
  const std::vector<int64_t> rows = {7, 2, 2, 11, 0};
  MoeConfig chunk = config(4, 2, 1.0, 0, MoePolicy::chunk);
  chunk.chunk = 4;
  const MoeConfig cases[] = {config(4, 2, 1.0, 0),
                             config(4, 2, 1.0, 0, MoePolicy::token, MoePriority::score), chunk,
                             config(4, 2, 1.0, 0, MoePolicy::expert), config(4, 1, 0.0, 0)};
  int index = 0;
  for (const MoeConfig& c : cases) {
    SCOPED_TRACE(::testing::Message() << "case " << index++);
    const MoeReferenceResult full = reference_moe(c, x.data(), 12, 4, 6, w);
    const MoeReferenceResult part = reference_moe(c, x.data(), 12, 4, 6, w, &rows);
    EXPECT_EQ(part.routing, full.routing);
    EXPECT_EQ(part.gates, full.gates);
    ASSERT_EQ(full.y.size(), 48u);
    ASSERT_EQ(part.y.size(), 20u);
    double norm = 0;
    for (std::size_t i = 0; i < rows.size(); ++i)
      for (std::size_t m = 0; m < 4; ++m) {
        EXPECT_EQ(part.y[i * 4 + m], full.y[at(rows[i] * 4) + m]);
        norm += std::abs(part.y[i * 4 + m]);
      }
    EXPECT_GT(norm, 0.0);  // not trivially zero
  }
}

TEST(MoeReference, RejectsInputsItCannotRead) {
  const MoeWeights w = weights(2, 2, 2);
  const std::vector<float> x = {1, 0, 0, 1};
  const std::vector<int64_t> bad_rows = {2};
  EXPECT_THROW(reference_moe(config(2, 1, 0.0, 0), x.data(), 2, 2, 2, w, &bad_rows), Error);
  MoeWeights short_router = w;
  short_router.router.pop_back();
  EXPECT_THROW(reference_moe(config(2, 1, 0.0, 0), x.data(), 2, 2, 2, short_router), Error);
  EXPECT_THROW(reference_moe(config(2, 3, 0.0, 0), x.data(), 2, 2, 2, w), Error);
  MoeConfig c = config(2, 1, 0.0, 0, MoePolicy::chunk);
  c.chunk = 1;
  EXPECT_THROW(reference_moe(c, x.data(), 2, 2, 3, w), Error);  // 2 tokens, sequences of 3
}

}  // namespace
}  // namespace ringattn
