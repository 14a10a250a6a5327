#include "cli/run_verify.hpp"

#include <algorithm>
#include <cmath>

#include "cli/run_inputs.hpp"

namespace ringattn::cli {

SingleRankCheck::SingleRankCheck(const RunConfig& cfg, const KernelOptions& kopt) : cfg_(cfg) {
  const RankInputs in = load_full_inputs(cfg);
  AttentionArgs a;
  a.batch = cfg.batch, a.nq = cfg.nq, a.nk = cfg.nk, a.hq = cfg.hq, a.hkv = cfg.hkv;
  a.head_dim = cfg.head_dim, a.dtype = cfg.dtype, a.scale = cfg.scale, a.mask = cfg.mask();
  a.q = in.q.data.data(), a.k = in.k.data.data(), a.v = in.v.data.data();
  o_ = Buffer(static_cast<std::size_t>(a.batch * a.nq * a.hq * a.head_dim) * sizeof(float),
              "single-rank O");
  lse_ = Buffer(static_cast<std::size_t>(a.batch * a.hq * a.nq) * sizeof(float), "single-rank LSE");
  const Stopwatch watch;
  attention_forward(a, o_.as<float>(), lse_.as<float>(), kopt);
  seconds_ = watch.seconds();
}

void SingleRankCheck::compare(const Layout& ql, int rank, const float* o, const float* lse) {
  const int64_t n = ql.tokens(rank), hq = cfg_.hq, d = cfg_.head_dim, nq = cfg_.nq;
  const float* ro = o_.as<float>();
  const float* rl = lse_.as<float>();
  for (int64_t b = 0; b < cfg_.batch; ++b)
    for (const Segment& s : ql.segments(rank))
      for (int64_t i = 0; i < s.count; ++i) {
        const int64_t t = s.start + i * s.stride, li = s.local_offset + i;
        const float* x = o + (b * n + li) * hq * d;
        const float* y = ro + (b * nq + t) * hq * d;
        for (int64_t e = 0; e < hq * d; ++e) {
          const double diff = double(x[e]) - double(y[e]);
          diff2_ += diff * diff;
          ref2_ += double(y[e]) * double(y[e]);
          err_.o_max_abs = std::max(err_.o_max_abs, std::abs(diff));
          if (std::isnan(diff)) err_.o_max_abs = diff;  // NaN must fail the check
        }
        for (int64_t h = 0; h < hq; ++h) {
          const float lx = lse[(b * hq + h) * n + li], ly = rl[(b * hq + h) * nq + t];
          if (std::isfinite(lx) && std::isfinite(ly)) {
            err_.lse_max_abs = std::max(err_.lse_max_abs, std::abs(double(lx) - double(ly)));
          } else if (!(lx == ly)) {  // one side empty (-inf) only, or a NaN
            ++err_.lse_mismatch;
          }
        }
      }
}

ErrorStats SingleRankCheck::errors() const {
  ErrorStats e = err_;
  e.o_rel_fro = ref2_ > 0 ? std::sqrt(diff2_ / ref2_) : std::sqrt(diff2_);
  return e;
}

}  // namespace ringattn::cli
