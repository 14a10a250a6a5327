// AVX-512 instantiation of the kernel (16 float lanes).
// Register blocks: S 12 rows x 32 keys (24 accumulators), PV 6 rows x 64 columns.
// GCC 12 reports false maybe-uninitialized warnings inside its own
// avx512fintrin.h (the _mm512_undefined_* idiom, GCC PR 105593).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "cpu/kernel_isa.hpp"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx2,fma")

namespace ringattn::cpu {
namespace {

struct Avx512 {
  using reg = __m512;
  static constexpr int lanes = 16;
  static constexpr int kRowsS = 12;
  static constexpr int kRowsPV = 6;
  static constexpr int kColsPV = 4;
  static reg zero() { return _mm512_setzero_ps(); }
  static reg load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, reg x) { _mm512_storeu_ps(p, x); }
  static reg set1(float s) { return _mm512_set1_ps(s); }
  static reg fma(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static reg mul(reg a, reg b) { return _mm512_mul_ps(a, b); }
  static reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  static reg sub(reg a, reg b) { return _mm512_sub_ps(a, b); }
  static reg max(reg a, reg b) { return _mm512_max_ps(a, b); }
  static float hmax(reg x) { return _mm512_reduce_max_ps(x); }
  static float hsum(reg x) { return _mm512_reduce_add_ps(x); }
  // 16 float16 / bfloat16 values as float32 (bfloat16 is the high half).
  static reg load_f16(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static reg load_bf16(const uint16_t* p) {
    const __m512i w =
        _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  }
  // 2^x for x <= 0: x = n + f, |f| <= 1/2; 2^f by a degree-6 polynomial; 2^n
  // added to the exponent field. Inputs below -125 (masked scores: -inf) give 0.
  static reg exp2(reg x) {
    const __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(kExp2Floor), _CMP_GE_OQ);
    x = _mm512_max_ps(x, _mm512_set1_ps(kExp2Floor));
    const reg n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const reg f = _mm512_sub_ps(x, n);
    reg p = _mm512_set1_ps(kExp2Poly[0]);
    for (int i = 1; i < 7; ++i) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2Poly[i]));
    const __m512i e = _mm512_slli_epi32(_mm512_cvtps_epi32(n), 23);
    const reg r = _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(p), e));
    return _mm512_maskz_mov_ps(live, r);
  }
};

}  // namespace
}  // namespace ringattn::cpu

#include "cpu/kernel_impl.hpp"
// after kernel_impl.hpp: it uses Impl<V>
#include "cpu/backward_impl.hpp"

namespace ringattn::cpu {
const IsaKernels& avx512_kernels() {
  return Impl<Avx512>::table(Isa::avx512);
}
const BackwardKernels& avx512_backward() {
  return BwdImpl<Avx512>::table(Isa::avx512);
}
}  // namespace ringattn::cpu

#pragma GCC pop_options
#else
namespace ringattn::cpu {
const IsaKernels& avx512_kernels() {
  return generic_kernels();
}
const BackwardKernels& avx512_backward() {
  return generic_backward();
}
}  // namespace ringattn::cpu
#endif
