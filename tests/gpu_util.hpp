// Helpers of the GPU tests: skipping without a GPU, moving host tensors to and
// from device buffers through a RingEngine (kernels go on its stream), and the naive low-precision
// attention whose error against float64 is the yardstick for the kernel's.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "ringattn/cuda.hpp"
#include "ringattn/ring_engine.hpp"
#include "util.hpp"

namespace ringattn::test {

// Skips the test (with the CUDA error) where no GPU can be used.
class GpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (cuda_device_count(&why) == 0) GTEST_SKIP() << "no GPU, GPU test skipped: " << why;
    engine = make_cuda_engine(0);
  }
  std::unique_ptr<RingEngine> engine;
  // The engine's stream: launch every kernel of a test here, so it runs after
  // the engine's uploads and before its downloads (the stream is non-blocking:
  // the default stream would not be ordered with either).
  void* stream() { return cuda_engine_stream(*engine); }

  std::unique_ptr<EngineBuffer> upload(const void* host, std::size_t bytes, const char* what) {
    auto b = engine->alloc(bytes, what);
    engine->from_host(b->data(), host, bytes);
    return b;
  }
  template <class T>
  std::vector<T> download(EngineBuffer& b, std::size_t n) {
    std::vector<T> v(n);
    engine->to_host(v.data(), b.data(), n * sizeof(T));
    return v;
  }
};

// The problem's q/k/v on the device; args() points at them.
struct DeviceProblem {
  std::unique_ptr<EngineBuffer> q, k, v;
  AttentionArgs dev;  // the problem's args with device pointers
};
inline DeviceProblem to_device(RingEngine& e, const Problem& p) {
  DeviceProblem d;
  auto up = [&](const Tensor& t, const char* what) {
    auto b = e.alloc(t.bytes(), what);
    e.from_host(b->data(), t.data.data(), t.bytes());
    return b;
  };
  d.q = up(p.q, "q"), d.k = up(p.k, "k"), d.v = up(p.v, "v");
  d.dev = p.args;
  d.dev.q = d.q->data(), d.dev.k = d.k->data(), d.dev.v = d.v->data();
  return d;
}

// Attention computed the plain way in low precision, as a framework would
// without a fused kernel: float32 scores of the stored inputs, softmax in
// float32, P rounded to the storage dtype, O = P V accumulated in float32,
// normalised and rounded to the storage dtype. o [B, Nq, Hq, D] (as floats),
// only the listed query rows filled.
inline std::vector<float> naive_lowp_attention(const AttentionArgs& a,
                                               const std::vector<int64_t>& rows) {
  const int64_t d = a.head_dim, group = a.hq / a.hkv;
  const float scale = a.scale != 0 ? a.scale : 1.0f / std::sqrt(static_cast<float>(d));
  std::vector<float> o(static_cast<std::size_t>(a.batch * a.nq * a.hq * d), 0.0f);
  std::vector<float> s(static_cast<std::size_t>(a.nk)), acc(static_cast<std::size_t>(d));
  for (int64_t b = 0; b < a.batch; ++b)
    for (const int64_t i : rows)
      for (int64_t h = 0; h < a.hq; ++h) {
        const int64_t hk = h / group;
        const std::size_t qi = static_cast<std::size_t>(((b * a.nq + i) * a.hq + h) * d);
        float m = -INFINITY;
        for (int64_t j = 0; j < a.nk; ++j) {
          float& sj = s[static_cast<std::size_t>(j)];
          sj = -INFINITY;
          if (!a.mask.allows(a.qpos.at(i), a.kpos.at(j))) continue;
          const std::size_t ki = static_cast<std::size_t>(((b * a.nk + j) * a.hkv + hk) * d);
          float dot = 0;
          for (int64_t c = 0; c < d; ++c)
            dot += load_as_f32(a.q, a.dtype, qi + c) * load_as_f32(a.k, a.dtype, ki + c);
          sj = dot * scale;
          m = std::max(m, sj);
        }
        if (m == -INFINITY) continue;
        float l = 0;
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int64_t j = 0; j < a.nk; ++j) {
          const float pj = std::exp(s[static_cast<std::size_t>(j)] - m);
          l += pj;
          const float pr = round_to(a.dtype, pj);
          if (pr == 0.0f) continue;
          const std::size_t vi = static_cast<std::size_t>(((b * a.nk + j) * a.hkv + hk) * d);
          for (int64_t c = 0; c < d; ++c)
            acc[static_cast<std::size_t>(c)] += pr * load_as_f32(a.v, a.dtype, vi + c);
        }
        for (int64_t c = 0; c < d; ++c)
          o[qi + c] = round_to(a.dtype, acc[static_cast<std::size_t>(c)] / l);
      }
  return o;
}

}  // namespace ringattn::test
