// Kernel driver: argument checks, ISA dispatch, K/V packing and the static
// task split. The arithmetic lives in kernel_impl.hpp.
//
// Threads: for each (batch, kv head) the packed K/V of that head is built in
// parallel (key ranges), then the tasks (query head of the group x block of
// kBlockQ rows) are shared dynamically, so causal blocks of unequal cost
// balance. Tasks of one group reuse the same packed K/V from cache.
#include "ringattn/kernel.hpp"

#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <vector>

#include "cpu/kernel_isa.hpp"
#include "ringattn/error.hpp"
#include "ringattn/interrupt.hpp"
#include "ringattn/memory.hpp"

namespace ringattn {
namespace {

const cpu::IsaKernels& kernels_for(Isa isa) {
  switch (isa) {
    case Isa::avx512:
      return cpu::avx512_kernels();
    case Isa::avx2:
      return cpu::avx2_kernels();
    case Isa::generic:
      return cpu::generic_kernels();
    case Isa::automatic:
      break;
  }
  return kernels_for(best_isa());
}

// The forward's routines: the ISA's, or on a CPU with AVX512_BF16 and
// bfloat16 K/V (not quantized) the AVX-512 ones whose S runs on VDPBF16PS.
const cpu::IsaKernels& forward_kernels_for(Isa isa, const AttentionArgs& a) {
  const cpu::IsaKernels& K = kernels_for(isa);
#if defined(__x86_64__) && defined(__GNUC__)
  if (K.isa == Isa::avx512 && a.dtype == DType::bf16 && !a.quantized() &&
      __builtin_cpu_supports("avx512bf16"))
    return cpu::avx512_bf16_kernels();
#endif
  return K;
}

// Packs panel p (keys [p panel, (p + 1) panel)) of K/V head hk of batch b.
// Quantized K/V are dequantized into deq (2 panel D floats) first.
void pack_panel(const AttentionArgs& a, const cpu::IsaKernels& K, int64_t b, int64_t hk, int64_t p,
                float* kp, float* vp, int64_t nk_pad, float* deq) {
  const int d = static_cast<int>(a.head_dim);
  const int dp = static_cast<int>(cpu::round_up(d, K.lanes));
  const int64_t j0 = p * K.panel;
  const int64_t n = std::clamp<int64_t>(a.nk - j0, 0, K.panel);  // keys of the panel that exist
  if (a.quantized()) {
    // Dequantize this panel's keys into float32 rows, then pack them like float32 K/V.
    float* kd = deq;
    float* vd = kd + int64_t{K.panel} * d;
    for (int64_t j = 0; j < n; ++j) {
      const int64_t row = (b * a.nk + j0 + j) * a.hkv + hk;
      dequantize_rows(a.kq, row, 1, kd + j * d);
      dequantize_rows(a.vq, row, 1, vd + j * d);
    }
    K.pack_kv(kd, vd, DType::f32, d, n, d, j0, j0 + K.panel, kp, vp, dp, nk_pad);
  } else {
    // Panels past the last key are all padding (n = 0): point them at key 0.
    const std::size_t kv_off =
        static_cast<std::size_t>(((b * a.nk + (n > 0 ? j0 : 0)) * a.hkv + hk) * d) *
        dtype_size(a.dtype);
    K.pack_kv(static_cast<const char*>(a.k) + kv_off, static_cast<const char*>(a.v) + kv_off,
              a.dtype, a.hkv * d, n, d, j0, j0 + K.panel, kp, vp, dp, nk_pad);
  }
}

void check_call(const AttentionArgs& a, const KernelOptions& opt) {
  a.validate_args();
  if (a.hier.on())
    throw FieldError("hier",
                     "a kernel call computes plain attention under its mask; a "
                     "hierarchical problem goes through hierarchical_attention or the "
                     "job (ringattn/hierarchy_stage.hpp)");
  if (opt.isa != Isa::automatic && !isa_supported(opt.isa))
    throw FieldError("isa", fmt::format("this CPU does not support {}", isa_name(opt.isa)));
}

// Query rows in chunks of kPackChunkBlocks blocks, each with the keys it may
// see (Mask::key_bounds, in whole panels): a band packs its chunk's keys (the
// chunk plus the window), not the whole K/V of the call. Masks without bounds:
// one chunk of every key.
constexpr int64_t kPackChunkBlocks = 64;
struct PackChunk {
  int64_t i0 = 0, i1 = 0;  // query rows
  int64_t j0 = 0, j1 = 0;  // keys (j0 a multiple of the panel)
};
std::vector<PackChunk> pack_chunks(const Mask& mask, Positions qpos, int64_t nq, Positions kpos,
                                   int64_t nk, int panel) {
  std::vector<PackChunk> out;
  const int64_t rows = kPackChunkBlocks * cpu::kBlockQ;
  for (int64_t i0 = 0; i0 < nq; i0 += rows) {
    const int64_t i1 = std::min(nq, i0 + rows);
    int64_t p0 = 0, p1 = 0;
    cpu::key_tile_range(mask, qpos.at(i0), qpos.at(i1 - 1), kpos, nk, panel, &p0, &p1);
    out.push_back({i0, i1, std::min(nk, p0 * panel), std::min(nk, p1 * panel)});
    if (out.back().j1 < out.back().j0) out.back().j1 = out.back().j0;
  }
  return out;
}

// Keys [j0, j1) of batch entry b of a, as a batch-1 call's keys (for packing).
AttentionArgs keys_of(const AttentionArgs& a, int64_t b, int64_t j0, int64_t j1) {
  AttentionArgs s = a;
  s.batch = 1, s.nk = j1 - j0, s.kpos = a.kpos.from(j0);
  const int64_t row0 = (b * a.nk + j0) * a.hkv;
  if (a.quantized()) {
    s.kq = a.kq.from(row0), s.vq = a.vq.from(row0);
  } else {
    const std::size_t off = static_cast<std::size_t>(row0 * a.head_dim) * dtype_size(a.dtype);
    s.k = static_cast<const char*>(a.k) + off;
    s.v = static_cast<const char*>(a.v) + off;
  }
  return s;
}

// Query blocks qb0 .. qb0 + nblocks - 1 of a, most key tiles (of `keys`, the
// chunk's packed keys) first; ties in order.
std::vector<int64_t> blocks_by_work(const AttentionArgs& a, const AttentionArgs& keys, int64_t qb0,
                                    int64_t nblocks) {
  std::vector<int64_t> order(static_cast<std::size_t>(nblocks)), work(order.size());
  for (int64_t k = 0; k < nblocks; ++k) {
    const int64_t i0 = (qb0 + k) * cpu::kBlockQ, i1 = std::min(a.nq, i0 + cpu::kBlockQ);
    int64_t t0 = 0, t1 = 0;
    cpu::key_tile_range(a.mask, a.qpos.at(i0), a.qpos.at(i1 - 1), keys.kpos, keys.nk, cpu::kBlockK,
                        &t0, &t1);
    order[static_cast<std::size_t>(k)] = qb0 + k;
    work[static_cast<std::size_t>(k)] = t1 - t0;
  }
  std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) {
    return work[static_cast<std::size_t>(x - qb0)] > work[static_cast<std::size_t>(y - qb0)];
  });
  return order;
}

// Where each task of one query head starts in blocks_by_work's order (the
// last entry: nblocks). A task runs up to kMaxBlocksPerTask blocks together (each
// K/V tile read once for all of them), and fewer while that would leave each
// thread fewer than 8 tasks. Near the end a task takes at most half of each
// thread's share of the blocks left (a group's heads each run a task of every
// size), so that the threads reach the end of the head's loop together: with
// equal-sized tasks one thread could finish up to a whole task after the other.
// One thread has nobody to wait for: its tasks keep their size to the end.
std::vector<int64_t> task_starts(int64_t nblocks, int64_t group, int threads) {
  const int64_t t = std::max(threads, 1);
  const int64_t per = std::clamp<int64_t>(group * nblocks / (8 * t), 1, cpu::kMaxBlocksPerTask);
  std::vector<int64_t> starts{0};
  for (int64_t k = 0; k < nblocks;) {
    const int64_t share = t == 1 ? per : (group * (nblocks - k) + 2 * t - 1) / (2 * t);
    k += std::min({per, share, nblocks - k});
    starts.push_back(k);
  }
  return starts;
}

// What one kernel call sets up: the ISA's routines, the padded sizes, the
// thread count (capped at the tasks) and the buffers: packed K/V of one head,
// per-thread workspaces and (quantized K/V) dequantized panels, per-thread counters.
struct KernelCall {
  const cpu::IsaKernels& K;
  int d, dp;
  int64_t nk_pad, group, npanels, ws_floats, deq_floats;
  float scale_log2;
  int threads;
  Buffer kp, vp, ws, deq;
  std::vector<KernelStats> stats;

  // tasks_per_group: the tasks of one query head (all heads of a K/V group share
  // them); pack_keys: the most keys packed at once (a.nk, or a chunk's: PackChunk).
  // forward: attention_forward (forward_kernels_for).
  KernelCall(const AttentionArgs& a, const KernelOptions& opt, int64_t tasks_per_group,
             int64_t pack_keys, bool forward = false)
      : K(forward ? forward_kernels_for(opt.isa, a) : kernels_for(opt.isa)),
        d(static_cast<int>(a.head_dim)),
        dp(static_cast<int>(cpu::round_up(d, K.lanes))),
        nk_pad(cpu::round_up(pack_keys, K.panel)),
        group(a.hq / a.hkv),
        npanels(nk_pad / K.panel),
        ws_floats(K.workspace_floats(dp)),
        deq_floats(2 * int64_t{K.panel} * d),
        scale_log2(static_cast<float>(double(a.softmax_scale()) * cpu::kLog2e)),
        threads(static_cast<int>(std::max<int64_t>(
            1, std::min<int64_t>(opt.threads > 0 ? opt.threads : omp_get_max_threads(),
                                 group * tasks_per_group)))),
        kp(static_cast<std::size_t>(std::max<int64_t>(nk_pad, 1) * dp) * sizeof(float), "packed K"),
        vp(static_cast<std::size_t>(std::max<int64_t>(nk_pad, 1) * dp) * sizeof(float), "packed V"),
        ws(static_cast<std::size_t>(ws_floats * threads) * sizeof(float), "kernel workspace"),
        // Quantized K/V: each thread dequantizes one panel of keys (K then V rows) before packing.
        deq(a.quantized() ? static_cast<std::size_t>(deq_floats * threads) * sizeof(float) : 0,
            "dequantized K/V panel"),
        stats(static_cast<std::size_t>(threads)) {}

  cpu::PackedKV packed(const AttentionArgs& a) {
    return {kp.as<float>(), vp.as<float>(), a.nk, nk_pad, dp, K.panel, a.kpos};
  }
  // Packs panel p of K/V head hk of batch b (inside a parallel region, thread tid).
  void pack(const AttentionArgs& a, int64_t b, int64_t hk, int64_t p, int64_t keys_pad, int tid) {
    pack_panel(a, K, b, hk, p, kp.as<float>(), vp.as<float>(), keys_pad,
               a.quantized() ? deq.as<float>() + tid * deq_floats : nullptr);
  }
  float* workspace(int tid) { return ws.as<float>() + tid * ws_floats; }
  KernelStats total() const {
    KernelStats t;
    for (const KernelStats& x : stats) t += x;
    return t;
  }
};

}  // namespace

bool isa_supported(Isa isa) {
#if defined(__x86_64__) && defined(__GNUC__)
  switch (isa) {
    case Isa::avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    case Isa::avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("f16c");
    default:
      return true;
  }
#else
  return isa == Isa::generic || isa == Isa::automatic;
#endif
}

Isa best_isa() {
  if (isa_supported(Isa::avx512)) return Isa::avx512;
  if (isa_supported(Isa::avx2)) return Isa::avx2;
  return Isa::generic;
}

std::string isa_name(Isa isa) {
  switch (isa) {
    case Isa::automatic:
      return "auto";
    case Isa::avx512:
      return "avx512";
    case Isa::avx2:
      return "avx2";
    case Isa::generic:
      return "generic";
  }
  return "?";
}

Isa parse_isa(const std::string& s) {
  for (Isa i : {Isa::automatic, Isa::avx512, Isa::avx2, Isa::generic})
    if (s == isa_name(i)) return i;
  throw FieldError("isa", fmt::format("expected auto, avx512, avx2 or generic, got '{}'", s));
}

double measure_fma_peak_gflops(Isa isa, int threads, double seconds) {
  if (isa != Isa::automatic && !isa_supported(isa))
    throw FieldError("isa", fmt::format("this CPU does not support {}", isa_name(isa)));
  const cpu::IsaKernels& K = kernels_for(isa);
  const int n = std::max(threads, 1);
  std::vector<double> rate(static_cast<std::size_t>(n), 0.0);
  constexpr int64_t kIters = int64_t{1} << 20;  // about 2 ms a round
#pragma omp parallel num_threads(n)
  {
    const int tid = omp_get_thread_num();
    float sink = 0;
    K.fma_loop(kIters / 8, &sink);  // warm: clocks up, code in cache
    // The best of rounds of about 2 ms: the peak, not the mean of a shared machine's stalls.
    const auto start = std::chrono::steady_clock::now();
    double best = 0;
    for (double total = 0; total < seconds;) {
      const auto t0 = std::chrono::steady_clock::now();
      const double flops = K.fma_loop(kIters, &sink);
      const auto t1 = std::chrono::steady_clock::now();
      best = std::max(best, flops / std::chrono::duration<double>(t1 - t0).count());
      total = std::chrono::duration<double>(t1 - start).count();
    }
    rate[static_cast<std::size_t>(tid)] = best + (sink == 12345.0f ? 1e-30 : 0.0);
  }
  double total = 0;
  for (const double r : rate) total += r;
  return total / 1e9;
}

int64_t kernel_packed_keys(const Mask& mask, Positions qpos, int64_t nq, Positions kpos,
                           int64_t nk) {
  int64_t keys = 0;
  for (const PackChunk& c :
       pack_chunks(mask, qpos, nq, kpos, nk, kernels_for(Isa::automatic).panel))
    keys = std::max(keys, c.j1 - c.j0);
  return keys;
}

KernelTiles kernel_tiles(const Mask& mask, Positions qpos, int64_t nq, Positions kpos, int64_t nk) {
  // attention_forward's loops without the arithmetic: each chunk's packed keys,
  // each query block's key tiles inside Mask::key_bounds, classified as run_blocks does.
  KernelTiles t;
  for (const PackChunk& c :
       pack_chunks(mask, qpos, nq, kpos, nk, kernels_for(Isa::automatic).panel)) {
    const Positions keys = kpos.from(c.j0);
    const int64_t n = c.j1 - c.j0;
    for (int64_t i0 = c.i0; i0 < c.i1 && n > 0; i0 += cpu::kBlockQ) {
      const int64_t i1 = std::min(c.i1, i0 + cpu::kBlockQ);
      const int64_t q_first = qpos.at(i0), q_last = qpos.at(i1 - 1);
      int64_t t0 = 0, t1 = (n + cpu::kBlockK - 1) / cpu::kBlockK;
      cpu::key_tile_range(mask, q_first, q_last, keys, n, cpu::kBlockK, &t0, &t1);
      for (int64_t k = t0; k < t1; ++k) {
        const int64_t key0 = k * cpu::kBlockK, kl = std::min<int64_t>(n, key0 + cpu::kBlockK) - 1;
        const TileClass cls = mask.classify(q_first, q_last, keys.at(key0), keys.at(kl));
        t.computed += cls != TileClass::empty;
        t.partial += cls == TileClass::partial;
      }
    }
  }
  return t;
}

static_assert(kKernelTileRows == cpu::kBlockQ && kKernelTileCols == cpu::kBlockK);

double kernel_workspace_bytes(int64_t nk, int64_t head_dim, int64_t rows, int64_t group,
                              int threads, bool quantized) {
  const cpu::IsaKernels& K = kernels_for(Isa::automatic);
  const int64_t dp = cpu::round_up(head_dim, K.lanes);
  const int64_t nk_pad = std::max<int64_t>(cpu::round_up(nk, K.panel), 1);
  const int64_t tasks = group * ((rows + cpu::kBlockQ - 1) / cpu::kBlockQ);
  const int64_t t = std::clamp<int64_t>(tasks, 1, std::max(threads, 1));
  const int64_t deq = quantized ? 2 * int64_t{K.panel} * head_dim : 0;  // attention_forward's
  return double(sizeof(float)) *
         double(2 * nk_pad * dp + (K.workspace_floats(static_cast<int>(dp)) + deq) * t);
}

KernelStats attention_forward(const AttentionArgs& a, float* o, float* lse,
                              const KernelOptions& opt) {
  check_call(a, opt);
  if (a.nq == 0) return {};
  if (o == nullptr || lse == nullptr) throw Error("attention: null output tensor");

  const int64_t nqb = (a.nq + cpu::kBlockQ - 1) / cpu::kBlockQ;
  const cpu::IsaKernels& K = forward_kernels_for(opt.isa, a);  // KernelCall's table
  const std::vector<PackChunk> chunks = pack_chunks(a.mask, a.qpos, a.nq, a.kpos, a.nk, K.panel);
  int64_t pack_keys = 0;
  for (const PackChunk& c : chunks) pack_keys = std::max(pack_keys, c.j1 - c.j0);
  KernelCall call(a, opt, nqb, pack_keys, true);
  const int d = call.d;
  const int64_t group = call.group;
  const std::size_t esz = dtype_size(a.dtype);
  const int64_t q_stride = a.hq * d;

  for (int64_t b = 0; b < a.batch; ++b) {
    for (int64_t hk = 0; hk < a.hkv; ++hk) {
      for (const PackChunk& c : chunks) {
        const AttentionArgs keys = keys_of(a, b, c.j0, c.j1);
        const int64_t npanels = cpu::round_up(keys.nk, K.panel) / K.panel;
        const cpu::PackedKV packed{call.kp.as<float>(),
                                   call.vp.as<float>(),
                                   keys.nk,
                                   npanels * K.panel,
                                   call.dp,
                                   K.panel,
                                   keys.kpos};
        const int64_t qb0 = c.i0 / cpu::kBlockQ,
                      nblocks = (c.i1 - c.i0 + cpu::kBlockQ - 1) / cpu::kBlockQ;
        const std::vector<int64_t> starts = task_starts(nblocks, group, call.threads);
        const int64_t ntasks = group * static_cast<int64_t>(starts.size() - 1);
        // The blocks with the most key tiles first (a causal chunk's last rows), so
        // that the threads finish together rather than waiting on one long block;
        // a task's blocks are neighbours in that order, so their work is alike.
        const std::vector<int64_t> order = blocks_by_work(a, keys, qb0, nblocks);
#pragma omp parallel num_threads(call.threads)
        {
          const int tid = omp_get_thread_num();
#pragma omp for schedule(static)
          for (int64_t p = 0; p < npanels; ++p) call.pack(keys, 0, hk, p, npanels * K.panel, tid);
          float* my_ws = call.workspace(tid);
          KernelStats& my = call.stats[static_cast<std::size_t>(tid)];
#pragma omp for schedule(dynamic, 1)
          for (int64_t t = 0; t < ntasks; ++t) {
            if (interrupt_requested()) continue;  // the call throws when the loop ends
            const int64_t h = hk * group + t % group;
            const int64_t k0 = starts[static_cast<std::size_t>(t / group)],
                          k1 = starts[static_cast<std::size_t>(t / group + 1)];
            cpu::QBlockJob jobs[cpu::kMaxBlocksPerTask];
            for (int64_t k = k0; k < k1; ++k) {
              const int64_t i0 = order[static_cast<std::size_t>(k)] * cpu::kBlockQ;
              cpu::QBlockJob& job = jobs[k - k0];
              job.q = static_cast<const char*>(a.q) +
                      static_cast<std::size_t>((b * a.nq + i0) * q_stride + h * d) * esz;
              job.dtype = a.dtype;
              job.q_stride = q_stride;
              job.rows = static_cast<int>(std::min<int64_t>(cpu::kBlockQ, a.nq - i0));
              job.d = d;
              job.qpos = a.qpos.from(i0);
              job.scale_log2 = call.scale_log2;
              job.mask = a.mask;
              job.kv = &packed;
              job.o = o + (b * a.nq + i0) * q_stride + h * d;
              job.o_stride = q_stride;
              job.lse = lse + (b * a.hq + h) * a.nq + i0;
              if (a.keep.on()) {
                job.keep = a.keep.row(b, h, a.hq);
                job.keep_invert = a.keep.invert;
              }
            }
            my += call.K.run_blocks(jobs, static_cast<int>(k1 - k0), my_ws);
          }
        }
        throw_if_interrupted();
      }
    }
  }
  return call.total();
}

KernelStats attention_importance(const AttentionArgs& a, const float* lse, int64_t lse_stride,
                                 double* imp, const KernelOptions& opt) {
  check_call(a, opt);
  if (a.batch != 1)
    throw FieldError("batch",
                     fmt::format("importance of one batch entry at a time, got B={}", a.batch));
  if (a.keep.on()) throw FieldError("keep", "importance is over every key the mask allows");
  if (a.nq == 0 || a.nk == 0) return {};
  if (lse == nullptr || imp == nullptr) throw Error("attention_importance: null tensor");

  const int64_t ntiles = (a.nk + cpu::kBlockK - 1) / cpu::kBlockK;
  KernelCall call(a, opt, ntiles, a.nk);
  const int d = call.d, dp = call.dp;
  const int64_t group = call.group, ntasks = group * ntiles;

  // The group's queries, packed once per K/V head (every key tile reads them all).
  const int64_t nq_pad = cpu::round_up(a.nq, cpu::kBlockQ);
  Buffer qp(static_cast<std::size_t>(group * nq_pad * dp) * sizeof(float), "packed Q");
  for (int64_t hk = 0; hk < a.hkv; ++hk) {
    const cpu::PackedKV packed = call.packed(a);
#pragma omp parallel num_threads(call.threads)
    {
      const int tid = omp_get_thread_num();
#pragma omp for schedule(static)
      for (int64_t p = 0; p < call.npanels; ++p) call.pack(a, 0, hk, p, call.nk_pad, tid);
#pragma omp for schedule(static)
      for (int64_t t = 0; t < group * nq_pad; ++t) {
        const int64_t h = hk * group + t / nq_pad, i = t % nq_pad;
        float* dst = qp.as<float>() + t * dp;
        std::fill(dst, dst + dp, 0.0f);
        if (i < a.nq)
          for (int c = 0; c < d; ++c)
            dst[c] = load_as_f32(a.q, a.dtype, static_cast<std::size_t>((i * a.hq + h) * d + c)) *
                     call.scale_log2;
      }
      float* my_ws = call.workspace(tid);
      KernelStats& my = call.stats[static_cast<std::size_t>(tid)];
#pragma omp for schedule(dynamic, 1)
      for (int64_t t = 0; t < ntasks; ++t) {
        const int64_t h = hk * group + t / ntiles;
        cpu::ImportanceJob job;
        job.qs = qp.as<float>() + (t / ntiles) * nq_pad * dp;
        job.nq = a.nq;
        job.qpos = a.qpos;
        job.mask = a.mask;
        job.kv = &packed;
        job.lse = lse + h * lse_stride;
        job.tile = t % ntiles;
        job.imp = imp + h * a.nk;
        my += call.K.run_importance(job, my_ws);
      }
    }
  }
  return call.total();
}

}  // namespace ringattn
