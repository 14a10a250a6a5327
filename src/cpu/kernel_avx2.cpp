// AVX2 + FMA (+ F16C) instantiation of the kernel (8 float lanes, 16 registers).
// Register blocks: S 6 rows x 16 keys (12 accumulators), PV 6 rows x 16 columns.
#include <immintrin.h>

#include "cpu/kernel_isa.hpp"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")

namespace ringattn::cpu {
namespace {

struct Avx2 {
  using reg = __m256;
  static constexpr int lanes = 8;
  static constexpr bool kBf16Dot = false;  // S on VDPBF16PS (kernel_avx512bf16.cpp)
  static constexpr int kRowsS = 6;
  static constexpr int kRowsPV = 6;
  static constexpr int kColsPV = 2;
  static reg zero() { return _mm256_setzero_ps(); }
  static reg load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, reg x) { _mm256_storeu_ps(p, x); }
  static reg set1(float s) { return _mm256_set1_ps(s); }
  static reg fma(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static reg mul(reg a, reg b) { return _mm256_mul_ps(a, b); }
  static reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  static reg sub(reg a, reg b) { return _mm256_sub_ps(a, b); }
  static reg max(reg a, reg b) { return _mm256_max_ps(a, b); }
  static float hmax(reg x) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
  }
  static float hsum(reg x) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
  }
  // 8 float16 / bfloat16 values as float32 (F16C; bfloat16 is the high half).
  static reg load_f16(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static reg load_bf16(const uint16_t* p) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
  // 2^x = 2^f 2^n (n = round(x), |f| <= 1/2): the polynomial for 2^f, and n
  // added to its exponent. At the floor (-127) n = -127 and f = 0 give
  // 1.0 - 127 in the exponent field: +0.0 exactly; just above it, subnormals.
  static reg exp2(reg x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(kExp2Floor));  // also NaN -> the floor
    const reg n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const reg f = _mm256_sub_ps(x, n);
    reg p = _mm256_set1_ps(kExp2Poly[0]);
    for (int i = 1; i < kExp2Terms; ++i) p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kExp2Poly[i]));
    const __m256i e = _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23);
    return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e));
  }
};

}  // namespace
}  // namespace ringattn::cpu

#include "cpu/kernel_impl.hpp"
// after kernel_impl.hpp: it uses Impl<V>
#include "cpu/backward_impl.hpp"

namespace ringattn::cpu {
const IsaKernels& avx2_kernels() {
  return Impl<Avx2>::table(Isa::avx2);
}
const BackwardKernels& avx2_backward() {
  return BwdImpl<Avx2>::table(Isa::avx2);
}
}  // namespace ringattn::cpu

#pragma GCC pop_options
#else
namespace ringattn::cpu {
const IsaKernels& avx2_kernels() {
  return generic_kernels();
}
const BackwardKernels& avx2_backward() {
  return generic_backward();
}
}  // namespace ringattn::cpu
#endif
