// The MoE stage's options (ringattn/moe.hpp), shared by `run` (the stage after
// attention), `moe` (the stage alone) and `plan`:
//   --moe-experts E          experts (0: no MoE stage)
//   --moe-topk k             experts per token (expert choice: the average, in C)
//   --moe-ffn d_ff           the experts' hidden width (0: 4 x d_model)
//   --moe-policy token|chunk|expert, --moe-chunk c (chunk policy)
//   --moe-capacity-factor cf (0: dropless), --moe-min-capacity C0
//   --moe-priority order|score, --moe-bias-rate gamma
//   --moe-weights DIR        router.npy, w1.npy, w3.npy, w2.npy [, bias.npy]
//                            (default: generated from --seed)
#pragma once

#include <string>
#include <vector>

#include "cli/options.hpp"
#include "ringattn/moe.hpp"

namespace ringattn::cli {

struct MoeOptions {
  MoeConfig config;         // d_ff 0 until resolved
  std::string weights_dir;  // --moe-weights; "" = generated
};

std::vector<OptionSpec> moe_option_specs();
// Reads them; d_ff = --moe-ffn or 4 x d_model (d_model: the tokens' width, or
// 0 when the caller does not know it yet: --moe-ffn must then be given or resolved
// later). Throws UsageError naming the option (validation: validate_moe).
MoeOptions parse_moe_options(const ParsedOptions& opt, int64_t d_model);

}  // namespace ringattn::cli
