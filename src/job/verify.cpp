#include "job/verify.hpp"

#include <algorithm>
#include <chrono>

#include "job/inputs.hpp"
#include "ringattn/hierarchy_stage.hpp"
#include "ringattn/kv_select_stage.hpp"

namespace ringattn::job {

SingleRankCheck::SingleRankCheck(const JobSpec& cfg, const KernelOptions& kopt, const Layout& kvl)
    : cfg_(cfg) {
  const RankInputs in = load_full_inputs(cfg);
  AttentionArgs a(cfg, in.q.data.data(), in.k.data.data(), in.v.data.data());
  // K/V stored quantized (--kv-store): the whole problem over the same codes.
  Buffer codes;
  std::vector<int32_t> groups;  // KIVI keys: grouped as the run's ranks hold them
  if (cfg.kv_store) {
    const QuantFormat& f = cfg.kv_wire;
    const int64_t rows = cfg.batch * cfg.nk * cfg.hkv, d = cfg.head_dim;
    int64_t m = 0;
    if (f.kivi) groups = kivi_groups_by_rank(kvl, f.group, &m);
    const auto kb = static_cast<std::size_t>(f.k_bytes(cfg.batch, cfg.nk, m, cfg.hkv, d));
    const auto vb = static_cast<std::size_t>(f.v_bytes(cfg.batch, cfg.nk, cfg.hkv, d));
    codes = Buffer(std::max<std::size_t>(kb + vb, 1), "single-rank K/V codes");
    a.kq =
        QuantRows::keys_in_buffer(f, cfg.batch, cfg.nk, cfg.hkv, d, groups.data(), m, codes.data());
    a.vq = QuantRows::in_buffer(f, rows, d, codes.as<char>() + kb);
    quantize_values(a.k, cfg.dtype, rows, a.kq);
    quantize_values(a.v, cfg.dtype, rows, a.vq);
  }
  o_ = Buffer(static_cast<std::size_t>(a.batch * a.nq * a.hq * a.head_dim) * sizeof(float),
              "single-rank O");
  lse_ = Buffer(static_cast<std::size_t>(a.batch * a.hq * a.nq) * sizeof(float), "single-rank LSE");
  const auto t0 = std::chrono::steady_clock::now();
  if (cfg.select.on())
    kv_select_attention(a, cfg.select, o_.as<float>(), lse_.as<float>(), kopt, &keep_);
  else
    hierarchical_attention(a, o_.as<float>(), lse_.as<float>(), kopt);
  seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

int64_t SingleRankCheck::keep_differences(const std::vector<uint8_t>& keep) const {
  if (keep.size() != keep_.size()) return static_cast<int64_t>(std::max(keep.size(), keep_.size()));
  int64_t n = 0;
  for (std::size_t i = 0; i < keep.size(); ++i) n += keep[i] != keep_[i];
  return n;
}

void SingleRankCheck::compare(const Layout& ql, int rank, const float* o, const float* lse) {
  const int64_t n = ql.tokens(rank), hq = cfg_.hq, d = cfg_.head_dim, nq = cfg_.nq;
  const float* ro = o_.as<float>();
  const float* rl = lse_.as<float>();
  for (int64_t b = 0; b < cfg_.batch; ++b)
    for (const Segment& s : ql.segments(rank))
      for (int64_t i = 0; i < s.count; ++i) {
        const int64_t t = s.start + i * s.stride, li = s.local_offset + i;
        for (int64_t h = 0; h < hq; ++h)
          acc_.add_row(o + ((b * n + li) * hq + h) * d, ro + ((b * nq + t) * hq + h) * d, d,
                       lse[(b * hq + h) * n + li], rl[(b * hq + h) * nq + t]);
      }
}

}  // namespace ringattn::job
