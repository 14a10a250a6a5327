// ringattn-gpu-bench: the CUDA kernel's benchmark table, every row with its
// error against the float64 reference on sampled rows.
//
//   ringattn-gpu-bench [--quick] [--table FILE]
//
// Rows: N in {4K, 16K, 64K} x D in {64, 128} x {full, causal}, bfloat16, with
// Hq = Hkv = 2048 / D heads and batch = max(1, 16K / N) (the FlashAttention
// benchmark convention: 16K tokens, hidden size 2048). Time is the median of
// timed runs (CUDA events) after one warm-up; TFLOP/s counts only visible
// pairs (4 B Hq D x pairs); % of peak is against the dense bf16 tensor-core
// peak of the device from its data sheet (cuda.hpp dense_bf16_peak_tflops).
// Error: max |O - O_ref| and max |LSE - LSE_ref| over sampled query rows.
// --quick runs the N = 4K rows only. --table writes the summary table to FILE.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "ringattn/cuda.hpp"
#include "ringattn/error.hpp"
#include "ringattn/reference.hpp"

namespace ringattn {
namespace {

constexpr int64_t kTokens = 16384;  // batch x N per row
constexpr int64_t kHidden = 2048;   // Hq x D
constexpr int kMinRuns = 3;
constexpr double kMinSeconds = 0.3;  // time at least this long per row
constexpr float kInputRange = 1.7f;  // inputs uniform in [-r, r] (variance ~1)

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

  // Warm-up, then timed runs (the engine's stream serialises; sync brackets each).
  cuda_attention_forward(da, dout->data(), dlse->as<float>(), nullptr);
  e.sync();
  std::vector<double> times;
  double total = 0;
  while (static_cast<int>(times.size()) < kMinRuns || total < kMinSeconds) {
    const double t = cuda_time_forward(da, dout->data(), dlse->as<float>());
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

std::string table(const std::vector<Row>& rows, const CudaDeviceInfo& dev) {
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
    const std::string t = table(rows, dev);
    if (!table_file.empty()) std::ofstream(table_file) << t;
    std::printf("\n%s", t.c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ringattn-gpu-bench: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
