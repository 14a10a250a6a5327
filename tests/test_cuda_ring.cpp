// Virtual ranks on one GPU: P in-process ranks, each with a CUDA engine, pass
// K/V blocks as device buffers (cuda_local_memory) around a ring and merge
// into a device-resident state; the result must match the single-rank GPU
// kernel and the float64 reference. GPU only (skipped without one).
//
// The loop here is the minimal ring on the RingEngine seam (contiguous layout,
// every step computed): it checks the engine's ordering contract and the
// device-aware in-process transport.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <mutex>

#include "gpu_util.hpp"
#include "ring_cases.hpp"
#include "ringattn/rank_device.hpp"
#include "ringattn/reference.hpp"
#include "ringattn/ring.hpp"

namespace ringattn {
namespace {

constexpr double kVsNaive = 2.0;
constexpr double kFloorO = 1e-6;
constexpr double kTolLse = 2e-3;

class CudaRing : public test::GpuTest {};

// Rank r's tokens [r n / P, (r + 1) n / P).
int64_t begin_of(int r, int p, int64_t n) {
  return n * r / p;
}

void ring_on_virtual_ranks(const test::Problem& prob, int ranks, std::vector<float>& o,
                           std::vector<float>& lse) {
  const AttentionArgs& g = prob.args;  // batch 1
  const int64_t n = g.nq, hq = g.hq, hkv = g.hkv, d = g.head_dim;
  const std::size_t esz = dtype_size(g.dtype);
  o.assign(static_cast<std::size_t>(n * hq * d), 0.0f);
  lse.assign(static_cast<std::size_t>(hq * n), 0.0f);
  std::mutex mu;
  run_local(
      ranks,
      [&](Communicator& comm) {
        const int r = comm.rank(), p = comm.size();
        auto eng = make_cuda_engine(0);
        const int64_t q0 = begin_of(r, p, n), nq = begin_of(r + 1, p, n) - q0;
        const int64_t max_rows = n / p + 1;
        const std::size_t kv_row = static_cast<std::size_t>(hkv * d) * esz;
        // Q, and two K/V blocks (held, incoming), each K then V.
        auto q = eng->alloc(static_cast<std::size_t>(nq * hq * d) * esz, "q");
        eng->from_host(q->data(), static_cast<const char*>(g.q) + q0 * hq * d * esz,
                       static_cast<std::size_t>(nq * hq * d) * esz);
        std::unique_ptr<EngineBuffer> kv[2];
        for (auto& b : kv) b = eng->alloc(2 * static_cast<std::size_t>(max_rows) * kv_row, "kv");
        auto k_of = [&](EngineBuffer& b) { return b.as<char>(); };
        auto v_of = [&](EngineBuffer& b) { return b.as<char>() + max_rows * kv_row; };
        eng->from_host(k_of(*kv[0]), static_cast<const char*>(g.k) + q0 * kv_row,
                       static_cast<std::size_t>(nq) * kv_row);
        eng->from_host(v_of(*kv[0]), static_cast<const char*>(g.v) + q0 * kv_row,
                       static_cast<std::size_t>(nq) * kv_row);
        auto so = eng->alloc(static_cast<std::size_t>(nq * hq * d) * 4, "o");
        auto sl = eng->alloc(static_cast<std::size_t>(hq * nq) * 4, "lse");
        const StateView acc{so->as<float>(), sl->as<float>(), 1, nq, hq, d};
        eng->clear(acc);
        auto work = eng->alloc(RingEngine::partial_bytes(nq, hq, d), "work");
        eng->sync();
        for (int s = 0; s < p; ++s) {
          const int owner = (r - s + p) % p;  // whose block is held at step s
          const int64_t k0 = begin_of(owner, p, n), nk = begin_of(owner + 1, p, n) - k0;
          EngineBuffer& held = *kv[s % 2];
          EngineBuffer& next = *kv[(s + 1) % 2];
          Request rk, rv, sk, sv;
          if (s + 1 < p) {  // pass the held block on while computing on it
            const int prev_owner = (owner - 1 + p) % p;
            const int64_t nn = begin_of(prev_owner + 1, p, n) - begin_of(prev_owner, p, n);
            rk = comm.irecv(k_of(next), static_cast<std::size_t>(nn) * kv_row, (r - 1 + p) % p,
                            2 * s);
            rv = comm.irecv(v_of(next), static_cast<std::size_t>(nn) * kv_row, (r - 1 + p) % p,
                            2 * s + 1);
            sk = comm.isend(k_of(held), static_cast<std::size_t>(nk) * kv_row, (r + 1) % p, 2 * s);
            sv = comm.isend(v_of(held), static_cast<std::size_t>(nk) * kv_row, (r + 1) % p,
                            2 * s + 1);
          }
          AttentionArgs a = g;
          a.q = q->data(), a.k = k_of(held), a.v = v_of(held);
          a.nq = nq, a.nk = nk, a.qpos = {q0, 1}, a.kpos = {k0, 1};
          if (nq > 0 && nk > 0) eng->attend_merge(a, acc, 0, 0, *work);
          rk.wait(), rv.wait(), sk.wait(), sv.wait();
          eng->sync();  // the held buffer is overwritten by the receive after next
        }
        std::vector<float> ho(static_cast<std::size_t>(nq * hq * d)),
            hl(static_cast<std::size_t>(hq * nq));
        eng->to_host(ho.data(), so->data(), ho.size() * 4);
        eng->to_host(hl.data(), sl->data(), hl.size() * 4);
        std::lock_guard<std::mutex> lk(mu);
        std::copy(ho.begin(), ho.end(), o.begin() + q0 * hq * d);
        for (int64_t h = 0; h < hq; ++h)
          for (int64_t i = 0; i < nq; ++i)
            lse[static_cast<std::size_t>(h * n + q0 + i)] =
                hl[static_cast<std::size_t>(h * nq + i)];
      },
      cuda_local_memory(0));
}

TEST_F(CudaRing, VirtualRanksMatchSingleRankAndReference) {
  const int64_t n = test::kSanitized ? 300 : 2000;
  for (bool causal : {false, true})
    for (int ranks : {1, 2, 3, 4}) {
      test::Problem p = test::make_problem(1, n, n, 4, 2, 128, DType::bf16, 21);
      if (causal) p.args.mask = Mask::causal(0);
      std::vector<float> o, lse;
      ring_on_virtual_ranks(p, ranks, o, lse);

      // Single rank on the GPU (float32 partial state) and the float64 reference.
      test::DeviceProblem dp = test::to_device(*engine, p);
      auto go = engine->alloc(o.size() * 4, "o"), gl = engine->alloc(lse.size() * 4, "lse");
      cuda_attention_partial(dp.dev, go->as<float>(), gl->as<float>(), stream());
      const auto so = download<float>(*go, o.size()), sl = download<float>(*gl, lse.size());
      const std::vector<int64_t> rows = test::check_rows(n, 48);
      const ReferenceResult ref = reference_attention_rows(p.args, rows);
      const ErrorStats e = compare_to_reference(p.args, o.data(), lse.data(), ref, rows);
      const ErrorStats es = compare_to_reference(p.args, so.data(), sl.data(), ref, rows);
      const std::vector<float> naive = test::naive_lowp_attention(p.args, rows);
      const ErrorStats en = compare_to_reference(p.args, naive.data(), lse.data(), ref, rows);
      const std::string what = fmt::format("{} ranks, causal {}", ranks, causal);
      EXPECT_LE(e.o_rel_fro, kVsNaive * en.o_rel_fro + kFloorO) << what;
      EXPECT_LE(es.o_rel_fro, kVsNaive * en.o_rel_fro + kFloorO) << what;
      EXPECT_LE(e.lse_max_abs, kTolLse) << what;
      EXPECT_EQ(e.lse_mismatch, 0) << what;
    }
}

// ring_attention itself (every layout, the shared-rows path of sinks and
// global tokens) on P CUDA engines over device buffers, against the
// single-rank GPU kernel and the float64 reference.
struct RingRun {
  std::vector<float> o, lse;  // global order
  double seconds = 0;         // slowest rank's ring time
};

RingRun ring_attention_on_gpu(const test::Problem& g, int ranks, LayoutKind kind) {
  const AttentionArgs& ga = g.args;
  const int64_t n = ga.nq, hq = ga.hq, d = ga.head_dim;
  RingRun out;
  out.o.assign(static_cast<std::size_t>(n * hq * d), 0.0f);
  out.lse.assign(static_cast<std::size_t>(hq * n), 0.0f);
  std::mutex mu;
  run_local(
      ranks,
      [&](Communicator& comm) {
        const int r = comm.rank();
        // The job's device set-up: the CUDA engine on GPU 0, inputs uploaded once.
        RankDevice dev(comm, Device::cuda, {});
        const Layout ql(kind, n, ranks), kl(kind, n, ranks);
        const RingSchedule sch = make_ring_schedule(ql, kl, ga.mask);
        const Tensor q = test::slice_tokens(g.q, ql, r), k = test::slice_tokens(g.k, kl, r),
                     v = test::slice_tokens(g.v, kl, r);
        const int64_t nl = ql.tokens(r);
        RingProblem rp(ga);  // the global problem, this rank's host tensors
        rp.q_layout = &ql, rp.kv_layout = &kl;
        rp.q = q.data.data(), rp.k = k.data.data(), rp.v = v.data.data();
        std::vector<float> ho(static_cast<std::size_t>(nl * hq * d)),
            hl(static_cast<std::size_t>(hq * nl));
        comm.barrier();
        const RingMetrics m = dev.pass(sch, rp, ho.data(), hl.data());
        dev.finish(ho.data(), hl.data());
        std::lock_guard<std::mutex> lk(mu);
        out.seconds = std::max(out.seconds, m.total_s);
        for (const Segment& s : ql.segments(r))
          for (int64_t i = 0; i < s.count; ++i) {
            const int64_t pos = s.start + i * s.stride, li = s.local_offset + i;
            std::copy(ho.begin() + li * hq * d, ho.begin() + (li + 1) * hq * d,
                      out.o.begin() + pos * hq * d);
            for (int64_t h = 0; h < hq; ++h)
              out.lse[static_cast<std::size_t>(h * n + pos)] =
                  hl[static_cast<std::size_t>(h * nl + li)];
          }
      },
      cuda_local_memory(0));
  return out;
}

TEST_F(CudaRing, RingAttentionOnVirtualRanks) {
  const int64_t n = test::kSanitized ? 300 : 1500;
  std::vector<test::NamedMask> masks = {{"full", Mask::none()}, {"causal", Mask::causal(0)}};
  for (const test::NamedMask& m : test::sparse_patterns(n))
    if (m.mask.sinks > 0 || m.mask.n_global > 0) masks.push_back(m);  // the shared-rows path
  int i = 0;
  for (const test::NamedMask& m : masks)
    for (LayoutKind kind : {LayoutKind::contiguous, LayoutKind::zigzag, LayoutKind::striped})
      for (int ranks : {1, 3, 4}) {
        const int64_t d = i % 2 ? 64 : 128;
        test::Problem p = test::make_problem(1, n, n, 4, 2, d, DType::bf16, 40 + i++);
        p.args.mask = m.mask;
        const RingRun rr = ring_attention_on_gpu(p, ranks, kind);
        const std::vector<int64_t> rows = test::check_rows(n, 32);
        const ReferenceResult ref = reference_attention_rows(p.args, rows);
        const ErrorStats e = compare_to_reference(p.args, rr.o.data(), rr.lse.data(), ref, rows);
        const std::vector<float> naive = test::naive_lowp_attention(p.args, rows);
        const ErrorStats en = compare_to_reference(p.args, naive.data(), rr.lse.data(), ref, rows);
        const std::string what =
            fmt::format("{} ranks, {}, {}, D {}", ranks, layout_name(kind), m.name, d);
        EXPECT_LE(e.o_rel_fro, kVsNaive * en.o_rel_fro + kFloorO) << what;
        EXPECT_LE(e.lse_max_abs, kTolLse) << what;
        EXPECT_EQ(e.lse_mismatch, 0) << what;
      }
}

}  // namespace
}  // namespace ringattn
