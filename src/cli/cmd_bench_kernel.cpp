// ringattn bench-kernel: the CPU kernel beside the materialised OpenBLAS
// baseline, nccl-tests style: one row per problem, each with its error.
//
// Metrics (one row per problem; see also --help):
//   time       best of --repeats calls after --warmup untimed calls, ms
//   GFLOP/s    attention_flops(args) / time: 4 D Hq B x visible (query, key) pairs
//   %sgemm     GFLOP/s over the sgemm rate measured once at start (same threads)
//   %fma       GFLOP/s over the float32 FMA peak of the kernel's ISA, measured once
//              at start on the same threads (independent FMAs in registers)
//   speedup    baseline time / kernel time
//   work mem   peak bytes held in Buffers during the kernel call, beyond what
//              was held before it (inputs and outputs); in+out is those inputs
//              and outputs
//   O err      relative Frobenius error of O, LSE err max |dLSE|, both on
//              --check-rows sampled query rows per head vs the float64 reference
// With --backward, also attention_backward on the forward's own O and LSE
// with a random dO (standard normal):
//   bwd(ms)    best of --repeats, like time
//   bwdGF/s    2.5 x the forward's visible-pair FLOPs / bwd time (the
//              FlashAttention convention: 5 GEMM-sized products to the forward's 2)
//   bwd/fwd    bwdGF/s over GFLOP/s of the same row (the same run)
//   bwd mem    peak Buffer bytes during the backward beyond its inputs and outputs
//   dQ err     relative Frobenius error of dQ on the sampled rows vs the float64
//              backward reference (each row its own one-query problem over every key)
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "cli/commands.hpp"
#include "cli/harness.hpp"
#include "cli/mask_options.hpp"
#include "cli/metrics.hpp"
#include "cli/options.hpp"
#include "cli/problem_options.hpp"
#include "cli/table.hpp"
#include "ringattn/backward.hpp"
#include "ringattn/backward_reference.hpp"
#include "ringattn/baseline.hpp"
#include "ringattn/error.hpp"
#include "ringattn/hierarchy_stage.hpp"
#include "ringattn/kernel.hpp"
#include "ringattn/memory.hpp"
#include "ringattn/synth.hpp"

namespace ringattn::cli {
namespace {

// --baseline auto skips the materialised baseline above this many score
// entries Nq x Nk per head: it would take far longer than the kernel.
constexpr double kBaselineAutoMaxScores = double(int64_t{1} << 28);
// A kernel rate this far above the measured sgemm rate (beyond timing noise)
// means the sgemm measurement is not the machine's peak.
constexpr double kImplausiblePctSgemm = 150.0;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
// Backward FLOPs per forward FLOP (FlashAttention's convention: the backward's
// 5 products of the forward's size, S, dP, dV, dK, dQ, to the forward's 2).
constexpr double kBackwardFlopsRatio = 2.5;
// dO's random stream: the seed's q stream shifted past the inputs' seeds.
constexpr uint64_t kGradSeedOffset = 0x9e3779b9;
// Every problem option; these four as lists (every combination is one row).
constexpr ProblemOptionSet kSweep{kAllProblemOptions,
                                  kOptSeqLen | kOptHeadDim | kOptDType | kOptCausal};

CommandSpec bench_spec() {
  CommandSpec s;
  s.name = "bench-kernel";
  s.summary =
      "Benchmark the CPU attention kernel against the materialised OpenBLAS baseline on random\n"
      "inputs: one table row per problem (every combination of the list options), each with\n"
      "its error vs the float64 reference on sampled rows. Exits 1 if a kernel error exceeds\n"
      "the tolerance.";
  s.usage =
      "[--seq-len 8192,32768] [--head-dim 64,128] [--dtype f32,bf16] [--causal both] [options]";
  s.options = {
      OptionSpec::integer("repeats", "3", "timed calls per problem (best is reported)").positive(),
      OptionSpec::integer("warmup", "1", "untimed calls before timing").non_negative(),
      OptionSpec::choice("isa", "auto", {"auto", "avx512", "avx2", "generic"},
                         "kernel instruction set (auto: the best this CPU supports)"),
      OptionSpec::choice("baseline", "auto", {"auto", "on", "off"},
                         "run the materialised baseline (auto: only up to Nq x Nk = 2^28); with "
                         "a hierarchy: the kernel on the dense problem instead"),
      OptionSpec::flag("vs-dense", "false",
                       "base: this kernel on the dense problem (the causal bound only), and "
                       "base O / base LSE: this problem's error against dense float64 "
                       "attention (what a sparse mask or a hierarchy leaves out; on with a "
                       "hierarchy)"),
      OptionSpec::choice("inputs", "normal", {"normal", "drift"},
                         "random inputs: standard normal, or with a drifting mean (a query "
                         "resembles nearby keys; see src/cli/harness.hpp)"),
      OptionSpec::integer("check-rows", "64", "sampled query rows per head for the error columns")
          .positive(),
      OptionSpec::integer("seed", "0", "random seed of the inputs").non_negative(),
      OptionSpec::integer("sgemm-size", "2048", "n of the n x n x n sgemm measuring the peak rate")
          .positive(),
      OptionSpec::flag("backward", "false",
                       "also time attention_backward on the forward's O and LSE with a random "
                       "dO: bwd(ms), bwdGF/s (FLOPs = 2.5 x the forward's visible-pair FLOPs), "
                       "bwd/fwd (its rate over the forward's in the same run), bwd mem (peak "
                       "bytes beyond inputs and outputs), dQ err (relative Frobenius vs the "
                       "float64 backward reference on the --check-rows rows)"),
  };
  insert_options(&s.options, "", problem_option_specs(kSweep));
  for (OptionSpec& o : mask_option_specs()) s.options.push_back(std::move(o));
  s.epilog = tolerance_help();
  return s;
}

Table bench_table(bool backward) {
  std::vector<Table::Column> cols = {
      {"B", 3},           {"Nq", 7},         {"Nk", 7},        {"Hq/Hkv", 6},  {"D", 4},
      {"dtype", 8, true}, {"mask", 6, true}, {"time(ms)", 10}, {"GFLOP/s", 8}, {"%sgemm", 6},
      {"%fma", 5},        {"base(ms)", 10},  {"baseGF/s", 8},  {"speedup", 7}, {"work mem", 10},
      {"in+out", 10},     {"O err", 8},      {"LSE err", 8},   {"base O", 8},  {"base LSE", 8},
  };
  if (backward)
    cols.insert(cols.end(),
                {{"bwd(ms)", 10}, {"bwdGF/s", 8}, {"bwd/fwd", 7}, {"bwd mem", 10}, {"dQ err", 8}});
  cols.push_back({"check", 5, true});
  return Table(std::move(cols));
}

struct Timing {
  double best_s = std::numeric_limits<double>::infinity();
  std::size_t work_bytes = 0;  // peak Buffer bytes beyond those held before the call
};

// Best of `repeats` timed calls of `run` after `warmup` untimed ones.
template <class F>
Timing time_calls(int64_t warmup, int64_t repeats, F&& run) {
  Timing t;
  for (int64_t i = 0; i < warmup; ++i) run();
  for (int64_t i = 0; i < repeats; ++i) {
    const std::size_t held = memory_in_use();
    memory_reset_peak();
    const Stopwatch watch;
    run();
    t.best_s = std::min(t.best_s, watch.seconds());
    t.work_bytes = std::max(t.work_bytes, memory_peak() - held);
  }
  return t;
}

struct Settings {
  KernelOptions kopt;
  int threads = 0;  // effective
  std::string isa;  // effective name
  std::string baseline_mode;
  InputKind inputs = InputKind::normal;
  bool vs_dense = false;
  bool backward = false;
  int64_t warmup = 0, repeats = 0, check_rows = 0;
  uint64_t seed = 0;
  double sgemm_gflops = 0;
  double fma_gflops = 0;  // the kernel ISA's FMA peak on s.threads
};

// The backward's figures of one row.
struct BackwardResult {
  double time_s = kNaN, gflops = kNaN;
  std::size_t work_bytes = 0;
  double dq_rel_err = kNaN;
  bool ok = true;
};

// Relative Frobenius error of dq on the sampled query rows against the float64
// backward reference: each row (every batch entry) is a one-query problem at
// the row's own position over every key, so the reference costs Nk Hq D per row.
double dq_error(const AttentionArgs& a, const std::vector<int64_t>& rows, const float* dO,
                const float* dq) {
  const std::size_t esz = dtype_size(a.dtype);
  const int64_t qrow = a.hq * a.head_dim, kvrow = a.nk * a.hkv * a.head_dim;
  double e2 = 0.0, r2 = 0.0;
  for (int64_t b = 0; b < a.batch; ++b)
    for (int64_t i : rows) {
      AttentionArgs one = a;
      one.batch = 1, one.nq = 1;
      one.qpos = a.qpos.from(i);
      one.q = static_cast<const char*>(a.q) + static_cast<std::size_t>((b * a.nq + i) * qrow) * esz;
      one.k = static_cast<const char*>(a.k) + static_cast<std::size_t>(b * kvrow) * esz;
      one.v = static_cast<const char*>(a.v) + static_cast<std::size_t>(b * kvrow) * esz;
      const int64_t off = (b * a.nq + i) * qrow;
      const BackwardReference ref = reference_attention_backward(one, dO + off);
      for (int64_t e = 0; e < qrow; ++e) {
        const double want = ref.dq[static_cast<std::size_t>(e)];
        const double diff = double(dq[off + e]) - want;
        e2 += diff * diff, r2 += want * want;
      }
    }
  return r2 > 0.0 ? std::sqrt(e2 / r2) : std::sqrt(e2);
}

// attention_backward on the forward's O and LSE with a random dO.
BackwardResult bench_backward(const AttentionArgs& args, const Outputs& out, double flops,
                              const std::vector<int64_t>& rows, const Settings& s) {
  Buffer g(static_cast<std::size_t>(args.q_elems()) * sizeof(float), "random dO");
  synth_fill(g.data(), DType::f32, synth_key(s.seed + kGradSeedOffset, SynthStream::q), 0,
             args.q_elems());
  Buffer dq(static_cast<std::size_t>(args.q_elems()) * sizeof(float), "dQ");
  Buffer dk(static_cast<std::size_t>(args.kv_elems()) * sizeof(float), "dK");
  Buffer dv(static_cast<std::size_t>(args.kv_elems()) * sizeof(float), "dV");
  BackwardResult r;
  const Timing t = time_calls(s.warmup, s.repeats, [&] {
    attention_backward(args, out.o.as<float>(), out.lse.as<float>(), g.as<float>(), dq.as<float>(),
                       dk.as<float>(), dv.as<float>(), s.kopt);
  });
  r.time_s = t.best_s;
  r.gflops = kBackwardFlopsRatio * flops / t.best_s / 1e9;
  r.work_bytes = t.work_bytes;
  r.dq_rel_err = dq_error(args, rows, g.as<float>(), dq.as<float>());
  // The forward's O tolerance: the backward reads the same stored values and
  // accumulates in float32 (test_backward bounds it by the float32 one).
  r.ok = r.dq_rel_err <= tolerance_for(args.dtype).o_rel_fro;
  return r;
}

struct RowResult {
  bool ok = true;        // kernel error within tolerance
  double pct_sgemm = 0;  // kernel rate as % of the measured sgemm rate
};

// One table row (and metrics line).
RowResult bench_one(const ProblemShape& shape, const Settings& s, MetricsFile& metrics) {
  const AttentionProblem& p = shape.problem;
  const RandomProblem problem = make_random_problem(shape, s.seed, s.inputs);
  const AttentionArgs args = problem.args();
  Outputs out(args);
  const std::size_t inout = problem.bytes() + out.bytes();
  StageMetrics stage;
  const Timing kt = time_calls(s.warmup, s.repeats, [&] {
    hierarchical_attention(args, out.o.as<float>(), out.lse.as<float>(), s.kopt, nullptr, &stage);
  });
  const double flops = hierarchical_flops(args, stage);  // with a hierarchy: + its scores
  AttentionArgs exact = args;
  exact.mask = hierarchy_ring_mask(args), exact.hier = {};
  const double gflops = flops / kt.best_s / 1e9;

  const std::vector<int64_t> rows = sample_rows(p.nq, s.check_rows, s.seed);
  const ReferenceCheck check(args, rows);
  const ErrorStats err = check.compare(out.o.as<float>(), out.lse.as<float>());
  const bool fwd_ok = within(err, tolerance_for(p.dtype));
  const BackwardResult bwd =
      s.backward ? bench_backward(args, out, flops, rows, s) : BackwardResult{};
  const bool ok = fwd_ok && bwd.ok;

  // The materialised baseline computes plain attention. With a hierarchy the
  // baseline is this kernel on the dense problem (the causal bound only), and
  // the base error columns are the hierarchy's approximation error against it.
  const bool run_baseline =
      s.baseline_mode == "on" ||
      (s.baseline_mode == "auto" &&
       (p.hier.on() || s.vs_dense || double(p.nq) * double(p.nk) <= kBaselineAutoMaxScores));
  double base_s = kNaN;
  ErrorStats base_err{kNaN, kNaN, kNaN, 0};
  double base_flops = flops;
  if (p.hier.on() || s.vs_dense) {
    AttentionArgs dense = exact;
    dense.mask = p.mask.limit < kUnbounded ? Mask::causal(p.nk - p.nq) : Mask::none();
    if (run_baseline) {
      Outputs dout(dense);
      base_s = time_calls(s.warmup, s.repeats, [&] {
                 attention_forward(dense, dout.o.as<float>(), dout.lse.as<float>(), s.kopt);
               }).best_s;
    }
    base_flops = attention_flops(dense);
    const ReferenceCheck dense_check(dense, sample_rows(p.nq, s.check_rows, s.seed));
    base_err = dense_check.compare(out.o.as<float>(), out.lse.as<float>());
  } else if (run_baseline) {
    Outputs bout(args);
    base_s = time_calls(s.warmup, s.repeats, [&] {
               baseline_attention(args, bout.o.as<float>(), bout.lse.as<float>(), s.threads);
             }).best_s;
    base_err = check.compare(bout.o.as<float>(), bout.lse.as<float>());
  }
  const double base_gflops = base_flops / base_s / 1e9;
  const double pct = 100.0 * gflops / s.sgemm_gflops;
  const double speedup = base_s / kt.best_s;

  std::vector<std::string> cells = {
      fmt::format("{}", p.batch),
      fmt::format("{}", p.nq),
      fmt::format("{}", p.nk),
      fmt::format("{}/{}", p.hq, p.hkv),
      fmt::format("{}", p.head_dim),
      std::string(dtype_name(p.dtype)),
      shape.masks.sparse() ? (shape.causal() ? "c+sprs" : "sparse")
                           : (shape.causal() ? "causal" : "full"),
      cell_fixed(kt.best_s * 1e3, 2),
      cell_fixed(gflops, 1),
      cell_fixed(pct, 1),
      cell_fixed(100.0 * gflops / s.fma_gflops, 1),
      cell_fixed(base_s * 1e3, 2),
      cell_fixed(base_gflops, 1),
      cell_fixed(speedup, 2),
      format_bytes(double(kt.work_bytes)),
      format_bytes(double(inout)),
      cell_sci(err.o_rel_fro),
      cell_sci(err.lse_max_abs),
      cell_sci(base_err.o_rel_fro),
      cell_sci(base_err.lse_max_abs),
  };
  if (s.backward)
    cells.insert(cells.end(), {cell_fixed(bwd.time_s * 1e3, 2), cell_fixed(bwd.gflops, 1),
                               cell_fixed(bwd.gflops / gflops, 2),
                               format_bytes(double(bwd.work_bytes)), cell_sci(bwd.dq_rel_err)});
  cells.push_back(ok ? "ok" : "FAIL");
  fmt::print("{}", bench_table(s.backward).row(cells));
  std::fflush(stdout);

  JsonObject rec = shape_record("bench-kernel", shape);
  rec.text("isa", s.isa)
      .integer("threads", s.threads)
      .number("time_ms", kt.best_s * 1e3)
      .number("gflops", gflops)
      .number("pct_sgemm", pct)
      .number("sgemm_gflops", s.sgemm_gflops)
      .number("pct_fma", 100.0 * gflops / s.fma_gflops)
      .number("fma_peak_gflops", s.fma_gflops)
      .number("baseline_ms", base_s * 1e3)
      .number("baseline_gflops", base_gflops)
      .number("speedup", speedup)
      .integer("peak_bytes", static_cast<int64_t>(kt.work_bytes))
      .integer("inout_bytes", static_cast<int64_t>(inout))
      .integer("check_rows", check.rows_checked())
      .number("o_rel_err", err.o_rel_fro)
      .number("lse_max_err", err.lse_max_abs)
      .number("baseline_o_rel_err", base_err.o_rel_fro)
      .number("baseline_lse_max_err", base_err.lse_max_abs)
      .boolean("pass", ok);
  if (s.backward)
    rec.number("backward_ms", bwd.time_s * 1e3)
        .number("backward_gflops", bwd.gflops)
        .number("backward_ratio", bwd.gflops / gflops)
        .integer("backward_peak_bytes", static_cast<int64_t>(bwd.work_bytes))
        .number("backward_dq_rel_err", bwd.dq_rel_err)
        .boolean("backward_pass", bwd.ok);
  metrics.write(rec);
  return {ok, pct};
}

}  // namespace

int cmd_bench_kernel(int argc, char** argv) {
  const CommandSpec spec = bench_spec();
  const std::optional<ParsedOptions> opt = parse_options(spec, argc, argv);
  if (!opt) return kExitOk;

  // Every problem of the sweep, validated before anything runs.
  const std::vector<ProblemShape> shapes = parse_problem_sweep(*opt, kSweep);

  Settings s;
  apply_threads(opt->threads());
  s.kopt.isa = resolve_isa(opt->text("isa"));
  s.kopt.threads = opt->threads();
  s.threads = effective_threads(s.kopt.threads);
  s.isa = effective_isa_name(s.kopt.isa);
  s.baseline_mode = opt->text("baseline");
  s.inputs = opt->text("inputs") == "drift" ? InputKind::drift : InputKind::normal;
  s.vs_dense = opt->flag("vs-dense");
  s.backward = opt->flag("backward");
  if (s.backward && (shapes.front().problem.hier.on() || s.vs_dense))
    throw FieldError("backward",
                     "the backward computes plain attention: no hierarchy or --vs-dense");
  s.warmup = opt->integer("warmup");
  s.repeats = opt->integer("repeats");
  s.check_rows = opt->integer("check-rows");
  s.seed = static_cast<uint64_t>(opt->integer("seed"));
  MetricsFile metrics(opt->metrics_path());
  const int sgemm_n = opt->integer_int("sgemm-size");
  s.sgemm_gflops = measure_sgemm_gflops(s.threads, sgemm_n);
  s.fma_gflops = measure_fma_peak_gflops(s.kopt.isa, s.threads);

  fmt::print("# ringattn bench-kernel\n");
  fmt::print(
      "# isa {}{}, threads {}, sgemm {:.1f} GFLOP/s (OpenBLAS core {}, n = {}, best of 3), "
      "{} FMA peak {:.1f} GFLOP/s\n",
      s.isa, s.kopt.isa == Isa::automatic ? " (auto)" : "", s.threads, s.sgemm_gflops,
      blas_core_name(), sgemm_n, s.isa, s.fma_gflops);
  {
    const MaskOptions sparse_parts = parse_mask_options(*opt);
    if (sparse_parts.sparse()) fmt::print("# sparse mask: {}\n", sparse_parts.describe());
  }
  fmt::print(
      "# time: best of {} after {} warm-up; errors: O rel Frobenius and max |dLSE| vs "
      "float64 on {} sampled rows per head; base: materialised OpenBLAS baseline{}\n",
      s.repeats, s.warmup, s.check_rows,
      shapes.front().problem.hier.on() || s.vs_dense
          ? " -- here: this kernel on the dense problem (causal bound only), and "
            "base O / base LSE = the hierarchy's error against dense float64 attention"
          : "");
  fmt::print("#\n{}", bench_table(s.backward).header());
  std::fflush(stdout);

  int failures = 0;
  double max_pct = 0;
  for (const ProblemShape& p : shapes) {
    const RowResult r = bench_one(p, s, metrics);
    failures += r.ok ? 0 : 1;
    max_pct = std::max(max_pct, r.pct_sgemm);
  }

  fmt::print("#\n# {} problem{}, {} over tolerance\n", shapes.size(), shapes.size() == 1 ? "" : "s",
             failures);
  if (max_pct > kImplausiblePctSgemm)
    fmt::print(
        "# note: the kernel beat the measured sgemm rate, so that rate is not this CPU's "
        "peak;\n#       OpenBLAS may have chosen a slow core type (set OPENBLAS_CORETYPE, "
        "e.g. SkylakeX or Haswell)\n");
  fmt::print("# reproduce: {}\n", opt->command_line());
  return failures == 0 ? kExitOk : kExitFailure;
}

}  // namespace ringattn::cli
