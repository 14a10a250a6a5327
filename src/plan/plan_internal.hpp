// Pieces shared by the planner's files (plan.cpp, plan_schemes.cpp): not installed.
#pragma once

#include <functional>

#include "ringattn/hardware.hpp"
#include "ringattn/layout.hpp"
#include "ringattn/plan.hpp"

namespace ringattn::detail {

// What the machine gives each rank, fixed by the whole job (an a2a-ring's
// node-level ring plans its P / w ranks on the job's machine).
struct PlanMachine {
  int threads = 1;
  double oversubscription = 1;
  int ranks_per_node = 1;  // ranks sharing a node's devices and memory
};

// One scheme's plan (no comparison of schemes); `machine`: fixed figures, or
// nullptr to derive them from `in` and `hw`.
Plan plan_one(const PlanInput& in, const HardwareProfile& hw, const PlanMachine* machine);

// The a2a-ring (two_level.hpp) on nodes of w ranks: the node all-to-alls over the
// intra-node link around plan_one of the ring across nodes.
Plan plan_a2a_ring(const PlanInput& in, const HardwareProfile& hw, const PlanMachine& machine,
                   int w);

// The backward pass (BackwardPlan) of `in` on its layouts, ranks in nodes of
// w, each rank's forward kernel rate `rate`; link_of(from, to): the link a
// message between two ranks takes.
BackwardPlan plan_backward(const PlanInput& in, const Layout& ql, const Layout& kvl, int w,
                           double rate, const std::function<const LinkSpec&(int, int)>& link_of);

}  // namespace ringattn::detail
