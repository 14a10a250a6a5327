// The ring backward (ringattn/ring.hpp): the forward's loop (ring_loop.hpp) with
// a visitor that computes gradients and passes dK/dV accumulators along the
// chain of ranks that compute on each block.
//
// For the block of rank `src`, the chain is the ranks other than src with work
// on it, in the order of the steps at which they hold it: (x_1, t_1), (x_2,
// t_2), ..., t_1 < t_2 < ... (a rank holds a block at one step at most). Rank
// x_i, after its compute at step t_i:
//   acc = its own term (+ the accumulator from x_{i-1}, waited for now)
//   isend acc -> x_{i+1}, or -> src after the last (tag 2 steps + src)
// and the receiver posts the matching irecv at the start of step t_i + 1 (or
// after the last step). Sends are waited for at the end of step t_i + 1, the
// owner's final accumulator likewise at the end of the step it was posted in.
// So every wait is for a message posted before any rank can block on it (the
// rule of ring_loop.hpp), and an accumulator is in flight while the receiver
// computes a step.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <vector>

#include "ring/ring_loop.hpp"
#include "ringattn/error.hpp"
#include "ringattn/memory.hpp"

namespace ringattn {
namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::size_t at(int64_t i) {
  return static_cast<std::size_t>(i);
}

struct Link {
  int rank = -1, step = -1;
};

class BackwardPass final : public detail::RingVisitor {
 public:
  BackwardPass(Communicator& comm, RingEngine& eng, const RingSchedule& sch, const RingProblem& p,
               const float* o, const float* lse, const float* dO, float* dq, float* dk, float* dv,
               RingMetrics& m)
      : comm_(comm),
        eng_(eng),
        sch_(sch),
        p_(p),
        r_(comm.rank()),
        o_(o),
        lse_(lse),
        dO_(dO),
        dq_(dq),
        dk_(dk),
        dv_(dv),
        m_(m) {
    const int np = comm.size();
    nq_ = p.q_layout->tokens(r_);
    row_ = p.hkv * p.head_dim;
    std::fill(dq, dq + p.batch * nq_ * p.hq * p.head_dim, 0.0f);
    const int64_t own = p.batch * p.kv_layout->tokens(r_) * row_;
    std::fill(dk, dk + own, 0.0f);
    std::fill(dv, dv + own, 0.0f);
    int64_t max_tokens = 0;
    for (int x = 0; x < np; ++x) max_tokens = std::max(max_tokens, p.kv_layout->tokens(x));
    grad_floats_ = 2 * p.batch * max_tokens * row_;
    int64_t max_rows = 0;
    for (const Segment& s : p.q_layout->segments(r_)) max_rows = std::max(max_rows, s.count);
    lse_rows_ = Buffer(at(std::max<int64_t>(max_rows * p.hq, 1)) * sizeof(float), "segment LSE");

    // The chains: for each block, the ranks other than its owner with work on
    // it, in step order.
    std::vector<std::vector<Link>> chain(at(np));
    for (int t = 0; t < sch.steps; ++t)
      for (int x = 0; x < np; ++x) {
        const RingStep& st = sch.step(x, t);
        if (!st.work.empty() && st.source != x) chain[at(st.source)].push_back({x, t});
      }
    // This rank's part: at each of its steps, where the accumulator comes from
    // and goes; the receives it posts at each step (index steps: after the loop).
    prev_.assign(at(sch.steps), {});
    next_.assign(at(sch.steps), {});
    posts_.resize(at(sch.steps) + 1);
    for (int src = 0; src < np; ++src) {
      const std::vector<Link>& c = chain[at(src)];
      for (std::size_t i = 0; i < c.size(); ++i) {
        const Link nx = i + 1 < c.size() ? c[i + 1] : Link{src, -1};
        if (c[i].rank == r_) {
          if (i > 0) prev_[at(c[i].step)] = c[i - 1];
          next_[at(c[i].step)] = nx;
        }
        if (nx.rank == r_)  // sent to this rank at the end of c[i]'s compute
          posts_[at(c[i].step + 1)].push_back({src, c[i].rank, nx.step});
      }
    }
    recv_of_step_.assign(at(sch.steps), -1);
  }

  void begin_step(int s) override { post_receives(s); }

  KernelStats compute(int s, const RingStep& st, const AttentionArgs& a, int64_t b, int64_t q_row0,
                      int64_t k_row0) override {
    const int64_t d = p_.head_dim, hq = p_.hq, n = a.nq;
    float* gk = dk_;
    float* gv = dv_;
    int64_t nk_src = p_.kv_layout->tokens(st.source);
    if (st.source != r_) {  // a term for another rank's block: into this step's accumulator
      if (partial_ < 0 || partial_step_ != s) {
        partial_ = take();
        partial_step_ = s;
        std::fill(pool_[at(partial_)].mem.as<float>(),
                  pool_[at(partial_)].mem.as<float>() + 2 * p_.batch * nk_src * row_, 0.0f);
      }
      gk = pool_[at(partial_)].mem.as<float>();
      gv = gk + p_.batch * nk_src * row_;
    }
    // The segment's LSE rows, contiguous per head ([Hq, n], the kernel's layout).
    float* l = lse_rows_.as<float>();
    for (int64_t h = 0; h < hq; ++h)
      std::memcpy(l + h * n, lse_ + (b * hq + h) * nq_ + q_row0, at(n) * sizeof(float));
    const std::size_t q_off = at((b * nq_ + q_row0) * hq * d);
    const std::size_t k_off = at((b * nk_src + k_row0) * row_);
    return eng_.attend_backward(a, o_ + q_off, l, dO_ + q_off, dq_ + q_off, gk + k_off, gv + k_off);
  }

  void end_compute(int s) override {
    if (partial_step_ != s) return;  // no term for another rank's block at this step
    const RingStep& st = sch_.step(r_, s);
    const int64_t floats = 2 * p_.batch * p_.kv_layout->tokens(st.source) * row_;
    float* acc = pool_[at(partial_)].mem.as<float>();
    if (prev_[at(s)].rank >= 0) {  // add what the ranks before this one computed
      const int in = recv_of_step_[at(s)];
      const Clock::time_point t0 = Clock::now();
      recvs_[at(in)].req.wait();
      waited_s += since(t0);
      const float* got = pool_[at(recvs_[at(in)].buffer)].mem.as<float>();
      for (int64_t i = 0; i < floats; ++i) acc[i] += got[i];
      release(recvs_[at(in)].buffer);
    }
    const Link nx = next_[at(s)];
    const std::size_t bytes = at(floats) * sizeof(float);
    sends_.push_back({comm_.isend(acc, bytes, nx.rank, tag(st.source)), partial_, s});
    bytes_sent += static_cast<int64_t>(bytes);
    m_.grad_bytes += static_cast<int64_t>(bytes);
    ++m_.grad_messages;
    partial_ = -1;
  }

  void end_step(int s) override {
    const Clock::time_point t0 = Clock::now();
    wait_sends(s - 1);
    // The owner's accumulators posted at this step: the gradient of its own block.
    for (Recv& rv : recvs_)
      if (rv.final && rv.posted == s && rv.buffer >= 0) add_final(rv);
    waited_s += since(t0);
  }

  void finish() override {
    post_receives(sch_.steps);
    const Clock::time_point t0 = Clock::now();
    wait_sends(sch_.steps);
    for (Recv& rv : recvs_)
      if (rv.final && rv.buffer >= 0) add_final(rv);
    waited_s += since(t0);
  }

 private:
  struct Post {
    int src, from, for_step;  // for_step -1: the final accumulator of this rank's block
  };
  struct Recv {
    Request req;
    int buffer = -1;
    int posted = 0;
    bool final = false;
  };
  struct Send {
    Request req;
    int buffer, step;
  };
  struct GradBuffer {
    Buffer mem;
    bool busy = false;
  };

  int tag(int src) const { return 2 * sch_.steps + src; }

  int take() {
    for (std::size_t i = 0; i < pool_.size(); ++i)
      if (!pool_[i].busy) {
        pool_[i].busy = true;
        return static_cast<int>(i);
      }
    pool_.push_back(
        {Buffer(at(std::max<int64_t>(grad_floats_, 1)) * sizeof(float), "dK/dV accumulator"),
         true});
    return static_cast<int>(pool_.size() - 1);
  }
  void release(int i) { pool_[at(i)].busy = false; }

  void post_receives(int s) {
    for (const Post& ps : posts_[at(s)]) {
      const int64_t floats = 2 * p_.batch * p_.kv_layout->tokens(ps.src) * row_;
      Recv rv;
      rv.buffer = take();
      rv.posted = s;
      rv.final = ps.for_step < 0;
      rv.req = comm_.irecv(pool_[at(rv.buffer)].mem.data(), at(floats) * sizeof(float), ps.from,
                           tag(ps.src));
      if (!rv.final) recv_of_step_[at(ps.for_step)] = static_cast<int>(recvs_.size());
      recvs_.push_back(std::move(rv));
    }
  }

  // Sends posted at steps <= s.
  void wait_sends(int s) {
    for (Send& sd : sends_)
      if (sd.step <= s && sd.buffer >= 0) {
        sd.req.wait();
        release(sd.buffer);
        sd.buffer = -1;
      }
  }

  void add_final(Recv& rv) {
    rv.req.wait();
    const int64_t own = p_.batch * p_.kv_layout->tokens(r_) * row_;
    const float* got = pool_[at(rv.buffer)].mem.as<float>();
    for (int64_t i = 0; i < own; ++i) dk_[i] += got[i];
    for (int64_t i = 0; i < own; ++i) dv_[i] += got[own + i];
    release(rv.buffer);
    rv.buffer = -1;
  }

  Communicator& comm_;
  RingEngine& eng_;
  const RingSchedule& sch_;
  const RingProblem& p_;
  const int r_;
  const float *o_, *lse_, *dO_;
  float *dq_, *dk_, *dv_;
  RingMetrics& m_;
  int64_t nq_ = 0, row_ = 0, grad_floats_ = 0;
  Buffer lse_rows_;
  std::vector<Link> prev_, next_;         // [step]
  std::vector<std::vector<Post>> posts_;  // [step, or steps: after the loop]
  std::vector<int> recv_of_step_;         // [step]: index into recvs_
  std::vector<GradBuffer> pool_;
  std::vector<Recv> recvs_;
  std::vector<Send> sends_;
  int partial_ = -1, partial_step_ = -1;
};

void check_backward(const Communicator& comm, const RingEngine& eng, const RingSchedule& sch,
                    const RingProblem& p) {
  if (p.q_layout == nullptr || p.kv_layout == nullptr) throw Error("ring: layouts not set");
  if (p.q_layout->ranks() != comm.size() || p.kv_layout->ranks() != comm.size() ||
      sch.ranks != comm.size())
    throw Error(fmt::format(
        "ring backward: layouts/schedule are for {}/{}/{} ranks, the communicator has {}",
        p.q_layout->ranks(), p.kv_layout->ranks(), sch.ranks, comm.size()));
  if (eng.name() != "cpu")
    throw FieldError("device",
                     fmt::format("the ring backward runs on the cpu engine, not {}", eng.name()));
  if (sch.shared.on())
    throw Error(
        "ring backward: the schedule shares sinks or global tokens outside the ring; make it "
        "with ScheduleOptions::share = false");
  if (p.kv_wire.on() || p.kv_stored != nullptr)
    throw FieldError("kv_wire", "the backward does not take quantized K/V");
  if (p.keep.on()) throw FieldError("keep", "the backward does not take kept-key sets");
  if (p.hier.on()) throw FieldError("hier", "the backward computes plain attention under its mask");
}

}  // namespace

RingMetrics ring_attention_backward(Communicator& comm, RingEngine& eng, const RingSchedule& sch,
                                    const RingProblem& p, const float* o, const float* lse,
                                    const float* dO, float* dq, float* dk, float* dv) {
  check_backward(comm, eng, sch, p);
  const Clock::time_point t_start = Clock::now();
  RingMetrics m;
  BackwardPass bwd(comm, eng, sch, p, o, lse, dO, dq, dk, dv, m);
  detail::run_ring(comm, eng, sch, p, bwd, m);
  m.total_s = since(t_start);
  return m;
}

RingMetrics ring_attention_backward(Communicator& comm, const RingSchedule& sch,
                                    const RingProblem& p, const float* o, const float* lse,
                                    const float* dO, float* dq, float* dk, float* dv,
                                    const KernelOptions& kopt) {
  const auto eng = make_cpu_engine(kopt);
  return ring_attention_backward(comm, *eng, sch, p, o, lse, dO, dq, dk, dv);
}

}  // namespace ringattn
