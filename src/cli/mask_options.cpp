#include "cli/mask_options.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <limits>

#include "ringattn/attention.hpp"  // kMaxSeqLen
#include "ringattn/error.hpp"
#include "ringattn/npy.hpp"

namespace ringattn::cli {
namespace {

// "0,100-115": single positions or inclusive ranges, comma separated.
std::vector<PosRange> parse_ranges(const std::vector<std::string>& items) {
  std::vector<PosRange> out;
  for (const std::string& item : items) {
    if (item.empty()) continue;
    const std::size_t dash = item.find('-', 1);
    try {
      std::size_t used = 0;
      const int64_t a = std::stoll(item.substr(0, dash), &used);
      if (used != (dash == std::string::npos ? item.size() : dash))
        throw std::invalid_argument(item);
      int64_t b = a;
      if (dash != std::string::npos) {
        const std::string rest = item.substr(dash + 1);
        b = std::stoll(rest, &used);
        if (used != rest.size()) throw std::invalid_argument(item);
      }
      // b + 1 is the range's end: the largest int64 has no end to store.
      if (a < 0 || b < a || b == std::numeric_limits<int64_t>::max())
        throw std::invalid_argument(item);
      out.push_back({a, b + 1});
    } catch (const std::logic_error&) {
      throw UsageError(fmt::format(
          "option '--global': expected positions or inclusive ranges like '0,100-115', got '{}'",
          item));
    }
  }
  if (out.size() > static_cast<std::size_t>(kMaxGlobalRanges))
    throw UsageError(
        fmt::format("option '--global': at most {} ranges, got {}", kMaxGlobalRanges, out.size()));
  return out;
}

// Offsets from --<prefix>doc-lens or --<prefix>cu-seqlens (empty: neither given).
std::vector<int64_t> read_offsets(const ParsedOptions& opt, const std::string& prefix,
                                  std::string* option) {
  const std::string lens = prefix + "doc-lens", file = prefix + "cu-seqlens";
  const bool has_lens = opt.has(lens) && !opt.texts(lens).empty();
  const bool has_file = opt.has(file) && !opt.text(file).empty();
  if (has_lens && has_file)
    throw UsageError(
        fmt::format("options '--{}' and '--{}' both give the documents; expected one", lens, file));
  if (has_file) {
    *option = fmt::format("--{} {}", file, opt.text(file));
    try {
      return read_npy_ints(opt.text(file));
    } catch (const Error& e) {
      throw UsageError(fmt::format("option '--{}': {}", file, e.what()));
    }
  }
  if (!has_lens) return {};
  *option = "--" + lens;
  std::vector<int64_t> v;
  for (const std::string& item : opt.texts(lens)) {
    std::size_t used = 0;
    int64_t x = -1;
    try {
      x = std::stoll(item, &used);
    } catch (const std::logic_error&) {
      used = 0;
    }
    if (item.empty() || used != item.size() || x < 0 || x > kMaxSeqLen)
      throw UsageError(
          fmt::format("option '--{}': expected document lengths like 1000,5000,37 "
                      "(integers 0 to {}), got '{}'",
                      lens, kMaxSeqLen, item));
    v.push_back(x);
  }
  try {
    return offsets_from_lengths(v, lens);
  } catch (const FieldError& e) {
    throw UsageError(fmt::format("option '--{}': {}", lens, e.detail()));
  }
}

int64_t at_least(const ParsedOptions& opt, const char* name, int64_t min) {
  const int64_t v = opt.integer(name);
  if (v < min)
    throw UsageError(fmt::format("option '--{}': expected an integer >= {}, got {}", name, min, v));
  return v;
}

}  // namespace

std::vector<OptionSpec> mask_option_specs() {
  return {
      OptionSpec::integer("window-left", "-1",
                          "sliding window: keys up to this many positions before the query's "
                          "diagonal (-1: unbounded)",
                          "tokens"),
      OptionSpec::integer("window-right", "-1",
                          "sliding window: keys up to this many positions after it (-1: "
                          "unbounded)",
                          "tokens"),
      OptionSpec::integer("dilation", "1",
                          "dilated window: only keys at a distance divisible by this"),
      OptionSpec::integer("sinks", "0", "attention sinks: the first S tokens are always visible",
                          "tokens"),
      OptionSpec::text("global", "",
                       "global tokens that see and are seen by all: positions or inclusive "
                       "ranges, e.g. 0,100-115 (at most 8)",
                       "RANGES")
          .as_list(),
      OptionSpec::integer("block-size", "0", "block-sparse (BigBird) block size; 0: off", "tokens"),
      OptionSpec::integer("block-window", "1", "block-sparse: neighbouring blocks on each side"),
      OptionSpec::integer("block-global", "0",
                          "block-sparse: leading blocks that see and are seen by all"),
      OptionSpec::integer("block-random", "0", "block-sparse: random key blocks per query block"),
      OptionSpec::integer("block-seed", "0", "block-sparse: seed of the random blocks"),
      OptionSpec::text("doc-lens", "",
                       "packed documents: their lengths in order, e.g. 1000,5000,37 (the sum "
                       "is the sequence length; attention stays inside each document)",
                       "TOKENS")
          .as_list(),
      OptionSpec::text("cu-seqlens", "",
                       "packed documents: cumulative offsets [0, L0, L0+L1, ..., N] in a 1-d "
                       "int32/int64 .npy (flash-attn's cu_seqlens)",
                       "FILE"),
      OptionSpec::text("kv-doc-lens", "",
                       "cross-attention: the keys' document lengths (document i of the queries "
                       "sees document i of the keys)",
                       "TOKENS")
          .as_list(),
      OptionSpec::text("kv-cu-seqlens", "", "cross-attention: the keys' cumulative offsets .npy",
                       "FILE"),
      OptionSpec::flag("global-across-docs", "false",
                       "--global tokens see and are seen across documents (default: inside "
                       "their own)"),
      OptionSpec::integer("regional-block", "0",
                          "hierarchical level 2: keys beyond the window seen through means of "
                          "aligned blocks of this many tokens (needs --window-left; 0: off)",
                          "tokens"),
      OptionSpec::integer("regional-window", "0",
                          "hierarchical level 2 reaches about this far back (>= window + "
                          "regional block); level 3 or nothing beyond",
                          "tokens"),
      OptionSpec::integer("global-block", "0",
                          "hierarchical level 3: everything older than the regional window "
                          "through means of aligned blocks of this many tokens (a multiple of "
                          "--regional-block; 0: off)",
                          "tokens"),
      OptionSpec::integer("route-block", "0",
                          "block routing (MoBA): each query attends its own block and the "
                          "--route-topk - 1 earlier blocks of this many tokens whose mean key "
                          "scores best (0: off)",
                          "tokens"),
      OptionSpec::integer("route-topk", "0", "block routing: blocks per query, its own included",
                          "blocks"),
  };
}

MaskOptions parse_mask_options(const ParsedOptions& opt) {
  MaskOptions m;
  m.window_left = at_least(opt, "window-left", -1);
  m.window_right = at_least(opt, "window-right", -1);
  // Sizes in tokens or blocks stay below kMaxSeqLen, so that the mask's closed forms
  // (positions up to 2^48) never overflow; larger values would mean nothing more.
  const auto sized = [&](const char* name, int64_t min) {
    const int64_t v = at_least(opt, name, min);
    if (v > kMaxSeqLen)
      throw UsageError(
          fmt::format("option '--{}': expected {} to {}, got {}", name, min, kMaxSeqLen, v));
    return v;
  };
  m.dilation = sized("dilation", 1);
  m.sinks = sized("sinks", 0);
  if (opt.has("global")) m.global = parse_ranges(opt.texts("global"));
  m.blocks.size = sized("block-size", 0);
  m.blocks.window = sized("block-window", 0);
  m.blocks.global = sized("block-global", 0);
  const int64_t r = at_least(opt, "block-random", 0);
  if (r > kMaxRandomBlocks)
    throw UsageError(
        fmt::format("option '--block-random': at most {}, got {}", kMaxRandomBlocks, r));
  m.blocks.random = static_cast<int>(r);
  m.blocks.seed = static_cast<uint64_t>(opt.integer("block-seed"));
  m.hier.regional_block = at_least(opt, "regional-block", 0);
  m.hier.regional_window = at_least(opt, "regional-window", 0);
  m.hier.global_block = at_least(opt, "global-block", 0);
  m.hier.route_block = at_least(opt, "route-block", 0);
  m.hier.route_topk = at_least(opt, "route-topk", 0);
  if (m.hier.routing() && !opt.given("route-topk"))
    throw UsageError("option '--route-block' needs '--route-topk' (blocks per query)");
  if (opt.given("doc-lens") || opt.given("cu-seqlens") || opt.given("kv-doc-lens") ||
      opt.given("kv-cu-seqlens") || opt.given("global-across-docs")) {
    DocOffsets d;
    d.q = read_offsets(opt, "", &m.docs_option);
    d.k = read_offsets(opt, "kv-", &m.kv_docs_option);
    d.global_across = opt.flag("global-across-docs");
    if (d.q.empty() && !d.k.empty())
      throw UsageError(
          "option '--kv-doc-lens' / '--kv-cu-seqlens' needs the queries' documents "
          "('--doc-lens' or '--cu-seqlens')");
    if (d.global_across && d.q.empty())
      throw UsageError(
          "option '--global-across-docs' needs documents ('--doc-lens' or "
          "'--cu-seqlens')");
    if (!d.q.empty()) m.docs = std::make_shared<const DocOffsets>(std::move(d));
  }
  return m;
}

void MaskOptions::attach_documents(AttentionProblem* p) const {
  try {
    p->set_documents(docs);
  } catch (const FieldError& e) {
    const std::string& option =
        e.field() == "kv_documents" && !kv_docs_option.empty() ? kv_docs_option : docs_option;
    throw UsageError(fmt::format("option '{}': {}", option, e.detail()));
  }
}

bool MaskOptions::sparse() const {
  return window_left >= 0 || window_right >= 0 || dilation != 1 || sinks > 0 || !global.empty() ||
         docs != nullptr || blocks.on() || hier.on();
}

Mask MaskOptions::build(int64_t nq, int64_t nk) const {
  const int64_t diag = nk - nq;  // bottom-right alignment
  Mask m = causal ? Mask::causal(diag) : Mask::none();
  const bool window = window_left >= 0 || window_right >= 0;
  // A window of kUnbounded or more is no bound (and diag -/+ it could overflow int64).
  if (window_left >= 0) m.lo = window_left >= kUnbounded ? -kUnbounded : diag - window_left;
  if (window_right >= 0)
    m.hi = std::min(m.hi, window_right >= kUnbounded ? kUnbounded : diag + window_right);
  if ((blocks.on() || hier.routing()) && !window) m.lo = 1, m.hi = 0;  // blocks only: no band
  m.dilation = dilation;
  m.sinks = sinks;
  m.n_global = static_cast<int>(global.size());
  std::copy(global.begin(), global.end(), m.global);
  m.blocks = blocks;
  // ceil(nk / size), without nk + size - 1 overflowing for a huge block size.
  if (blocks.on()) m.blocks.key_blocks = nk / blocks.size + (nk % blocks.size != 0 ? 1 : 0);
  return m;
}

std::string MaskOptions::describe() const {
  std::vector<std::string> parts;
  if (window_left >= 0 || window_right >= 0)
    parts.push_back(
        fmt::format("window {}/{}", window_left < 0 ? "inf" : std::to_string(window_left),
                    window_right < 0 ? (causal ? "0" : "inf") : std::to_string(window_right)));
  if (dilation != 1) parts.push_back(fmt::format("dilation {}", dilation));
  if (sinks > 0) parts.push_back(fmt::format("{} sinks", sinks));
  if (!global.empty()) {
    std::string g;
    for (const PosRange& r : global)
      g += (g.empty() ? "" : ",") + (r.end - r.begin == 1
                                         ? std::to_string(r.begin)
                                         : fmt::format("{}-{}", r.begin, r.end - 1));
    parts.push_back("global " + g);
  }
  if (blocks.on())
    parts.push_back(fmt::format("blocks {} (window {}, global {}, random {} seed {})", blocks.size,
                                blocks.window, blocks.global, blocks.random, blocks.seed));
  if (hier.on()) parts.push_back(hier.describe());
  if (docs) parts.push_back(describe_documents(*docs));
  std::string s = causal ? "causal" : (parts.empty() ? "none" : "");
  for (const std::string& p : parts) s += (s.empty() ? "" : " + ") + p;
  return s;
}

}  // namespace ringattn::cli
