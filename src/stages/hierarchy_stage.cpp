// The levels of the hierarchical stage, and its entry point (routing: routing.cpp).
#include "ringattn/hierarchy_stage.hpp"

#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "ringattn/error.hpp"
#include "ringattn/state.hpp"
#include "stages/block_means.hpp"
#include "stages/stage_common.hpp"

namespace ringattn {
namespace stage {

double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

void merge_partial(const RingProblem& p, float* o, float* lse, int64_t nq_local, int64_t batch,
                   int64_t row0, const float* po, const float* pl, int64_t rows, int threads) {
  const int64_t hq = p.hq, d = p.head_dim;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t h = 0; h < hq; ++h)
      merge_row(o + ((batch * nq_local + row0 + i) * hq + h) * d,
                lse + (batch * hq + h) * nq_local + row0 + i, po + (i * hq + h) * d,
                pl[h * rows + i], d);
}

namespace {

// Queries x the summaries of one level and side: runs of equally weighted
// blocks (count == s) as one kernel call each, other blocks one by one; the
// log(count) weight is added to the partial LSE before the merge.
void attend_summaries(const RingProblem& p, int rank, const BlockMeans& t, const Mask& mask,
                      int64_t pos_offset, float* o, float* lse, const KernelOptions& kopt,
                      Buffer& work, StageMetrics* m) {
  const int64_t nb = t.blocks, s = t.size, row = p.hkv * p.head_dim, d = p.head_dim;
  const std::size_t esz = dtype_size(p.dtype);
  const int threads = kopt.threads > 0 ? kopt.threads : omp_get_max_threads();
  float* po = work.as<float>();
  for (int64_t b0 = 0; b0 < nb;) {
    const int64_t c = t.count[static_cast<std::size_t>(b0)];
    int64_t b1 = b0 + 1;
    if (c == s)
      while (b1 < nb && t.count[static_cast<std::size_t>(b1)] == s) ++b1;
    if (c == 0) {
      b0 = b1;
      continue;
    }
    const Positions kpos{pos_offset + b0 * s, s};
    const float shift = static_cast<float>(std::log(double(c)));
    for (const QueryChunk& qc : query_chunks(p, rank)) {
      if (mask.classify(qc.pos.start, qc.pos.at(qc.count - 1), kpos.at(0), kpos.at(b1 - b0 - 1)) ==
          TileClass::empty)
        continue;
      float* pl = po + qc.count * p.hq * d;
      for (int64_t bb = 0; bb < p.batch; ++bb) {
        AttentionArgs a = AttentionArgs::block(p, qc.count, b1 - b0, mask);
        a.qpos = qc.pos, a.kpos = kpos;
        a.q = static_cast<const char*>(p.q) +
              static_cast<std::size_t>((bb * qc.nq_local + qc.local) * p.hq * d) * esz;
        const std::size_t off = static_cast<std::size_t>((bb * nb + b0) * row) * esz;
        a.k = t.k.as<char>() + off;
        a.v = t.v.as<char>() + off;
        const Clock::time_point t0 = Clock::now();
        m->tiles += attention_forward(a, po, pl, kopt);
        for (int64_t e = 0; e < qc.count * p.hq; ++e) pl[e] += shift;
        merge_partial(p, o, lse, qc.nq_local, bb, qc.local, po, pl, qc.count, threads);
        m->compute_s += since(t0);
        if (bb == 0) m->pair_evals += double(a.block_pairs()) * double(p.batch * p.hq);
      }
    }
    b0 = b1;
  }
}

StageMetrics levels_stage(Communicator& comm, const RingProblem& p, float* o, float* lse,
                          const KernelOptions& kopt) {
  StageMetrics m;
  const LevelMasks lm = level_masks(p.hier, p.mask, p.nq, p.nk);
  const Clock::time_point t0 = Clock::now();
  const BlockMeans l2 = gather_block_means(comm, p, p.hier.regional_block, true, true);
  BlockMeans l3;
  if (p.hier.global_block > 0) l3 = gather_block_means(comm, p, p.hier.global_block, true, true);
  m.comm_s += since(t0);
  m.bytes_sent += l2.bytes_sent + l3.bytes_sent;
  for (const BlockMeans* t : {&l2, static_cast<const BlockMeans*>(&l3)})
    for (int64_t c : t->count) m.summaries += c > 0;

  Buffer work(chunk_work_bytes(p), "summary partial state");
  const int64_t s1 = p.hier.regional_block;
  attend_summaries(p, comm.rank(), l2, lm.l2_left, 0, o, lse, kopt, work, &m);
  if (l3.blocks > 0) attend_summaries(p, comm.rank(), l3, lm.l3_left, 0, o, lse, kopt, work, &m);
  if (lm.right) {
    attend_summaries(p, comm.rank(), l2, lm.l2_right, s1 - 1, o, lse, kopt, work, &m);
    if (l3.blocks > 0) attend_summaries(p, comm.rank(), l3, lm.l3_right, 0, o, lse, kopt, work, &m);
  }
  return m;
}

}  // namespace

std::vector<QueryChunk> query_chunks(const RingProblem& p, int rank) {
  std::vector<QueryChunk> out;
  const int64_t nq_local = p.q_layout->tokens(rank);
  for (const Segment& seg : p.q_layout->segments(rank))
    for (int64_t i = 0; i < seg.count; i += kChunkRows) {
      QueryChunk c;
      c.local = seg.local_offset + i;
      c.count = std::min(kChunkRows, seg.count - i);
      c.pos = {seg.start + i * seg.stride, seg.stride};
      c.nq_local = nq_local;
      out.push_back(c);
    }
  return out;
}

std::size_t chunk_work_bytes(const RingProblem& p) {
  return static_cast<std::size_t>(kChunkRows * p.hq * (p.head_dim + 1)) * sizeof(float);
}

}  // namespace stage

Mask hierarchy_ring_mask(const AttentionProblem& p) {
  if (p.hier.levels()) return level_masks(p.hier, p.mask, p.nq, p.nk).exact;
  if (p.hier.routing()) return routing_base_mask(p.mask);
  return p.mask;
}

KernelStats hierarchical_attention(const AttentionArgs& a, float* o, float* lse,
                                   const KernelOptions& kopt, int32_t* route, StageMetrics* stage) {
  AttentionArgs exact = a;
  exact.mask = hierarchy_ring_mask(a), exact.hier = {};
  KernelStats st = attention_forward(exact, o, lse, kopt);
  if (!a.hier.on()) return st;
  run_local(1, [&](Communicator& comm) {
    const Layout ql(LayoutKind::contiguous, a.nq, 1), kvl(LayoutKind::contiguous, a.nk, 1);
    RingProblem p(static_cast<const AttentionProblem&>(a));
    p.q_layout = &ql, p.kv_layout = &kvl, p.q = a.q, p.k = a.k, p.v = a.v;
    const StageMetrics m = hierarchy_stage(comm, p, o, lse, kopt, route);
    st += m.tiles;
    if (stage != nullptr) *stage = m;
  });
  return st;
}

double hierarchical_flops(const AttentionArgs& a, const StageMetrics& stage) {
  AttentionArgs exact = a;
  exact.mask = hierarchy_ring_mask(a), exact.hier = {};
  return attention_flops(exact) + 4.0 * double(a.head_dim) * stage.pair_evals;
}

StageMetrics hierarchy_stage(Communicator& comm, const RingProblem& p, float* o, float* lse,
                             const KernelOptions& kopt, int32_t* route) {
  if (!p.hier.on()) return {};
  const stage::Clock::time_point t0 = stage::Clock::now();
  StageMetrics m = p.hier.levels() ? stage::levels_stage(comm, p, o, lse, kopt)
                                   : stage::routing_stage(comm, p, o, lse, kopt, route);
  m.total_s = stage::since(t0);
  return m;
}

}  // namespace ringattn
