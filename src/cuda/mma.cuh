// Thin wrappers over the sm_80+ PTX the flash kernel uses: cp.async (16-byte
// global -> shared copies, zero-filling rows past the end), ldmatrix (8x8
// 16-bit tiles from shared memory into MMA fragments) and mma.sync m16n8k16
// with float32 accumulators, for bf16 and fp16.
//
// Fragment layouts of mma.m16n8k16 (g = lane / 4, t = lane % 4), each 32-bit
// register holding two 16-bit values (lower column/k index in the low half):
//   A 16x16 (row-major): a0 (row g, k 2t..2t+1), a1 (row g+8, k 2t..),
//                        a2 (row g, k 2t+8..),   a3 (row g+8, k 2t+8..)
//   B 16x8  (k x n):     b0 (k 2t..2t+1, col g), b1 (k 2t+8..2t+9, col g)
//   C 16x8  float:       c0, c1 (row g, cols 2t, 2t+1), c2, c3 (row g+8, same cols)
// ldmatrix.x4: lanes 8i..8i+7 give the row addresses of matrix i; register i of
// each lane receives matrix i's (row g, cols 2t..2t+1) (.trans: the transpose).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace ringattn::cuda {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared; `valid` false writes 16 zero bytes instead.
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool valid) {
  const int bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::);
}
// Waits until at most N committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// The 16-bit element types: MMA and packing of two floats into one register.
template <class T>
struct Elem;

template <>
struct Elem<__nv_bfloat16> {
  __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
  __device__ __forceinline__ static void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

template <>
struct Elem<__half> {
  __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
  __device__ __forceinline__ static void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

// Shared-memory tile of R rows x D 16-bit columns, 16-byte chunks swizzled by
// XOR with (row % 8) so that the 8 rows one ldmatrix reads fall in distinct
// banks (D >= 64: at least 8 chunks per row).
template <int D>
__device__ __forceinline__ int swizzled(int row, int col) {
  static_assert(D % 64 == 0, "the swizzle needs at least 8 chunks of 8 elements per row");
  const int chunk = (col >> 3) ^ (row & 7);
  return row * D + (chunk << 3) + (col & 7);
}

}  // namespace ringattn::cuda
