#include "cli/problem_options.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <iterator>
#include <stdexcept>
#include <utility>

namespace ringattn::cli {
namespace {

// Options a command may take as lists.
constexpr unsigned kListable = kOptSeqLen | kOptHeadDim | kOptDType | kOptCausal;

// The one declaration of each problem option, in --help order.
std::vector<std::pair<ProblemOption, OptionSpec>> all_specs() {
  return {
      {kOptBatch, OptionSpec::integer("batch", "1", "batch size B").positive()},
      {kOptSeqLen,
       OptionSpec::integer("seq-len", "4096", "query sequence length Nq", "tokens").positive()},
      {kOptKvSeqLen,
       OptionSpec::integer("kv-seq-len", "0",
                           "key/value sequence length Nk; 0 = same as --seq-len, else "
                           "cross-attention",
                           "tokens")
           .non_negative()},
      {kOptHeads, OptionSpec::integer("heads", "8", "query heads Hq", "heads").positive()},
      {kOptKvHeads, OptionSpec::integer("kv-heads", "0",
                                        "key/value heads Hkv, dividing Hq (GQA/MQA); 0 = same "
                                        "as --heads",
                                        "heads")
                        .non_negative()},
      {kOptHeadDim,
       OptionSpec::integer("head-dim", "128", "head dimension D, a multiple of 8 in [8, 256]")
           .positive()},
      {kOptDType, OptionSpec::choice("dtype", "float32",
                                     {"float32", "float16", "bfloat16", "f32", "f16", "bf16"},
                                     "storage dtype of q, k, v and O")},
      {kOptScale,
       OptionSpec::number("scale", "", "softmax scale").positive().shown_default("1/sqrt(D)")},
      {kOptCausal,
       OptionSpec::flag("causal", "false",
                        "causal mask, bottom-right aligned: query i sees key j iff j <= i + "
                        "Nk - Nq")},
  };
}

OptionSpec as_list(OptionSpec o) {
  o.as_list();
  if (o.kind == Kind::flag) {
    o.also({"both"});
    o.help += "; 'both' runs each problem without and with";
  }
  return o;
}

// Reads option `name` from the command's options when it takes it, else from
// the shared defaults.
struct Source {
  const ParsedOptions& opt;
  const ParsedOptions& defaults;
  unsigned take;
  const ParsedOptions& of(ProblemOption o) const { return (take & o) != 0 ? opt : defaults; }
};

}  // namespace

std::string mask_label(const MaskOptions& m) {
  return m.sparse() ? m.describe() : (m.causal ? "causal" : "full");
}

std::string ProblemShape::mask_str() const {
  return mask_label(masks);
}

std::string ProblemShape::str() const {
  return problem.shape_str() + " " + mask_str();
}

std::vector<OptionSpec> problem_option_specs(ProblemOptionSet set) {
  if ((set.lists & ~kListable) != 0 || (set.lists & ~set.take) != 0)
    throw std::logic_error(
        "problem_option_specs: only taken seq-len, head-dim, dtype and "
        "causal may be lists");
  std::vector<OptionSpec> out;
  for (auto& [bit, spec] : all_specs())
    if ((set.take & bit) != 0) out.push_back((set.lists & bit) != 0 ? as_list(spec) : spec);
  return out;
}

void insert_options(std::vector<OptionSpec>* options, const std::string& after,
                    std::vector<OptionSpec> specs) {
  auto at = options->begin();
  if (!after.empty()) {
    at = std::find_if(options->begin(), options->end(),
                      [&](const OptionSpec& o) { return o.name == after; });
    if (at == options->end()) throw std::logic_error("insert_options: no option '" + after + "'");
    ++at;
  }
  options->insert(at, std::make_move_iterator(specs.begin()), std::make_move_iterator(specs.end()));
}

std::vector<ProblemShape> parse_problem_sweep(const ParsedOptions& opt, ProblemOptionSet set) {
  CommandSpec all;
  all.options = problem_option_specs({kAllProblemOptions, 0, false});
  const ParsedOptions defaults(std::move(all), {});
  const Source src{opt, defaults, set.take};

  MaskOptions masks = set.masks ? parse_mask_options(opt) : MaskOptions{};
  AttentionProblem base;
  base.batch = src.of(kOptBatch).integer("batch");
  const int64_t nk = src.of(kOptKvSeqLen).integer("kv-seq-len");
  base.hq = src.of(kOptHeads).integer("heads");
  const int64_t hkv = src.of(kOptKvHeads).integer("kv-heads");
  base.hkv = hkv == 0 ? base.hq : hkv;
  const ParsedOptions& scale = src.of(kOptScale);
  base.scale = scale.has("scale") ? static_cast<float>(scale.number("scale")) : 0.0f;

  std::vector<ProblemShape> out;
  for (const std::string& dt : src.of(kOptDType).texts("dtype")) {
    for (const bool causal : src.of(kOptCausal).flags("causal")) {
      for (const int64_t d : src.of(kOptHeadDim).integers("head-dim")) {
        for (const int64_t n : src.of(kOptSeqLen).integers("seq-len")) {
          ProblemShape s;
          s.problem = base;
          s.problem.dtype = parse_dtype(dt, "option '--dtype'");
          s.problem.head_dim = d;
          s.problem.nq = n;
          s.problem.nk = nk == 0 ? n : nk;
          if (masks.docs) {  // packed documents: their sums are the lengths unless given
            if (!opt.given("seq-len")) s.problem.nq = masks.docs->q.back();
            if (!opt.given("kv-seq-len"))
              s.problem.nk = masks.docs->cross() ? masks.docs->k.back() : s.problem.nq;
          }
          s.masks = masks;
          s.masks.causal = causal;
          s.rebuild_mask();
          with_option_names([&] { s.problem.validate(HeadDims::kernel); });
          out.push_back(std::move(s));
        }
      }
    }
  }
  return out;
}

ProblemShape parse_problem_options(const ParsedOptions& opt, ProblemOptionSet set) {
  std::vector<ProblemShape> all = parse_problem_sweep(opt, set);
  if (all.size() != 1)
    throw std::logic_error("parse_problem_options: a list option gave several problems");
  return std::move(all.front());
}

std::map<std::string, std::string> derived_sizes(const ParsedOptions& opt,
                                                 const AttentionProblem& p) {
  std::map<std::string, std::string> out;
  if (!p.docs) return out;
  if (!opt.given("seq-len")) out["seq-len"] = std::to_string(p.nq);
  if (!opt.given("kv-seq-len")) out["kv-seq-len"] = std::to_string(p.nk == p.nq ? 0 : p.nk);
  return out;
}

JsonObject& add_shape_keys(JsonObject& r, const AttentionProblem& p, bool causal,
                           const std::string& mask) {
  r.integer("b", p.batch)
      .integer("nq", p.nq)
      .integer("nk", p.nk)
      .integer("hq", p.hq)
      .integer("hkv", p.hkv)
      .integer("d", p.head_dim)
      .text("dtype", std::string(dtype_name(p.dtype)))
      .boolean("causal", causal)
      .text("mask", mask);
  if (p.docs) r.integer("docs", p.docs->count());  // packed documents
  return r;
}

JsonObject shape_record(const std::string& command, const ProblemShape& shape) {
  JsonObject r;
  r.text("command", command);
  add_shape_keys(r, shape.problem, shape.causal(), shape.mask_str());
  return r;
}

}  // namespace ringattn::cli
