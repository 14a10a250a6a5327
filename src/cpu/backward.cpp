// The CPU attention backward (FlashAttention-2; the formulas and shapes are in
// ringattn/backward.hpp): one pass over the forward's tiles, recomputing P from
// Q, K and the forward's LSE instead of storing it. For each (batch b, K/V head hk):
//
//   pack K, V of hk once: K panels, V panels (for S = Q K^T, dP = dO V^T), K rows (dQ)
//   pack Qs = Q scale log2(e) and dO of the group's query heads, lse2 = LSE log2(e),
//   Delta = rowsum(dO * O) (in double), dQacc = 0          [group][Nq][dp] float32
//   for each key tile t of kBlockK keys, in order:          (a barrier between phases)
//     tasks (query head h of the group, block of kBlockQ rows), shared dynamically:
//       class = mask.classify(block, tile)                  empty: skipped
//       S = Qs K_t^T;  P = 2^(S - lse2)                     partial: cpu::mask_row
//       dS = P (dO V_t^T - Delta)
//       part[task] = (P^T dO, dS^T Qs)                      [kBlockK][dp] each, written
//       dQacc[h, block] += dS K_t                           this task's rows only
//     dV_t = sum over tasks in task order of part.dV;  dK_t = ln(2) sum part.dK
//   dq = scale dQacc
//
// Why one pass with per-task parts rather than FlashAttention-2's two passes
// (dK/dV over key tiles, then dQ over query blocks, recomputing P and dS): five
// tile GEMMs and one exp per pair instead of seven and two, and still no atomics
// and no per-thread copies, so every sum runs in a fixed order (key tiles in
// order for dQ, tasks in order for dK/dV) and the result does not depend on
// the thread count. The cost is one barrier per key tile and the parts buffer,
// whose traffic (2 kBlockK dp floats per tile pair) is small beside the tile's
// 5 kBlockQ kBlockK dp multiply-adds.
//
// Memory beyond the inputs and outputs (backward_workspace_bytes), all O(N) for
// a fixed head dim and never Nq x Nk: the packed K/V of one head (3 Nk dp), the
// packed Q, dO and dQ of one group (3 group Nq dp) with lse2 and Delta, the
// parts (2 group ceil(Nq / kBlockQ) kBlockK dp) and a P/dS tile per thread.
//
// The tiles are the forward's (kBlockQ x kBlockK per query head, classified by
// Mask::classify), so the KernelStats equal attention_forward's on the same
// args. The arithmetic (backward_impl.hpp) reuses the forward's micro-kernels
// and vector exp2 of the ISA KernelOptions::isa picks, in float32 whatever the
// storage dtype (converted as it is packed).
#include "ringattn/backward.hpp"

#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/kernel_isa.hpp"
#include "ringattn/error.hpp"
#include "ringattn/memory.hpp"

namespace ringattn {
namespace {

using cpu::kBlockK;
using cpu::kBlockQ;

std::size_t at(int64_t i) {
  return static_cast<std::size_t>(i);
}

const cpu::BackwardKernels& backward_for(Isa isa) {
  switch (isa) {
    case Isa::avx512:
      return cpu::avx512_backward();
    case Isa::avx2:
      return cpu::avx2_backward();
    case Isa::generic:
      return cpu::generic_backward();
    case Isa::automatic:
      break;
  }
  return backward_for(best_isa());
}

// Sizes and buffer extents of one call (the same for every (batch, K/V head)).
struct Plan {
  const cpu::BackwardKernels& K;
  int d, dp;
  int64_t group, nqb, nq_pad, ntiles, nk_pad, npanels, tasks;
  int threads;
  int64_t kv_floats;      // 3 nk_pad dp: K panels, V panels, K rows
  int64_t q_floats;       // group nq_pad (3 dp + 2): Qs, dO, dQacc, lse2, Delta
  int64_t part_floats;    // 2 kBlockK dp per task
  int64_t thread_floats;  // tile workspace, V-rows scratch of one panel, 2 dp sums

  Plan(const AttentionArgs& a, const KernelOptions& opt)
      : K(backward_for(opt.isa)),
        d(static_cast<int>(a.head_dim)),
        dp(static_cast<int>(cpu::round_up(d, K.lanes))),
        group(a.group()),
        nqb((a.nq + kBlockQ - 1) / kBlockQ),
        nq_pad(nqb * kBlockQ),
        ntiles((a.nk + kBlockK - 1) / kBlockK),
        nk_pad(ntiles * kBlockK),
        npanels(nk_pad / K.panel),
        tasks(group * nqb),
        threads(static_cast<int>(std::max<int64_t>(
            1, std::min<int64_t>(opt.threads > 0 ? opt.threads : omp_get_max_threads(),
                                 std::max(tasks, npanels))))),
        kv_floats(3 * nk_pad * dp),
        q_floats(group * nq_pad * (3 * int64_t{dp} + 2)),
        part_floats(2 * int64_t{kBlockK} * dp),
        thread_floats(K.workspace_floats(dp) + int64_t{K.panel} * dp + 2 * int64_t{dp}) {}

  double bytes() const {
    return double(sizeof(float)) *
               double(kv_floats + q_floats + tasks * part_floats + threads * thread_floats) +
           double(tasks);  // visibility flags
  }
};

Buffer floats(int64_t n, const char* what) {
  return Buffer(static_cast<std::size_t>(std::max<int64_t>(n, 1)) * sizeof(float), what);
}

void check_call(const AttentionArgs& a, const KernelOptions& opt, const float* o, const float* lse,
                const float* dO, const float* dq, const float* dk, const float* dv) {
  a.validate_args();
  if (a.hier.on()) throw FieldError("hier", "the backward computes plain attention under its mask");
  if (a.keep.on()) throw FieldError("keep", "the backward does not take kept-key sets yet");
  if (a.quantized()) throw FieldError("kq", "the backward does not take quantized K/V yet");
  if (opt.isa != Isa::automatic && !isa_supported(opt.isa))
    throw FieldError("isa", fmt::format("this CPU does not support {}", isa_name(opt.isa)));
  if (a.nq > 0 && (o == nullptr || lse == nullptr || dO == nullptr || dq == nullptr))
    throw FieldError("data", "o, lse, dO or dq is null");
  if (a.nk > 0 && (dk == nullptr || dv == nullptr)) throw FieldError("data", "dk or dv is null");
}

}  // namespace

double backward_workspace_bytes(const AttentionArgs& a, const KernelOptions& opt) {
  return Plan(a, opt).bytes();
}

KernelStats attention_backward(const AttentionArgs& a, const float* o, const float* lse,
                               const float* dO, float* dq, float* dk, float* dv,
                               const KernelOptions& opt, GradWrite write) {
  check_call(a, opt, o, lse, dO, dq, dk, dv);
  const bool add = write == GradWrite::add;
  const Plan pl(a, opt);
  const cpu::BackwardKernels& K = pl.K;
  const int d = pl.d, dp = pl.dp;
  const float scale = a.softmax_scale();
  const float scale_log2 = static_cast<float>(double(scale) * cpu::kLog2e);
  const float ln2 = static_cast<float>(cpu::kLn2);
  const std::size_t esz = dtype_size(a.dtype);

  Buffer kv_buf = floats(pl.kv_floats, "backward packed K/V");
  Buffer q_buf = floats(pl.q_floats, "backward packed Q, dO, dQ");
  Buffer part_buf = floats(pl.tasks * pl.part_floats, "backward dK/dV parts");
  Buffer thread_buf = floats(pl.threads * pl.thread_floats, "backward workspace");
  std::vector<uint8_t> visible(at(std::max<int64_t>(pl.tasks, 1)));
  float* const kt = kv_buf.as<float>();      // K panels [nk_pad][dp]
  float* const vt = kt + pl.nk_pad * dp;     // V panels
  float* const krows = vt + pl.nk_pad * dp;  // K rows
  float* const qs = q_buf.as<float>();       // [group][nq_pad][dp]
  float* const gs = qs + pl.group * pl.nq_pad * dp;
  float* const dqacc = gs + pl.group * pl.nq_pad * dp;
  float* const lse2 = dqacc + pl.group * pl.nq_pad * dp;  // [group][nq_pad]
  float* const delta = lse2 + pl.group * pl.nq_pad;
  float* const parts = part_buf.as<float>();  // [tasks][dV, dK][kBlockK][dp]
  std::vector<KernelStats> stats(at(pl.threads));

  for (int64_t b = 0; b < a.batch; ++b) {
    for (int64_t hk = 0; hk < a.hkv; ++hk) {
#pragma omp parallel num_threads(pl.threads)
      {
        const int tid = omp_get_thread_num();
        KernelStats& my = stats[at(tid)];
        float* const ws = thread_buf.as<float>() + tid * pl.thread_floats;
        float* const scratch = ws + K.workspace_floats(dp);  // [panel][dp]
        float* const sum = scratch + int64_t{K.panel} * dp;  // [2][dp]

        // K/V of this head, panel by panel: (K, V) gives K panels (and V rows,
        // dropped); (V, K) gives V panels and K rows.
#pragma omp for schedule(static)
        for (int64_t p = 0; p < pl.npanels; ++p) {
          const int64_t j0 = p * K.panel;
          // Panels past the last key are all padding (zero): point them at key 0.
          const std::size_t off = at(((b * a.nk + std::min(j0, a.nk - 1)) * a.hkv + hk) * d) * esz;
          const char* kb = static_cast<const char*>(a.k) + off;
          const char* vb = static_cast<const char*>(a.v) + off;
          const int64_t n = a.nk - j0, stride = a.hkv * d;
          K.pack_kv(kb, vb, a.dtype, stride, n, d, 0, K.panel, kt + j0 * dp, scratch, dp);
          K.pack_kv(vb, kb, a.dtype, stride, n, d, 0, K.panel, vt + j0 * dp, krows + j0 * dp, dp);
        }
        // The group's query rows: Qs, dO, lse2, Delta; dQacc = 0.
#pragma omp for schedule(static)
        for (int64_t row = 0; row < pl.group * pl.nq_pad; ++row) {
          const int64_t h = hk * pl.group + row / pl.nq_pad, i = row % pl.nq_pad;
          float* q_r = qs + row * dp;
          float* g_r = gs + row * dp;
          std::fill(q_r, q_r + dp, 0.0f);
          std::fill(g_r, g_r + dp, 0.0f);
          std::fill(dqacc + row * dp, dqacc + (row + 1) * dp, 0.0f);
          lse2[row] = -INFINITY;
          delta[row] = 0.0f;
          if (i >= a.nq) continue;
          const int64_t src = ((b * a.nq + i) * a.hq + h) * d;
          double s = 0.0;
          for (int c = 0; c < d; ++c) {
            q_r[c] = load_as_f32(a.q, a.dtype, at(src + c)) * scale_log2;
            g_r[c] = dO[src + c];
            s += double(dO[src + c]) * double(o[src + c]);
          }
          delta[row] = static_cast<float>(s);
          const float l = lse[(b * a.hq + h) * a.nq + i];
          lse2[row] = l == -INFINITY ? -INFINITY : static_cast<float>(double(l) * cpu::kLog2e);
        }

        for (int64_t ti = 0; ti < pl.ntiles; ++ti) {
          const int64_t key0 = ti * kBlockK;
          const int kvalid = static_cast<int>(std::min<int64_t>(kBlockK, a.nk - key0));
          const Positions kpos = a.kpos.from(key0);
          // Documents: only the query blocks of this tile's documents can see its keys.
          int64_t qb0 = 0, qb1 = pl.nqb;
          cpu::query_block_range(a.mask, kpos.at(0), kpos.at(kvalid - 1), a.qpos, a.nq, kBlockQ,
                                 &qb0, &qb1);
#pragma omp for schedule(dynamic, 1)
          for (int64_t task = 0; task < pl.tasks; ++task) {
            const int64_t row0 = (task / pl.nqb) * pl.nq_pad + (task % pl.nqb) * kBlockQ;
            const int64_t i0 = (task % pl.nqb) * kBlockQ;
            ++my.tiles_total;
            visible[at(task)] = 0;
            if (task % pl.nqb < qb0 || task % pl.nqb >= qb1) continue;
            cpu::BackwardTileJob t;
            t.rows = static_cast<int>(std::min<int64_t>(kBlockQ, a.nq - i0));
            t.qpos = a.qpos.from(i0);
            t.cls = a.mask.classify(t.qpos.at(0), t.qpos.at(t.rows - 1), kpos.at(0),
                                    kpos.at(kvalid - 1));
            visible[at(task)] = t.cls != TileClass::empty;
            if (t.cls == TileClass::empty) continue;
            ++my.tiles_computed;
            if (t.cls == TileClass::partial) ++my.tiles_partial;
            t.qs = qs + row0 * dp;
            t.g = gs + row0 * dp;
            t.lse2 = lse2 + row0;
            t.delta = delta + row0;
            t.kt = kt + key0 * dp;
            t.vt = vt + key0 * dp;
            t.krows = krows + key0 * dp;
            t.kvalid = kvalid;
            t.dp = dp;
            t.mask = a.mask;
            t.kpos = kpos;
            t.dv_part = parts + task * pl.part_floats;
            t.dk_part = t.dv_part + int64_t{kBlockK} * dp;
            t.dq = dqacc + row0 * dp;
            K.run_tile(t, ws);
          }
          // dV, dK of this tile's keys: the parts summed in task order.
#pragma omp for schedule(static)
          for (int j = 0; j < kvalid; ++j) {
            float* sv = sum;
            float* sk = sum + dp;
            std::fill(sum, sum + 2 * dp, 0.0f);
            for (int64_t task = qb0; qb0 < qb1 && task < pl.tasks;  // task order, blocks qb0..qb1
                 task += (task % pl.nqb == qb1 - 1) ? pl.nqb - qb1 + qb0 + 1 : 1) {
              if (!visible[at(task)]) continue;
              const float* pv = parts + task * pl.part_floats + int64_t{j} * dp;
              const float* pk = pv + int64_t{kBlockK} * dp;
              for (int c = 0; c < dp; ++c) sv[c] += pv[c], sk[c] += pk[c];
            }
            const int64_t dst = ((b * a.nk + key0 + j) * a.hkv + hk) * d;
            float* dkj = dk + dst;
            float* dvj = dv + dst;
            for (int c = 0; c < d; ++c) {
              dkj[c] = ln2 * sk[c] + (add ? dkj[c] : 0.0f);
              dvj[c] = sv[c] + (add ? dvj[c] : 0.0f);
            }
          }
        }

        // dq = scale dQacc.
#pragma omp for schedule(static)
        for (int64_t row = 0; row < pl.group * a.nq; ++row) {
          const int64_t h = hk * pl.group + row / a.nq, i = row % a.nq;
          const float* src = dqacc + ((row / a.nq) * pl.nq_pad + i) * dp;
          float* out = dq + ((b * a.nq + i) * a.hq + h) * d;
          for (int c = 0; c < d; ++c) out[c] = scale * src[c] + (add ? out[c] : 0.0f);
        }
      }
    }
  }
  KernelStats total;
  for (const KernelStats& s : stats) total += s;
  return total;
}

}  // namespace ringattn
