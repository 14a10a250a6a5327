// MoE configuration, placement, weights and the balance bias (ringattn/moe.hpp).
#include "ringattn/moe.hpp"

#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>

#include "ringattn/error.hpp"
#include "ringattn/npy.hpp"
#include "ringattn/synth.hpp"

namespace ringattn {
namespace {

// Streams of the generated weights and tokens (after the attention inputs' q, k, v).
constexpr uint64_t kStreamRouter = 16, kStreamW1 = 17, kStreamW3 = 18, kStreamW2 = 19,
                   kStreamTokens = 20;

uint64_t moe_key(uint64_t seed, uint64_t stream) {
  return synth_key(seed, static_cast<SynthStream>(stream));
}

void fill_scaled(float* dst, uint64_t key, uint64_t first, int64_t count, double scale) {
  for (int64_t i = 0; i < count; ++i)
    dst[i] =
        static_cast<float>(scale * double(synth_normal_at(key, first + static_cast<uint64_t>(i))));
}

std::vector<float> to_floats(const Tensor& t) {
  std::vector<float> v(static_cast<std::size_t>(t.numel()));
  std::memcpy(v.data(), t.as<float>(), v.size() * sizeof(float));
  return v;
}

// The header of dir/name, checked against the expected shape (-1: any).
NpyHeader expect_file(const std::string& path, const std::vector<int64_t>& want,
                      const std::string& form) {
  if (!std::filesystem::exists(path))
    throw Error(fmt::format("--moe-weights: {} not found (expected {} float32)", path, form));
  NpyHeader h = read_npy_header(path);
  bool ok = h.dtype == DType::f32 && h.shape.size() == want.size();
  for (std::size_t i = 0; ok && i < want.size(); ++i) ok = want[i] < 0 || h.shape[i] == want[i];
  if (!ok)
    throw Error(fmt::format("--moe-weights: {} holds {} {}, expected {} float32", path,
                            dtype_name(h.dtype), shape_str(h.shape), form));
  return h;
}

}  // namespace

std::string moe_policy_name(MoePolicy p) {
  switch (p) {
    case MoePolicy::token:
      return "token";
    case MoePolicy::chunk:
      return "chunk";
    case MoePolicy::expert:
      return "expert";
  }
  return "?";
}

MoePolicy parse_moe_policy(const std::string& s) {
  if (s == "token") return MoePolicy::token;
  if (s == "chunk") return MoePolicy::chunk;
  if (s == "expert") return MoePolicy::expert;
  throw FieldError("moe_policy", fmt::format("'{}' is not one of token, chunk, expert", s));
}

std::string moe_priority_name(MoePriority p) {
  return p == MoePriority::order ? "order" : "score";
}

MoePriority parse_moe_priority(const std::string& s) {
  if (s == "order") return MoePriority::order;
  if (s == "score") return MoePriority::score;
  throw FieldError("moe_priority", fmt::format("'{}' is not one of order, score", s));
}

std::string MoeConfig::describe() const {
  if (!on()) return "";
  std::string s = fmt::format("E={} k={} d_ff={} {}", experts, topk, d_ff, moe_policy_name(policy));
  if (policy == MoePolicy::chunk) s += fmt::format(" c={}", chunk);
  s += capacity_factor > 0 ? fmt::format(" cf={:g}", capacity_factor) : std::string(" dropless");
  if (priority == MoePriority::score) s += " by-score";
  if (bias_rate > 0) s += fmt::format(" bias-rate={:g}", bias_rate);
  return s;
}

int64_t moe_capacity(const MoeConfig& c, int64_t tokens) {
  if (c.capacity_factor <= 0) return std::numeric_limits<int64_t>::max();
  const double raw =
      std::ceil(double(c.topk) * c.capacity_factor * double(tokens) / double(c.experts));
  // Guard the conversion only: any C >= T already takes every token.
  const double capped = std::min(raw, 1e18);
  return std::max(c.min_capacity, static_cast<int64_t>(capped));
}

void validate_moe(const MoeConfig& c, int ranks) {
  if (!c.on()) return;
  if (c.experts < ranks)
    throw FieldError("moe_experts",
                     fmt::format("{} experts on {} ranks: every rank must hold at least one "
                                 "expert (expert parallelism), so E >= P",
                                 c.experts, ranks));
  if (c.topk < 1 || c.topk > c.experts)
    throw FieldError("moe_topk", fmt::format("{} must be between 1 and the number of experts ({})",
                                             c.topk, c.experts));
  if (c.d_ff < 1)
    throw FieldError("moe_ffn", fmt::format("{} must be >= 1 (the experts' hidden width)", c.d_ff));
  if (!std::isfinite(c.capacity_factor) || c.capacity_factor < 0)
    throw FieldError(
        "moe_capacity_factor",
        fmt::format("{} must be a finite number >= 0 (0: dropless)", c.capacity_factor));
  if (c.min_capacity < 0)
    throw FieldError("moe_min_capacity", fmt::format("{} must be >= 0", c.min_capacity));
  if (c.policy == MoePolicy::chunk && c.chunk < 1)
    throw FieldError("moe_chunk", "the chunk policy needs a chunk length >= 1 (tokens)");
  if (c.policy != MoePolicy::chunk && c.chunk != 0)
    throw FieldError("moe_chunk", "a chunk length applies only to the chunk policy");
  if (!std::isfinite(c.bias_rate) || c.bias_rate < 0)
    throw FieldError("moe_bias_rate", fmt::format("{} must be a finite number >= 0", c.bias_rate));
  if (c.policy == MoePolicy::expert && c.bias_rate > 0)
    throw FieldError("moe_bias_rate",
                     "the balance bias applies to token and chunk choice (expert choice is "
                     "balanced by construction)");
  if (c.policy == MoePolicy::expert && c.capacity_factor <= 0)
    throw FieldError("moe_capacity_factor",
                     "expert choice needs a capacity factor > 0 (each expert takes C tokens)");
}

ExpertRange moe_experts_of(int experts, int ranks, int rank) {
  const auto lo = static_cast<int>(int64_t(rank) * experts / ranks);
  const auto hi = static_cast<int>(int64_t(rank + 1) * experts / ranks);
  return {lo, hi - lo};
}

int moe_owner(int experts, int ranks, int expert) {
  // The largest r with floor(r E / P) <= e.
  int r = static_cast<int>((int64_t(expert) * ranks + ranks - 1) / experts);
  while (r > 0 && int64_t(r) * experts / ranks > expert) --r;
  while (r + 1 < ranks && int64_t(r + 1) * experts / ranks <= expert) ++r;
  return r;
}

const float* MoeWeights::w1_of(int e) const {
  return w1.data() + static_cast<std::size_t>(e - first) * static_cast<std::size_t>(d_model * d_ff);
}
const float* MoeWeights::w3_of(int e) const {
  return w3.data() + static_cast<std::size_t>(e - first) * static_cast<std::size_t>(d_model * d_ff);
}
const float* MoeWeights::w2_of(int e) const {
  return w2.data() + static_cast<std::size_t>(e - first) * static_cast<std::size_t>(d_model * d_ff);
}

MoeWeights moe_generate_weights(uint64_t seed, int64_t d_model, int64_t d_ff, int experts,
                                ExpertRange held) {
  MoeWeights w;
  w.d_model = d_model, w.d_ff = d_ff, w.experts = experts;
  w.first = held.first, w.count = held.count;
  const double in_scale = 1.0 / std::sqrt(double(d_model));
  const double ff_scale = 1.0 / std::sqrt(double(d_ff));
  w.router.resize(static_cast<std::size_t>(d_model * experts));
  fill_scaled(w.router.data(), moe_key(seed, kStreamRouter), 0, d_model * experts, in_scale);
  w.bias.assign(static_cast<std::size_t>(experts), 0.0f);
  const int64_t per = d_model * d_ff;  // values per expert matrix
  const auto n = static_cast<std::size_t>(per * held.count);
  w.w1.resize(n), w.w3.resize(n), w.w2.resize(n);
  const auto first = static_cast<uint64_t>(per * held.first);
  fill_scaled(w.w1.data(), moe_key(seed, kStreamW1), first, per * held.count, in_scale);
  fill_scaled(w.w3.data(), moe_key(seed, kStreamW3), first, per * held.count, in_scale);
  fill_scaled(w.w2.data(), moe_key(seed, kStreamW2), first, per * held.count, ff_scale);
  return w;
}

MoeWeights moe_load_weights(const std::string& dir, int64_t d_model, int experts,
                            ExpertRange held) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(dir))
    throw Error(fmt::format(
        "--moe-weights: {} is not a directory (expected router.npy, w1.npy, w3.npy, w2.npy)", dir));
  const std::string router = (fs::path(dir) / "router.npy").string();
  const std::string w1 = (fs::path(dir) / "w1.npy").string();
  const std::string w3 = (fs::path(dir) / "w3.npy").string();
  const std::string w2 = (fs::path(dir) / "w2.npy").string();
  const std::string bias = (fs::path(dir) / "bias.npy").string();
  const NpyHeader h1 = expect_file(w1, {experts, d_model, -1},
                                   fmt::format("[E={}, d_model={}, d_ff]", experts, d_model));
  const int64_t d_ff = h1.shape[2];
  expect_file(router, {d_model, experts}, fmt::format("[d_model={}, E={}]", d_model, experts));
  expect_file(w3, {experts, d_model, d_ff},
              fmt::format("[E={}, d_model={}, d_ff={}]", experts, d_model, d_ff));
  expect_file(w2, {experts, d_ff, d_model},
              fmt::format("[E={}, d_ff={}, d_model={}]", experts, d_ff, d_model));
  MoeWeights w;
  w.d_model = d_model, w.d_ff = d_ff, w.experts = experts;
  w.first = held.first, w.count = held.count;
  w.router = to_floats(read_npy(router));
  w.w1 = to_floats(read_npy_slice(w1, 0, held.first, held.count));
  w.w3 = to_floats(read_npy_slice(w3, 0, held.first, held.count));
  w.w2 = to_floats(read_npy_slice(w2, 0, held.first, held.count));
  if (fs::exists(bias)) {
    expect_file(bias, {experts}, fmt::format("[E={}]", experts));
    w.bias = to_floats(read_npy(bias));
  } else {
    w.bias.assign(static_cast<std::size_t>(experts), 0.0f);
  }
  for (const auto* v : {&w.router, &w.w1, &w.w3, &w.w2, &w.bias})
    for (float f : *v)
      if (!std::isfinite(f))
        throw Error(fmt::format("--moe-weights: {} holds a non-finite value", dir));
  return w;
}

void moe_generate_tokens(uint64_t seed, int64_t d_model, int64_t row0, int64_t rows, float* x) {
  fill_scaled(x, moe_key(seed, kStreamTokens), static_cast<uint64_t>(row0 * d_model),
              rows * d_model, 1.0);
}

std::vector<float> moe_next_bias(const std::vector<float>& bias,
                                 const std::vector<int64_t>& requested, double rate) {
  std::vector<float> next = bias;
  if (rate <= 0 || requested.empty()) return next;
  double mean = 0;
  for (int64_t r : requested) mean += double(r);
  mean /= double(requested.size());
  for (std::size_t e = 0; e < next.size(); ++e) {
    const double d = mean - double(requested[e]);
    const double sign = d > 0 ? 1.0 : (d < 0 ? -1.0 : 0.0);
    next[e] = static_cast<float>(double(next[e]) + rate * sign);
  }
  return next;
}

}  // namespace ringattn
