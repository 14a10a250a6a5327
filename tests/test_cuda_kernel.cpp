// The CUDA kernel, the GPU merge and the CUDA engine against the float64
// reference (GPU only: skipped with the CUDA error where there is no GPU).
// Accuracy bar: the kernel's relative error of O must be within 2x that of
// the naive low-precision computation (gpu_util.hpp) on the same inputs.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "gpu_util.hpp"
#include "ringattn/error.hpp"
#include "ringattn/reference.hpp"
#include "ringattn/state.hpp"

namespace ringattn {
namespace {

using test::check_rows;
using test::make_problem;

constexpr double kVsNaive = 2.0;     // kernel error <= 2x the naive low-precision error
constexpr double kFloorO = 1e-6;     // ... plus this, for problems where both are ~0
constexpr double kTolLse = 2e-3;     // max |LSE error| (scores accumulate in float32)
constexpr double kTolStateO = 2e-5;  // float32 partial states vs the CPU merge
constexpr int kSanitizedMaxN = 1000;

class CudaKernel : public test::GpuTest {
 protected:
  // Runs the kernel with O in the storage dtype and checks it.
  void check(const test::Problem& p, const std::string& what) {
    test::DeviceProblem d = test::to_device(*engine, p);
    const AttentionArgs& a = p.args;
    const std::size_t on = static_cast<std::size_t>(a.batch * a.nq * a.hq * a.head_dim);
    const std::size_t ln = static_cast<std::size_t>(a.batch * a.hq * a.nq);
    auto o = engine->alloc(on * 2, "o");
    auto lse = engine->alloc(ln * sizeof(float), "lse");
    cuda_attention_forward(d.dev, o->data(), lse->as<float>(), stream());
    engine->sync();
    std::vector<uint16_t> o16(on);
    engine->to_host(o16.data(), o->data(), on * 2);
    std::vector<float> of(on), lf = download<float>(*lse, ln);
    for (std::size_t i = 0; i < on; ++i) of[i] = load_as_f32(o16.data(), a.dtype, i);

    const std::vector<int64_t> rows = check_rows(a.nq, 48);
    const ReferenceResult ref = reference_attention_rows(a, rows);
    const ErrorStats e = compare_to_reference(a, of.data(), lf.data(), ref, rows);
    const std::vector<float> naive = test::naive_lowp_attention(a, rows);
    const ErrorStats en = compare_to_reference(a, naive.data(), lf.data(), ref, rows);
    EXPECT_LE(e.o_rel_fro, kVsNaive * en.o_rel_fro + kFloorO)
        << what << " (naive low-precision error " << en.o_rel_fro << ")";
    EXPECT_LE(e.lse_max_abs, kTolLse) << what;
    EXPECT_EQ(e.lse_mismatch, 0) << what;
  }
};

TEST_F(CudaKernel, GridAgainstReference) {
  const int64_t ns[] = {1, 7, 100, 128, 1000, 4096};
  const int64_t ds[] = {64, 128, 256};
  const int64_t heads[][2] = {{1, 1}, {4, 2}, {8, 1}};
  int c = 0;
  for (int64_t n : ns) {
    if (test::kSanitized && n > kSanitizedMaxN) continue;
    for (int64_t d : ds)
      for (bool causal : {false, true}) {
        const auto* h = heads[c % 3];
        const DType dt = c % 2 ? DType::f16 : DType::bf16;
        const int64_t batch = 1 + c % 2;
        ++c;
        test::Problem p = make_problem(batch, n, n, h[0], h[1], d, dt, 100 + c);
        if (causal) p.args.mask = Mask::causal(0);
        check(p, fmt::format("n {} d {} heads {}/{} {} causal {}", n, d, h[0], h[1], dtype_name(dt),
                             causal));
      }
  }
}

TEST_F(CudaKernel, CrossAttentionOffsetsAndStrides) {
  // Nq != Nk (bottom-right causal), global offsets, a striped key layout.
  for (auto [nq, nk] : {std::pair<int64_t, int64_t>{70, 300}, {300, 70}, {129, 1000}}) {
    test::Problem p = make_problem(1, nq, nk, 4, 4, 128, DType::bf16, 7);
    p.args.mask = Mask::causal(nk - nq);
    check(p, fmt::format("causal cross {}x{}", nq, nk));
    p.args.qpos = {1000, 1};
    p.args.kpos = {3, 4};  // striped: rank 3 of 4
    p.args.mask = Mask::causal(0);
    check(p, fmt::format("positions {}x{}", nq, nk));
  }
}

TEST_F(CudaKernel, SparsePatterns) {
  const int64_t n = test::kSanitized ? 300 : 1000;
  for (const test::NamedMask& m : test::sparse_patterns(n)) {
    test::Problem p = make_problem(1, n, n, 4, 2, 64, DType::bf16, 11);
    p.args.mask = m.mask;
    check(p, m.name);
  }
}

// The float32 partial state and its merge into a running state (fused in the
// kernel, and the merge kernel) give the reference of the whole key set.
TEST_F(CudaKernel, PartialsMergeToTheWhole) {
  const int64_t n = 777, d = 128, hq = 4;
  for (bool causal : {false, true}) {
    test::Problem p = make_problem(1, n, n, hq, 2, d, DType::bf16, 5);
    if (causal) p.args.mask = Mask::causal(0);
    test::DeviceProblem dp = test::to_device(*engine, p);
    const std::size_t on = static_cast<std::size_t>(n * hq * d),
                      ln = static_cast<std::size_t>(hq * n);
    auto fo = engine->alloc(on * 4, "fused o"), fl = engine->alloc(ln * 4, "fused lse");
    auto mo = engine->alloc(on * 4, "merged o"), ml = engine->alloc(ln * 4, "merged lse");
    auto po = engine->alloc(on * 4, "part o"), pl = engine->alloc(ln * 4, "part lse");
    const StateView fused{fo->as<float>(), fl->as<float>(), 1, n, hq, d};
    const StateView merged{mo->as<float>(), ml->as<float>(), 1, n, hq, d};
    const StateView part{po->as<float>(), pl->as<float>(), 1, n, hq, d};
    engine->clear(fused);
    engine->clear(merged);
    auto work = engine->alloc(RingEngine::partial_bytes(n, hq, d), "work");
    // Three key segments, the last first (order must not matter).
    const int64_t cuts[] = {0, 300, 301, n};
    for (int s : {2, 0, 1}) {
      AttentionArgs a = dp.dev;
      const int64_t k0 = cuts[s], nk = cuts[s + 1] - k0;
      const std::size_t off = static_cast<std::size_t>(k0 * 2 * d) * 2;
      a.k = static_cast<const char*>(dp.dev.k) + off;
      a.v = static_cast<const char*>(dp.dev.v) + off;
      a.nk = nk, a.kpos = {k0, 1};
      if (off % 16 != 0) continue;  // 16-byte alignment: every cut here is even
      engine->attend_merge(a, fused, 0, 0, *work);
      engine->attend(a, part.o, part.lse);
      engine->merge_rows(merged, 0, 0, part);
    }
    engine->sync();
    const std::vector<int64_t> rows = check_rows(n, 64);
    const ReferenceResult ref = reference_attention_rows(p.args, rows);
    for (const StateView* sv : {&fused, &merged}) {
      const auto o = download<float>(sv == &fused ? *fo : *mo, on);
      const auto l = download<float>(sv == &fused ? *fl : *ml, ln);
      const ErrorStats e = compare_to_reference(p.args, o.data(), l.data(), ref, rows);
      const std::vector<float> naive = test::naive_lowp_attention(p.args, rows);
      const ErrorStats en = compare_to_reference(p.args, naive.data(), l.data(), ref, rows);
      EXPECT_LE(e.o_rel_fro, kVsNaive * en.o_rel_fro + kFloorO)
          << (sv == &fused ? "fused" : "merge kernel");
      EXPECT_LE(e.lse_max_abs, kTolLse);
      EXPECT_EQ(e.lse_mismatch, 0);
    }
  }
}

// The merge kernel computes what the CPU merge computes, empty rows included.
TEST_F(CudaKernel, MergeKernelMatchesCpuMerge) {
  const int64_t b = 2, n = 37, h = 3, d = 100;  // any head dim: the merge is not tiled
  const std::size_t on = static_cast<std::size_t>(b * n * h * d),
                    ln = static_cast<std::size_t>(b * h * n);
  std::vector<float> oa(on), ob(on), la(ln), lb(ln);
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  for (auto& x : oa) x = nd(rng);
  for (auto& x : ob) x = nd(rng);
  for (std::size_t i = 0; i < ln; ++i) {
    la[i] = i % 5 == 0 ? -INFINITY : 3 * nd(rng);  // some empty rows on either side
    lb[i] = i % 7 == 0 ? -INFINITY : 3 * nd(rng);
  }
  auto da = upload(oa.data(), on * 4, "a o"), dla = upload(la.data(), ln * 4, "a lse");
  auto db = upload(ob.data(), on * 4, "b o"), dlb = upload(lb.data(), ln * 4, "b lse");
  cuda_merge_states({da->as<float>(), dla->as<float>(), b, n, h, d},
                    {db->as<float>(), dlb->as<float>(), b, n, h, d}, stream());
  merge_states({oa.data(), la.data(), b, n, h, d}, {ob.data(), lb.data(), b, n, h, d});
  const auto go = download<float>(*da, on), gl = download<float>(*dla, ln);
  for (std::size_t i = 0; i < ln; ++i) {
    if (std::isinf(la[i])) {
      EXPECT_EQ(gl[i], la[i]) << i;
    } else {
      EXPECT_NEAR(gl[i], la[i], 1e-5) << i;
    }
  }
  for (std::size_t i = 0; i < on; ++i) ASSERT_NEAR(go[i], oa[i], kTolStateO) << i;
  EXPECT_THROW(cuda_merge_states({da->as<float>(), dla->as<float>(), b, n, h, d},
                                 {db->as<float>(), dlb->as<float>(), b, n - 1, h, d}, stream()),
               Error);
  // merge_rows: a batch-1 part into rows 5..8 of batch 1, as the CPU engine does it.
  {
    auto cpu = make_cpu_engine();
    const StateView part_h{ob.data(), lb.data(), 1, 4, h, d};
    auto dpo = upload(ob.data(), static_cast<std::size_t>(4 * h * d) * 4, "part o");
    auto dpl = upload(lb.data(), static_cast<std::size_t>(h * 4) * 4, "part lse");
    cpu->merge_rows({oa.data(), la.data(), b, n, h, d}, 1, 5, part_h);
    engine->merge_rows({da->as<float>(), dla->as<float>(), b, n, h, d}, 1, 5,
                       {dpo->as<float>(), dpl->as<float>(), 1, 4, h, d});
    const auto ro = download<float>(*da, on), rl = download<float>(*dla, ln);
    for (std::size_t i = 0; i < ln; ++i)
      if (!std::isinf(la[i])) {
        EXPECT_NEAR(rl[i], la[i], 1e-5) << "merge_rows lse " << i;
      }
    for (std::size_t i = 0; i < on; ++i)
      ASSERT_NEAR(ro[i], oa[i], kTolStateO) << "merge_rows " << i;
  }
  // A part that does not fit.
  EXPECT_THROW(engine->merge_rows({da->as<float>(), dla->as<float>(), b, n, h, d}, 1, n - 3,
                                  {db->as<float>(), dlb->as<float>(), 1, 4, h, d}),
               Error);
}

TEST_F(CudaKernel, EmptyRowsAreMinusInfinityAndZero) {
  test::Problem p = make_problem(1, 64, 64, 2, 2, 64, DType::bf16, 9);
  p.args.mask = Mask::causal(-100);  // nothing visible
  test::DeviceProblem d = test::to_device(*engine, p);
  auto o = engine->alloc(64 * 2 * 64 * 4, "o"), l = engine->alloc(2 * 64 * 4, "lse");
  const KernelStats s = cuda_attention_partial(d.dev, o->as<float>(), l->as<float>(), stream());
  EXPECT_EQ(s.tiles_computed, 0);
  for (float x : download<float>(*o, 64 * 2 * 64)) ASSERT_EQ(x, 0.0f);
  for (float x : download<float>(*l, 2 * 64)) ASSERT_EQ(x, -INFINITY);
}

TEST_F(CudaKernel, RejectsWhatItCannotRun) {
  test::Problem p = make_problem(1, 8, 8, 1, 1, 96, DType::bf16, 1);
  test::DeviceProblem d = test::to_device(*engine, p);
  auto o = engine->alloc(8 * 96 * 2, "o"), l = engine->alloc(8 * 4, "lse");
  try {
    cuda_attention_forward(d.dev, o->data(), l->as<float>(), stream());
    FAIL() << "head dim 96 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("head dim 96 is not supported"), std::string::npos);
  }
}

}  // namespace
}  // namespace ringattn
