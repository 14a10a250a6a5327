// The KV-compression options (ringattn/quant.hpp), shared by the commands that
// run or plan a ring:
//   --kv-wire FORMAT   int8, int4, or the storage dtype (default: no quantization):
//                      the K/V blocks the ring sends travel as codes plus scales;
//                      each rank's own block (and the sinks and global tokens,
//                      gathered once) stay exact
//   --kv-group G       channels per scale: 32, 64 or 128 (dividing the head dim)
//   --kv-asymmetric    a scale and a zero point per group (min..max) instead of
//                      a symmetric scale (max|x|)
//   --kv-kivi          KIVI's layout: K per channel over groups of G token
//                      positions, V per token
//   --kv-store FORMAT  int8 or int4: each rank keeps its K/V only as codes (its own
//                      block included, so all attention uses the dequantized
//                      values), and the wire carries the same codes
//   --kv-keep p        K/V selection (ringattn/kv_select.hpp): keep the fraction
//                      p of keys that receive the most attention, plus the sinks
//   --kv-keep-recent R   and the last R keys; the rest dropped or INT4
//   --kv-rest drop|int4  (--kv-group, --kv-asymmetric); the importance summed per
//   --kv-keep-per kv-head|head  K/V head or kept per query head
#pragma once

#include <vector>

#include "cli/options.hpp"
#include "ringattn/dtype.hpp"
#include "ringattn/kv_select.hpp"
#include "ringattn/quant.hpp"

namespace ringattn::cli {

std::vector<OptionSpec> kv_option_specs();
struct KvOptions {
  QuantFormat wire;    // off: the storage dtype
  bool store = false;  // K/V kept as codes in memory (in `wire`'s format)
  KvSelect select;     // off unless --kv-keep
};
// Throws UsageError naming the option (a storage dtype other than the
// problem's, --kv-group or --kv-asymmetric without a quantized format,
// --kv-wire and --kv-store in different formats, selection options without
// --kv-keep).
KvOptions parse_kv_options(const ParsedOptions& opt, DType storage);

}  // namespace ringattn::cli
