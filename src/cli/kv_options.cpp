// The KV-compression options (cli/kv_options.hpp).
#include "cli/kv_options.hpp"

#include <fmt/format.h>

namespace ringattn::cli {

std::vector<OptionSpec> kv_option_specs() {
  return {
      OptionSpec::text("kv-wire", "",
                       "K/V blocks on the wire: int8 or int4 (codes plus a float32 scale per "
                       "group of channels, dequantized by the receiving kernel while it packs "
                       "its tiles), or the storage dtype; a rank's own block, the sinks and "
                       "global tokens stay exact",
                       "FORMAT")
          .shown_default("the storage dtype"),
      OptionSpec::text("kv-store", "",
                       "K/V in memory: int8 or int4 codes only (each rank's own block included, "
                       "so all attention uses the dequantized values); the wire carries the same "
                       "codes",
                       "FORMAT")
          .shown_default("the storage dtype"),
      OptionSpec::integer(
          "kv-group", "64",
          "quantized K/V: channels per scale (32, 64 or 128, dividing the head dim)", "channels")
          .positive(),
      OptionSpec::flag("kv-asymmetric", "false",
                       "quantized K/V: a scale and a zero point per group (its min..max) instead "
                       "of a symmetric scale (max |x|)"),
  };
}

KvOptions parse_kv_options(const ParsedOptions& opt, DType storage) {
  KvOptions kv;
  QuantFormat& f = kv.wire;
  const std::string wire = opt.has("kv-wire") ? opt.text("kv-wire") : std::string();
  if (!wire.empty()) {
    f.bits = with_option_names([&] { return parse_quant_bits(wire, "kv_wire"); });
    if (!f.on() && wire != dtype_name(storage))
      throw UsageError(fmt::format(
          "option '--kv-wire': '{}' is neither int8, int4 nor the storage dtype ({}): the wire "
          "carries the stored values or their codes",
          wire, dtype_name(storage)));
  }
  if (opt.has("kv-store") && !opt.text("kv-store").empty()) {
    const std::string& store = opt.text("kv-store");
    const QuantBits bits = with_option_names([&] { return parse_quant_bits(store, "kv_store"); });
    if (bits == QuantBits::none)
      throw UsageError(fmt::format(
          "option '--kv-store': '{}' is not int8 or int4 (without it K/V stay in the storage "
          "dtype)",
          store));
    if (f.on() && f.bits != bits)
      throw UsageError(
          fmt::format("option '--kv-store': {} differs from --kv-wire {}: the wire "
                      "carries the stored codes",
                      store, wire));
    f.bits = bits, kv.store = true;
  }
  f.group = opt.integer_int("kv-group");
  f.asymmetric = opt.flag("kv-asymmetric");
  if (!f.on())
    for (const OptionSpec& o : kv_option_specs())
      if ((o.name == "kv-group" || o.name == "kv-asymmetric") && differs_from_default(opt, o))
        throw UsageError(
            fmt::format("option '--{}' applies to a quantized --kv-wire or --kv-store (int8, "
                        "int4)",
                        o.name));
  return kv;
}

}  // namespace ringattn::cli
