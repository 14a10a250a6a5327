#include "cli/run_config.hpp"

#include <fmt/format.h>

#include <cstdio>
#include <filesystem>
#include <system_error>
#include <vector>

#include "cli/backend.hpp"
#include "cli/harness.hpp"
#include "cli/kv_options.hpp"
#include "cli/moe_options.hpp"
#include "cli/problem_options.hpp"
#include "ringattn/error.hpp"

namespace ringattn::cli {
namespace {

constexpr const char* kLayoutAuto = "auto";

void configure_generated(const ParsedOptions& opt, RunConfig* c) {
  // Validated as every command's problem (errors name the option).
  const AttentionProblem p = parse_problem_options(opt).problem;
  c->batch = p.batch, c->nq = p.nq, c->nk = p.nk, c->hq = p.hq, c->hkv = p.hkv;
  c->head_dim = p.head_dim, c->dtype = p.dtype;
}

}  // namespace

CommandSpec run_spec() {
  CommandSpec s;
  s.name = "run";
  s.summary =
      "Ring attention over P ranks: the sequence is split over the ranks (by --layout) and the\n"
      "K/V blocks rotate around the ring while each rank attends its queries to every block.\n"
      "P in-process ranks (threads) with --ranks-local P, or one rank per process under\n"
      "mpirun/mpiexec/srun. Inputs are generated from --seed (the same for every P and layout),\n"
      "or read from global .npy files, each rank reading only its own tokens. Prints a per-rank\n"
      "table and totals on rank 0.";
  s.usage = "[--ranks-local P | under mpirun] [--config configs/default.ini] [options]";
  s.options = {
      backend_option_spec(),
      ranks_local_option_spec(),
      OptionSpec::integer("seed", "0", "seed of the generated inputs (and of --backward's dO)")
          .non_negative(),
      OptionSpec::text("q", "",
                       "read queries from this global .npy, [B, N, Hq, D] or [N, Hq, D], "
                       "instead of generating them (with --k and --v)")
          .as_input(),
      OptionSpec::text("k", "", "keys, [B, Nk, Hkv, D] or [Nk, Hkv, D] (.npy)").as_input(),
      OptionSpec::text("v", "", "values, the same shape as the keys (.npy)").as_input(),
      OptionSpec::choice("layout", kLayoutAuto,
                         {kLayoutAuto, "contiguous", "zigzag", "striped", "balanced"},
                         "how tokens are split over ranks (auto: balanced with documents; when "
                         "causal contiguous for a window of at most N/16 keys, else zigzag; "
                         "contiguous when not causal)"),
      OptionSpec::choice("hierarchy", "flat", {"flat", "double-ring", "a2a-ring", "auto"},
                         "communication over nodes: flat (one ring over all ranks), double-ring "
                         "(blocks circulate inside each node while each round's blocks cross to "
                         "the next node, in flight for the round's w steps), a2a-ring "
                         "(inside a node an all-to-all trades tokens for heads, the ring runs "
                         "across nodes, then back), or auto (the one `ringattn plan` predicts "
                         "fastest for these ranks and nodes on --hardware's profile)"),
      OptionSpec::text("hardware", "",
                       "the hardware profile --hierarchy auto plans on (as plan's --hardware: a "
                       "name in configs/hardware or an .ini path; the ranks planned as MPI/NCCL "
                       "ranks on nodes of --ranks-per-node)",
                       "NAME|FILE")
          .as_input(),
      OptionSpec::integer("ranks-per-node", "0",
                          "ranks per node for --hierarchy and the per-level figures (0: MPI's "
                          "shared-memory node, or all in-process ranks)")
          .non_negative(),
      OptionSpec::choice("isa", "auto", {"auto", "avx512", "avx2", "generic"},
                         "kernel instruction set (auto: the best this CPU supports)"),
      OptionSpec::choice("device", "cpu", {"cpu", "cuda"},
                         "where each rank computes: cpu, or cuda (one GPU per MPI rank by "
                         "node-local rank, K/V over NCCL; in-process ranks share GPU 0; "
                         "float16/bfloat16, head dims 64, 128, 256)"),
      OptionSpec::integer("repeats", "1", "timed ring passes; the best one is reported").positive(),
      OptionSpec::integer("warmup", "0", "untimed ring passes before the timed ones")
          .non_negative(),
      OptionSpec::flag("verify", "false",
                       "also run the single-rank kernel on the whole problem on rank 0 (which "
                       "then holds all of q, k, v, O: O(N) memory), compare every rank's rows "
                       "and report the efficiency; fail, writing nothing, over the tolerance"),
      OptionSpec::integer("check-rows", "0",
                          "compare this many sampled query rows (per batch and head) against "
                          "the float64 reference, computed on rank 0 from only the keys each "
                          "row sees (for problems too large for --verify); 0: off")
          .non_negative(),
      OptionSpec::text("out", "",
                       "write O, shaped like q in its dtype, in the original token order (.npy)")
          .as_output(),
      OptionSpec::text("lse-out", "",
                       "write the LSE, float32 [B, Hq, N] ([Hq, N] for 3-d q) (.npy)")
          .as_output(),
      OptionSpec::text("route-out", "",
                       "block routing: write the chosen blocks, int32 [B, N, Hq, topk] "
                       "ascending, -1 padded ([N, Hq, topk] for 3-d q) (.npy)")
          .as_output(),
      OptionSpec::text("moe-out", "",
                       "MoE stage: write Y, float32 [B, N, Hq D] ([N, Hq D] for 3-d q) (.npy)")
          .as_output(),
      OptionSpec::text("moe-routing-out", "",
                       "MoE stage: write the experts per token, int32 [B, N, width] in choice "
                       "order, -1 where dropped (width k; E for expert choice) (.npy)")
          .as_output(),
      OptionSpec::text("moe-gates-out", "",
                       "MoE stage: write the gates, float32 [B, N, width], 0 where dropped (.npy)")
          .as_output(),
      OptionSpec::text("kv-keep-out", "",
                       "K/V selection: write the kept set, uint8 [B, Hsel, Nk] (1 = kept; Hsel "
                       "= Hkv, or Hq with --kv-keep-per head) (.npy)")
          .as_output(),
      OptionSpec::flag("backward", "false",
                       "after each forward pass, run the backward pass around the ring (dQ, "
                       "dK, dV; the cpu device): K/V blocks move as in the forward, dK/dV "
                       "accumulators follow them one step behind; sinks and global tokens ride "
                       "the ring"),
      OptionSpec::text("do", "",
                       "backward: dO, shaped like q, in the run's dtype or float32 (.npy); "
                       "default: generated from --seed",
                       "FILE")
          .as_input(),
      OptionSpec::text("dq-out", "",
                       "backward: write dQ, shaped like q, in the original token "
                       "order (.npy; --grad-dtype)")
          .as_output(),
      OptionSpec::text("dk-out", "", "backward: write dK, shaped like k (.npy; --grad-dtype)")
          .as_output(),
      OptionSpec::text("dv-out", "", "backward: write dV, shaped like v (.npy; --grad-dtype)")
          .as_output(),
      OptionSpec::choice("grad-dtype", "storage", {"storage", "float32"},
                         "backward: the gradients' file dtype: the run's (storage) or float32 "
                         "(they are computed in float32 either way)"),
      OptionSpec::integer("fail-rank", "-1",
                          "testing: this rank fails right after its first ring pass, to check "
                          "that the whole job ends (-1: none)"),
  };
  // The problem, declared once for every command (cli/problem_options.hpp); with
  // --q/--k/--v the files give the sizes and dtype instead.
  insert_options(&s.options, "seed", problem_option_specs());
  for (OptionSpec& o : mask_option_specs()) s.options.push_back(std::move(o));
  for (OptionSpec& o : moe_option_specs()) s.options.push_back(std::move(o));
  for (OptionSpec& o : kv_option_specs()) s.options.push_back(std::move(o));
  s.epilog =
      "--threads is the kernel threads of each rank: 0 means cores / P for in-process ranks and\n"
      "the OpenMP default (OMP_NUM_THREADS) under MPI.\n"
      "Memory per rank is O(N / P): its q, k, v, O and two K/V blocks in flight; rank 0 writes\n"
      "the outputs one rank's rows at a time. Only --verify holds the whole problem (on rank 0).\n"
      "The summary's efficiency is T1 / (P T_ring), T1 being the single-rank kernel's time with\n"
      "rank 0's threads and T_ring the slowest rank's.\n" +
      tolerance_help() + " (vs the single-rank kernel under --verify)";
  return s;
}

RunConfig make_problem_config(const ParsedOptions& opt) {
  RunConfig c;
  const bool any_file = opt.has("q") || opt.has("k") || opt.has("v");
  if (any_file) {
    for (const char* name : {"q", "k", "v"})
      if (!opt.has(name))
        throw UsageError(
            fmt::format("option '--{}': missing; --q, --k and --v are given together", name));
    c.use_input_files(opt.text("q"), opt.text("k"), opt.text("v"));
    std::string ignored;  // sizes and dtype come from the files: say so if they were given
    for (const char* name :
         {"batch", "seq-len", "kv-seq-len", "heads", "kv-heads", "head-dim", "dtype", "seed"})
      if (opt.given(name) && !(name == std::string("seed") && opt.flag("backward")))
        ignored += fmt::format("{}--{}", ignored.empty() ? "" : ", ", name);
    if (!ignored.empty())
      fmt::print(stderr,
                 "ringattn: warning: {} ignored: the sizes and dtype come from the --q/--k/--v "
                 "files ({})\n",
                 ignored, c.shape_text());
  } else {
    configure_generated(opt, &c);
  }
  c.causal = opt.flag("causal");
  c.masks = parse_mask_options(opt);
  c.masks.causal = c.causal;
  c.mask = c.masks.build(c.nq, c.nk);
  c.hier = c.masks.hier;
  c.masks.attach_documents(&c);
  c.mask_text = c.masks.describe();
  const std::string& layout = opt.text("layout");
  c.layout = layout == kLayoutAuto ? auto_layout(c.mask, c.causal, c.nk) : parse_layout(layout);
  return c;
}

#ifndef RINGATTN_HARDWARE_DIR
#define RINGATTN_HARDWARE_DIR "configs/hardware"
#endif

HardwareProfile load_hardware_option(const std::string& value) {
  std::vector<std::string> dirs;
  if (const char* env = std::getenv("RINGATTN_HARDWARE_DIR"); env != nullptr && *env != '\0')
    dirs.emplace_back(env);
  dirs.emplace_back("configs/hardware");
  // An installed CLI: PREFIX/bin/ringattn finds PREFIX/share/ringattn/hardware.
  std::error_code ec;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) dirs.push_back((exe.parent_path().parent_path() / "share/ringattn/hardware").string());
  dirs.emplace_back(RINGATTN_HARDWARE_DIR);
  try {
    return load_hardware_profile(resolve_hardware_profile(value, dirs));
  } catch (const Error& e) {
    throw UsageError(fmt::format("option '--hardware': {}", e.what()));
  }
}

RunConfig make_run_config(const ParsedOptions& opt) {
  RunConfig c = make_problem_config(opt);
  // With files the seed generates only the backward's dO (without --do).
  if (!c.from_files || opt.flag("backward")) c.seed = static_cast<uint64_t>(opt.integer("seed"));
  c.scale = opt.has("scale") ? static_cast<float>(opt.number("scale")) : 0.0f;
  c.isa = resolve_isa(opt.text("isa"));
  c.device = opt.text("device") == "cuda" ? Device::cuda : Device::cpu;
  c.threads = opt.threads();
  c.repeats = opt.integer_int("repeats");
  c.warmup = opt.integer_int("warmup");
  c.verify = opt.flag("verify");
  c.check_rows = opt.integer("check-rows");
  c.fail_rank = opt.integer_int("fail-rank");
  c.out_path = opt.has("out") ? opt.text("out") : std::string();
  c.lse_path = opt.has("lse-out") ? opt.text("lse-out") : std::string();
  c.route_path = opt.has("route-out") ? opt.text("route-out") : std::string();
  const KvOptions kv = parse_kv_options(opt, c.dtype);
  c.kv_wire = kv.wire, c.kv_store = kv.store;
  c.select = kv.select;
  c.scheme_auto = opt.text("hierarchy") == "auto";
  if (!c.scheme_auto) c.scheme = parse_comm_scheme(opt.text("hierarchy"), "hierarchy");
  if (c.scheme_auto && !opt.has("hardware"))
    throw UsageError(
        "option '--hierarchy': auto picks the scheme the plan predicts fastest on a hardware "
        "profile: give --hardware NAME|FILE (e.g. h100-sxm)");
  if (!c.scheme_auto && opt.has("hardware"))
    throw UsageError("option '--hardware': only --hierarchy auto reads a profile in run");
  if (c.scheme_auto) c.hardware = load_hardware_option(opt.text("hardware"));
  c.ranks_per_node = opt.integer_int("ranks-per-node");
  c.keep_path = opt.has("kv-keep-out") ? opt.text("kv-keep-out") : std::string();
  const MoeOptions moe = parse_moe_options(opt, c.hq * c.head_dim);
  c.moe = moe.config, c.moe_weights = moe.weights_dir;
  c.moe_out_path = opt.has("moe-out") ? opt.text("moe-out") : std::string();
  c.moe_routing_path = opt.has("moe-routing-out") ? opt.text("moe-routing-out") : std::string();
  c.moe_gates_path = opt.has("moe-gates-out") ? opt.text("moe-gates-out") : std::string();
  c.backward = opt.flag("backward");
  c.dq_path = opt.has("dq-out") ? opt.text("dq-out") : std::string();
  c.dk_path = opt.has("dk-out") ? opt.text("dk-out") : std::string();
  c.dv_path = opt.has("dv-out") ? opt.text("dv-out") : std::string();
  c.grad_f32 = opt.text("grad-dtype") == "float32";
  if (!c.backward && c.grad_f32) throw UsageError("option '--grad-dtype': needs --backward");
  if (opt.has("do")) {
    if (!c.backward) throw UsageError("option '--do': needs --backward");
    try {
      c.use_grad_output_file(opt.text("do"));
    } catch (const FieldError& e) {
      throw UsageError(fmt::format("option '--do': {}", e.what()));
    }
  }
  c.metrics_path = opt.metrics_path();
  c.command_line = opt.command_line(derived_sizes(opt, c));
  c.describe_error = [](const std::exception& e) {
    const auto* f = dynamic_cast<const FieldError*>(&e);
    return f != nullptr ? option_message(*f) : std::string(e.what());
  };
  with_option_names([&] { c.validate(); });
  return c;
}

}  // namespace ringattn::cli
