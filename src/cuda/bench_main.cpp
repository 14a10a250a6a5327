// ringattn-gpu-bench: the CUDA kernel's benchmark table, every row with its
// error against the float64 reference on sampled rows.
//
//   ringattn-gpu-bench [--quick] [--table FILE]
//
// Rows: N in {4K, 16K, 64K} x D in {64, 128} x {full, causal}, bfloat16, with
// Hq = Hkv = 2048 / D heads and batch = max(1, 16K / N) (the FlashAttention
// benchmark convention: 16K tokens, hidden size 2048). Time is the median of
// timed runs (CUDA events on the engine's stream) after one warm-up: at least
// 3 runs and 0.3 s, or one run where the warm-up took over 1 s. TFLOP/s
// counts only visible pairs (4 B Hq D x pairs); % of peak is against the
// dense bf16 tensor-core peak of the device from its data sheet (cuda.hpp
// dense_bf16_peak_tflops).
// Error: max |O - O_ref| and max |LSE - LSE_ref| over sampled query rows.
// Ring row: ring_attention on 4 virtual ranks on the same GPU (in-process
// backend over device buffers, contiguous layout), N = 16K, D = 128, full,
// against the single-rank kernel time of the same problem (the goal: within
// 10%), with its error on sampled rows.
// --quick runs the N = 4K rows only (no ring row). --table writes the summary
// table to FILE.
// Run time (H200, for launch/gpu-check.sh's budget): the largest row (64K,
// 3.5e13 FLOP full) is ~0.1 s a run at 300 TFLOP/s, so the GPU part of all
// rows is ~10 s; the host part (inputs, the float64 reference on 4-16 sampled
// rows, O copied back) is a few seconds a row: well under 2 minutes in all.
// A kernel 30x slower still fits: rows whose warm-up passes 1 s time one run.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <mutex>
#include <string>
#include <vector>

#include "ringattn/cuda.hpp"
#include "ringattn/error.hpp"
#include "ringattn/reference.hpp"
#include "ringattn/ring.hpp"

namespace ringattn {
namespace {

constexpr int64_t kTokens = 16384;  // batch x N per row
constexpr int64_t kHidden = 2048;   // Hq x D
constexpr int kMinRuns = 3;
constexpr double kMinSeconds = 0.3;  // time at least this long per row
constexpr double kSlowRun = 1.0;     // a warm-up this long: one timed run is enough
constexpr float kInputRange = 1.7f;  // inputs uniform in [-r, r] (variance ~1)
constexpr int kRingRanks = 4;        // virtual ranks of the ring row

// Fast reproducible inputs (a hash per element: the 64K rows hold 0.8 G values).
void fill(std::vector<uint16_t>& v, uint64_t seed) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < static_cast<int64_t>(v.size()); ++i) {
    uint64_t z = seed + 0x9e3779b97f4a7c15ull * static_cast<uint64_t>(i + 1);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    const float u = static_cast<float>(z >> 40) / static_cast<float>(1ull << 24);  // [0, 1)
    v[static_cast<std::size_t>(i)] = f32_to_bf16((2 * u - 1) * kInputRange);
  }
}

struct Row {
  int64_t n, d, batch, heads;
  bool causal;
  double ms, tflops, pct;
  double o_err, lse_err;
  int64_t rows_checked;
};

Row run_row(RingEngine& e, const CudaDeviceInfo& dev, int64_t n, int64_t d, bool causal) {
  Row r{};
  r.n = n, r.d = d, r.causal = causal;
  r.batch = std::max<int64_t>(1, kTokens / n), r.heads = kHidden / d;
  AttentionArgs a;
  a.batch = r.batch, a.nq = a.nk = n, a.hq = a.hkv = r.heads, a.head_dim = d;
  a.dtype = DType::bf16;
  if (causal) a.mask = Mask::causal(0);
  const std::size_t numel = static_cast<std::size_t>(a.batch * n * a.hq * d);
  std::vector<uint16_t> q(numel), k(numel), v(numel);
  fill(q, 1), fill(k, 2), fill(v, 3);
  auto dq = e.alloc(numel * 2, "q"), dk = e.alloc(numel * 2, "k"), dv = e.alloc(numel * 2, "v");
  auto dout = e.alloc(numel * 2, "o");
  auto dlse = e.alloc(static_cast<std::size_t>(a.batch * a.hq * n) * 4, "lse");
  e.from_host(dq->data(), q.data(), numel * 2);
  e.from_host(dk->data(), k.data(), numel * 2);
  e.from_host(dv->data(), v.data(), numel * 2);
  AttentionArgs da = a;
  da.q = dq->data(), da.k = dk->data(), da.v = dv->data();

  // Warm-up, then timed runs, all on the engine's stream (after its uploads,
  // before its downloads); each timed run waits for its stop event.
  void* const stream = cuda_engine_stream(e);
  const double warm = cuda_time_forward(da, dout->data(), dlse->as<float>(), stream);
  const int min_runs = warm >= kSlowRun ? 1 : kMinRuns;  // bounds the check's time on a slow kernel
  std::vector<double> times;
  double total = 0;
  while (static_cast<int>(times.size()) < min_runs || total < kMinSeconds) {
    const double t = cuda_time_forward(da, dout->data(), dlse->as<float>(), stream);
    times.push_back(t), total += t;
  }
  std::sort(times.begin(), times.end());
  const double s = times[times.size() / 2];
  r.ms = s * 1e3;
  r.tflops = attention_flops(a) / s / 1e12;
  r.pct = dev.peak_bf16_tflops > 0 ? 100.0 * r.tflops / dev.peak_bf16_tflops : 0;

  // Error on sampled rows: first, last and a spread (fewer for long rows: float64 on the CPU).
  const int64_t want = n <= 4096 ? 16 : n <= 16384 ? 8 : 4;
  std::vector<int64_t> rows;
  for (int64_t i = 0; i < want; ++i) rows.push_back(i == want - 1 ? n - 1 : i * (n / want));
  std::vector<uint16_t> o16(numel);
  std::vector<float> lse(static_cast<std::size_t>(a.batch * a.hq * n));
  e.to_host(o16.data(), dout->data(), numel * 2);
  e.to_host(lse.data(), dlse->data(), lse.size() * 4);
  std::vector<float> of(numel);
  for (std::size_t i = 0; i < numel; ++i) of[i] = bf16_to_f32(o16[i]);
  a.q = q.data(), a.k = k.data(), a.v = v.data();
  const ReferenceResult ref = reference_attention_rows(a, rows);
  const ErrorStats err = compare_to_reference(a, of.data(), lse.data(), ref, rows);
  r.o_err = err.o_max_abs, r.lse_err = err.lse_max_abs + (err.lse_mismatch > 0 ? INFINITY : 0);
  r.rows_checked = static_cast<int64_t>(rows.size());
  return r;
}

struct RingRow {
  int64_t n = 0, d = 0, heads = 0;
  int ranks = 0;
  double ms = 0, single_ms = 0, o_err = 0, lse_err = 0;
};

// ring_attention on kRingRanks virtual ranks of device 0; the second of two
// runs is timed (slowest rank's wall time of the ring, synchronised).
RingRow run_ring_row(int64_t n, int64_t d, double single_ms) {
  RingRow rr;
  rr.n = n, rr.d = d, rr.heads = kHidden / d, rr.ranks = kRingRanks, rr.single_ms = single_ms;
  const int64_t h = rr.heads;
  const std::size_t numel = static_cast<std::size_t>(n * h * d);
  std::vector<uint16_t> q(numel), k(numel), v(numel);
  fill(q, 1), fill(k, 2), fill(v, 3);
  std::vector<float> o(numel), lse(static_cast<std::size_t>(h * n));
  std::mutex mu;
  const Layout layout(LayoutKind::contiguous, n, kRingRanks);
  const RingSchedule sch = make_ring_schedule(layout, layout, Mask::none());
  run_local(
      kRingRanks,
      [&](Communicator& comm) {
        const int r = comm.rank();
        auto eng = make_cuda_engine(0);
        const int64_t t0 = layout.segments(r)[0].start, nl = layout.tokens(r);
        const std::size_t row = static_cast<std::size_t>(h * d), bytes = nl * row * 2;
        auto dq = eng->alloc(bytes, "q"), dk = eng->alloc(bytes, "k"), dv = eng->alloc(bytes, "v");
        eng->from_host(dq->data(), q.data() + t0 * row, bytes);
        eng->from_host(dk->data(), k.data() + t0 * row, bytes);
        eng->from_host(dv->data(), v.data() + t0 * row, bytes);
        auto so = eng->alloc(nl * row * 4, "o"),
             sl = eng->alloc(static_cast<std::size_t>(h * nl) * 4, "lse");
        RingProblem p;
        p.nq = p.nk = layout.length();
        p.hq = p.hkv = h, p.head_dim = d, p.dtype = DType::bf16;
        p.q_layout = p.kv_layout = &layout;
        p.q = dq->data(), p.k = dk->data(), p.v = dv->data();
        eng->sync();
        double t = 0;
        for (int rep = 0; rep < 2; ++rep) {
          comm.barrier();
          t = ring_attention(comm, *eng, sch, p, so->as<float>(), sl->as<float>()).total_s;
        }
        const double slowest = comm.allreduce_one(t, ReduceOp::max);
        std::vector<float> ho(nl * row), hl(static_cast<std::size_t>(h * nl));
        eng->to_host(ho.data(), so->data(), ho.size() * 4);
        eng->to_host(hl.data(), sl->data(), hl.size() * 4);
        std::lock_guard<std::mutex> lk(mu);
        rr.ms = slowest * 1e3;
        std::copy(ho.begin(), ho.end(), o.begin() + t0 * static_cast<int64_t>(row));
        for (int64_t hh = 0; hh < h; ++hh)
          for (int64_t i = 0; i < nl; ++i)
            lse[static_cast<std::size_t>(hh * n + t0 + i)] =
                hl[static_cast<std::size_t>(hh * nl + i)];
      },
      cuda_local_memory(0));
  AttentionArgs a;
  a.nq = a.nk = n, a.hq = a.hkv = h, a.head_dim = d, a.dtype = DType::bf16;
  a.q = q.data(), a.k = k.data(), a.v = v.data();
  std::vector<int64_t> rows;
  for (int64_t i = 0; i < 8; ++i) rows.push_back(i == 7 ? n - 1 : i * (n / 8));
  const ErrorStats err =
      compare_to_reference(a, o.data(), lse.data(), reference_attention_rows(a, rows), rows);
  rr.o_err = err.o_max_abs, rr.lse_err = err.lse_max_abs + (err.lse_mismatch > 0 ? INFINITY : 0);
  return rr;
}

std::string table(const std::vector<Row>& rows, const RingRow& ring, const CudaDeviceInfo& dev) {
  std::string t = fmt::format(
      "GPU kernel, {} (sm_{}{}), bfloat16, dense bf16 peak {:.0f} TFLOP/s (data sheet)\n", dev.name,
      dev.major, dev.minor, dev.peak_bf16_tflops);
  t += fmt::format(
      "| {:>6} | {:>3} | {:>5} | {:>6} | {:>6} | {:>10} | {:>8} | {:>6} | {:>9} | {:>9} |\n", "N",
      "D", "B", "heads", "causal", "time ms", "TFLOP/s", "% peak", "max|dO|", "max|dLSE|");
  for (const Row& r : rows)
    t += fmt::format(
        "| {:>6} | {:>3} | {:>5} | {:>6} | {:>6} | {:>10.3f} | {:>8.1f} | {:>5.1f}% | {:>9.2e} | "
        "{:>9.2e} |\n",
        r.n, r.d, r.batch, r.heads, r.causal ? "yes" : "no", r.ms, r.tflops, r.pct, r.o_err,
        r.lse_err);
  t += "errors: float64 reference on sampled rows (16 / 8 / 4 rows at N = 4K / 16K / 64K)\n";
  if (ring.ranks > 0)
    t += fmt::format(
        "ring, {} virtual ranks on this GPU (in-process, device buffers), N {}, D {}, {} heads, "
        "full: {:.3f} ms vs single-rank kernel {:.3f} ms: {:.1f}% of single-rank time (goal <= "
        "110%), max|dO| {:.2e}, max|dLSE| {:.2e}\n",
        ring.ranks, ring.n, ring.d, ring.heads, ring.ms, ring.single_ms,
        100.0 * ring.ms / ring.single_ms, ring.o_err, ring.lse_err);
  return t;
}

}  // namespace
}  // namespace ringattn

int main(int argc, char** argv) {
  using namespace ringattn;
  bool quick = false;
  std::string table_file;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") {
      quick = true;
    } else if (a == "--table" && i + 1 < argc) {
      table_file = argv[++i];
    } else {
      std::fprintf(stderr, "usage: ringattn-gpu-bench [--quick] [--table FILE]\n");
      return 2;
    }
  }
  try {
    std::string why;
    if (cuda_device_count(&why) == 0) {
      std::fprintf(stderr, "ringattn-gpu-bench: no GPU: %s\n", why.c_str());
      return 3;
    }
    const CudaDeviceInfo dev = cuda_device_info(0);
    auto engine = make_cuda_engine(0);
    std::vector<Row> rows;
    const std::vector<int64_t> ns =
        quick ? std::vector<int64_t>{4096} : std::vector<int64_t>{4096, 16384, 65536};
    for (int64_t n : ns)
      for (int64_t d : {64, 128})
        for (bool causal : {false, true}) {
          rows.push_back(run_row(*engine, dev, n, d, causal));
          const Row& r = rows.back();
          std::printf(
              "N %6lld D %3lld causal %-3s  %9.3f ms  %7.1f TFLOP/s  %5.1f%%  max|dO| %.2e\n",
              static_cast<long long>(r.n), static_cast<long long>(r.d), r.causal ? "yes" : "no",
              r.ms, r.tflops, r.pct, r.o_err);
          std::fflush(stdout);
        }
    // The ring row, against the single-rank row of the same problem (N = 16K: batch 1).
    const int64_t ring_n = kTokens;
    double single_ms = 0;
    for (const Row& r : rows)
      if (r.n == ring_n && r.d == 128 && !r.causal) single_ms = r.ms;
    RingRow ring;
    if (single_ms > 0) {
      ring = run_ring_row(ring_n, 128, single_ms);
      std::printf("ring %d virtual ranks N %lld D 128: %.3f ms (single rank %.3f ms)\n", ring.ranks,
                  static_cast<long long>(ring_n), ring.ms, ring.single_ms);
    }
    const std::string t = table(rows, ring, dev);
    if (!table_file.empty()) std::ofstream(table_file) << t;
    std::printf("\n%s", t.c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ringattn-gpu-bench: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
