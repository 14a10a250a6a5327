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
#include <vector>

#include "cpu/kernel_isa.hpp"
#include "ringattn/error.hpp"
#include "ringattn/memory.hpp"

namespace ringattn {
namespace {

void check_args(const AttentionArgs& a) {
  if (a.batch < 1) throw Error(fmt::format("attention: batch must be >= 1, got {}", a.batch));
  if (a.nq < 0 || a.nk < 0)
    throw Error(
        fmt::format("attention: sequence lengths must be >= 0, got Nq={} Nk={}", a.nq, a.nk));
  if (a.hq < 1 || a.hkv < 1 || a.hq % a.hkv != 0)
    throw Error(fmt::format(
        "attention: query heads ({}) must be a positive multiple of key/value heads ({})", a.hq,
        a.hkv));
  if (a.head_dim < 8 || a.head_dim > 256 || a.head_dim % 8 != 0)
    throw Error(
        fmt::format("attention: head dim must be a multiple of 8 in [8, 256], got {}", a.head_dim));
  if (a.qpos.stride < 1 || a.kpos.stride < 1)
    throw Error("attention: position strides must be >= 1");
  if (!(a.scale >= 0.0f) || !std::isfinite(a.scale))
    throw Error(fmt::format("attention: scale must be a finite number >= 0 (0 = 1/sqrt(D)), got {}",
                            a.scale));
  if ((a.nq > 0 && a.q == nullptr) || (a.nk > 0 && (a.k == nullptr || a.v == nullptr)))
    throw Error("attention: null input tensor");
}

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

}  // namespace

bool isa_supported(Isa isa) {
#if defined(__x86_64__) && defined(__GNUC__)
  switch (isa) {
    case Isa::avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("fma");
    case Isa::avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
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
  throw Error(fmt::format("option '--isa': expected auto, avx512, avx2 or generic, got '{}'", s));
}

namespace {

// Keys of the block (local indices) in the skipped key ranges that the mask
// without skips lets query qp see; each key counted once even where ranges overlap.
int64_t skipped_visible_keys(const Mask& base, const Mask& mask, int64_t qp, Positions kpos,
                             int64_t nk) {
  int64_t n = 0;
  for (int r = 0; r < mask.n_skip_k; ++r) {
    const PosRange& s = mask.skip_k[r];
    const int64_t j0 = std::max<int64_t>(0, ceil_div(s.begin - kpos.start, kpos.stride));
    const int64_t j1 = std::min(nk, ceil_div(s.end - kpos.start, kpos.stride));
    for (int64_t j = j0; j < j1; ++j) {
      bool earlier = false;
      for (int e = 0; e < r && !earlier; ++e) earlier = mask.skip_k[e].contains(kpos.at(j));
      n += !earlier && base.allows(qp, kpos.at(j));
    }
  }
  return n;
}

}  // namespace

int64_t visible_pairs(const Mask& mask, Positions qpos, int64_t nq, Positions kpos, int64_t nk) {
  if (nk == 0) return 0;
  if (mask.has_skips()) {
    // The pairs of the mask without skips, less those a skipped range removes:
    // no per-element scan beyond the (few) skipped keys.
    Mask base = mask;
    base.n_skip_q = base.n_skip_k = 0;
    int64_t n = 0;
    for (int64_t i = 0; i < nq; ++i) {
      const int64_t qp = qpos.at(i);
      bool skipped_q = false;
      for (int r = 0; r < mask.n_skip_q && !skipped_q; ++r) skipped_q = mask.skip_q[r].contains(qp);
      if (skipped_q) continue;
      n += visible_pairs(base, qpos.from(i), 1, kpos, nk) -
           skipped_visible_keys(base, mask, qp, kpos, nk);
    }
    return n;
  }
  if (mask.is_none()) return nq * nk;
  constexpr int kMaxRanges = 4 + 2 * kMaxGlobalRanges + kMaxRandomBlocks;
  int64_t n = 0;
  for (int64_t i = 0; i < nq; ++i) {
    const int64_t qp = qpos.at(i);
    int64_t b[kMaxRanges], e[kMaxRanges];
    bool elementwise = false;
    const int nr = mask.key_ranges(qp, kpos, nk, b, e, kMaxRanges, &elementwise);
    if (elementwise) {
      for (int64_t j = 0; j < nk; ++j) n += mask.allows(qp, kpos.at(j));
      continue;
    }
    // Size of the union of the ranges: sort by begin, then sweep.
    std::sort(b, b + nr);  // only the multiset of begins and ends matters for a sweep
    std::sort(e, e + nr);
    int64_t covered = 0, open = 0, since = 0;
    for (int x = 0, y = 0; x < nr || y < nr;) {
      if (x < nr && b[x] < e[y]) {
        if (open++ == 0) since = b[x];
        ++x;
      } else {
        if (--open == 0) covered += e[y] - since;
        ++y;
      }
    }
    n += covered;
  }
  return n;
}

double attention_flops(const AttentionArgs& a) {
  return 4.0 * double(a.head_dim) * double(a.hq) * double(a.batch) *
         double(visible_pairs(a.mask, a.qpos, a.nq, a.kpos, a.nk));
}

KernelStats attention_forward(const AttentionArgs& a, float* o, float* lse,
                              const KernelOptions& opt) {
  check_args(a);
  if (opt.isa != Isa::automatic && !isa_supported(opt.isa))
    throw Error(fmt::format("option '--isa': this CPU does not support {}", isa_name(opt.isa)));
  if (a.nq == 0) return {};
  if (o == nullptr || lse == nullptr) throw Error("attention: null output tensor");

  const cpu::IsaKernels& K = kernels_for(opt.isa);
  const int d = static_cast<int>(a.head_dim);
  const int dp = static_cast<int>(cpu::round_up(d, K.lanes));
  const int64_t nk_pad = cpu::round_up(a.nk, K.panel);
  const int64_t group = a.hq / a.hkv;
  const int64_t nqb = (a.nq + cpu::kBlockQ - 1) / cpu::kBlockQ;
  const int64_t ntasks = group * nqb;
  const float scale = a.scale > 0.0f ? a.scale : 1.0f / std::sqrt(static_cast<float>(d));
  const float scale_log2 = static_cast<float>(double(scale) * cpu::kLog2e);
  const std::size_t esz = dtype_size(a.dtype);

  int threads = opt.threads > 0 ? opt.threads : omp_get_max_threads();
  threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, ntasks)));

  Buffer kp(static_cast<std::size_t>(std::max<int64_t>(nk_pad, 1) * dp) * sizeof(float),
            "packed K");
  Buffer vp(static_cast<std::size_t>(std::max<int64_t>(nk_pad, 1) * dp) * sizeof(float),
            "packed V");
  const int64_t ws_floats = K.workspace_floats(dp);
  Buffer ws(static_cast<std::size_t>(ws_floats * threads) * sizeof(float), "kernel workspace");
  std::vector<KernelStats> stats(static_cast<std::size_t>(threads));

  const int64_t kv_stride = a.hkv * d;  // elements between tokens of K/V
  const int64_t q_stride = a.hq * d;
  const int64_t npanels = nk_pad / K.panel;

  for (int64_t b = 0; b < a.batch; ++b) {
    for (int64_t hk = 0; hk < a.hkv; ++hk) {
      const std::size_t kv_off = static_cast<std::size_t>((b * a.nk * a.hkv + hk) * d) * esz;
      const cpu::PackedKV packed{kp.as<float>(), vp.as<float>(), a.nk, nk_pad, dp, K.panel, a.kpos};
#pragma omp parallel num_threads(threads)
      {
        const int tid = omp_get_thread_num();
#pragma omp for schedule(static)
        for (int64_t p = 0; p < npanels; ++p) {
          K.pack_kv(static_cast<const char*>(a.k) + kv_off, static_cast<const char*>(a.v) + kv_off,
                    a.dtype, kv_stride, a.nk, d, p * K.panel, (p + 1) * K.panel, kp.as<float>(),
                    vp.as<float>(), dp, K.panel);
        }
        float* my_ws = ws.as<float>() + tid * ws_floats;
        KernelStats& my = stats[static_cast<std::size_t>(tid)];
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < ntasks; ++t) {
          const int64_t h = hk * group + t / nqb;
          const int64_t i0 = (t % nqb) * cpu::kBlockQ;
          cpu::QBlockJob job;
          job.q = static_cast<const char*>(a.q) +
                  static_cast<std::size_t>((b * a.nq + i0) * q_stride + h * d) * esz;
          job.dtype = a.dtype;
          job.q_stride = q_stride;
          job.rows = static_cast<int>(std::min<int64_t>(cpu::kBlockQ, a.nq - i0));
          job.d = d;
          job.qpos = a.qpos.from(i0);
          job.scale_log2 = scale_log2;
          job.mask = a.mask;
          job.kv = &packed;
          job.o = o + (b * a.nq + i0) * q_stride + h * d;
          job.o_stride = q_stride;
          job.lse = lse + (b * a.hq + h) * a.nq + i0;
          const KernelStats s = K.run_block(job, my_ws);
          my.tiles_total += s.tiles_total;
          my.tiles_computed += s.tiles_computed;
          my.tiles_partial += s.tiles_partial;
        }
      }
    }
  }
  KernelStats total;
  for (const KernelStats& s : stats) {
    total.tiles_total += s.tiles_total;
    total.tiles_computed += s.tiles_computed;
    total.tiles_partial += s.tiles_partial;
  }
  return total;
}

}  // namespace ringattn
