// The backward pass as a job (JobSpec::backward): run_job_local's gradients pass
// verify and the sampled check on every transfer, and the plan's backward
// bytes and accumulator counts equal what every rank of the job sent.
#include <gtest/gtest.h>

#include <string>

#include "ringattn/error.hpp"
#include "ringattn/hardware.hpp"
#include "ringattn/job.hpp"
#include "ringattn/plan.hpp"

namespace ringattn {
namespace {

struct Case {
  const char* name;
  int ranks;
  LayoutKind layout;
  bool causal;
  int64_t window, sinks;
  CommScheme scheme;
  int per_node;
};

JobSpec spec_of(const Case& c) {
  JobSpec s;
  s.nq = s.nk = 700, s.hq = 4, s.hkv = 2, s.head_dim = 32, s.batch = 2;
  s.mask = c.causal ? Mask::causal(0) : Mask::none();
  if (c.window > 0) s.mask.lo = -c.window;
  s.mask.sinks = c.sinks;
  s.layout = c.layout, s.scheme = c.scheme, s.ranks_per_node = c.per_node;
  s.seed = 3, s.threads = 1, s.backward = true;
  s.verify = true, s.check_rows = 6;
  return s;
}

TEST(BackwardJob, ChecksPassAndThePlanCountsWhatTheRanksSent) {
  const HardwareProfile hw = load_hardware_profile(std::string(RINGATTN_SOURCE_DIR) +
                                                   "/configs/hardware/cpu-icelake-2core.ini");
  const Case cases[] = {
      {"full contiguous (ring)", 3, LayoutKind::contiguous, false, 0, 0, CommScheme::flat, 0},
      {"causal zigzag", 4, LayoutKind::zigzag, true, 0, 0, CommScheme::flat, 0},
      {"causal window 150 + 4 sinks (direct)", 4, LayoutKind::contiguous, true, 150, 4,
       CommScheme::flat, 0},
      {"causal striped, double ring 2 x 2", 4, LayoutKind::striped, true, 0, 0,
       CommScheme::double_ring, 2},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const JobSpec s = spec_of(c);
    const JobReport r = run_job_local(c.ranks, s);
    ASSERT_TRUE(r.grad_verify && r.grad_sampled);
    EXPECT_TRUE(r.grad_verify->ok) << r.grad_verify->dq << " " << r.grad_verify->dk;
    EXPECT_TRUE(r.grad_sampled->ok) << r.grad_sampled->dq << " " << r.grad_sampled->dk;
    PlanInput in(s);
    in.layout = s.layout, in.ranks = c.ranks, in.links = PlanLinks::in_process;
    in.threads = 1, in.scheme = s.scheme, in.ranks_per_node = c.per_node;
    in.backward = true;
    const Plan p = make_plan(in, hw);
    ASSERT_TRUE(p.backward.on);
    for (int x = 0; x < c.ranks; ++x) {
      const auto xi = static_cast<std::size_t>(x);
      EXPECT_EQ(static_cast<int64_t>(p.backward.sent[xi]), r.stats[xi].bwd_bytes) << x;
      EXPECT_EQ(static_cast<int64_t>(p.backward.grad_sent[xi]), r.stats[xi].bwd_grad_bytes) << x;
      EXPECT_EQ(p.backward.grad_messages[xi], r.stats[xi].bwd_grad_messages) << x;
      EXPECT_EQ(p.backward.steps, r.stats[xi].bwd_steps);
    }
  }
}

TEST(BackwardJob, RefusesWhatItDoesNotRunWith) {
  JobSpec s = spec_of({"", 2, LayoutKind::contiguous, true, 0, 0, CommScheme::flat, 0});
  s.kv_wire.bits = QuantBits::int8, s.kv_wire.group = 32;
  s.verify = false;  // verify refuses a quantized wire first
  const auto field = [](const JobSpec& x) {
    try {
      x.validate();
    } catch (const FieldError& e) {
      return e.field();
    }
    return std::string("none");
  };
  EXPECT_EQ(field(s), "backward");
  s = spec_of({"", 2, LayoutKind::contiguous, true, 0, 0, CommScheme::a2a_ring, 1});
  EXPECT_EQ(field(s), "backward");
  s = spec_of({"", 2, LayoutKind::contiguous, true, 0, 0, CommScheme::flat, 0});
  s.backward = false;
  s.dq_path = "dq.npy";
  EXPECT_EQ(field(s), "dq_out");
}

}  // namespace
}  // namespace ringattn
