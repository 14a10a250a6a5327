// What `ringattn plan` prints: a human table (stdout, fmt) or JSON lines
// (--json on stdout, --metrics FILE appended): one "summary" record, then one
// "rank" record per rank and one "step" record per ring step.
//
// Metric names match `run --metrics` where they mean the same thing (time_ms,
// compute_ms, wait_ms, bytes_per_step, steps, imbalance), so a sweep can put
// the prediction beside the measurement.
#pragma once

#include <string>
#include <vector>

#include "cli/metrics.hpp"
#include "ringattn/hardware.hpp"
#include "ringattn/plan.hpp"

namespace ringattn::cli {

struct PlanReport {
  const Plan* plan = nullptr;
  const HardwareProfile* hw = nullptr;
  std::string shape;  // RunConfig::shape_text()
  bool causal = false;
  std::string mask;  // mask_label(): "causal", "full" or the sparse description
  std::string command_line;
  std::string inter_link = "profile";  // where the inter-node link comes from (--inter-node)
  bool auto_scheme = false;            // --hierarchy auto chose plan->in.scheme
};

void print_plan(const PlanReport& r);
std::vector<JsonObject> plan_records(const PlanReport& r);

}  // namespace ringattn::cli
