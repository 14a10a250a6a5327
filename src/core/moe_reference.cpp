// The float64 reference of the MoE stage (ringattn/moe_reference.hpp), written
// from the semantics in ringattn/moe.hpp and nothing else of the stage: it
// computes the capacity, the balance bias and every expert's FFN itself and
// reads the weights' vectors directly.
//
// Units: a token (token and expert choice) or a chunk (chunk choice: chunk i
// of a sequence is its tokens [i c, (i + 1) c) clipped to the sequence). Each
// unit's representation is its row (a chunk: the float64 mean of its rows),
// its logits l = r W_g and probabilities p = softmax(l), all in float64.
//   token / chunk: the k largest p + bias (ties: lowest expert), in order
//     j = 0 .. k-1; gates p renormalised over the k chosen. Assignments
//     (unit, j, expert) go to their expert in priority order, (j, unit) or p
//     descending then (j, unit); an expert accepts one of length n (tokens)
//     when held + n <= C, else drops it and goes on.
//   expert: each expert takes the min(C, T) tokens with the largest p (ties:
//     lowest token); a token's columns are the experts that took it, by gate
//     descending then expert index.
// Statistics count tokens (a chunk's assignment counts its length); P and the
// z loss are means over tokens (a chunk's tokens carry its p and logits).
#include "ringattn/moe_reference.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include "ringattn/error.hpp"

namespace ringattn {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr int64_t kUnlimited = std::numeric_limits<int64_t>::max();

std::size_t at(int64_t i) {
  return static_cast<std::size_t>(i);
}

double silu(double a) {
  return a / (1.0 + std::exp(-a));
}

// C = ceil(k cf T / E), at least min_capacity; cf = 0: unlimited.
int64_t capacity_of(const MoeConfig& c, int64_t tokens) {
  if (c.capacity_factor == 0.0) return kUnlimited;
  const double want = std::ceil(static_cast<double>(c.topk) * c.capacity_factor *
                                static_cast<double>(tokens) / static_cast<double>(c.experts));
  const int64_t cap = want >= 9.0e18 ? kUnlimited : static_cast<int64_t>(want);
  return std::max(cap, c.min_capacity);
}

// The gap between a score taken and the first one passed over, relative to 1
// (divided by the larger magnitude where that exceeds 1).
double margin(double taken, double passed) {
  return (taken - passed) / std::max({1.0, std::abs(taken), std::abs(passed)});
}

// [begin, end) tokens of one routing unit.
struct Unit {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
};

// One token/chunk-choice assignment before capacity.
struct Assignment {
  int64_t unit = 0;
  int j = 0;       // choice index
  int expert = 0;  // global index
  double p = 0;    // the router probability (score priority)
};

void check_weights(const MoeConfig& c, int64_t d_model, const MoeWeights& w) {
  const int64_t E = c.experts, F = w.d_ff;
  auto fail = [](const std::string& what) { throw Error("MoE reference: " + what); };
  if (E < 1) fail(fmt::format("needs at least one expert, got {}", E));
  if (c.policy != MoePolicy::expert && (c.topk < 1 || c.topk > E))
    fail(fmt::format("top-k {} is outside [1, {}]", c.topk, E));
  if (d_model < 1 || F < 1) fail(fmt::format("d_model {} and d_ff {} must be >= 1", d_model, F));
  if (w.d_model != d_model || w.experts != E || w.first != 0 || w.count != E)
    fail(fmt::format(
        "the weights hold d_model {}, {} experts [{}, {}); expected d_model {} and all {} experts",
        w.d_model, w.experts, w.first, w.first + w.count, d_model, E));
  const auto need = [&](const std::vector<float>& v, int64_t n, const char* name) {
    if (static_cast<int64_t>(v.size()) != n)
      fail(fmt::format("{} holds {} values, expected {}", name, v.size(), n));
  };
  need(w.router, d_model * E, "router");
  if (!w.bias.empty()) need(w.bias, E, "bias");
  need(w.w1, E * d_model * F, "w1");
  need(w.w3, E * d_model * F, "w3");
  need(w.w2, E * F * d_model, "w2");
}

// The routing units: every token, or the chunks of each sequence.
std::vector<Unit> units_of(const MoeConfig& c, int64_t tokens, int64_t seq_len) {
  std::vector<Unit> units;
  if (c.policy != MoePolicy::chunk) {
    for (int64_t t = 0; t < tokens; ++t) units.push_back({t, t + 1});
    return units;
  }
  if (c.chunk < 1) throw Error(fmt::format("MoE reference: chunk size {} must be >= 1", c.chunk));
  if (seq_len < 1 || tokens % seq_len != 0)
    throw Error(
        fmt::format("MoE reference: {} tokens are not whole sequences of {} (the chunk policy)",
                    tokens, seq_len));
  for (int64_t s = 0; s < tokens; s += seq_len)
    for (int64_t b = s; b < s + seq_len; b += c.chunk)
      units.push_back({b, std::min(b + c.chunk, s + seq_len)});
  return units;
}

}  // namespace

MoeReferenceResult reference_moe(const MoeConfig& c, const float* x, int64_t tokens,
                                 int64_t d_model, int64_t seq_len, const MoeWeights& w,
                                 const std::vector<int64_t>* rows) {
  check_weights(c, d_model, w);
  if (tokens < 0 || (tokens > 0 && x == nullptr))
    throw Error(fmt::format("MoE reference: no input for {} tokens", tokens));
  const int E = c.experts;
  const int64_t T = tokens, F = w.d_ff;
  const int width = c.width();
  const bool expert_choice = c.policy == MoePolicy::expert;

  MoeReferenceResult r;
  r.width = width;
  r.capacity = capacity_of(c, T);
  r.routing.assign(at(T * width), -1);
  r.gates.assign(at(T * width), 0.0);
  r.requested.assign(at(E), 0);
  r.load.assign(at(E), 0);
  r.min_margin = kInf;

  // Router: each unit's logits and probabilities; P and z loss over tokens.
  const std::vector<Unit> units = units_of(c, T, seq_len);
  const int64_t U = static_cast<int64_t>(units.size());
  std::vector<double> prob(at(U * E));
  std::vector<double> rep(at(d_model)), logit(at(E)), p_mean(at(E), 0.0);
  double z_sum = 0.0;
  for (int64_t u = 0; u < U; ++u) {
    const Unit& un = units[at(u)];
    std::fill(rep.begin(), rep.end(), 0.0);
    for (int64_t t = un.begin; t < un.end; ++t)
      for (int64_t d = 0; d < d_model; ++d) rep[at(d)] += static_cast<double>(x[t * d_model + d]);
    if (un.size() > 1)
      for (double& v : rep) v /= static_cast<double>(un.size());
    double m = -kInf;
    for (int e = 0; e < E; ++e) {
      double l = 0.0;
      for (int64_t d = 0; d < d_model; ++d)
        l += rep[at(d)] * static_cast<double>(w.router[at(d * E + e)]);
      logit[at(e)] = l;
      m = std::max(m, l);
    }
    double sum = 0.0;
    for (int e = 0; e < E; ++e) sum += std::exp(logit[at(e)] - m);
    const double lse = m + std::log(sum);
    const double n = static_cast<double>(un.size());
    for (int e = 0; e < E; ++e) {
      const double p = std::exp(logit[at(e)] - m) / sum;
      prob[at(u * E + e)] = p;
      p_mean[at(e)] += n * p;
    }
    z_sum += n * lse * lse;
  }

  auto bias = [&](int e) { return w.bias.empty() ? 0.0 : static_cast<double>(w.bias[at(e)]); };

  if (!expert_choice) {
    const int k = c.topk;
    // Choices: the k largest p + bias, ties to the lowest expert.
    std::vector<int> chosen(at(U * k));
    std::vector<Assignment> assignments;
    std::vector<char> taken(at(E));
    for (int64_t u = 0; u < U; ++u) {
      std::fill(taken.begin(), taken.end(), 0);
      double last = 0.0;
      for (int j = 0; j < k; ++j) {
        int best = -1;
        for (int e = 0; e < E; ++e)
          if (!taken[at(e)] &&
              (best < 0 || prob[at(u * E + e)] + bias(e) > prob[at(u * E + best)] + bias(best)))
            best = e;
        taken[at(best)] = 1;
        chosen[at(u * k + j)] = best;
        last = prob[at(u * E + best)] + bias(best);
        assignments.push_back({u, j, best, prob[at(u * E + best)]});
        r.requested[at(best)] += units[at(u)].size();
      }
      if (k < E) {
        double next = -kInf;
        for (int e = 0; e < E; ++e)
          if (!taken[at(e)]) next = std::max(next, prob[at(u * E + e)] + bias(e));
        r.min_margin = std::min(r.min_margin, margin(last, next));
      }
    }
    // Capacity in priority order.
    const bool by_score = c.priority == MoePriority::score;
    std::sort(assignments.begin(), assignments.end(),
              [by_score](const Assignment& a, const Assignment& b) {
                if (by_score && a.p != b.p) return a.p > b.p;
                if (a.j != b.j) return a.j < b.j;
                return a.unit < b.unit;
              });
    std::vector<char> accepted(at(U * k), 0);
    std::vector<int64_t> held(at(E), 0);
    for (const Assignment& a : assignments) {
      const int64_t n = units[at(a.unit)].size();
      if (n <= r.capacity - held[at(a.expert)]) {
        held[at(a.expert)] += n;
        accepted[at(a.unit * k + a.j)] = 1;
      }
    }
    r.load = held;
    // Gates over the k chosen; every token of a unit takes its unit's row.
    for (int64_t u = 0; u < U; ++u) {
      double sum = 0.0;
      for (int j = 0; j < k; ++j) sum += prob[at(u * E + chosen[at(u * k + j)])];
      for (int64_t t = units[at(u)].begin; t < units[at(u)].end; ++t)
        for (int j = 0; j < k; ++j) {
          if (!accepted[at(u * k + j)]) continue;
          const int e = chosen[at(u * k + j)];
          r.routing[at(t * width + j)] = e;
          r.gates[at(t * width + j)] = prob[at(u * E + e)] / sum;
        }
    }
  } else {
    // Each expert takes its min(C, T) best tokens (ties: lowest token).
    const int64_t take = std::min(r.capacity, T);
    std::vector<char> took(at(T * E), 0);
    std::vector<int64_t> order(at(T));
    for (int e = 0; e < E; ++e) {
      for (int64_t t = 0; t < T; ++t) order[at(t)] = t;
      std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
        const double pa = prob[at(a * E + e)], pb = prob[at(b * E + e)];
        return pa != pb ? pa > pb : a < b;
      });
      for (int64_t i = 0; i < take; ++i) took[at(order[at(i)] * E + e)] = 1;
      if (take > 0 && take < T)
        r.min_margin = std::min(r.min_margin, margin(prob[at(order[at(take - 1)] * E + e)],
                                                     prob[at(order[at(take)] * E + e)]));
      r.requested[at(e)] = take;
      r.load[at(e)] = take;
    }
    std::vector<int> cols;
    for (int64_t t = 0; t < T; ++t) {
      cols.clear();
      for (int e = 0; e < E; ++e)
        if (took[at(t * E + e)]) cols.push_back(e);
      std::sort(cols.begin(), cols.end(), [&](int a, int b) {
        const double pa = prob[at(t * E + a)], pb = prob[at(t * E + b)];
        return pa != pb ? pa > pb : a < b;
      });
      for (std::size_t i = 0; i < cols.size(); ++i) {
        r.routing[at(t * width) + i] = cols[i];
        r.gates[at(t * width) + i] = prob[at(t * E + cols[i])];
      }
    }
  }

  // Statistics and losses.
  int64_t sum_requested = 0, sum_load = 0;
  for (int e = 0; e < E; ++e) {
    sum_requested += r.requested[at(e)];
    sum_load += r.load[at(e)];
  }
  r.dropped = sum_requested - sum_load;
  for (int64_t t = 0; t < T; ++t) {
    bool any = false;
    for (int i = 0; i < width; ++i) any = any || r.routing[at(t * width + i)] >= 0;
    if (!any) ++r.unrouted;
  }
  if (T > 0) {
    if (sum_requested > 0) {
      double s = 0.0;
      for (int e = 0; e < E; ++e)
        s += static_cast<double>(r.requested[at(e)]) / static_cast<double>(sum_requested) *
             (p_mean[at(e)] / static_cast<double>(T));
      r.aux_loss = static_cast<double>(E) * s;
    }
    r.z_loss = z_sum / static_cast<double>(T);
  }

  // Balance bias: bias_e + rate sign(mean requested - requested_e).
  const double mean_requested = static_cast<double>(sum_requested) / static_cast<double>(E);
  r.next_bias.resize(at(E));
  for (int e = 0; e < E; ++e) {
    const double diff = mean_requested - static_cast<double>(r.requested[at(e)]);
    const double sign = diff > 0 ? 1.0 : (diff < 0 ? -1.0 : 0.0);
    r.next_bias[at(e)] = static_cast<float>(bias(e) + c.bias_rate * sign);
  }

  // Outputs: y_t = sum over accepted columns, in column order, of gate y_e(x_t).
  std::vector<int64_t> all;
  if (rows == nullptr) {
    all.resize(at(T));
    for (int64_t t = 0; t < T; ++t) all[at(t)] = t;
    rows = &all;
  }
  r.y.assign(rows->size() * at(d_model), 0.0);
  std::vector<double> xt(at(d_model)), h(at(F));
  for (std::size_t i = 0; i < rows->size(); ++i) {
    const int64_t t = (*rows)[i];
    if (t < 0 || t >= T) throw Error(fmt::format("MoE reference: row {} is outside [0, {})", t, T));
    for (int64_t d = 0; d < d_model; ++d) xt[at(d)] = static_cast<double>(x[t * d_model + d]);
    double* y = r.y.data() + i * at(d_model);
    for (int col = 0; col < width; ++col) {
      const int e = r.routing[at(t * width + col)];
      if (e < 0) continue;
      const double g = r.gates[at(t * width + col)];
      const float* w1 = w.w1.data() + at(e) * at(d_model * F);
      const float* w3 = w.w3.data() + at(e) * at(d_model * F);
      const float* w2 = w.w2.data() + at(e) * at(F * d_model);
      for (int64_t f = 0; f < F; ++f) {
        double a = 0.0, b = 0.0;
        for (int64_t d = 0; d < d_model; ++d) {
          a += xt[at(d)] * static_cast<double>(w1[d * F + f]);
          b += xt[at(d)] * static_cast<double>(w3[d * F + f]);
        }
        h[at(f)] = silu(a) * b;
      }
      for (int64_t m = 0; m < d_model; ++m) {
        double o = 0.0;
        for (int64_t f = 0; f < F; ++f) o += h[at(f)] * static_cast<double>(w2[f * d_model + m]);
        y[m] += g * o;
      }
    }
  }
  return r;
}

}  // namespace ringattn
