// The AVX-512 vector type of the kernel (16 float lanes), shared by
// kernel_avx512.cpp and kernel_avx512bf16.cpp. Include it after switching the
// AVX-512 target on (#pragma GCC target): it has internal linkage, so each
// file gets its own copy compiled for its own target.
#pragma once

#include <immintrin.h>

#include "cpu/kernel_isa.hpp"

namespace ringattn::cpu {
namespace {

struct Avx512 {
  using reg = __m512;
  static constexpr int lanes = 16;
  static constexpr bool kBf16Dot = false;  // S on VDPBF16PS (kernel_avx512bf16.cpp)
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
  // 2^x = 2^f 2^n (n = round(x), |f| <= 1/2): the polynomial, scaled by 2^n
  // with VSCALEFPS, which rounds results below 2^-126 to subnormals. The clamp
  // at -150 keeps f finite for -inf; 1.0 x 2^-150 rounds (to even) to exactly 0.
  static reg exp2(reg x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-150.0f));  // also NaN -> -150
    const reg n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const reg f = _mm512_sub_ps(x, n);
    reg p = _mm512_set1_ps(kExp2Poly[0]);
    for (int i = 1; i < kExp2Terms; ++i) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2Poly[i]));
    return _mm512_scalef_ps(p, n);
  }
};

}  // namespace
}  // namespace ringattn::cpu
