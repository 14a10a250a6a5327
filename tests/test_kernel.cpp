// The CPU kernel against the float64 reference on random inputs.
#include <gtest/gtest.h>

#include <cmath>

#include "ringattn/error.hpp"
#include "ringattn/kernel.hpp"
#include "ringattn/reference.hpp"
#include "util.hpp"

namespace ringattn {
namespace {

using test::check_rows;
using test::make_problem;
using test::run_kernel;

constexpr double kTolO = 1e-5;    // relative Frobenius error of O, float32
constexpr double kTolLse = 1e-4;  // max |LSE error|, float32

void expect_matches_reference(const AttentionArgs& a, Isa isa, const std::string& what) {
  const test::Output out = run_kernel(a, isa);
  const std::vector<int64_t> rows = check_rows(a.nq);
  const ReferenceResult ref = reference_attention_rows(a, rows);
  const ErrorStats e = compare_to_reference(a, out.o.data(), out.lse.data(), ref, rows);
  EXPECT_LE(e.o_rel_fro, kTolO) << what;
  EXPECT_LE(e.lse_max_abs, kTolLse) << what;
  EXPECT_EQ(e.lse_mismatch, 0) << what;
}

std::vector<Isa> isas_here() {
  std::vector<Isa> v;
  for (Isa i : {Isa::avx512, Isa::avx2, Isa::generic})
    if (isa_supported(i)) v.push_back(i);
  return v;
}

// Every N, D, head layout and mask appears; heads and batch cycle across the
// grid so each value meets several others without running the full product.
TEST(Kernel, GridAgainstReference) {
  const int64_t ns[] = {1, 7, 128, 1000, 4096};
  const int64_t ds[] = {8, 64, 80, 128, 256};
  const int64_t heads[][2] = {{8, 8}, {8, 2}, {8, 1}};
  int cases = 0;
  for (int in = 0; in < 5; ++in)
    for (int id = 0; id < 5; ++id)
      for (int causal = 0; causal < 2; ++causal) {
        const int64_t n = ns[in], d = ds[id];
        const auto& h = heads[(in + id + causal) % 3];
        const int64_t b = (n <= 1000 && (in + id) % 2 == 0) ? 3 : 1;
        test::Problem p = make_problem(b, n, n, h[0], h[1], d, DType::f32, 100 + cases);
        if (causal) p.args.mask = Mask::causal(0);
        if (test::kSanitized && n * d > 4096 * 64) continue;
        for (Isa isa : isas_here()) {
          // The other ISAs on the smaller cases (they are slower, and the same algorithm).
          if (isa != best_isa() && n * d > (test::kSanitized ? 128 * 128 : 1000 * 128)) continue;
          expect_matches_reference(
              p.args, isa,
              "N=" + std::to_string(n) + " D=" + std::to_string(d) + " H=" + std::to_string(h[0]) +
                  "/" + std::to_string(h[1]) + " B=" + std::to_string(b) +
                  " causal=" + std::to_string(causal) + " isa=" + isa_name(isa));
        }
        ++cases;
      }
}

// One test per ISA, so a CPU without one shows it as skipped (the grid above
// covers only the ISAs this CPU has): every storage dtype, MHA/GQA, full/causal.
class KernelIsa : public ::testing::TestWithParam<Isa> {};

TEST_P(KernelIsa, MatchesReference) {
  const Isa isa = GetParam();
  if (!isa_supported(isa)) GTEST_SKIP() << "this CPU does not support " << isa_name(isa);
  int seed = 500;
  for (const DType dt : {DType::f32, DType::f16, DType::bf16})
    for (const int64_t d : {64, 128})
      for (const bool causal : {false, true}) {
        test::Problem p = make_problem(1, 300, 300, 4, causal ? 1 : 4, d, dt, seed++);
        if (causal) p.args.mask = Mask::causal(0);
        expect_matches_reference(p.args, isa,
                                 std::string(dtype_name(dt)) + " D=" + std::to_string(d) +
                                     (causal ? " causal" : " full") + " isa=" + isa_name(isa));
      }
}

INSTANTIATE_TEST_SUITE_P(Isas, KernelIsa, ::testing::Values(Isa::avx512, Isa::avx2, Isa::generic),
                         [](const ::testing::TestParamInfo<Isa>& i) { return isa_name(i.param); });

// P.V reads V in column blocks of kColsPV vectors per 128-key tile, then the
// columns left over: head dims whose padded width leaves 0 to 3 vectors over,
// a last tile of 44 keys, and a band whose edges start P.V inside a tile.
TEST(Kernel, VColumnBlocksOfEveryWidth) {
  int seed = 900;
  for (Isa isa : isas_here())
    for (const int64_t d : {8, 24, 40, 72, 96, 112, 136})
      for (const bool band : {false, true}) {
        test::Problem p = make_problem(1, 300, 300, 2, 1, d, DType::f32, seed++);
        if (band) p.args.mask = Mask::band(-70, 30);
        expect_matches_reference(
            p.args, isa,
            "D=" + std::to_string(d) + (band ? " band" : " full") + " isa=" + isa_name(isa));
      }
}

TEST(Kernel, CrossAttentionAndBottomRightCausal) {
  struct Case {
    int64_t nq, nk;
    bool causal;
  };
  // Nq > Nk with causal: the first Nq - Nk rows see no key at all.
  for (const Case c : {Case{300, 1000, false}, Case{1000, 300, false}, Case{200, 777, true},
                       Case{777, 200, true}, Case{1, 4099, true}, Case{129, 1, false}}) {
    test::Problem p = make_problem(2, c.nq, c.nk, 4, 2, 64, DType::f32, 7);
    if (c.causal) p.args.mask = Mask::causal(c.nk - c.nq);
    for (Isa isa : isas_here())
      expect_matches_reference(p.args, isa,
                               "Nq=" + std::to_string(c.nq) + " Nk=" + std::to_string(c.nk) +
                                   " causal=" + std::to_string(c.causal) + " isa=" + isa_name(isa));
  }
}

TEST(Kernel, GlobalPositionsAndStrides) {
  // A chunk of queries against another rank's key block, contiguous and striped.
  struct Case {
    Positions qp, kp;
    Mask mask;
  };
  const Case cases[] = {
      {{5000, 1}, {4500, 1}, Mask::causal(0)},  // keys straddle the diagonal
      {{5000, 1}, {9000, 1}, Mask::causal(0)},  // all keys in the future: every row empty
      {{5000, 1}, {0, 1}, Mask::causal(0)},     // all keys in the past: full tiles
      {{3, 4}, {1, 4}, Mask::causal(0)},        // striped, P = 4
      {{0, 3}, {2, 3}, Mask::causal(0)},        // striped, key offset above query offset
      {{100, 1}, {0, 2}, Mask::band(-64, 16)},  // a band (window) in global positions
  };
  int i = 0;
  for (const Case& c : cases) {
    test::Problem p = make_problem(1, 500, 700, 8, 2, 128, DType::f32, 40 + i);
    p.args.qpos = c.qp;
    p.args.kpos = c.kp;
    p.args.mask = c.mask;
    for (Isa isa : isas_here())
      expect_matches_reference(p.args, isa, "case " + std::to_string(i) + " isa=" + isa_name(isa));
    ++i;
  }
}

TEST(Kernel, SparsePatternsAgainstReference) {
  for (const test::NamedMask& nm : test::sparse_patterns(1000)) {
    test::Problem p = make_problem(1, 1000, 1000, 4, 2, 64, DType::f32, 61);
    p.args.mask = nm.mask;
    for (Isa isa : isas_here())
      expect_matches_reference(p.args, isa, nm.name + " " + isa_name(isa));
    // Striped positions (one rank's share under P = 3) see the same pattern.
    test::Problem s = make_problem(1, 333, 333, 4, 2, 64, DType::f32, 62);
    s.args.mask = nm.mask;
    s.args.qpos = {1, 3};
    s.args.kpos = {2, 3};
    expect_matches_reference(s.args, best_isa(), nm.name + " striped");
  }
}

TEST(Kernel, WindowSkipsTilesOutsideTheBand) {
  test::Problem p = make_problem(1, 4096, 4096, 1, 1, 64, DType::f32, 63);
  Mask m = Mask::causal(0);
  m.lo = -255;
  p.args.mask = m;
  const test::Output out = run_kernel(p.args);
  // 43 query blocks of 96 rows; each touches at most 4 key tiles of 128 around
  // its diagonal instead of up to 32.
  EXPECT_LE(out.stats.tiles_computed, 43 * 4);
  EXPECT_EQ(out.stats.tiles_total, 43 * 32);
}

TEST(Kernel, LongBandsPackOnlyTheKeysOfEachChunk) {
  // More query rows than one packing chunk (64 blocks of 96): each chunk packs
  // only the keys its band reaches. Windows behind and ahead, dilation, cross
  // attention (bottom-right causal), strided positions, batch 2, GQA, float16,
  // against the float64 reference on sampled rows of every chunk.
  struct Case {
    const char* name;
    int64_t nq, nk, stride;
    Mask m;
    DType dt;
  };
  Mask window = Mask::causal(0);
  window.lo = -700;
  Mask dilated = window;
  dilated.dilation = 3;
  Mask ahead = Mask::band(-40, 300);
  Mask cross = Mask::causal(13900 - 13000);
  cross.lo = -500;
  const Case cases[] = {{"causal window 701", 13000, 13000, 1, window, DType::f32},
                        {"dilated window", 13000, 13000, 1, dilated, DType::f16},
                        {"band -40..300", 13000, 13000, 1, ahead, DType::f32},
                        {"cross 13000 x 13900", 13000, 13900, 1, cross, DType::bf16},
                        {"strided positions", 13000, 13000, 3, window, DType::f32}};
  uint64_t seed = 900;
  for (const Case& c : cases) {
    test::Problem p = make_problem(2, c.nq, c.nk, 4, 2, 32, c.dt, seed++);
    p.args.mask = c.m;
    p.args.qpos = {5, c.stride}, p.args.kpos = {5, c.stride};
    const int64_t packed = kernel_packed_keys(c.m, p.args.qpos, c.nq, p.args.kpos, c.nk);
    // A chunk of 6144 rows plus its band's width (and panel rounding), not every key.
    const int64_t width = (std::min(c.m.hi, c.m.limit) - c.m.lo + 1) / c.stride;
    EXPECT_LE(packed, 64 * 96 + width + 2 * 32) << c.name;
    EXPECT_LT(packed, c.nk * 6 / 10) << c.name;
    std::vector<int64_t> rows = check_rows(c.nq, 200);
    const test::Output out = run_kernel(p.args, best_isa());
    const ReferenceResult ref = reference_attention_rows(p.args, rows);
    const ErrorStats e = compare_to_reference(p.args, out.o.data(), out.lse.data(), ref, rows);
    EXPECT_LE(e.o_rel_fro, c.dt == DType::f32 ? kTolO : 1e-2) << c.name;
    EXPECT_LE(e.lse_max_abs, kTolLse) << c.name;
    EXPECT_EQ(e.lse_mismatch, 0) << c.name;
  }
  // Without a lower bound (plain causal) every chunk may see key 0: all keys.
  EXPECT_EQ(kernel_packed_keys(Mask::causal(0), {0, 1}, 13000, {0, 1}, 13000), 13000);
}

TEST(Kernel, FmaPeakProbeRunsOnEveryIsaHere) {
  // A rate, not a timing assertion: finite and positive on each ISA this CPU has.
  for (const Isa isa : isas_here()) {
    const double g = measure_fma_peak_gflops(isa, 1, 0.02);
    EXPECT_TRUE(std::isfinite(g) && g > 0) << isa_name(isa) << ": " << g;
  }
}

TEST(Kernel, EmptyRowsAreZeroWithMinusInfLse) {
  test::Problem p = make_problem(1, 50, 60, 2, 2, 16, DType::f32, 3);
  p.args.mask = Mask::band(5, 4);  // an empty band: nothing visible
  const test::Output out = run_kernel(p.args);
  for (float x : out.o) ASSERT_EQ(x, 0.0f);
  for (float x : out.lse) ASSERT_EQ(x, -INFINITY);
  EXPECT_EQ(out.stats.tiles_computed, 0);
  // No keys at all (a rank holding zero tokens): the same.
  p.args.nk = 0;
  const test::Output none = run_kernel(p.args);
  for (float x : none.lse) ASSERT_EQ(x, -INFINITY);
}

TEST(Kernel, SkipsEmptyCausalTiles) {
  test::Problem p = make_problem(1, 1024, 1024, 1, 1, 64, DType::f32, 9);
  p.args.mask = Mask::causal(0);
  const test::Output out = run_kernel(p.args);
  // 96-row query blocks against 128-key tiles: count by brute force over tiles.
  int64_t nonempty = 0, total = 0;
  for (int64_t q0 = 0; q0 < 1024; q0 += 96)
    for (int64_t k0 = 0; k0 < 1024; k0 += 128) {
      ++total;
      nonempty += k0 <= std::min<int64_t>(q0 + 95, 1023);
    }
  EXPECT_EQ(out.stats.tiles_total, total);
  EXPECT_EQ(out.stats.tiles_computed, nonempty);
  EXPECT_LT(out.stats.tiles_computed, out.stats.tiles_total * 2 / 3);  // about half skipped
}

TEST(Kernel, ScaleOption) {
  test::Problem p = make_problem(1, 100, 100, 2, 1, 32, DType::f32, 11);
  p.args.scale = 0.37f;
  expect_matches_reference(p.args, best_isa(), "scale 0.37");
}

TEST(Kernel, ResultIndependentOfThreadCount) {
  test::Problem p = make_problem(2, 500, 500, 4, 2, 64, DType::f32, 13);
  p.args.mask = Mask::causal(0);
  const test::Output one = run_kernel(p.args, Isa::automatic, 1);
  const test::Output two = run_kernel(p.args, Isa::automatic, 2);
  EXPECT_EQ(one.o, two.o);  // each row is computed by exactly one task: bitwise equal
  EXPECT_EQ(one.lse, two.lse);
}

// A task runs up to four query blocks of a head together, each key tile for
// all of them in turn. One thread over 42 blocks (the last of 64 rows) gets
// tasks of four blocks, eleven threads tasks of one: the same bits, and the
// reference, under masks whose blocks see different tile ranges, and kept keys.
TEST(Kernel, TasksOfSeveralBlocksEqualTasksOfOne) {
  const int64_t n = 4000;
  std::vector<test::NamedMask> masks = {{"full", Mask::none()}, {"causal", Mask::causal(0)}};
  for (const test::NamedMask& nm : test::sparse_patterns(n))
    if (nm.name == "causal window 64 + 4 sinks" || nm.name == "window 32 + global tokens")
      masks.push_back(nm);
  std::vector<uint8_t> flags(static_cast<std::size_t>(2 * n));
  for (std::size_t i = 0; i < flags.size(); ++i) flags[i] = (i * 2654435761u >> 7) % 4 != 0;
  int seed = 1200;
  for (const test::NamedMask& nm : masks)
    for (const bool keep : {false, true}) {
      if (test::kSanitized && keep) continue;
      test::Problem p = make_problem(1, n, n, 4, 2, 64, DType::f32, seed++);
      p.args.mask = nm.mask;
      if (keep) p.args.keep = {flags.data(), 2, n, false};
      const std::string what = nm.name + (keep ? " kept keys" : "");
      const test::Output grouped = run_kernel(p.args, Isa::automatic, 1);
      const test::Output single = run_kernel(p.args, Isa::automatic, 11);
      EXPECT_EQ(grouped.o, single.o) << what;
      EXPECT_EQ(grouped.lse, single.lse) << what;
      EXPECT_EQ(grouped.stats.tiles_computed, single.stats.tiles_computed) << what;
      EXPECT_EQ(grouped.stats.tiles_total, 4 * 42 * 32) << what;
      if (keep) continue;  // the literal reference of kept keys: test_kv_select.cpp
      const std::vector<int64_t> rows = check_rows(n, 200);
      const ReferenceResult ref = reference_attention_rows(p.args, rows);
      const ErrorStats e =
          compare_to_reference(p.args, grouped.o.data(), grouped.lse.data(), ref, rows);
      EXPECT_LE(e.o_rel_fro, kTolO) << what;
      EXPECT_LE(e.lse_max_abs, kTolLse) << what;
      EXPECT_EQ(e.lse_mismatch, 0) << what;
    }
}

// On a CPU with AVX512_BF16, bfloat16 Q and K make the AVX-512 forward compute
// S on VDPBF16PS from K packed in pairs of columns: head dims that leave an odd
// number of pairs past d (8, 24, 72, 136), the largest (256), GQA, batch 2,
// masks whose partial tiles start S inside a panel, and kept keys; against
// float64 and within the float32-conversion path's error (the plain AVX-512
// table, which the importance pass still uses, gives the reference's numbers too).
TEST(Kernel, Bfloat16DotProductsOnAvx512Bf16) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (!isa_supported(Isa::avx512) || !__builtin_cpu_supports("avx512bf16"))
    GTEST_SKIP() << "this CPU has no AVX512_BF16";
#else
  GTEST_SKIP() << "x86-64 only";
#endif
  const std::vector<test::NamedMask> masks = {
      {"full", Mask::none()}, {"causal", Mask::causal(0)}, {"band -70..+30", Mask::band(-70, 30)}};
  int seed = 1300;
  for (const int64_t d : {8, 24, 64, 72, 128, 136, 256})
    for (const test::NamedMask& nm : masks) {
      if (test::kSanitized && d > 128) continue;
      test::Problem p = make_problem(2, 300, 300, 4, 2, d, DType::bf16, seed++);
      p.args.mask = nm.mask;
      const std::string what = "D=" + std::to_string(d) + " " + nm.name;
      const test::Output out = run_kernel(p.args, Isa::avx512);
      const std::vector<int64_t> rows = check_rows(p.args.nq);
      const ReferenceResult ref = reference_attention_rows(p.args, rows);
      const ErrorStats e = compare_to_reference(p.args, out.o.data(), out.lse.data(), ref, rows);
      EXPECT_LE(e.o_rel_fro, kTolO) << what;
      EXPECT_LE(e.lse_max_abs, kTolLse) << what;
      EXPECT_EQ(e.lse_mismatch, 0) << what;
    }
  // Kept keys: the rows whose kept keys are all hidden are empty, as on every path.
  test::Problem p = make_problem(1, 500, 500, 2, 1, 64, DType::bf16, 1390);
  p.args.mask = Mask::causal(0);
  std::vector<uint8_t> flags(500);
  for (std::size_t i = 0; i < flags.size(); ++i) flags[i] = i % 3 != 1 && (i < 200 || i > 260);
  p.args.keep = {flags.data(), 1, 500, false};
  const test::Output dot = run_kernel(p.args, Isa::avx512);
  const test::Output conv = run_kernel(p.args, Isa::avx2);
  double worst = 0;
  for (std::size_t i = 0; i < dot.o.size(); ++i)
    worst = std::max(worst, double(std::abs(dot.o[i] - conv.o[i])));
  EXPECT_LE(worst, 1e-5);
  for (std::size_t i = 0; i < dot.lse.size(); ++i) {
    EXPECT_EQ(std::isinf(dot.lse[i]), std::isinf(conv.lse[i])) << "row " << i;
    if (std::isfinite(conv.lse[i])) {
      EXPECT_NEAR(dot.lse[i], conv.lse[i], 1e-5) << "row " << i;
    }
  }
}

// float16/bfloat16 storage: error of the kernel's output (rounded to the
// storage dtype) against the float64 reference on the same rounded inputs is
// within 2x that of a naive float32 computation rounded the same way.
struct Naive {
  std::vector<float> o;
};
Naive naive_f32(const AttentionArgs& a) {
  Naive r;
  const int64_t d = a.head_dim, g = a.hq / a.hkv;
  r.o.assign(static_cast<std::size_t>(a.batch * a.nq * a.hq * d), 0.0f);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  std::vector<float> s(static_cast<std::size_t>(a.nk));
  for (int64_t b = 0; b < a.batch; ++b)
    for (int64_t h = 0; h < a.hq; ++h)
      for (int64_t i = 0; i < a.nq; ++i) {
        const int64_t hk = h / g;
        float mx = -INFINITY;
        for (int64_t j = 0; j < a.nk; ++j) {
          float acc = 0;
          for (int64_t c = 0; c < d; ++c)
            acc += load_as_f32(a.q, a.dtype,
                               static_cast<std::size_t>(((b * a.nq + i) * a.hq + h) * d + c)) *
                   load_as_f32(a.k, a.dtype,
                               static_cast<std::size_t>(((b * a.nk + j) * a.hkv + hk) * d + c));
          s[static_cast<std::size_t>(j)] =
              a.mask.allows(a.qpos.at(i), a.kpos.at(j)) ? acc * scale : -INFINITY;
          mx = std::max(mx, s[static_cast<std::size_t>(j)]);
        }
        float sum = 0;
        for (float& x : s) sum += (x = mx == -INFINITY ? 0.0f : std::exp(x - mx));
        for (int64_t c = 0; c < d; ++c) {
          float acc = 0;
          for (int64_t j = 0; j < a.nk; ++j)
            acc += s[static_cast<std::size_t>(j)] *
                   load_as_f32(a.v, a.dtype,
                               static_cast<std::size_t>(((b * a.nk + j) * a.hkv + hk) * d + c));
          r.o[static_cast<std::size_t>(((b * a.nq + i) * a.hq + h) * d + c)] =
              sum > 0 ? acc / sum : 0.0f;
        }
      }
  return r;
}

double rel_fro_rounded(const std::vector<float>& o, DType dt, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < o.size(); ++i) {
    const double e = double(round_to(dt, o[i])) - ref[i];
    num += e * e;
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / den);
}

TEST(Kernel, HalfPrecisionStorage) {
  for (DType dt : {DType::f16, DType::bf16})
    for (int causal = 0; causal < 2; ++causal) {
      test::Problem p = make_problem(1, 300, 300, 4, 2, 64, dt, 21);
      if (causal) p.args.mask = Mask::causal(0);
      const ReferenceResult ref = reference_attention(p.args);
      const Naive nv = naive_f32(p.args);
      const double naive_err = rel_fro_rounded(nv.o, dt, ref.o);
      for (Isa isa : isas_here()) {
        const test::Output out = run_kernel(p.args, isa);
        const double err = rel_fro_rounded(out.o, dt, ref.o);
        EXPECT_LE(err, 2.0 * naive_err)
            << dtype_name(dt) << " causal=" << causal << " isa=" << isa_name(isa);
        const ErrorStats e = compare_to_reference(p.args, out.o.data(), out.lse.data(), ref);
        EXPECT_LE(e.lse_max_abs, kTolLse);  // LSE is float32 from exactly stored inputs
      }
    }
}

// The ISAs convert 16-bit storage in registers (F16C, a shift for bfloat16):
// subnormals, the extremes of the range, signed zeros and rows whose length is
// not a whole vector (D = 72) must give the values the scalar rule gives (the
// float64 reference converts with it).
TEST(Kernel, SixteenBitExtremesConvertLikeTheScalarRule) {
  // Bit patterns: +-0, the smallest and largest subnormal, the smallest normal
  // (the "small" ones, 0-4), the largest finite and ordinary values.
  const uint16_t f16_bits[] = {0x0000, 0x8000, 0x0001, 0x83ff, 0x0400, 0x7bff, 0xfbff, 0x3c00};
  const uint16_t bf16_bits[] = {0x0000, 0x8000, 0x0001, 0x807f, 0x0080, 0x4f00, 0xcf00, 0x3f80};
  for (DType dt : {DType::f16, DType::bf16})
    for (bool small_only : {true, false}) {
      test::Problem p = make_problem(1, 64, 200, 2, 1, 72, dt, 31);
      uint16_t* q = p.q.as<uint16_t>();
      uint16_t* k = p.k.as<uint16_t>();
      uint16_t* v = p.v.as<uint16_t>();
      const uint16_t* bits = dt == DType::f16 ? f16_bits : bf16_bits;
      // V: every value small (O is made of subnormals), or the extremes among
      // ordinary values; Q and K take the small ones (scores stay in range).
      if (small_only)
        for (int64_t i = 0; i < p.v.numel(); ++i) v[i] = bits[(i * 7 + i / 72) % 5];
      else
        for (int64_t i = 0; i < p.v.numel(); i += 3) v[i] = bits[(i / 3) % 8];
      for (int64_t i = 1; i < p.k.numel(); i += 7) k[i] = bits[(i / 7) % 5];
      for (int64_t i = 2; i < p.q.numel(); i += 5) q[i] = bits[(i / 5) % 5];
      const ReferenceResult ref = reference_attention(p.args);
      for (Isa isa : isas_here()) {
        const std::string what = std::string(dtype_name(dt)) +
                                 (small_only ? " small" : " extremes") + " isa=" + isa_name(isa);
        const test::Output out = run_kernel(p.args, isa);
        const ErrorStats e = compare_to_reference(p.args, out.o.data(), out.lse.data(), ref);
        EXPECT_LE(e.o_rel_fro, kTolO) << what;
        EXPECT_LE(e.lse_max_abs, kTolLse) << what;
        EXPECT_EQ(e.lse_mismatch, 0) << what;
      }
    }
}

TEST(Kernel, RejectsBadArguments) {
  test::Problem p = make_problem(1, 8, 8, 6, 4, 64, DType::f32, 1);
  EXPECT_THROW(run_kernel(p.args), Error);  // 6 % 4 != 0
  p.args.hkv = 3;
  p.args.head_dim = 12;
  EXPECT_THROW(run_kernel(p.args), Error);  // not a multiple of 8
  p.args.head_dim = 264;
  EXPECT_THROW(run_kernel(p.args), Error);
  p.args.head_dim = 64;
  p.args.scale = NAN;
  EXPECT_THROW(run_kernel(p.args), Error);
}

}  // namespace
}  // namespace ringattn
