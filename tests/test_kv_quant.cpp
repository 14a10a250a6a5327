// Attention over quantized K/V (ringattn/quant.hpp): the kernel dequantizes
// while it packs its tiles, so its result must equal the float64 reference
// run on the dequantized values within float32 tolerance, for every format,
// mask and ISA; the error against exact attention is reported and bounded by
// a ceiling a bug would break.
//
// What quantization must cost on N(0, 1) inputs: a group of 64 has max|x| of
// about 2.5, so the INT8 step is 2.5 / 127 ~ 0.020 and its rounding error has
// rms 0.020 / sqrt(12) ~ 0.0057 of the values' scale. V's error passes to O
// in proportion (O averages V rows and their errors alike), K's perturbs the
// weights by about as much: O's relative error ~ sqrt(2) x 0.0057 ~ 0.8%
// (measured 0.7-0.9%). INT4 (step 2.5 / 7) is 18x coarser: ~14%. The
// ceilings below are about 1.5x those, so a wrong scale or code breaks them.
#include <gtest/gtest.h>

#include <cstdio>
#include <vector>

#include "ringattn/error.hpp"
#include "ringattn/kernel.hpp"
#include "ringattn/quant.hpp"
#include "ringattn/reference.hpp"
#include "util.hpp"

namespace ringattn {
namespace {

constexpr double kInt8Ceiling = 1.2e-2;  // O rel. error vs exact, groups of 64 (see above)
constexpr double kInt4Ceiling = 0.22;

std::size_t at(int64_t i) {
  return static_cast<std::size_t>(i);
}

// K or V [B, n, H, D] float32 quantized row by row (token-heads).
struct Quantized {
  std::vector<uint8_t> buf;
  QuantRows rows;
  std::vector<float> dequant;  // [B, n, H, D]
};
Quantized quantize(const Tensor& t, const QuantFormat& f, int64_t d) {
  Quantized q;
  const int64_t rows = t.numel() / d;
  q.buf.resize(at(rows * f.row_bytes(d)));
  q.rows = QuantRows::in_buffer(f, rows, d, q.buf.data());
  quantize_rows(t.as<float>(), rows, q.rows);
  q.dequant.resize(at(rows * d));
  dequantize_rows(q.rows, 0, rows, q.dequant.data());
  return q;
}

TEST(KvQuant, KernelEqualsTheReferenceOnDequantizedValues) {
  const int64_t b = 2, n = 203, hq = 4, hkv = 2, d = 64;
  test::Problem p = test::make_problem(b, n, n, hq, hkv, d, DType::f32, 7);
  const ReferenceResult exact = reference_attention(p.args);
  for (QuantBits bits : {QuantBits::int8, QuantBits::int4})
    for (bool asym : {false, true})
      for (int g : {32, 64}) {
        QuantFormat f;
        f.bits = bits, f.group = g, f.asymmetric = asym;
        SCOPED_TRACE(f.describe());
        const Quantized kq = quantize(p.k, f, d), vq = quantize(p.v, f, d);
        for (const Mask& m : {Mask::none(), Mask::causal(0)}) {
          AttentionArgs a = p.args;
          a.mask = m;
          a.kq = kq.rows, a.vq = vq.rows, a.k = nullptr, a.v = nullptr;
          AttentionArgs deq = p.args;
          deq.mask = m, deq.k = kq.dequant.data(), deq.v = vq.dequant.data();
          const ReferenceResult ref = reference_attention(deq);
          for (Isa isa : {Isa::automatic, Isa::generic}) {
            const test::Output out = test::run_kernel(a, isa);
            const ErrorStats e = compare_to_reference(a, out.o.data(), out.lse.data(), ref);
            const Tolerance tol = tolerance_for(DType::f32);
            EXPECT_LE(e.o_rel_fro, tol.o_rel_fro);
            EXPECT_LE(e.lse_max_scaled, tol.lse_max_abs);
            EXPECT_EQ(e.lse_mismatch, 0);
          }
          // Against exact attention: what quantization costs (reported, bounded).
          AttentionArgs ex = p.args;
          ex.mask = m;
          const ReferenceResult exact_m = m.is_none() ? exact : reference_attention(ex);
          const test::Output out = test::run_kernel(a);
          const ErrorStats e = compare_to_reference(ex, out.o.data(), out.lse.data(), exact_m);
          std::printf("  %-16s %-7s O rel. error vs exact %.2e\n", f.describe().c_str(),
                      m.is_none() ? "full" : "causal", e.o_rel_fro);
          if (g == 64) {
            EXPECT_LE(e.o_rel_fro, bits == QuantBits::int8 ? kInt8Ceiling : kInt4Ceiling);
          }
        }
      }
}

TEST(KvQuant, BadQuantizedArgumentsAreErrors) {
  test::Problem p = test::make_problem(1, 16, 16, 2, 2, 64, DType::f32, 3);
  QuantFormat f;
  f.bits = QuantBits::int8;
  const Quantized kq = quantize(p.k, f, 64), vq = quantize(p.v, f, 64);
  AttentionArgs a = p.args;
  a.kq = kq.rows, a.vq = vq.rows;
  a.vq.rows = 3;  // fewer rows than B nk Hkv
  EXPECT_THROW(test::run_kernel(a), FieldError);
  a.vq = vq.rows;
  a.vq.fmt.bits = QuantBits::int4;  // K and V in different formats
  EXPECT_THROW(test::run_kernel(a), FieldError);
  a.vq = vq.rows;
  a.kq.fmt.group = 48;
  EXPECT_THROW(test::run_kernel(a), FieldError);
}

}  // namespace
}  // namespace ringattn
