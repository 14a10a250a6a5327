#include "job/backward_parts.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "job/inputs.hpp"
#include "job/outputs.hpp"
#include "job/sample_check.hpp"
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

namespace {
// Rank `rank`'s rows [batch, l.tokens(rank), row] at their global token positions of a caller's
// [batch, n, row] float32 array (JobArrays).
void scatter_rows(float* global, const Layout& l, int rank, int64_t batch, int64_t n, int64_t row,
                  const float* rows) {
  const int64_t nl = l.tokens(rank);
  for (int64_t b = 0; b < batch; ++b)
    for (const Segment& s : l.segments(rank))
      for (int64_t i = 0; i < s.count; ++i)
        std::copy(rows + (b * nl + s.local_offset + i) * row,
                  rows + (b * nl + s.local_offset + i + 1) * row,
                  global + (b * n + s.start + i * s.stride) * row);
}
}  // namespace

void GradOutputs::write_q_rows(const Layout& ql, int rank, const float* dq) {
  const int64_t row = cfg_.hq * cfg_.head_dim;
  if (dq_) write_token_rows(*dq_, ql, rank, cfg_.batch, cfg_.nq, row, dq);
  if (cfg_.arrays.dq != nullptr)
    scatter_rows(cfg_.arrays.dq, ql, rank, cfg_.batch, cfg_.nq, row, dq);
}

void GradOutputs::write_kv_rows(const Layout& kvl, int rank, const float* dk, const float* dv) {
  const int64_t row = cfg_.hkv * cfg_.head_dim;
  if (dk_) write_token_rows(*dk_, kvl, rank, cfg_.batch, cfg_.nk, row, dk);
  if (dv_) write_token_rows(*dv_, kvl, rank, cfg_.batch, cfg_.nk, row, dv);
  if (cfg_.arrays.dk != nullptr)
    scatter_rows(cfg_.arrays.dk, kvl, rank, cfg_.batch, cfg_.nk, row, dk);
  if (cfg_.arrays.dv != nullptr)
    scatter_rows(cfg_.arrays.dv, kvl, rank, cfg_.batch, cfg_.nk, row, dv);
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

namespace {

constexpr int64_t kWindow = 1024;  // tokens loaded at a time
constexpr int kMaxRanges = 4 + 2 * kMaxGlobalRanges + kMaxRandomBlocks;

double scale_of(const JobSpec& cfg) {
  return cfg.scale > 0 ? double(cfg.scale) : 1.0 / std::sqrt(double(cfg.head_dim));
}

double dot(const double* a, const double* b, int64_t d) {
  double s = 0;
  for (int64_t e = 0; e < d; ++e) s += a[e] * b[e];
  return s;
}

}  // namespace

GradSampled::GradSampled(const JobSpec& cfg, int64_t rows)
    : cfg_(cfg), q_rows_(sample_rows(cfg.nq, rows)), k_rows_(sample_rows(cfg.nk, rows)) {
  const int64_t hq = cfg.hq, d = cfg.head_dim, group = cfg.hq / cfg.hkv;
  const int64_t nr = static_cast<int64_t>(q_rows_.size());
  const double scale = scale_of(cfg);
  ref_dq_.assign(static_cast<std::size_t>(cfg.batch * nr * hq * d), 0.0);
  lse_.assign(static_cast<std::size_t>(cfg.batch * hq * cfg.nq), 0.0f);
  delta_ = lse_;
  std::vector<double> o(static_cast<std::size_t>(hq * d)), m(static_cast<std::size_t>(hq)),
      l(static_cast<std::size_t>(hq)), lse(static_cast<std::size_t>(hq)),
      delta(static_cast<std::size_t>(hq));
  for (int64_t b = 0; b < cfg.batch; ++b)
    for (int64_t ri = 0; ri < nr; ++ri) {
      const int64_t t = q_rows_[static_cast<std::size_t>(ri)];
      const std::vector<double> q = load_global_rows(cfg, SynthStream::q, b, t, 1);
      const std::vector<double> g = load_global_rows(cfg, SynthStream::d_o, b, t, 1);
      int64_t rb[kMaxRanges], re[kMaxRanges];
      bool elementwise = false;
      const int n =
          cfg.mask.key_ranges(t, Positions{0, 1}, cfg.nk, rb, re, kMaxRanges, &elementwise);
      int64_t lo = cfg.nk, hi = 0;
      for (int i = 0; i < n; ++i) lo = std::min(lo, rb[i]), hi = std::max(hi, re[i]);
      // Two passes over the visible keys: the forward (online softmax), then dQ.
      std::fill(o.begin(), o.end(), 0.0);
      std::fill(m.begin(), m.end(), -INFINITY);
      std::fill(l.begin(), l.end(), 0.0);
      double* dq = ref_dq_.data() + (b * nr + ri) * hq * d;
      for (int pass = 0; pass < 2; ++pass) {
        if (pass == 1)
          for (int64_t h = 0; h < hq; ++h) {
            const auto hs = static_cast<std::size_t>(h);
            const double lh = l[hs];
            if (lh > 0)
              for (int64_t e = 0; e < d; ++e) o[hs * d + e] /= lh;
            lse[hs] = lh > 0 ? m[hs] + std::log(lh) : -INFINITY;
            delta[hs] = dot(g.data() + h * d, o.data() + h * d, d);
          }
        for (int64_t w0 = lo; w0 < hi; w0 += kWindow) {
          const int64_t wn = std::min(kWindow, hi - w0);
          const std::vector<double> k = load_global_rows(cfg, SynthStream::k, b, w0, wn);
          const std::vector<double> v = load_global_rows(cfg, SynthStream::v, b, w0, wn);
          for (int64_t j = w0; j < w0 + wn; ++j) {
            if (!cfg.mask.allows(t, j)) continue;
            for (int64_t h = 0; h < hq; ++h) {
              const auto hs = static_cast<std::size_t>(h);
              const double* kr = k.data() + ((j - w0) * cfg.hkv + h / group) * d;
              const double* vr = v.data() + ((j - w0) * cfg.hkv + h / group) * d;
              const double sc = scale * dot(q.data() + h * d, kr, d);
              if (pass == 0) {
                const double mnew = std::max(m[hs], sc);
                const double alpha = std::exp(m[hs] - mnew), p = std::exp(sc - mnew);
                for (int64_t e = 0; e < d; ++e) o[hs * d + e] = o[hs * d + e] * alpha + p * vr[e];
                l[hs] = l[hs] * alpha + p;
                m[hs] = mnew;
              } else {
                const double p = std::exp(sc - lse[hs]);
                const double ds = p * (dot(g.data() + h * d, vr, d) - delta[hs]);
                for (int64_t e = 0; e < d; ++e) dq[h * d + e] += scale * ds * kr[e];
              }
            }
          }
        }
      }
    }
}

void GradSampled::take_rows(const Layout& ql, int rank, const float* lse, const float* delta) {
  const int64_t n = ql.tokens(rank), hq = cfg_.hq;
  for (int64_t b = 0; b < cfg_.batch; ++b)
    for (int64_t h = 0; h < hq; ++h)
      for (const Segment& s : ql.segments(rank))
        for (int64_t i = 0; i < s.count; ++i) {
          const auto to = static_cast<std::size_t>((b * hq + h) * cfg_.nq + s.start + i * s.stride);
          const int64_t from = (b * hq + h) * n + s.local_offset + i;
          lse_[to] = lse[from];
          delta_[to] = delta[from];
        }
}

void GradSampled::compare_q(const Layout& ql, int rank, const float* dq) {
  const int64_t n = ql.tokens(rank), row = cfg_.hq * cfg_.head_dim;
  const int64_t nr = static_cast<int64_t>(q_rows_.size());
  for (int64_t ri = 0; ri < nr; ++ri) {
    const int64_t li = ql.local_index(rank, q_rows_[static_cast<std::size_t>(ri)]);
    if (li < 0) continue;
    for (int64_t b = 0; b < cfg_.batch; ++b)
      for (int64_t e = 0; e < row; ++e)
        eq_.add(double(dq[(b * n + li) * row + e]),
                ref_dq_[static_cast<std::size_t>((b * nr + ri) * row + e)]);
  }
}

void GradSampled::reference_keys() {
  const int64_t hq = cfg_.hq, hkv = cfg_.hkv, d = cfg_.head_dim, group = hq / hkv;
  const int64_t nk = static_cast<int64_t>(k_rows_.size()), kr = hkv * d, qr = hq * d;
  const double scale = scale_of(cfg_);
  ref_dk_.assign(static_cast<std::size_t>(cfg_.batch * nk * kr), 0.0);
  ref_dv_ = ref_dk_;
  for (int64_t b = 0; b < cfg_.batch; ++b) {
    std::vector<std::vector<double>> k, v;  // the sampled keys' rows
    for (const int64_t j : k_rows_) {
      k.push_back(load_global_rows(cfg_, SynthStream::k, b, j, 1));
      v.push_back(load_global_rows(cfg_, SynthStream::v, b, j, 1));
    }
    for (int64_t w0 = 0; w0 < cfg_.nq; w0 += kWindow) {
      const int64_t wn = std::min(kWindow, cfg_.nq - w0);
      const std::vector<double> q = load_global_rows(cfg_, SynthStream::q, b, w0, wn);
      const std::vector<double> g = load_global_rows(cfg_, SynthStream::d_o, b, w0, wn);
      for (int64_t ki = 0; ki < nk; ++ki) {
        const int64_t j = k_rows_[static_cast<std::size_t>(ki)];
        double* dk = ref_dk_.data() + (b * nk + ki) * kr;
        double* dv = ref_dv_.data() + (b * nk + ki) * kr;
        for (int64_t i = w0; i < w0 + wn; ++i) {
          if (!cfg_.mask.allows(i, j)) continue;
          for (int64_t h = 0; h < hq; ++h) {
            const auto at = static_cast<std::size_t>((b * hq + h) * cfg_.nq + i);
            if (lse_[at] == -INFINITY) continue;
            const int64_t hk = h / group;
            const double* qi = q.data() + (i - w0) * qr + h * d;
            const double* gi = g.data() + (i - w0) * qr + h * d;
            const double* kj = k[static_cast<std::size_t>(ki)].data() + hk * d;
            const double* vj = v[static_cast<std::size_t>(ki)].data() + hk * d;
            const double p = std::exp(scale * dot(qi, kj, d) - double(lse_[at]));
            const double ds = p * (dot(gi, vj, d) - double(delta_[at]));
            for (int64_t e = 0; e < d; ++e) {
              dk[hk * d + e] += scale * ds * qi[e];
              dv[hk * d + e] += p * gi[e];
            }
          }
        }
      }
    }
  }
  keys_done_ = true;
}

void GradSampled::compare_kv(const Layout& kvl, int rank, const float* dk, const float* dv) {
  if (!keys_done_) reference_keys();
  const int64_t n = kvl.tokens(rank), row = cfg_.hkv * cfg_.head_dim;
  const int64_t nk = static_cast<int64_t>(k_rows_.size());
  for (int64_t ki = 0; ki < nk; ++ki) {
    const int64_t li = kvl.local_index(rank, k_rows_[static_cast<std::size_t>(ki)]);
    if (li < 0) continue;
    for (int64_t b = 0; b < cfg_.batch; ++b)
      for (int64_t e = 0; e < row; ++e) {
        const auto at = static_cast<std::size_t>((b * nk + ki) * row + e);
        ek_.add(double(dk[(b * n + li) * row + e]), ref_dk_[at]);
        ev_.add(double(dv[(b * n + li) * row + e]), ref_dv_[at]);
      }
  }
}

GradCheck GradSampled::result() const {
  GradCheck c;
  c.dq = eq_.rel(), c.dk = ek_.rel(), c.dv = ev_.rel();
  c.q_rows = static_cast<int64_t>(q_rows_.size()), c.k_rows = static_cast<int64_t>(k_rows_.size());
  c.tol = grad_tolerance(cfg_);
  c.ok = c.dq <= c.tol && c.dk <= c.tol && c.dv <= c.tol;
  return c;
}

GradCollector::GradCollector(const JobSpec& spec, const KernelOptions& kopt, int rank)
    : spec_(spec) {
  if (rank != 0) return;
  outputs.emplace(spec);
  if (spec.verify) verify.emplace(spec, kopt);
  if (spec.check_rows > 0) sampled.emplace(spec, spec.check_rows);
}

void GradCollector::gather(Communicator& comm, const Layout& ql, const Layout& kvl, const float* o,
                           const float* lse, const float* d_o, const float* dq, const float* dkv) {
  const JobSpec& spec = spec_;
  const int64_t nq = ql.tokens(comm.rank());
  if (spec.check_rows > 0) {
    // The sampled dK/dV reference takes each query's LSE and Delta = dO . O from the run.
    const int64_t rows = spec.batch * spec.hq * nq;
    std::vector<float> ld(static_cast<std::size_t>(2 * rows));
    std::copy(lse, lse + rows, ld.begin());
    for (int64_t b = 0; b < spec.batch; ++b)
      for (int64_t i = 0; i < nq; ++i)
        for (int64_t h = 0; h < spec.hq; ++h) {
          const int64_t at = ((b * nq + i) * spec.hq + h) * spec.head_dim;
          double sum = 0;
          for (int64_t e = 0; e < spec.head_dim; ++e)
            sum += double(d_o[at + e]) * double(o[at + e]);
          ld[static_cast<std::size_t>(rows + (b * spec.hq + h) * nq + i)] = static_cast<float>(sum);
        }
    gather_bytes(
        comm,
        [&](int r) {
          return static_cast<std::size_t>(2 * spec.batch * spec.hq * ql.tokens(r)) * sizeof(float);
        },
        ld.data(),
        [&](int src, const void* data) {
          const auto* g = static_cast<const float*>(data);
          if (sampled) sampled->take_rows(ql, src, g, g + spec.batch * spec.hq * ql.tokens(src));
        });
  }
  const auto q_bytes = [&](int r) {
    return static_cast<std::size_t>(spec.batch * ql.tokens(r) * spec.hq * spec.head_dim) *
           sizeof(float);
  };
  gather_bytes(comm, q_bytes, dq, [&](int src, const void* rows) {
    const auto* g = static_cast<const float*>(rows);
    if (outputs) outputs->write_q_rows(ql, src, g);
    if (verify) verify->compare_q(ql, src, g);
    if (sampled) sampled->compare_q(ql, src, g);
  });
  const auto kv_elems = [&](int r) {
    return spec.batch * kvl.tokens(r) * spec.hkv * spec.head_dim;
  };
  gather_bytes(
      comm, [&](int r) { return static_cast<std::size_t>(2 * kv_elems(r)) * sizeof(float); }, dkv,
      [&](int src, const void* rows) {
        const auto* g = static_cast<const float*>(rows);
        if (outputs) outputs->write_kv_rows(kvl, src, g, g + kv_elems(src));
        if (verify) verify->compare_kv(kvl, src, g, g + kv_elems(src));
        if (sampled) sampled->compare_kv(kvl, src, g, g + kv_elems(src));
      });
}

}  // namespace ringattn::job
