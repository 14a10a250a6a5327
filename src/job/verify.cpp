#include "job/verify.hpp"

#include <chrono>

#include "job/inputs.hpp"
#include "ringattn/hierarchy_stage.hpp"
#include "ringattn/ring.hpp"

namespace ringattn::job {

SingleRankCheck::SingleRankCheck(const JobSpec& cfg, const KernelOptions& kopt) : cfg_(cfg) {
  const RankInputs in = load_full_inputs(cfg);
  const AttentionArgs a(cfg, in.q.data.data(), in.k.data.data(), in.v.data.data());
  o_ = Buffer(static_cast<std::size_t>(a.batch * a.nq * a.hq * a.head_dim) * sizeof(float),
              "single-rank O");
  lse_ = Buffer(static_cast<std::size_t>(a.batch * a.hq * a.nq) * sizeof(float), "single-rank LSE");
  const auto t0 = std::chrono::steady_clock::now();
  if (!cfg.hier.on()) {
    attention_forward(a, o_.as<float>(), lse_.as<float>(), kopt);
  } else {  // one rank: the exact part, then the stage, as every rank of the job does
    run_local(1, [&](Communicator& comm) {
      const Layout ql(LayoutKind::contiguous, cfg.nq, 1), kvl(LayoutKind::contiguous, cfg.nk, 1);
      RingProblem p(cfg);
      p.q_layout = &ql, p.kv_layout = &kvl, p.q = a.q, p.k = a.k, p.v = a.v;
      RingProblem ring_p = p;
      ring_p.mask = hierarchy_ring_mask(cfg), ring_p.hier = {};
      ring_attention(comm, make_ring_schedule(ql, kvl, ring_p.mask), ring_p, o_.as<float>(),
                     lse_.as<float>(), kopt);
      hierarchy_stage(comm, p, o_.as<float>(), lse_.as<float>(), kopt);
    });
  }
  seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
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
