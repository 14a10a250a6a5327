// What the options layer says about files and library fields: which option set
// a library field (FieldError), and outputs that would overwrite another path.
#include <fmt/format.h>

#include <map>
#include <string>
#include <vector>

#include "cli/options.hpp"
#include "ringattn/npy.hpp"  // same_file

namespace ringattn::cli {

std::string option_for_field(const std::string& field) {
  static const std::map<std::string, std::string> kOptions = {
      {"batch", "batch"},
      {"nq", "seq-len"},
      {"nk", "kv-seq-len"},
      {"hq", "heads"},
      {"hkv", "kv-heads"},
      {"head_dim", "head-dim"},
      {"dtype", "dtype"},
      {"scale", "scale"},
      {"isa", "isa"},
      {"layout", "layout"},
      {"ranks", "ranks"},
      {"ranks_per_node", "ranks-per-node"},
      {"hierarchy", "hierarchy"},
      {"hardware", "hardware"},
      {"threads", "threads"},
      {"device", "device"},
      {"out", "out"},
      {"lse_out", "lse-out"},
      {"metrics", "metrics"},
      {"verify", "verify"},
      {"check_rows", "check-rows"},
      {"fail_rank", "fail-rank"},
      {"repeats", "repeats"},
      {"regional_block", "regional-block"},
      {"regional_window", "regional-window"},
      {"global_block", "global-block"},
      {"route_block", "route-block"},
      {"route_topk", "route-topk"},
      {"route_out", "route-out"},
      {"kv_wire", "kv-wire"},
      {"kv_group", "kv-group"},
      {"kv_store", "kv-store"},
      {"kv_keep", "kv-keep"},
      {"kv_keep_recent", "kv-keep-recent"},
      {"kv_rest", "kv-rest"},
      {"kv_keep_per", "kv-keep-per"},
      {"kv_keep_out", "kv-keep-out"},
      {"backward", "backward"},
      {"do_file", "do"},
      {"dq_out", "dq-out"},
      {"dk_out", "dk-out"},
      {"dv_out", "dv-out"},
      {"moe_experts", "moe-experts"},
      {"moe_topk", "moe-topk"},
      {"moe_ffn", "moe-ffn"},
      {"moe_policy", "moe-policy"},
      {"moe_priority", "moe-priority"},
      {"moe_capacity_factor", "moe-capacity-factor"},
      {"moe_min_capacity", "moe-min-capacity"},
      {"moe_chunk", "moe-chunk"},
      {"moe_bias_rate", "moe-bias-rate"},
      {"moe_weights", "moe-weights"},
      {"moe_out", "moe-out"},
      {"moe_routing_out", "moe-routing-out"},
      {"moe_gates_out", "moe-gates-out"},
      {"tokens", "tokens"},
      {"d_model", "d-model"},
      {"seq_len", "seq-len"},
      {"x", "x"},
      {"seed", "seed"},
      {"warmup", "warmup"},
      {"routing_out", "routing-out"},
      {"gates_out", "gates-out"},
  };
  const auto it = kOptions.find(field);
  return it == kOptions.end() ? std::string() : it->second;
}

bool differs_from_default(const ParsedOptions& opt, const OptionSpec& o) {
  if (!opt.given(o.name)) return false;
  switch (o.kind) {
    case Kind::flag:
      return opt.flag(o.name) != (o.default_value == "true");
    case Kind::integer:
      return o.default_value.empty() || opt.integer(o.name) != std::stoll(o.default_value);
    case Kind::number:
      return o.default_value.empty() || opt.number(o.name) != std::stod(o.default_value);
    case Kind::text:
    case Kind::choice:
      return opt.text(o.name) != o.default_value;
  }
  return true;
}

std::string option_message(const FieldError& e) {
  const std::string option = option_for_field(e.field());
  return option.empty() ? std::string(e.what()) : "option '--" + option + "': " + e.detail();
}

void check_distinct_files(const CommandSpec& spec,
                          const std::map<std::string, std::string>& values) {
  std::vector<const OptionSpec*> files;
  for (const OptionSpec& o : spec.options) {
    const auto it = values.find(o.name);
    if (o.file != FileRole::none && it != values.end() && !it->second.empty()) files.push_back(&o);
  }
  for (const OptionSpec* out : files) {
    if (out->file != FileRole::output) continue;
    const std::string& path = values.at(out->name);
    for (const OptionSpec* other : files) {
      if (other == out || (other->file == FileRole::output && other < out)) continue;
      const std::string& p = values.at(other->name);
      if (!same_file(path, p)) continue;
      throw UsageError(fmt::format(
          "option '--{}': '{}' is the same file as --{} ('{}'){}", out->name, path, other->name, p,
          other->file == FileRole::input ? ", which would be overwritten"
                                         : "; give each output its own file"));
    }
  }
}

}  // namespace ringattn::cli
