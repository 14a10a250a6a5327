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

#include "cpu/kernel_avx512.hpp"
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
