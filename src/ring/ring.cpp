#include "ringattn/ring.hpp"

#include <fmt/format.h>
#include <omp.h>

#include <chrono>

#include "ringattn/error.hpp"
#include "ringattn/memory.hpp"
#include "ringattn/state.hpp"

namespace ringattn {
namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Bytes of the K/V block held by `rank`: K [B, n, Hkv, D] then V likewise.
std::size_t block_bytes(const RingProblem& p, int rank) {
  return 2 * static_cast<std::size_t>(p.batch * p.kv_layout->tokens(rank) * p.hkv * p.head_dim) *
         dtype_size(p.dtype);
}

void check_problem(const Communicator& comm, const RingSchedule& sch, const RingProblem& p) {
  if (p.q_layout == nullptr || p.kv_layout == nullptr) throw Error("ring: layouts not set");
  if (p.q_layout->ranks() != comm.size() || p.kv_layout->ranks() != comm.size() ||
      sch.ranks != comm.size())
    throw Error(
        fmt::format("ring: layouts/schedule are for {}/{}/{} ranks, the communicator has {}",
                    p.q_layout->ranks(), p.kv_layout->ranks(), sch.ranks, comm.size()));
  if (p.hq < 1 || p.hkv < 1 || p.hq % p.hkv != 0)
    throw Error(fmt::format("ring: query heads ({}) must be a multiple of key/value heads ({})",
                            p.hq, p.hkv));
}

}  // namespace

RingMetrics ring_attention(Communicator& comm, const RingSchedule& sch, const RingProblem& p,
                           float* o, float* lse, const KernelOptions& kopt) {
  check_problem(comm, sch, p);
  const Clock::time_point t_start = Clock::now();
  const int r = comm.rank(), np = comm.size();
  const int next = (r + 1) % np, prev = (r - 1 + np) % np;
  const int64_t nq = p.q_layout->tokens(r), d = p.head_dim;
  const std::size_t esz = dtype_size(p.dtype);
  const int threads = kopt.threads > 0 ? kopt.threads : omp_get_max_threads();

  RingMetrics m;
  m.steps = sch.steps;
  std::size_t max_block = 0;
  for (int s = 0; s < np; ++s) max_block = std::max(max_block, block_bytes(p, s));
  m.block_bytes = max_block;

  // Running state, starting empty.
  const StateView acc{o, lse, p.batch, nq, p.hq, d};
  clear_state(acc);

  // Receive buffers: step s >= 1 computes on buffer (s - 1) % 2, step 0 on the
  // caller's own K and V (no copy). Two steps need one buffer, more need two.
  const int nbuf = std::min(2, sch.steps - 1);
  Buffer blocks[2] = {Buffer(nbuf >= 1 ? max_block : 0, "K/V block"),
                      Buffer(nbuf >= 2 ? max_block : 0, "K/V block")};
  // One segment's partial state (batch 1).
  int64_t max_seg = 0;
  for (const Segment& s : p.q_layout->segments(r)) max_seg = std::max(max_seg, s.count);
  Buffer part_o(static_cast<std::size_t>(max_seg * p.hq * d) * sizeof(float), "partial O");
  Buffer part_lse(static_cast<std::size_t>(max_seg * p.hq) * sizeof(float), "partial LSE");

  for (int s = 0; s < sch.steps; ++s) {
    const Clock::time_point t_step = Clock::now();
    const RingStep& st = sch.step(r, s);
    const std::size_t half = block_bytes(p, st.source) / 2;  // K, then V
    const char* held_k = s == 0 ? static_cast<const char*>(p.k)
                                : static_cast<const char*>(blocks[(s - 1) % 2].data());
    const char* held_v = s == 0 ? static_cast<const char*>(p.v) : held_k + half;
    Request send_k, send_v, recv_k, recv_v;
    if (s + 1 < sch.steps) {  // K and V as two messages, tags 2(s+1) and 2(s+1)+1
      const std::size_t in_half = block_bytes(p, sch.step(r, s + 1).source) / 2;
      char* into = static_cast<char*>(blocks[s % 2].data());
      recv_k = comm.irecv(into, in_half, prev, 2 * (s + 1));
      recv_v = comm.irecv(into + in_half, in_half, prev, 2 * (s + 1) + 1);
      send_k = comm.isend(held_k, half, next, 2 * (s + 1));
      send_v = comm.isend(held_v, half, next, 2 * (s + 1) + 1);
      m.bytes_sent += static_cast<int64_t>(2 * half);
    }

    const int64_t nk_src = p.kv_layout->tokens(st.source);
    for (const SegmentWork& w : st.work) {
      const Segment& qs = p.q_layout->segments(r)[static_cast<std::size_t>(w.q_seg)];
      const Segment& ks = p.kv_layout->segments(st.source)[static_cast<std::size_t>(w.k_seg)];
      for (int64_t b = 0; b < p.batch; ++b) {
        AttentionArgs a;
        a.batch = 1, a.nq = qs.count, a.nk = ks.count, a.hq = p.hq, a.hkv = p.hkv, a.head_dim = d;
        a.dtype = p.dtype, a.scale = p.scale, a.mask = p.mask;
        a.qpos = qs.positions(), a.kpos = ks.positions();
        a.q = static_cast<const char*>(p.q) +
              static_cast<std::size_t>((b * nq + qs.local_offset) * p.hq * d) * esz;
        const std::size_t k_off =
            static_cast<std::size_t>((b * nk_src + ks.local_offset) * p.hkv * d) * esz;
        a.k = held_k + k_off;
        a.v = held_v + k_off;
        const Clock::time_point t0 = Clock::now();
        const KernelStats ks_stats =
            attention_forward(a, part_o.as<float>(), part_lse.as<float>(), kopt);
        m.compute_s += since(t0);
        m.tiles.tiles_total += ks_stats.tiles_total;
        m.tiles.tiles_computed += ks_stats.tiles_computed;
        m.tiles.tiles_partial += ks_stats.tiles_partial;

        const Clock::time_point t1 = Clock::now();
        const float* po = part_o.as<float>();
        const float* pl = part_lse.as<float>();
        const int64_t cnt = qs.count, hq = p.hq;
#pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t i = 0; i < cnt; ++i)
          for (int64_t h = 0; h < hq; ++h)
            merge_row(o + ((b * nq + qs.local_offset + i) * hq + h) * d,
                      lse + (b * hq + h) * nq + qs.local_offset + i, po + (i * hq + h) * d,
                      pl[h * cnt + i], d);
        m.merge_s += since(t1);
      }
    }
    m.pairs += st.pairs;
    m.computed_steps += !st.work.empty();

    const Clock::time_point t_wait = Clock::now();
    recv_k.wait();
    recv_v.wait();
    send_k.wait();
    send_v.wait();
    m.wait_s += since(t_wait);
    m.step_s.push_back(since(t_step));
  }
  m.total_s = since(t_start);
  return m;
}

}  // namespace ringattn
