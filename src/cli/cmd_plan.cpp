// ringattn plan: how long, how much memory, and whether communication hides
// behind compute, for a problem on P ranks of a hardware profile -- without
// running it. The problem options are `run`'s own (same names, same checks);
// the arithmetic is the library's (ringattn/plan.hpp). run's execution options
// (--verify, --repeats, ...) are accepted and ignored, so a run's config file or
// command line plans as it is.
//
//   ringattn plan --hardware h100-sxm --ranks 64 --seq-len 1048576 --heads 32 --kv-heads 8
//       --head-dim 128 --dtype bf16 --causal
//   ringattn plan --hardware cpu-zen4-2core --ranks-local 4 --seq-len 16384 --json
//   ringattn plan --hardware h100-sxm --ranks 8 --seq-len 32768 --moe-experts 64 --moe-topk 2
#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "cli/commands.hpp"
#include "cli/harness.hpp"
#include "cli/kv_options.hpp"
#include "cli/metrics.hpp"
#include "cli/moe_options.hpp"
#include "cli/options.hpp"
#include "cli/plan_report.hpp"
#include "cli/problem_options.hpp"
#include "cli/run_config.hpp"
#include "ringattn/cpu_info.hpp"
#include "ringattn/hardware.hpp"
#include "ringattn/kernel.hpp"
#include "ringattn/npy.hpp"
#include "ringattn/plan.hpp"

#ifndef RINGATTN_HARDWARE_DIR
#define RINGATTN_HARDWARE_DIR "configs/hardware"
#endif

namespace ringattn::cli {
namespace {

// `run` options that describe the problem; plan accepts run's others too, so run's
// config files and command lines plan unchanged, but they do not change the plan.
const std::set<std::string> kProblemOptions = {
    "batch", "seq-len", "kv-seq-len", "heads",  "kv-heads", "head-dim",   "dtype",
    "q",     "k",       "v",          "causal", "layout",   "ranks-local"};
constexpr const char* kRunOnly = "(run only: accepted, does not change the plan) ";

}  // namespace

CommandSpec plan_spec() {
  CommandSpec s;
  s.name = "plan";
  s.summary =
      "Predicts a ring-attention job without running it: per-rank memory (Q/K/V/O/LSE, the K/V\n"
      "receive buffers, kernel workspace), FLOPs per rank and imbalance, ring steps and bytes per\n"
      "step, per-step compute and transfer time, whether transfers hide behind compute and from\n"
      "how many tokens per rank they do, the predicted time, and what naive attention would\n"
      "need. The problem options are `ringattn run`'s; --hardware names a profile\n"
      "(configs/hardware/*.ini, or one written by `ringattn calibrate`). With --moe-experts it\n"
      "also predicts the MoE stage after attention (balanced routing): capacity, all-to-all\n"
      "bytes per rank, FFN and all-to-all time, memory. With --kv-wire (and --kv-store) the K/V\n"
      "blocks' bytes, receive buffers, stored K/V and hiding threshold are the quantized format's.";
  s.usage = "--hardware NAME|FILE [--ranks P | --ranks-local P] [run's problem options]";
  s.options = {
      OptionSpec::text("hardware", "",
                       "hardware profile: a name in configs/hardware (h100-sxm, a100, h200, "
                       "cpu-zen4-2core, ...) or an .ini path (cpu profiles: `ringattn calibrate` "
                       "measures this machine)",
                       "NAME|FILE")
          .as_required()
          .as_input(),
      OptionSpec::integer("ranks", "", "ranks P, one per device, over MPI/NCCL links")
          .positive()
          .shown_default("1"),
      OptionSpec::integer("ranks-per-node", "0",
                          "ranks on each node (0: the profile's devices per node); the ring "
                          "crosses nodes over the inter-node link")
          .non_negative(),
      OptionSpec::choice(
          "hierarchy", "flat", {"flat", "double-ring", "a2a-ring", "auto"},
          "communication over nodes, as run's --hierarchy: flat, double-ring or a2a-ring; auto: "
          "the scheme the plan predicts fastest (with one node: flat). With more than one node "
          "the plan compares all three"),
      OptionSpec::text("inter-node", "",
                       "the link between nodes instead of the profile's [link.inter-node]: ndr "
                       "(InfiniBand NDR 400 Gb/s: datasheet 50 GB/s derated to 46 GB/s, 5 us), "
                       "eth400 (400G Ethernet RoCE: 50 GB/s derated to 44 GB/s, 9 us), or a "
                       "bandwidth in GB/s (the profile's latency); presets are datasheet values "
                       "derated, not measured",
                       "ndr|eth400|GB/s")
          .shown_default("the profile's [link.inter-node]"),
      OptionSpec::flag("json", "false",
                       "print JSON lines (a summary, then one record per rank and per step) "
                       "instead of the table"),
  };
  // The MoE stage's options (d_model = Hq D) and K/V quantization's (the wire's
  // bytes, the stored K/V) change the plan; added where run's spec lacks them.
  std::vector<OptionSpec> planned = moe_option_specs();
  for (OptionSpec& o : kv_option_specs()) planned.push_back(std::move(o));
  const auto is_planned = [&](const std::string& name) {
    return std::any_of(planned.begin(), planned.end(),
                       [&](const OptionSpec& x) { return x.name == name; });
  };
  for (OptionSpec& o : run_spec().options) {
    // plan's own: the profile's devices per node; auto
    if (o.name == "ranks-per-node" || o.name == "hierarchy" || o.name == "hardware") continue;
    if (o.name == "ranks-local") o.help = "in-process ranks P (threads of one process, as run)";
    const bool mask = o.name.rfind("window", 0) == 0 || o.name.rfind("block", 0) == 0 ||
                      o.name == "dilation" || o.name == "sinks" || o.name == "global";
    if (kProblemOptions.count(o.name) == 0 && !mask && !is_planned(o.name))
      o.help = kRunOnly + o.help;
    s.options.push_back(std::move(o));
  }
  for (OptionSpec& o : planned) {
    const bool known = std::any_of(s.options.begin(), s.options.end(),
                                   [&](const OptionSpec& x) { return x.name == o.name; });
    if (!known) s.options.push_back(std::move(o));
  }
  s.epilog =
      "--threads is the kernel threads of each rank on cpu profiles, as for run: 0 shares a "
      "node's\n"
      "cores among its ranks (cores / P for in-process ranks, cores / ranks per node under MPI).\n"
      "Profiles are looked up in $RINGATTN_HARDWARE_DIR, ./configs/hardware, "
      "share/ringattn/hardware beside an installed binary and " RINGATTN_HARDWARE_DIR
      ".\nThe model and its units are in docs/PERFORMANCE.md; ring.hpp describes the memory.";
  return s;
}

namespace {

// The MoE options; with --moe-weights and no --moe-ffn, d_ff is w1.npy's (as run reads it).
MoeConfig plan_moe_config(const ParsedOptions& opt, int64_t d_model) {
  const MoeOptions m = parse_moe_options(opt, d_model);
  MoeConfig c = m.config;
  if (c.on() && !m.weights_dir.empty() && !opt.given("moe-ffn")) {
    const std::string w1 = (std::filesystem::path(m.weights_dir) / "w1.npy").string();
    try {
      const NpyHeader h = read_npy_header(w1);
      if (h.shape.size() != 3) throw Error(fmt::format("{} is not [E, d_model, d_ff]", w1));
      c.d_ff = h.shape[2];
    } catch (const Error& e) {
      throw UsageError(fmt::format("option '--moe-weights': {}", e.what()));
    }
  }
  return c;
}

}  // namespace

std::unique_ptr<PlanRun> run_plan(const ParsedOptions& parsed) {
  auto run = std::make_unique<PlanRun>();
  const ParsedOptions* opt = &parsed;
  if (opt->has("ranks") && opt->has("ranks-local"))
    throw UsageError(
        "option '--ranks-local': give --ranks P (MPI/NCCL ranks) or --ranks-local P (in-process), "
        "not both");
  const RunConfig cfg = make_problem_config(*opt);
  HardwareProfile hw = load_hardware_option(opt->text("hardware"));
  std::string inter_label = "profile";
  if (const std::string v = opt->text("inter-node"); !v.empty()) {
    try {
      hw.inter = inter_node_link(v, hw.inter);
    } catch (const Error& e) {
      throw UsageError(fmt::format("option '--inter-node': {}", e.what()));
    }
    const std::string preset = inter_node_preset_text(v);
    inter_label = preset.empty() ? fmt::format("--inter-node {} GB/s", v) : preset;
  }

  PlanInput in(cfg);  // the problem
  in.layout = cfg.layout;
  in.links = opt->has("ranks-local") ? PlanLinks::in_process : PlanLinks::network;
  in.ranks = opt->has("ranks-local") ? opt->integer_int("ranks-local")
             : opt->has("ranks")     ? opt->integer_int("ranks")
                                     : 1;
  in.ranks_per_node = opt->integer_int("ranks-per-node");
  const bool auto_scheme = opt->text("hierarchy") == "auto";
  if (!auto_scheme) in.scheme = parse_comm_scheme(opt->text("hierarchy"), "hierarchy");
  in.threads = opt->threads();
  in.moe = plan_moe_config(*opt, cfg.hq * cfg.head_dim);
  const KvOptions kv = parse_kv_options(*opt, cfg.dtype);
  in.kv_wire = kv.wire, in.kv_store = kv.store;
  in.select = kv.select;
  in.backward = opt->flag("backward");
  Plan& plan = run->plan;
  run->hw = std::move(hw);
  try {
    if (auto_scheme) in.scheme = best_scheme(in, run->hw);
    plan = make_plan(in, run->hw);
  } catch (const FieldError& e) {
    if (e.field() == "ranks" && opt->has("ranks-local"))
      throw UsageError("option '--ranks-local': " + e.detail());
    if (!option_for_field(e.field()).empty()) throw UsageError(option_message(e));
    throw UsageError("option '--hardware': " + std::string(e.what()));
  } catch (const Error& e) {
    throw UsageError("option '--hardware': " + std::string(e.what()));
  }

  PlanReport& report = run->report;
  report.plan = &plan;
  report.hw = &run->hw;
  report.shape = cfg.shape_text();
  report.causal = cfg.causal;
  report.mask = mask_label(cfg.masks);
  report.command_line = opt->command_line(derived_sizes(*opt, cfg));
  report.inter_link = inter_label;
  report.auto_scheme = auto_scheme;
  if (run->hw.kind == DeviceKind::cpu) {
    const HardwareProfile& h = run->hw;
    report.this_cpu = cpu_identity();
    report.job_isa = effective_isa_name(parse_isa(opt->text("isa")));
    const std::string measure =
        "; measure this one with `mpirun -np 2 ringattn calibrate --out FILE` and plan with "
        "--hardware FILE";
    if (!h.cpu.empty() && h.cpu != report.this_cpu)
      report.cpu_warning = fmt::format(
          "profile '{}' was measured on {}{}, but this machine is {}: kernel rates differ by "
          "up to 3x between CPUs, so the times below may be far off{}",
          h.name, h.cpu, h.isa.empty() ? "" : " (" + h.isa + ")", report.this_cpu, measure);
    else if (!h.isa.empty() && h.isa != report.job_isa)
      report.cpu_warning = fmt::format(
          "profile '{}' has kernel rates for {}, but the job would run the {} kernel (--isa): "
          "the times below may be far off; calibrate with that ISA's kernel",
          h.name, h.isa, report.job_isa);
  }
  run->records = plan_records(report);
  return run;
}

int cmd_plan(int argc, char** argv) {
  const std::optional<ParsedOptions> opt = parse_options(plan_spec(), argc, argv);
  if (!opt) return kExitOk;
  const std::unique_ptr<PlanRun> run = run_plan(*opt);
  if (!run->report.cpu_warning.empty())
    fmt::print(stderr, "ringattn: warning: {}\n", run->report.cpu_warning);
  MetricsFile metrics(opt->metrics_path());
  if (opt->flag("json")) {
    for (const JsonObject& j : run->records) fmt::print("{}\n", j.str());
  } else {
    print_plan(run->report);
  }
  for (const JsonObject& j : run->records) metrics.write(j);
  return kExitOk;
}

}  // namespace ringattn::cli
