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
          "quantized K/V: channels per scale (32, 64 or 128, dividing the head dim; --kv-kivi "
          "keys: token positions per group)",
          "channels")
          .positive(),
      OptionSpec::flag("kv-asymmetric", "false",
                       "quantized K/V: a scale and a zero point per group (its min..max) instead "
                       "of a symmetric scale (max |x|)"),
      OptionSpec::flag("kv-kivi", "false",
                       "quantized K/V in KIVI's layout: K per channel over groups of --kv-group "
                       "token positions (each rank's tokens of a range [gG, (g + 1) G)), V per "
                       "token"),
      OptionSpec::number("kv-keep", "0",
                         "K/V selection: keep the fraction p in (0, 1] of keys that receive the "
                         "most attention (column sums of the softmax, from an exact pass), plus "
                         "the sinks and --kv-keep-recent; attention then runs over what is kept "
                         "(0: off)",
                         "p"),
      OptionSpec::integer("kv-keep-recent", "0",
                          "K/V selection: also keep the last R keys of the sequence", "R"),
      OptionSpec::choice("kv-rest", "drop", {"drop", "int4"},
                         "K/V selection: the keys not kept are dropped, or kept as INT4 "
                         "(--kv-group, --kv-asymmetric)"),
      OptionSpec::choice("kv-keep-per", "kv-head", {"kv-head", "head"},
                         "K/V selection: one kept set per K/V head (importance summed over its "
                         "query heads) or per query head"),
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
  f.kivi = opt.flag("kv-kivi");
  KvSelect& s = kv.select;
  s.keep = opt.number("kv-keep");
  s.keep_recent = opt.integer("kv-keep-recent");
  s.rest = parse_keep_rest(opt.text("kv-rest"), "kv_rest");
  s.per = parse_keep_per(opt.text("kv-keep-per"), "kv_keep_per");
  s.group = f.group, s.asymmetric = f.asymmetric;
  with_option_names([&] {  // p and R here; the INT4 rest's group against the head dim in the job
    KvSelect p = s;
    p.rest = KeepRest::drop;
    validate_select(p, 0);
  });
  const bool int4_rest = s.on() && s.rest == KeepRest::int4;
  for (const OptionSpec& o : kv_option_specs()) {
    if (!differs_from_default(opt, o)) continue;
    if (o.name == "kv-kivi" && !f.on())
      throw UsageError(
          "option '--kv-kivi' applies to a quantized --kv-wire or --kv-store (int8, "
          "int4)");
    if ((o.name == "kv-group" || o.name == "kv-asymmetric") && !f.on() && !int4_rest)
      throw UsageError(
          fmt::format("option '--{}' applies to a quantized --kv-wire or --kv-store (int8, "
                      "int4) or to --kv-rest int4",
                      o.name));
    if ((o.name == "kv-keep-recent" || o.name == "kv-rest" || o.name == "kv-keep-per") && !s.on())
      throw UsageError(fmt::format("option '--{}' applies to K/V selection (--kv-keep p)", o.name));
  }
  return kv;
}

}  // namespace ringattn::cli
