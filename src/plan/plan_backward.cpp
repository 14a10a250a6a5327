// The backward pass's plan (BackwardPlan in ringattn/plan.hpp): its schedule,
// bytes as ring_backward.cpp sends them, time per step, extra memory.
#include <algorithm>

#include "plan/plan_internal.hpp"
#include "ringattn/schedule.hpp"
#include "ringattn/two_level.hpp"

namespace ringattn {

double BackwardPlan::total_sent() const {
  double x = 0;
  for (const double v : sent) x += v;
  return x;
}
double BackwardPlan::total_grad_sent() const {
  double x = 0;
  for (const double v : grad_sent) x += v;
  return x;
}
int64_t BackwardPlan::total_grad_messages() const {
  int64_t x = 0;
  for (const int64_t v : grad_messages) x += v;
  return x;
}

namespace detail {

BackwardPlan plan_backward(const PlanInput& in, const Layout& ql, const Layout& kvl, int w,
                           double rate, const std::function<const LinkSpec&(int, int)>& link_of) {
  BackwardPlan bp;
  bp.on = true;
  const int np = ql.ranks();
  ScheduleOptions opt = scheme_options(in.scheme, w);
  opt.share = false;
  const RingSchedule sch = make_ring_schedule(ql, kvl, in.mask, opt);
  bp.steps = sch.steps;
  bp.transfer = transfer_name(sch.transfer);
  bp.rate = rate * kBackwardRateRatio;
  const double b = double(in.batch), hq = double(in.hq), hkv = double(in.hkv),
               d = double(in.head_dim), esz = double(dtype_size(in.dtype));
  const double flops_per_pair = 2.5 * 4.0 * b * hq * d;
  const auto block = [&](int rank) { return 2.0 * b * double(kvl.tokens(rank)) * hkv * d * esz; };
  const auto grads = [&](int rank) { return 2.0 * b * double(kvl.tokens(rank)) * hkv * d * 4.0; };
  double max_grads = 0;
  for (int r = 0; r < np; ++r) max_grads = std::max(max_grads, grads(r));
  bp.seconds.assign(static_cast<std::size_t>(np), 0.0);
  bp.sent = bp.grad_sent = bp.memory = bp.seconds;
  bp.grad_messages.assign(static_cast<std::size_t>(np), 0);
  // Where each step's accumulator goes (ring_backward.cpp): the next rank of
  // the block's chain (the ranks with work on it, in step order), or its owner.
  std::vector<std::vector<int>> next(static_cast<std::size_t>(np),
                                     std::vector<int>(static_cast<std::size_t>(sch.steps), -1));
  {
    std::vector<std::pair<int, int>> last(static_cast<std::size_t>(np), {-1, -1});  // [src]
    for (int t = 0; t < sch.steps; ++t)
      for (int x = 0; x < np; ++x) {
        const RingStep& st = sch.step(x, t);
        if (st.work.empty() || st.source == x) continue;
        auto& l = last[static_cast<std::size_t>(st.source)];
        if (l.first >= 0)
          next[static_cast<std::size_t>(l.first)][static_cast<std::size_t>(l.second)] = x;
        l = {x, t};
      }
    for (int src = 0; src < np; ++src) {
      const auto& l = last[static_cast<std::size_t>(src)];
      if (l.first >= 0)
        next[static_cast<std::size_t>(l.first)][static_cast<std::size_t>(l.second)] = src;
    }
  }
  for (int r = 0; r < np; ++r) {
    const auto ri = static_cast<std::size_t>(r);
    double pending = 0;  // the accumulator sent at the end of the previous step
    int pending_to = r;
    for (int s = 0; s < sch.steps; ++s) {
      const RingStep& st = sch.step(r, s);
      double x = 0;  // this step's sends: the next step's K/V, the last step's accumulator
      for (int t = s + 1; t < sch.steps; ++t) {
        const RingStep& nx = sch.step(r, t);
        if (nx.post != s || nx.send_to < 0) continue;
        // Only the rows the receiver holds (RingStep::rows; the backward's wire is unquantized).
        const int src = sch.transfer == Transfer::direct ? r : sch.step(r, nx.post).source;
        const double whole = double(kvl.tokens(src));
        const double bytes =
            whole > 0 ? block(src) * double(sch.tokens_arriving(kvl, nx.send_to, t)) / whole : 0.0;
        bp.sent[ri] += bytes;
        x += link_of(r, nx.send_to).seconds(bytes, 2);
      }
      if (pending > 0) x += link_of(r, pending_to).seconds(pending, 1);
      pending = 0;
      const double compute = flops_per_pair * double(st.pairs) / bp.rate;
      bp.seconds[ri] += std::max(compute, x);
      if (!st.work.empty() && st.source != r) {
        pending = grads(st.source);
        pending_to = next[ri][static_cast<std::size_t>(s)];
        bp.sent[ri] += pending;
        bp.grad_sent[ri] += pending;
        ++bp.grad_messages[ri];
      }
    }
    if (pending > 0) bp.seconds[ri] += link_of(r, pending_to).seconds(pending, 1);
    const double nq = double(ql.tokens(r)), nk = double(kvl.tokens(r));
    bp.memory[ri] = 2.0 * b * nq * hq * d * 4.0 + 2.0 * b * nk * hkv * d * 4.0 + 2.0 * max_grads;
    bp.predicted_s = std::max(bp.predicted_s, bp.seconds[ri]);
  }
  return bp;
}

}  // namespace detail
}  // namespace ringattn
