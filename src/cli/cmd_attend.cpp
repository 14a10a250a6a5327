// ringattn attend: attention of q/k/v .npy files, O (and LSE) written to .npy.
//
//   q [B, Nq, Hq, D] or [Nq, Hq, D]   (3-d means B = 1; O is then 3-d too)
//   k, v [B, Nk, Hkv, D] or [Nk, Hkv, D], same dtype as q
//   O  in the input dtype, shaped like q;  LSE float32 [B, Hq, Nq] ([Hq, Nq] for 3-d q)
//   --backward: dO from --do (shaped like q, the input dtype or float32) or
//   generated from --seed; dQ, dK, dV shaped like q, k, v (--grad-dtype)
// Every input is validated before any compute, each problem reported in one
// line naming the file. Outputs go through AtomicFile: opened before the
// compute (an unwritable path fails fast), committed only once everything
// succeeded, so a failed run leaves no output file behind.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "cli/commands.hpp"
#include "cli/harness.hpp"
#include "cli/mask_options.hpp"
#include "cli/metrics.hpp"
#include "cli/options.hpp"
#include "cli/problem_options.hpp"
#include "ringattn/backward.hpp"
#include "ringattn/backward_reference.hpp"
#include "ringattn/error.hpp"
#include "ringattn/hierarchy_stage.hpp"
#include "ringattn/kernel.hpp"
#include "ringattn/npy.hpp"
#include "ringattn/synth.hpp"

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
                       "nothing) if it exceeds the tolerance (with --backward: the gradients' "
                       "too, for Nq Nk <= 2^26)"),
      OptionSpec::flag("backward", "false",
                       "also run the backward pass (FlashAttention-2): dQ, dK, dV from the "
                       "forward's O and LSE and dO"),
      OptionSpec::text("do", "",
                       "backward: dO, shaped like q, in the input dtype or float32 (.npy); "
                       "default: generated from --seed",
                       "FILE")
          .as_input(),
      OptionSpec::integer("seed", "0",
                          "backward: the seed dO is generated from without --do (the values "
                          "run --seed generates for the same shape)"),
      OptionSpec::text("dq-out", "", "backward: write dQ, shaped like q (.npy)").as_output(),
      OptionSpec::text("dk-out", "", "backward: write dK, shaped like k (.npy)").as_output(),
      OptionSpec::text("dv-out", "", "backward: write dV, shaped like v (.npy)").as_output(),
      OptionSpec::choice("grad-dtype", "storage", {"storage", "float32"},
                         "backward: the gradients' file dtype: the input's (storage) or float32"),
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

// The float64 gradient reference holds two Nq x Nk matrices of one head.
constexpr int64_t kMaxGradReferencePairs = int64_t{1} << 26;

// dO for --backward: from --do (checked against q's shape; its dtype or
// float32) or generated like run's (SynthStream::d_o, float32).
Tensor grad_output(const ParsedOptions& opt, const Tensor& q) {
  if (!opt.has("do")) {
    Tensor g(DType::f32, q.shape, "generated dO");
    synth_fill(g.data.data(), DType::f32,
               synth_key(static_cast<uint64_t>(opt.integer("seed")), SynthStream::d_o), 0,
               g.numel());
    return g;
  }
  const std::string& path = opt.text("do");
  const Tensor t = read_npy(path);
  if (t.shape != q.shape)
    throw Error(fmt::format("{}: shape {} differs from the queries' {}; dO is shaped like q", path,
                            shape_str(t.shape), shape_str(q.shape)));
  if (t.dtype != q.dtype && t.dtype != DType::f32)
    throw Error(fmt::format("{}: dtype {}; expected the inputs' {} or float32", path,
                            dtype_name(t.dtype), dtype_name(q.dtype)));
  check_finite(t, path);
  Tensor g(DType::f32, q.shape, "dO");
  for (int64_t i = 0; i < t.numel(); ++i) g.as<float>()[i] = t.get(i);
  return g;
}

double rel_fro(const float* x, const std::vector<double>& ref) {
  double e2 = 0, r2 = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    e2 += (double(x[i]) - ref[i]) * (double(x[i]) - ref[i]);
    r2 += ref[i] * ref[i];
  }
  return r2 > 0 ? std::sqrt(e2 / r2) : std::sqrt(e2);
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

  const bool backward = opt->flag("backward");
  // The backward's options at their defaults need no --backward.
  for (const char* name : {"do", "dq-out", "dk-out", "dv-out"})
    if (!backward && opt->has(name))
      throw UsageError(fmt::format("option '--{}': needs --backward", name));
  if (!backward && opt->integer("seed") != 0)
    throw UsageError("option '--seed': generates the backward's dO; needs --backward");
  if (!backward && opt->text("grad-dtype") != "storage")
    throw UsageError("option '--grad-dtype': needs --backward");

  // Fail fast on unwritable outputs; the temporaries vanish unless committed.
  std::optional<AtomicFile> out_file, lse_file, grad_files[3];
  open_output(&out_file, out_path, "out");
  if (!lse_path.empty()) open_output(&lse_file, lse_path, "lse-out");
  const char* grad_options[3] = {"dq-out", "dk-out", "dv-out"};
  for (int i = 0; i < 3; ++i)
    if (opt->has(grad_options[i])) {
      for (const char* other : {"out", "lse-out", "q", "k", "v", "do"})
        if (opt->has(other) && opt->text(other) == opt->text(grad_options[i]))
          throw UsageError(fmt::format("option '--{}': '{}' is also the --{} file", grad_options[i],
                                       opt->text(grad_options[i]), other));
      for (int j = 0; j < i; ++j)
        if (opt->has(grad_options[j]) && opt->text(grad_options[j]) == opt->text(grad_options[i]))
          throw UsageError(fmt::format("option '--{}': '{}' is also the --{} file", grad_options[i],
                                       opt->text(grad_options[i]), grad_options[j]));
      open_output(&grad_files[i], opt->text(grad_options[i]), grad_options[i]);
    }

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

  // The backward pass on the forward's float32 O and LSE.
  std::optional<Tensor> grads[3];
  double bwd_seconds = 0;
  std::optional<Tensor> d_o;
  if (backward) {
    if (args.hier.on())
      throw UsageError(
          "option '--backward': the backward pass does not run with the "
          "hierarchical stages yet");
    d_o.emplace(grad_output(*opt, in.q));
    grads[0].emplace(DType::f32, in.q.shape, "dQ");
    grads[1].emplace(DType::f32, in.k.shape, "dK");
    grads[2].emplace(DType::f32, in.v.shape, "dV");
    const Stopwatch bwd_watch;
    attention_backward(args, o32.as<float>(), lse.as<float>(), d_o->as<float>(),
                       grads[0]->as<float>(), grads[1]->as<float>(), grads[2]->as<float>(), kopt);
    bwd_seconds = bwd_watch.seconds();
    for (const auto& g : grads)
      for (int64_t i = 0; i < g->numel(); ++i)
        if (!std::isfinite(g->as<float>()[i]))
          throw Error("the backward pass gave a non-finite gradient; no output written");
    row.number("bwd_ms", bwd_seconds * 1e3)
        .number("bwd_gflops", 2.5 * hierarchical_flops(args, stage) / bwd_seconds / 1e9);
  }

  std::string verdict;
  if (opt->flag("verify") && backward) {
    if (p.nq * p.nk > kMaxGradReferencePairs)
      throw UsageError(fmt::format(
          "option '--verify': the float64 gradient reference holds Nq x Nk matrices; Nq Nk = {} "
          "is over 2^26 (use ringattn run --backward --check-rows for sampled rows)",
          p.nq * p.nk));
    const BackwardReference ref = reference_attention_backward(args, d_o->as<float>());
    const double e[3] = {rel_fro(grads[0]->as<float>(), ref.dq),
                         rel_fro(grads[1]->as<float>(), ref.dk),
                         rel_fro(grads[2]->as<float>(), ref.dv)};
    const double tol = tolerance_for(p.dtype).o_rel_fro;
    row.number("dq_rel_err", e[0]).number("dk_rel_err", e[1]).number("dv_rel_err", e[2]);
    const std::string text = fmt::format(
        "dQ {:.2e}, dK {:.2e}, dV {:.2e} rel. Frobenius (tolerance {:.0e})", e[0], e[1], e[2], tol);
    if (e[0] > tol || e[1] > tol || e[2] > tol)
      throw Error(
          fmt::format("option '--verify': the gradients' error exceeds the tolerance: {}; "
                      "no output written",
                      text));
    verdict += "; gradients verified vs float64: " + text;
  }
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
    verdict = "; verified vs float64: " + details + verdict;
  }

  if (p.dtype == DType::f32) {
    write_npy(*out_file, o32);
  } else {
    write_npy(*out_file, to_storage(o32.as<float>(), p.dtype, in.q.shape));
  }
  if (lse_file) write_npy(*lse_file, lse);
  const bool grad_f32 = backward && opt->text("grad-dtype") == "float32";
  for (int i = 0; i < 3; ++i)
    if (grad_files[i]) {
      if (grad_f32 || p.dtype == DType::f32)
        write_npy(*grad_files[i], *grads[i]);
      else
        write_npy(*grad_files[i], to_storage(grads[i]->as<float>(), p.dtype, grads[i]->shape));
    }
  out_file->commit();
  if (lse_file) lse_file->commit();
  for (auto& f : grad_files)
    if (f) f->commit();
  metrics.write(row);

  fmt::print("attend: q {} k/v {} {} {} -> {}: {:.3f} ms, {:.1f} GFLOP/s ({}, {} threads){}\n",
             shape_str(in.q.shape), shape_str(in.k.shape), dtype_name(p.dtype), shape.mask_str(),
             out_path, seconds * 1e3, gflops, effective_isa_name(kopt.isa),
             effective_threads(kopt.threads), verdict);
  if (backward)
    fmt::print("attend: backward {:.3f} ms, {:.1f} GFLOP/s (FLOPs 2.5x the forward's){}\n",
               bwd_seconds * 1e3,
               2.5 * hierarchical_flops(args, stage) / std::max(bwd_seconds, 1e-12) / 1e9, [&] {
                 std::string w;
                 for (int i = 0; i < 3; ++i)
                   if (opt->has(grad_options[i]))
                     w +=
                         fmt::format("{}{}", w.empty() ? " -> " : ", ", opt->text(grad_options[i]));
                 return w;
               }());
  return kExitOk;
}

}  // namespace ringattn::cli
