// The CPU ring engine: host Buffers, the CPU kernel, merge_row under OpenMP.
// Everything is synchronous, so sync() has nothing to wait for.
#include <fmt/format.h>
#include <omp.h>

#include <cstring>

#include "ringattn/backward.hpp"
#include "ringattn/error.hpp"
#include "ringattn/memory.hpp"
#include "ringattn/ring_engine.hpp"

namespace ringattn {

KernelStats RingEngine::attend_merge(const AttentionArgs& a, const StateView& acc,
                                     int64_t batch_index, int64_t row0, EngineBuffer& work) {
  if (a.batch != 1) throw Error("ring engine: attend_merge takes one batch index at a time");
  if (work.size() < partial_bytes(a.nq, a.hq, a.head_dim))
    throw Error(fmt::format("ring engine: work buffer of {} bytes, {} needed", work.size(),
                            partial_bytes(a.nq, a.hq, a.head_dim)));
  float* po = work.as<float>();
  float* pl = po + a.nq * a.hq * a.head_dim;
  const KernelStats st = attend(a, po, pl);
  merge_rows(acc, batch_index, row0, StateView{po, pl, 1, a.nq, a.hq, a.head_dim});
  return st;
}

KernelStats RingEngine::attend_backward(const AttentionArgs&, const float*, const float*,
                                        const float*, float*, float*, float*) {
  throw Error(fmt::format("the {} engine has no attention backward (the cpu engine has)", name()));
}

namespace {

class HostBuffer final : public EngineBuffer {
 public:
  HostBuffer(std::size_t bytes, const char* what) : buf_(bytes, what) {}
  void* data() override { return buf_.data(); }
  std::size_t size() const override { return buf_.size(); }

 private:
  Buffer buf_;
};

class CpuEngine final : public RingEngine {
 public:
  explicit CpuEngine(const KernelOptions& opt) : opt_(opt) {}
  std::string name() const override { return "cpu"; }

  std::unique_ptr<EngineBuffer> alloc(std::size_t bytes, const char* what) override {
    return std::make_unique<HostBuffer>(bytes, what);
  }

  KernelStats attend(const AttentionArgs& a, float* o, float* lse) override {
    return attention_forward(a, o, lse, opt_);
  }

  KernelStats attend_backward(const AttentionArgs& a, const float* o, const float* lse,
                              const float* dO, float* dq, float* dk, float* dv) override {
    return attention_backward(a, o, lse, dO, dq, dk, dv, opt_, GradWrite::add);
  }

  void merge_rows(const StateView& acc, int64_t batch_index, int64_t row0,
                  const StateView& part) override {
    if (part.batch != 1 || part.heads != acc.heads || part.head_dim != acc.head_dim ||
        batch_index < 0 || batch_index >= acc.batch || row0 < 0 || row0 + part.tokens > acc.tokens)
      throw Error(fmt::format(
          "ring engine: cannot merge {} rows at row {} of batch {} into a state of {} rows, "
          "{} batches",
          part.tokens, row0, batch_index, acc.tokens, acc.batch));
    const int64_t cnt = part.tokens, hq = acc.heads, d = acc.head_dim, n = acc.tokens;
    const int threads = opt_.threads > 0 ? opt_.threads : omp_get_max_threads();
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < cnt; ++i)
      for (int64_t h = 0; h < hq; ++h)
        merge_row(acc.o + ((batch_index * n + row0 + i) * hq + h) * d,
                  acc.lse + (batch_index * hq + h) * n + row0 + i, part.o + (i * hq + h) * d,
                  part.lse[h * cnt + i], d);
  }

  void clear(const StateView& s) override {
    clear_state(s);
  }

  void copy(void* dst, const void* src, std::size_t bytes) override {
    if (bytes > 0) std::memcpy(dst, src, bytes);
  }
  void to_host(void* dst, const void* src, std::size_t bytes) override {
    copy(dst, src, bytes);
  }
  void from_host(void* dst, const void* src, std::size_t bytes) override {
    copy(dst, src, bytes);
  }
  void sync() override {}

 private:
  KernelOptions opt_;
};

}  // namespace

std::unique_ptr<RingEngine> make_cpu_engine(const KernelOptions& opt) {
  return std::make_unique<CpuEngine>(opt);
}

}  // namespace ringattn
