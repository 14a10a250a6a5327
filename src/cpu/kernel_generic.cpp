// Portable instantiation of the kernel: 4-lane GCC/Clang vector extensions,
// compiled for the baseline target (SSE2 on x86-64), so it runs on any CPU.
#include "cpu/kernel_isa.hpp"

namespace ringattn::cpu {
namespace {

struct Generic {
  typedef float reg __attribute__((vector_size(16)));
  static constexpr int lanes = 4;
  static constexpr bool kBf16Dot = false;  // S on VDPBF16PS (kernel_avx512bf16.cpp)
  static constexpr int kRowsS = 6;
  static constexpr int kRowsPV = 6;
  static constexpr int kColsPV = 2;
  static reg zero() { return reg{}; }
  static reg load(const float* p) {
    reg x;
    std::memcpy(&x, p, sizeof(x));
    return x;
  }
  static void store(float* p, reg x) { std::memcpy(p, &x, sizeof(x)); }
  static reg set1(float s) { return reg{} + s; }
  static reg fma(reg a, reg b, reg c) { return a * b + c; }
  static reg mul(reg a, reg b) { return a * b; }
  static reg add(reg a, reg b) { return a + b; }
  static reg sub(reg a, reg b) { return a - b; }
  static reg max(reg a, reg b) {
    for (int i = 0; i < lanes; ++i) a[i] = a[i] > b[i] ? a[i] : b[i];
    return a;
  }
  static float hmax(reg x) {
    float m = x[0];
    for (int i = 1; i < lanes; ++i) m = x[i] > m ? x[i] : m;
    return m;
  }
  static float hsum(reg x) {
    float s = 0.0f;
    for (int i = 0; i < lanes; ++i) s += x[i];
    return s;
  }
  static reg load_f16(const uint16_t* p) {
    reg x;
    for (int i = 0; i < lanes; ++i) x[i] = f16_to_f32(p[i]);
    return x;
  }
  static reg load_bf16(const uint16_t* p) {
    reg x;
    for (int i = 0; i < lanes; ++i) x[i] = bf16_to_f32(p[i]);
    return x;
  }
  static reg exp2(reg x) {
    for (int i = 0; i < lanes; ++i) x[i] = x[i] < kExp2Floor ? 0.0f : std::exp2(x[i]);
    return x;
  }
};

}  // namespace
}  // namespace ringattn::cpu

#include "cpu/kernel_impl.hpp"
// after kernel_impl.hpp: it uses Impl<V>
#include "cpu/backward_impl.hpp"

namespace ringattn::cpu {
const IsaKernels& generic_kernels() {
  return Impl<Generic>::table(Isa::generic);
}
const BackwardKernels& generic_backward() {
  return BwdImpl<Generic>::table(Isa::generic);
}
}  // namespace ringattn::cpu
