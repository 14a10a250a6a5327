// AVX-512 with AVX512_BF16 (Zen 4, Cooper Lake, Sapphire Rapids and later): the
// forward kernel for bfloat16 Q and K, whose S = Q K^T runs on VDPBF16PS, two
// bfloat16 products per float32 lane and instruction, twice the FMA's rate.
// The products of two bfloat16 values are exact in float32 and the sums are
// float32, as in the FMA path; Q is packed unscaled (a bfloat16 times the scale
// would round again) and S is scaled as it is stored. VDPBF16PS treats
// subnormal bfloat16 inputs (below 2^-126) as zero. Everything else (the
// softmax, P V in float32, V, the masks) is the AVX-512 kernel's own.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "cpu/kernel_isa.hpp"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx2,fma,avx512bf16")

#include "cpu/kernel_avx512.hpp"

namespace ringattn::cpu {
namespace {

struct Avx512Bf16 : Avx512 {
  static constexpr bool kBf16Dot = true;
  using ireg = __m512i;
  // 16 lanes of two bfloat16 values each (a lane's low half first).
  static ireg load_pairs(const uint16_t* p) { return _mm512_loadu_si512(p); }
  static ireg set1_pair(uint32_t x) { return _mm512_set1_epi32(static_cast<int>(x)); }
  // acc + a.lo * b.lo + a.hi * b.hi per lane.
  static reg dot_bf16(reg acc, ireg a, ireg b) {
    return _mm512_dpbf16_ps(acc, reinterpret_cast<__m512bh>(a), reinterpret_cast<__m512bh>(b));
  }
};

}  // namespace
}  // namespace ringattn::cpu

#include "cpu/kernel_impl.hpp"

namespace ringattn::cpu {
const IsaKernels& avx512_bf16_kernels() {
  return Impl<Avx512Bf16>::table(Isa::avx512);
}
}  // namespace ringattn::cpu

#pragma GCC pop_options
#else
namespace ringattn::cpu {
const IsaKernels& avx512_bf16_kernels() {
  return avx512_kernels();
}
}  // namespace ringattn::cpu
#endif
