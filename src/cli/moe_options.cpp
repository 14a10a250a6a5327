// The MoE stage's options (cli/moe_options.hpp).
#include "cli/moe_options.hpp"

#include <fmt/format.h>

#include <filesystem>

#include "ringattn/npy.hpp"

namespace ringattn::cli {
namespace {
// --moe-ffn 0: the usual FFN width, 4 x d_model.
constexpr int64_t kDefaultFfnRatio = 4;
}  // namespace

std::vector<OptionSpec> moe_option_specs() {
  return {
      OptionSpec::integer("moe-experts", "0",
                          "MoE stage: experts, spread over the ranks (0: no MoE stage)", "experts")
          .non_negative(),
      OptionSpec::integer("moe-topk", "2",
                          "MoE: experts per token (expert choice: the average, in the capacity)",
                          "experts")
          .positive(),
      OptionSpec::integer("moe-ffn", "0", "MoE: the experts' SwiGLU hidden width d_ff", "features")
          .non_negative()
          .shown_default("4 x d_model"),
      OptionSpec::choice(
          "moe-policy", "token", {"token", "chunk", "expert"},
          "MoE routing: token (top-k per token), chunk (whole chunks of "
          "--moe-chunk tokens by their mean), expert (each expert its top C tokens)"),
      OptionSpec::integer("moe-chunk", "0", "MoE chunk policy: tokens per chunk", "tokens")
          .non_negative(),
      OptionSpec::number("moe-capacity-factor", "1.25",
                         "MoE: capacity C = ceil(k cf T / E) tokens per expert (0: dropless)")
          .non_negative(),
      OptionSpec::integer("moe-min-capacity", "4", "MoE: the capacity's floor", "tokens")
          .non_negative(),
      OptionSpec::choice("moe-priority", "order", {"order", "score"},
                         "MoE: which assignments fill an expert first: order (every first "
                         "choice before any second, in token order; GShard) or score (router "
                         "probability)"),
      OptionSpec::number("moe-bias-rate", "0",
                         "MoE: DeepSeek-V3 balance bias, added to the selection scores and moved "
                         "by this much per pass towards equal load (0: off)")
          .non_negative(),
      OptionSpec::text("moe-weights", "",
                       "MoE weights: a directory with router.npy [d_model, E], w1.npy and w3.npy "
                       "[E, d_model, d_ff], w2.npy [E, d_ff, d_model] (float32), optional "
                       "bias.npy [E] (default: generated from --seed)",
                       "DIR")
          .shown_default("generated"),
  };
}

MoeOptions parse_moe_options(const ParsedOptions& opt, int64_t d_model) {
  MoeOptions m;
  MoeConfig& c = m.config;
  c.experts = opt.integer_int("moe-experts");
  c.topk = opt.integer_int("moe-topk");
  c.d_ff = opt.integer("moe-ffn");
  if (c.d_ff == 0) c.d_ff = kDefaultFfnRatio * d_model;
  c.policy = parse_moe_policy(opt.text("moe-policy"));
  c.priority = parse_moe_priority(opt.text("moe-priority"));
  c.chunk = opt.integer("moe-chunk");
  c.capacity_factor = opt.number("moe-capacity-factor");
  c.min_capacity = opt.integer("moe-min-capacity");
  c.bias_rate = opt.number("moe-bias-rate");
  if (opt.has("moe-weights")) m.weights_dir = opt.text("moe-weights");
  // With weights from files and no --moe-ffn, the files' d_ff (w1.npy [E, d_model, d_ff]).
  if (!m.weights_dir.empty() && !opt.given("moe-ffn")) {
    const std::string w1 = (std::filesystem::path(m.weights_dir) / "w1.npy").string();
    if (std::filesystem::exists(w1)) {
      const NpyHeader h = read_npy_header(w1);
      if (h.shape.size() == 3) c.d_ff = h.shape[2];
    }
  }
  if (!c.on()) {
    for (const OptionSpec& o : moe_option_specs())
      if (o.name != "moe-experts" && differs_from_default(opt, o))
        throw UsageError(
            fmt::format("option '--{}' needs '--moe-experts' (the MoE stage)", o.name));
  }
  return m;
}

}  // namespace ringattn::cli
