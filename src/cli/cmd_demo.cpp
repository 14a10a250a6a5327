// ringattn demo: the kernel on random inputs, checked against the float64
// reference. Small problems are checked in full; above kFullCheckMaxWork the
// check runs on --check-rows sampled query rows per (batch, head), and says so.
// Exits 1 when the error exceeds the dtype's tolerance.
// configs/kernel-demo.ini spells out every option (a GQA causal example).
#include <fmt/format.h>

#include <cmath>
#include <optional>
#include <string>

#include "cli/commands.hpp"
#include "cli/harness.hpp"
#include "cli/mask_options.hpp"
#include "cli/metrics.hpp"
#include "cli/options.hpp"
#include "cli/problem_options.hpp"
#include "ringattn/hierarchy_stage.hpp"
#include "ringattn/kernel.hpp"

namespace ringattn::cli {
namespace {

constexpr int kLabelWidth = 20;  // width of the label column of the report

CommandSpec demo_spec() {
  CommandSpec s;
  s.name = "demo";
  s.summary =
      "Run the CPU attention kernel on random inputs (normal, seeded) and check O and LSE\n"
      "against the independent float64 reference. Exits 1 if the error exceeds the tolerance.";
  s.usage = "[--config configs/kernel-demo.ini] [options]";
  s.options = {
      OptionSpec::integer("seed", "0", "random seed of the inputs").non_negative(),
      OptionSpec::choice("isa", "auto", {"auto", "avx512", "avx2", "generic"},
                         "kernel instruction set (auto: the best this CPU supports)"),
      OptionSpec::integer("warmup", "1", "untimed kernel calls before the timed one")
          .non_negative(),
      OptionSpec::integer("check-rows", "64",
                          "query rows per head checked when the problem is too large to check "
                          "in full")
          .positive(),
  };
  insert_options(&s.options, "seed", problem_option_specs());
  for (OptionSpec& o : mask_option_specs()) s.options.push_back(std::move(o));
  s.epilog =
      tolerance_help() +
      fmt::format("\nProblems up to 2^{:.0f} multiply-adds (B Hq Nq Nk D) are checked in full.",
                  std::log2(kFullCheckMaxWork));
  return s;
}

std::string verdict(double err, double tol) {
  return err <= tol ? "ok" : "FAIL";
}

}  // namespace

int cmd_demo(int argc, char** argv) {
  const CommandSpec spec = demo_spec();
  const std::optional<ParsedOptions> opt = parse_options(spec, argc, argv);
  if (!opt) return kExitOk;

  const ProblemShape shape = parse_problem_options(*opt);
  apply_threads(opt->threads());
  KernelOptions kopt;
  kopt.isa = resolve_isa(opt->text("isa"));
  kopt.threads = opt->threads();
  const auto seed = static_cast<uint64_t>(opt->integer("seed"));
  MetricsFile metrics(opt->metrics_path());

  const RandomProblem problem = make_random_problem(shape, seed);
  const AttentionArgs args = problem.args();
  Outputs out(args);
  for (int64_t i = 0; i < opt->integer("warmup"); ++i)
    hierarchical_attention(args, out.o.as<float>(), out.lse.as<float>(), kopt);
  const Stopwatch watch;
  StageMetrics stage;
  const KernelStats stats =
      hierarchical_attention(args, out.o.as<float>(), out.lse.as<float>(), kopt, nullptr, &stage);
  const double seconds = watch.seconds();
  const double flops = hierarchical_flops(args, stage);

  const bool full = reference_work(shape) <= kFullCheckMaxWork;
  const ReferenceCheck check(
      args, full ? std::vector<int64_t>{}
                 : sample_rows(shape.problem.nq, opt->integer("check-rows"), seed));
  const ErrorStats err = check.compare(out.o.as<float>(), out.lse.as<float>());
  const Tolerance tol = tolerance_for(shape.problem.dtype);
  const bool ok = within(err, tol);

  const auto line = [](const std::string& label, const std::string& value) {
    fmt::print("  {:<{}}{}\n", label, kLabelWidth, value);
  };
  fmt::print("ringattn demo: random inputs (seed {}), {}\n", seed, shape.str());
  line("isa", fmt::format("{} ({} threads)", effective_isa_name(kopt.isa),
                          effective_threads(kopt.threads)));
  line("kernel time", fmt::format("{:.3f} ms", seconds * 1e3));
  line("throughput", fmt::format("{:.1f} GFLOP/s ({:.3g} GFLOP of visible pairs)",
                                 flops / seconds / 1e9, flops / 1e9));
  line("tiles computed",
       fmt::format("{} of {} ({} skipped by the mask, {} partial)", stats.tiles_computed,
                   stats.tiles_total, stats.tiles_total - stats.tiles_computed,
                   stats.tiles_partial));
  line("checked", check.full()
                      ? fmt::format("all {} query rows vs the float64 reference", shape.problem.nq)
                      : fmt::format("{} sampled query rows per head (of {}) vs the float64 "
                                    "reference; too large to check in full",
                                    check.rows_checked(), shape.problem.nq));
  line("O rel. Frobenius", fmt::format("{:.2e}   tolerance {:.0e}   {}", err.o_rel_fro,
                                       tol.o_rel_fro, verdict(err.o_rel_fro, tol.o_rel_fro)));
  line("max |dLSE|", fmt::format("{:.2e}   tolerance {:.0e}   {}", err.lse_max_abs, tol.lse_max_abs,
                                 verdict(err.lse_max_abs, tol.lse_max_abs)));
  if (err.lse_mismatch != 0)
    line("LSE mismatches",
         fmt::format("{} rows (NaN, or empty on one side only)   FAIL", err.lse_mismatch));
  fmt::print("{}\n", ok ? "PASS" : "FAIL: the error exceeds the tolerance");

  metrics.write(shape_record("demo", shape)
                    .text("isa", effective_isa_name(kopt.isa))
                    .integer("threads", effective_threads(kopt.threads))
                    .number("time_ms", seconds * 1e3)
                    .number("gflops", flops / seconds / 1e9)
                    .integer("rows_checked", check.rows_checked())
                    .number("o_rel_err", err.o_rel_fro)
                    .number("lse_max_err", err.lse_max_abs)
                    .boolean("pass", ok));
  return ok ? kExitOk : kExitFailure;
}

}  // namespace ringattn::cli
