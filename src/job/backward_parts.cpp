#include "job/backward_parts.hpp"

#include <chrono>
#include <cmath>

#include "job/inputs.hpp"
#include "job/outputs.hpp"
#include "ringattn/backward.hpp"
#include "ringattn/reference.hpp"

namespace ringattn::job {
namespace {

std::vector<int64_t> file_shape(const JobSpec& cfg, int64_t n, int64_t heads) {
  std::vector<int64_t> s = {n, heads, cfg.head_dim};
  if (cfg.batched_output()) s.insert(s.begin(), cfg.batch);
  return s;
}

// Local rows [B, l.tokens(rank), row] against the global [B, n, row] reference.
void compare_rows(const Layout& l, int rank, int64_t batch, int64_t n, int64_t row,
                  const float* local, const float* global, GradError* e) {
  const int64_t nl = l.tokens(rank);
  for (int64_t b = 0; b < batch; ++b)
    for (const Segment& s : l.segments(rank))
      for (int64_t i = 0; i < s.count; ++i) {
        const float* x = local + (b * nl + s.local_offset + i) * row;
        const float* ref = global + (b * n + s.start + i * s.stride) * row;
        for (int64_t c = 0; c < row; ++c) e->add(double(x[c]), double(ref[c]));
      }
}

}  // namespace

double GradError::rel() const {
  return ref2 > 0 ? std::sqrt(diff2 / ref2) : std::sqrt(diff2);
}

double grad_tolerance(const JobSpec& cfg) {
  return tolerance_for(cfg.dtype).o_rel_fro;
}

void GradOutputs::check_writable(const JobSpec& cfg) {
  if (!cfg.dq_path.empty()) check_output_writable(cfg.dq_path, "dq_out");
  if (!cfg.dk_path.empty()) check_output_writable(cfg.dk_path, "dk_out");
  if (!cfg.dv_path.empty()) check_output_writable(cfg.dv_path, "dv_out");
}

GradOutputs::GradOutputs(const JobSpec& cfg) : cfg_(cfg) {
  const DType dt = cfg.grad_f32 ? DType::f32 : cfg.dtype;
  if (!cfg.dq_path.empty()) dq_.emplace(cfg.dq_path, dt, file_shape(cfg, cfg.nq, cfg.hq), "dq_out");
  if (!cfg.dk_path.empty())
    dk_.emplace(cfg.dk_path, dt, file_shape(cfg, cfg.nk, cfg.hkv), "dk_out");
  if (!cfg.dv_path.empty())
    dv_.emplace(cfg.dv_path, dt, file_shape(cfg, cfg.nk, cfg.hkv), "dv_out");
}

void GradOutputs::write_q_rows(const Layout& ql, int rank, const float* dq) {
  if (dq_) write_token_rows(*dq_, ql, rank, cfg_.batch, cfg_.nq, cfg_.hq * cfg_.head_dim, dq);
}

void GradOutputs::write_kv_rows(const Layout& kvl, int rank, const float* dk, const float* dv) {
  const int64_t row = cfg_.hkv * cfg_.head_dim;
  if (dk_) write_token_rows(*dk_, kvl, rank, cfg_.batch, cfg_.nk, row, dk);
  if (dv_) write_token_rows(*dv_, kvl, rank, cfg_.batch, cfg_.nk, row, dv);
}

void GradOutputs::commit() {
  if (dq_) dq_->commit();
  if (dk_) dk_->commit();
  if (dv_) dv_->commit();
}

GradVerify::GradVerify(const JobSpec& cfg, const KernelOptions& kopt) : cfg_(cfg) {
  const RankInputs in = load_full_inputs(cfg);
  const Tensor d_o = load_full_grad_output(cfg);
  const AttentionArgs a(cfg, in.q.data.data(), in.k.data.data(), in.v.data.data());
  Buffer o(static_cast<std::size_t>(a.q_elems()) * sizeof(float), "single-rank O");
  Buffer lse(static_cast<std::size_t>(a.lse_elems()) * sizeof(float), "single-rank LSE");
  attention_forward(a, o.as<float>(), lse.as<float>(), kopt);
  dq_ = Buffer(static_cast<std::size_t>(a.q_elems()) * sizeof(float), "single-rank dQ");
  dk_ = Buffer(static_cast<std::size_t>(a.kv_elems()) * sizeof(float), "single-rank dK");
  dv_ = Buffer(static_cast<std::size_t>(a.kv_elems()) * sizeof(float), "single-rank dV");
  const auto t0 = std::chrono::steady_clock::now();
  attention_backward(a, o.as<float>(), lse.as<float>(), d_o.as<float>(), dq_.as<float>(),
                     dk_.as<float>(), dv_.as<float>(), kopt);
  seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void GradVerify::compare_q(const Layout& ql, int rank, const float* dq) {
  compare_rows(ql, rank, cfg_.batch, cfg_.nq, cfg_.hq * cfg_.head_dim, dq, dq_.as<float>(), &eq_);
}

void GradVerify::compare_kv(const Layout& kvl, int rank, const float* dk, const float* dv) {
  const int64_t row = cfg_.hkv * cfg_.head_dim;
  compare_rows(kvl, rank, cfg_.batch, cfg_.nk, row, dk, dk_.as<float>(), &ek_);
  compare_rows(kvl, rank, cfg_.batch, cfg_.nk, row, dv, dv_.as<float>(), &ev_);
}

GradCheck GradVerify::result() const {
  GradCheck c;
  c.dq = eq_.rel(), c.dk = ek_.rel(), c.dv = ev_.rel();
  c.q_rows = cfg_.nq, c.k_rows = cfg_.nk;
  c.tol = grad_tolerance(cfg_);
  c.ok = c.dq <= c.tol && c.dk <= c.tol && c.dv <= c.tol;
  c.t1_s = seconds_;
  return c;
}

}  // namespace ringattn::job
