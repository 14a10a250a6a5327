// The partial-state merge on the GPU: state.hpp's merge_row applied to every
// row (b, n, h), one warp per row (lanes over the head dim), and the empty
// state. Same formula (merge_coefficients) and the same empty-row rules as the
// CPU merge: empty + x = x exactly, empty + empty = empty.
#include <cuda_runtime.h>

#include <cmath>

#include "cuda/launch.hpp"

namespace ringattn::cuda {
namespace {

constexpr int kMergeWarps = 8;  // rows per thread block
constexpr int kFillThreads = 256;

// Row (b, n, h) of part merges into row (batch0 + b, row0 + n, h) of acc.
__global__ void merge_kernel(StateView acc, int64_t batch0, int64_t row0, StateView part) {
  const int64_t rows = part.batch * part.tokens * part.heads;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kMergeWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;  // whole warps leave together
  const int64_t h = row % part.heads, n = (row / part.heads) % part.tokens,
                b = row / (part.heads * part.tokens);
  const int64_t ab = batch0 + b, an = row0 + n;
  const int64_t lse_a = (ab * acc.heads + h) * acc.tokens + an;
  const int64_t lse_b = (b * part.heads + h) * part.tokens + n;
  float* oa = acc.o + ((ab * acc.tokens + an) * acc.heads + h) * acc.head_dim;
  const float* ob = part.o + row * acc.head_dim;
  const float la = acc.lse[lse_a], lb = part.lse[lse_b];
  if (lb == -INFINITY) return;  // part empty: acc unchanged
  if (la == -INFINITY) {        // acc empty: take part
    for (int64_t i = lane; i < acc.head_dim; i += 32) oa[i] = ob[i];
  } else {
    const MergeCoef c = merge_coefficients(la, lb);
    for (int64_t i = lane; i < acc.head_dim; i += 32) oa[i] = c.ca * oa[i] + c.cb * ob[i];
  }
  __syncwarp();  // every lane has read acc.lse (la) before lane 0 rewrites it
  if (lane == 0) acc.lse[lse_a] = la == -INFINITY ? lb : merge_coefficients(la, lb).lse;
}

__global__ void fill_kernel(float* p, int64_t n, float v) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) p[i] = v;
}

}  // namespace

void launch_merge(const StateView& acc, int64_t batch0, int64_t row0, const StateView& part,
                  void* stream) {
  const int64_t rows = part.batch * part.tokens * part.heads;
  if (rows == 0) return;
  const auto blocks = static_cast<unsigned>((rows + kMergeWarps - 1) / kMergeWarps);
  merge_kernel<<<blocks, 32 * kMergeWarps, 0, static_cast<cudaStream_t>(stream)>>>(acc, batch0,
                                                                                   row0, part);
  check(cudaGetLastError(), "merge kernel launch");
}

void launch_clear(const StateView& s, void* stream) {
  const auto st = static_cast<cudaStream_t>(stream);
  const int64_t rows = s.batch * s.tokens * s.heads;
  if (rows == 0) return;
  check(cudaMemsetAsync(s.o, 0, static_cast<std::size_t>(rows * s.head_dim) * sizeof(float), st),
        "clearing a state's O");
  const auto blocks = static_cast<unsigned>((rows + kFillThreads - 1) / kFillThreads);
  fill_kernel<<<blocks, kFillThreads, 0, st>>>(s.lse, rows, -INFINITY);
  check(cudaGetLastError(), "state fill kernel launch");
}

}  // namespace ringattn::cuda
