// What `ringattn plan` prints: a human table (stdout, fmt) or JSON lines
// (--json on stdout, --metrics FILE appended): one "summary" record, then one
// "rank" record per rank and one "step" record per ring step.
//
// Metric names match `run --metrics` where they mean the same thing (time_ms,
// compute_ms, wait_ms, bytes_per_step, steps, imbalance), so a sweep can put
// the prediction beside the measurement.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "cli/metrics.hpp"
#include "cli/options.hpp"
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
  std::string this_cpu;                // cpu profiles: this machine's cpu_identity()
  std::string job_isa;                 // cpu profiles: the kernel ISA the job would run
  // cpu profiles: why the profile may not describe this machine ("" when it
  // names this CPU and ISA); cmd_plan prints it as a warning.
  std::string cpu_warning;
};

void print_plan(const PlanReport& r);
std::vector<JsonObject> plan_records(const PlanReport& r);

// One `plan` invocation's result: the plan, its profile, the report over them
// (which points into both: a PlanRun stays where run_plan made it) and the
// --json records.
struct PlanRun {
  Plan plan;
  HardwareProfile hw;
  PlanReport report;
  std::vector<JsonObject> records;
};
// The `plan` command's work on parsed options (plan_spec()); throws UsageError
// naming the option. cmd_plan prints it; the Python module returns the records.
std::unique_ptr<PlanRun> run_plan(const ParsedOptions& opt);

// The `plan` command's options (without the common ones).
CommandSpec plan_spec();

}  // namespace ringattn::cli
