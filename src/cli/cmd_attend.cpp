// ringattn attend: attention of q/k/v .npy files, O (and LSE) written to .npy.
//
//   q [B, Nq, Hq, D] or [Nq, Hq, D]   (3-d means B = 1; O is then 3-d too)
//   k, v [B, Nk, Hkv, D] or [Nk, Hkv, D], same dtype as q
//   O  in the input dtype, shaped like q;  LSE float32 [B, Hq, Nq] ([Hq, Nq] for 3-d q)
// Every input is validated before any compute, each problem reported in one
// line naming the file. Outputs go through AtomicFile: opened before the
// compute (an unwritable path fails fast), committed only once everything
// succeeded, so a failed run leaves no output file behind.
#include <fmt/format.h>

#include <optional>
#include <string>
#include <vector>

#include "cli/commands.hpp"
#include "cli/harness.hpp"
#include "cli/mask_options.hpp"
#include "cli/metrics.hpp"
#include "cli/options.hpp"
#include "cli/problem_options.hpp"
#include "ringattn/error.hpp"
#include "ringattn/hierarchy_stage.hpp"
#include "ringattn/kernel.hpp"
#include "ringattn/npy.hpp"

namespace ringattn::cli {
namespace {

constexpr int kRankNoBatch = 3;  // [N, H, D]
constexpr int kRankBatch = 4;    // [B, N, H, D]
// The files give the sizes and dtype; the options only the scale and the causal bound.
constexpr ProblemOptionSet kAttendProblem{kOptScale | kOptCausal, 0};

CommandSpec attend_spec() {
  CommandSpec s;
  s.name = "attend";
  s.summary =
      "Exact attention of query/key/value .npy files (float32, float16 or bfloat16 as '<u2'):\n"
      "O = softmax(scale Q K^T) V per head, written as .npy in the input dtype, and optionally\n"
      "the log-sum-exp of each row (float32, natural log). GQA/MQA when Hq is a multiple of Hkv.";
  s.usage = "--q FILE --k FILE --v FILE --out FILE [options]";
  s.options = {
      OptionSpec::text("q", "", "queries, [B, Nq, Hq, D] or [Nq, Hq, D] (.npy)")
          .as_required()
          .as_input(),
      OptionSpec::text("k", "", "keys, [B, Nk, Hkv, D] or [Nk, Hkv, D] (.npy)")
          .as_required()
          .as_input(),
      OptionSpec::text("v", "", "values, same shape as the keys (.npy)").as_required().as_input(),
      OptionSpec::text("out", "", "output O, shaped like q, in the input dtype (.npy)")
          .as_required()
          .as_output(),
      OptionSpec::text("lse-out", "", "also write LSE, float32 [B, Hq, Nq] ([Hq, Nq] for 3-d q)")
          .as_output(),
      OptionSpec::choice("isa", "auto", {"auto", "avx512", "avx2", "generic"},
                         "kernel instruction set (auto: the best this CPU supports)"),
      OptionSpec::flag("verify", "false",
                       "also run the float64 reference and print the error; fail (writing "
                       "nothing) if it exceeds the tolerance"),
  };
  insert_options(&s.options, "lse-out", problem_option_specs(kAttendProblem));
  for (OptionSpec& o : mask_option_specs()) s.options.push_back(std::move(o));
  s.epilog = tolerance_help();
  return s;
}

// The [B, N, H, D] view of a validated 3-d or 4-d array.
struct Dims {
  int64_t batch, n, heads, d;
};

Dims dims_of(const Tensor& t, const std::string& path) {
  const auto& s = t.shape;
  const int rank = static_cast<int>(s.size());
  if (rank != kRankNoBatch && rank != kRankBatch)
    throw Error(fmt::format("{}: expected a 4-d [B, N, H, D] or 3-d [N, H, D] array, got shape {}",
                            path, shape_str(s)));
  const Dims d = rank == kRankBatch ? Dims{s[0], s[1], s[2], s[3]} : Dims{1, s[0], s[1], s[2]};
  if (d.n == 0)
    throw Error(
        fmt::format("{}: the sequence axis (N) is empty in shape {}; need at least one token", path,
                    shape_str(s)));
  if (d.batch == 0 || d.heads == 0 || d.d == 0)
    throw Error(
        fmt::format("{}: shape {} has an empty axis; batch, heads and head_dim must be >= 1", path,
                    shape_str(s)));
  return d;
}

struct Inputs {
  Tensor q, k, v;
  Dims dq{}, dk{};
};

// Reads and validates q, k and v; every error names the file and what was expected.
Inputs read_inputs(const std::string& qp, const std::string& kp, const std::string& vp) {
  Inputs in;
  in.q = read_npy(qp);
  in.k = read_npy(kp);
  in.v = read_npy(vp);
  in.dq = dims_of(in.q, qp);
  in.dk = dims_of(in.k, kp);
  const Dims dv = dims_of(in.v, vp);
  const auto same_dtype = [&](const Tensor& t, const std::string& path) {
    if (t.dtype != in.q.dtype)
      throw Error(fmt::format("{}: dtype {} differs from {}'s {}; q, k and v must share a dtype",
                              path, dtype_name(t.dtype), qp, dtype_name(in.q.dtype)));
  };
  same_dtype(in.k, kp);
  same_dtype(in.v, vp);
  const int64_t D = in.dq.d;
  if (!head_dim_supported(D))
    throw Error(fmt::format("{}: head_dim (last axis) must be a multiple of {} in [{}, {}], got {}",
                            qp, kHeadDimMultiple, kMinHeadDim, kMaxHeadDim, D));
  if (in.dk.d != D)
    throw Error(
        fmt::format("{}: head_dim (last axis) {} differs from {}'s {}", kp, in.dk.d, qp, D));
  if (in.dk.batch != in.dq.batch)
    throw Error(fmt::format("{}: batch {} differs from {}'s {}", kp, in.dk.batch, qp, in.dq.batch));
  if (dv.batch != in.dk.batch || dv.n != in.dk.n || dv.heads != in.dk.heads || dv.d != in.dk.d)
    throw Error(fmt::format("{}: shape {} differs from {}'s {}; k and v must have the same shape",
                            vp, shape_str(in.v.shape), kp, shape_str(in.k.shape)));
  if (in.dq.heads % in.dk.heads != 0)
    throw Error(
        fmt::format("{}: {} query heads are not a multiple of the {} key/value heads of {} (need "
                    "Hq % Hkv == 0)",
                    qp, in.dq.heads, in.dk.heads, kp));
  check_finite(in.q, qp);
  check_finite(in.k, kp);
  check_finite(in.v, vp);
  return in;
}

// The kernel's float32 O rounded to the storage dtype, in a tensor of `shape`.
Tensor to_storage(const float* o, DType dtype, std::vector<int64_t> shape) {
  Tensor t(dtype, std::move(shape), "output O");
  const int64_t n = t.numel();
  for (int64_t i = 0; i < n; ++i) t.set(i, o[i]);
  return t;
}

// Opens an output through AtomicFile; the error names the option.
void open_output(std::optional<AtomicFile>* file, const std::string& path, const char* option) {
  try {
    file->emplace(path);
  } catch (const Error& e) {
    throw Error(fmt::format("option '--{}': {}", option, e.what()));
  }
}

}  // namespace

int cmd_attend(int argc, char** argv) {
  const CommandSpec spec = attend_spec();
  const std::optional<ParsedOptions> opt = parse_options(spec, argc, argv);
  if (!opt) return kExitOk;
  const std::string& out_path = opt->text("out");
  const std::string lse_path = opt->has("lse-out") ? opt->text("lse-out") : std::string();
  if (lse_path == out_path)
    throw UsageError(fmt::format("option '--lse-out': '{}' is also the --out file", lse_path));
  apply_threads(opt->threads());
  KernelOptions kopt;
  kopt.isa = resolve_isa(opt->text("isa"));
  kopt.threads = opt->threads();
  MetricsFile metrics(opt->metrics_path());

  // Fail fast on unwritable outputs; the temporaries vanish unless committed.
  std::optional<AtomicFile> out_file, lse_file;
  open_output(&out_file, out_path, "out");
  if (!lse_path.empty()) open_output(&lse_file, lse_path, "lse-out");

  const Inputs in = read_inputs(opt->text("q"), opt->text("k"), opt->text("v"));
  ProblemShape shape = parse_problem_options(*opt, kAttendProblem);
  AttentionProblem& p = shape.problem;
  p.batch = in.dq.batch, p.nq = in.dq.n, p.nk = in.dk.n;
  p.hq = in.dq.heads, p.hkv = in.dk.heads, p.head_dim = in.dq.d, p.dtype = in.q.dtype;
  shape.rebuild_mask();
  const AttentionArgs args = make_args(shape, in.q.data.data(), in.k.data.data(), in.v.data.data());

  const bool batched = in.q.shape.size() == static_cast<std::size_t>(kRankBatch);
  Tensor o32(DType::f32, in.q.shape, "float32 O");
  Tensor lse(DType::f32,
             batched ? std::vector<int64_t>{p.batch, p.hq, p.nq} : std::vector<int64_t>{p.hq, p.nq},
             "LSE");
  const Stopwatch watch;
  StageMetrics stage;
  hierarchical_attention(args, o32.as<float>(), lse.as<float>(), kopt, nullptr, &stage);
  const double seconds = watch.seconds();
  if (const int64_t bad =
          nonfinite_rows(o32.as<float>(), lse.as<float>(), p.batch, p.nq, p.hq, p.head_dim);
      bad > 0)
    throw Error(nonfinite_message(bad, p.batch * p.hq * p.nq) + "; no output written");
  const double gflops = hierarchical_flops(args, stage) / seconds / 1e9;

  JsonObject row = shape_record("attend", shape);
  row.text("isa", effective_isa_name(kopt.isa))
      .integer("threads", effective_threads(kopt.threads))
      .number("time_ms", seconds * 1e3)
      .number("gflops", gflops);

  std::string verdict;
  if (opt->flag("verify")) {
    // The reference reads the stored inputs; compare the float32 kernel output.
    const ErrorStats err = ReferenceCheck(args, {}).compare(o32.as<float>(), lse.as<float>());
    const Tolerance tol = tolerance_for(p.dtype);
    const std::string details = error_text(err, tol);
    row.number("o_rel_err", err.o_rel_fro).number("lse_max_err", err.lse_max_abs);
    if (!within(err, tol))
      throw Error(
          fmt::format("option '--verify': the error exceeds the {} tolerance: {}; no "
                      "output written",
                      dtype_name(p.dtype), details));
    verdict = "; verified vs float64: " + details;
  }

  if (p.dtype == DType::f32) {
    write_npy(*out_file, o32);
  } else {
    write_npy(*out_file, to_storage(o32.as<float>(), p.dtype, in.q.shape));
  }
  if (lse_file) write_npy(*lse_file, lse);
  out_file->commit();
  if (lse_file) lse_file->commit();
  metrics.write(row);

  fmt::print("attend: q {} k/v {} {} {} -> {}: {:.3f} ms, {:.1f} GFLOP/s ({}, {} threads){}\n",
             shape_str(in.q.shape), shape_str(in.k.shape), dtype_name(p.dtype), shape.mask_str(),
             out_path, seconds * 1e3, gflops, effective_isa_name(kopt.isa),
             effective_threads(kopt.threads), verdict);
  return kExitOk;
}

}  // namespace ringattn::cli
