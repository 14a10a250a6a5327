// The MoE stage's pieces of a job (job/moe_parts.hpp).
#include "job/moe_parts.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "job/outputs.hpp"
#include "ringattn/error.hpp"
#include "ringattn/moe_reference.hpp"
#include "ringattn/reference.hpp"

namespace ringattn {

MoeRankStats moe_rank_stats(const MoeMetrics& m, int rank, int64_t rows, int threads) {
  MoeRankStats s;
  s.rank = rank, s.rows = rows, s.rows_sent = m.rows_sent, s.rows_computed = m.rows_computed;
  s.bytes_sent = m.bytes_sent, s.threads = threads;
  s.total_s = m.total_s, s.route_s = m.route_s, s.dispatch_s = m.dispatch_s, s.ffn_s = m.ffn_s;
  s.combine_s = m.combine_s, s.comm_s = m.comm_s, s.ffn_flops = m.ffn_flops;
  return s;
}

}  // namespace ringattn

namespace ringattn::job {
namespace {

// Relative error float32 results must meet against float64 (gates, Y: relative Frobenius).
constexpr double kMoeTolerance = 1e-5;
// Losses are means of float32 probabilities accumulated in float64.
constexpr double kLossTolerance = 1e-6;
// Below this decision margin the float32 router may order two scores differently
// than float64 does: such routing differences are rounding, not errors.
constexpr double kTieMargin = 1e-5;

template <class T>
void append(std::vector<char>& buf, const T* p, int64_t n) {
  const char* b = reinterpret_cast<const char*>(p);
  buf.insert(buf.end(), b, b + static_cast<std::size_t>(n) * sizeof(T));
}

}  // namespace

std::vector<int64_t> moe_row_index(const Layout& l, int rank, int64_t batch) {
  const int64_t n = l.tokens(rank);
  std::vector<int64_t> index(static_cast<std::size_t>(batch * n));
  for (int64_t b = 0; b < batch; ++b)
    for (const Segment& s : l.segments(rank))
      for (int64_t i = 0; i < s.count; ++i)
        index[static_cast<std::size_t>(b * n + s.local_offset + i)] =
            b * l.length() + s.start + i * s.stride;
  return index;
}

MoeRank::MoeRank(Communicator& comm, const MoeSetup& setup, std::vector<int64_t> index)
    : comm_(comm), setup_(setup), index_(std::move(index)) {
  const MoeConfig& c = setup_.config;
  const ExpertRange held = moe_experts_of(c.experts, comm.size(), comm.rank());
  weights_ = setup_.weights_dir.empty()
                 ? moe_generate_weights(setup_.seed, setup_.d_model, c.d_ff, c.experts, held)
                 : moe_load_weights(setup_.weights_dir, setup_.d_model, c.experts, held);
  if (weights_.d_ff != c.d_ff)
    throw FieldError("moe_ffn", fmt::format("{} does not match the weights' d_ff = {} ({})", c.d_ff,
                                            weights_.d_ff, setup_.weights_dir));
  const auto n = static_cast<std::size_t>(rows());
  y_.resize(n * static_cast<std::size_t>(setup_.d_model));
  routing_.resize(n * static_cast<std::size_t>(c.width()));
  gates_.resize(routing_.size());
}

MoeMetrics MoeRank::pass(const float* x, int blas_threads) {
  MoeTokens in;
  in.x = x, in.rows = rows(), in.index = index_.data();
  in.tokens = setup_.tokens, in.seq_len = setup_.seq_len;
  MoeConfig c = setup_.config;
  c.d_ff = weights_.d_ff;  // from the files when read
  last_bias_ = weights_.bias;
  MoeMetrics m = moe_stage(comm_, c, weights_, in, y_.data(), routing_.data(), gates_.data(),
                           blas_threads, &workspace_);
  if (c.bias_rate > 0) weights_.bias = m.next_bias;
  return m;
}

void MoeCollector::check_writable(const MoeOutputPaths& paths) {
  if (!paths.y.empty()) check_output_writable(paths.y, paths.y_field);
  if (!paths.routing.empty()) check_output_writable(paths.routing, paths.routing_field);
  if (!paths.gates.empty()) check_output_writable(paths.gates, paths.gates_field);
}

MoeCollector::MoeCollector(Communicator& comm, const MoeSetup& setup, const MoeOutputPaths& paths,
                           int64_t check_rows)
    : comm_(comm), setup_(setup), check_rows_(std::min(check_rows, setup.tokens)) {
  if (comm.rank() != 0) return;
  const int64_t w = setup_.config.width();
  const auto shape = [&](int64_t last) {
    std::vector<int64_t> s = paths.lead;
    s.push_back(last);
    return s;
  };
  if (!paths.y.empty()) y_.emplace(paths.y, DType::f32, shape(setup_.d_model), paths.y_field);
  if (!paths.routing.empty())
    routing_.emplace(paths.routing, NpyElem::i32, shape(w), paths.routing_field);
  if (!paths.gates.empty()) gates_.emplace(paths.gates, DType::f32, shape(w), paths.gates_field);
  if (check_rows_ > 0) {
    const auto t = static_cast<std::size_t>(setup_.tokens);
    x_all_.resize(t * static_cast<std::size_t>(setup_.d_model));
    routing_all_.resize(t * static_cast<std::size_t>(w));
    gates_all_.resize(routing_all_.size());
    for (int64_t i = 0; i < check_rows_; ++i) sample_.push_back(i * setup_.tokens / check_rows_);
    y_sample_.resize(sample_.size() * static_cast<std::size_t>(setup_.d_model));
  }
}

void MoeCollector::gather(const MoeRank& r, const float* x) {
  const int np = comm_.size();
  const int64_t dm = setup_.d_model, w = setup_.config.width();
  std::vector<int64_t> rows(static_cast<std::size_t>(np));
  const int64_t mine = r.rows();
  comm_.allgather(&mine, sizeof(mine), rows.data());
  const bool with_x = check_rows_ > 0;
  const auto bytes_of = [&](int rank) {
    const int64_t n = rows[static_cast<std::size_t>(rank)];
    return static_cast<std::size_t>(n) *
           (sizeof(int64_t) + static_cast<std::size_t>(dm * (with_x ? 2 : 1)) * sizeof(float) +
            static_cast<std::size_t>(w) * (sizeof(int32_t) + sizeof(float)));
  };
  std::vector<char> buf;
  buf.reserve(bytes_of(comm_.rank()));
  append(buf, r.index().data(), mine);
  append(buf, r.y(), mine * dm);
  append(buf, r.routing(), mine * w);
  append(buf, r.gates(), mine * w);
  if (with_x) append(buf, x, mine * dm);
  gather_bytes(comm_, bytes_of, buf.data(), [&](int src, const void* data) {
    const int64_t n = rows[static_cast<std::size_t>(src)];
    const char* p = static_cast<const char*>(data);
    const auto* index = reinterpret_cast<const int64_t*>(p);
    const auto* y = reinterpret_cast<const float*>(index + n);
    const auto* routing = reinterpret_cast<const int32_t*>(y + n * dm);
    const auto* gates = reinterpret_cast<const float*>(routing + n * w);
    const float* xs = with_x ? gates + n * w : nullptr;
    take(index, n, xs, y, routing, gates);
  });
}

void MoeCollector::take(const int64_t* index, int64_t rows, const float* x, const float* y,
                        const int32_t* routing, const float* gates) {
  const int64_t dm = setup_.d_model, w = setup_.config.width();
  // Runs of consecutive tokens go to the files in one write each.
  for (int64_t i = 0; i < rows;) {
    int64_t j = i + 1;
    while (j < rows && index[j] == index[j - 1] + 1) ++j;
    const int64_t n = j - i, t0 = index[i];
    const auto write = [&](std::optional<NpyOutFile>& f, const void* src, std::size_t row_bytes) {
      if (f)
        f->write_strided(static_cast<std::size_t>(t0) * row_bytes, row_bytes, row_bytes, n, src);
    };
    write(y_, y + i * dm, static_cast<std::size_t>(dm) * sizeof(float));
    write(routing_, routing + i * w, static_cast<std::size_t>(w) * sizeof(int32_t));
    write(gates_, gates + i * w, static_cast<std::size_t>(w) * sizeof(float));
    i = j;
  }
  if (check_rows_ == 0) return;
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t t = index[i];
    std::copy_n(x + i * dm, dm, x_all_.data() + t * dm);
    std::copy_n(routing + i * w, w, routing_all_.data() + t * w);
    std::copy_n(gates + i * w, w, gates_all_.data() + t * w);
    const auto it = std::lower_bound(sample_.begin(), sample_.end(), t);
    if (it != sample_.end() && *it == t)
      std::copy_n(y + i * dm, dm, y_sample_.data() + (it - sample_.begin()) * dm);
  }
}

MoeCheck MoeCollector::check(const MoeMetrics& m, const std::vector<float>& bias) const {
  MoeCheck c;
  if (comm_.rank() != 0 || check_rows_ == 0) return c;
  const MoeConfig& cfg = setup_.config;
  const int64_t dm = setup_.d_model, w = cfg.width(), tokens = setup_.tokens;
  const MoeWeights all =
      setup_.weights_dir.empty()
          ? moe_generate_weights(setup_.seed, dm, cfg.d_ff, cfg.experts, {0, cfg.experts})
          : moe_load_weights(setup_.weights_dir, dm, cfg.experts, {0, cfg.experts});
  MoeWeights with_bias = all;
  with_bias.bias = bias;  // the bias the checked (last) pass selected with
  MoeConfig rc = cfg;
  rc.d_ff = all.d_ff;
  const MoeReferenceResult ref =
      reference_moe(rc, x_all_.data(), tokens, dm, setup_.seq_len, with_bias, &sample_);
  c.tokens = tokens, c.rows = static_cast<int64_t>(sample_.size());
  c.margin = ref.min_margin, c.tol = kMoeTolerance;
  std::vector<uint8_t> same(static_cast<std::size_t>(tokens), 1);
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t j = 0; j < w; ++j) {
      const auto at = static_cast<std::size_t>(t * w + j);
      if (routing_all_[at] != ref.routing[at]) {
        ++c.routing_mismatches;
        same[static_cast<std::size_t>(t)] = 0;
      } else {
        c.gate_err = std::max(c.gate_err, std::abs(double(gates_all_[at]) - ref.gates[at]));
      }
    }
  double num = 0, den = 0;
  for (std::size_t i = 0; i < sample_.size(); ++i) {
    if (!same[static_cast<std::size_t>(sample_[i])]) continue;
    for (int64_t d = 0; d < dm; ++d) {
      const double r = ref.y[i * static_cast<std::size_t>(dm) + static_cast<std::size_t>(d)];
      const double e =
          double(y_sample_[i * static_cast<std::size_t>(dm) + static_cast<std::size_t>(d)]) - r;
      num += e * e, den += r * r;
    }
  }
  c.y_err = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  c.aux_err = std::abs(m.aux_loss - ref.aux_loss);
  c.z_err = std::abs(m.z_loss - ref.z_loss);
  const bool ties = ref.min_margin < kTieMargin;
  if (c.routing_mismatches > 0 && !ties)
    c.failure =
        fmt::format("{} routing entries differ from the float64 reference", c.routing_mismatches);
  else if (c.gate_err > kMoeTolerance)
    c.failure = fmt::format("gates differ from the float64 reference by {:.3g} (tolerance {:g})",
                            c.gate_err, kMoeTolerance);
  else if (c.y_err > kMoeTolerance)
    c.failure =
        fmt::format("Y differs from the float64 reference by {:.3g} relative (tolerance {:g})",
                    c.y_err, kMoeTolerance);
  else if (c.aux_err > kLossTolerance || c.z_err > kLossTolerance)
    c.failure = fmt::format("losses differ from the float64 reference (aux by {:.3g}, z by {:.3g})",
                            c.aux_err, c.z_err);
  c.ok = c.failure.empty();
  return c;
}

void MoeCollector::commit() {
  if (y_) y_->commit();
  if (routing_) routing_->commit();
  if (gates_) gates_->commit();
}

}  // namespace ringattn::job
