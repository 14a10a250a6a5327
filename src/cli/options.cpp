#include "cli/options.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <boost/program_options.hpp>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>

namespace ringattn::cli {
namespace po = boost::program_options;

namespace {

// --help layout: the help text starts at kHelpColumn and wraps at kHelpWidth.
constexpr std::size_t kHelpColumn = 30;
constexpr std::size_t kHelpWidth = 100;
// Shortest mistyped word for which a prefix match counts as a suggestion.
constexpr std::size_t kMinPrefixLength = 3;
// A suggestion may differ from the typed word in at most one edit per this many characters.
constexpr std::size_t kCharsPerAllowedEdit = 3;

const char* const kTrueWords[] = {"true", "1", "yes", "on"};
const char* const kFalseWords[] = {"false", "0", "no", "off"};

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t");
  if (b == std::string::npos) return "";
  const auto e = s.find_last_not_of(" \t");
  return s.substr(b, e - b + 1);
}

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (true) {
    const auto comma = s.find(',', start);
    out.push_back(
        trim(s.substr(start, comma == std::string::npos ? std::string::npos : comma - start)));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

std::optional<bool> parse_bool(const std::string& s) {
  const std::string l = lower(s);
  for (const char* w : kTrueWords)
    if (l == w) return true;
  for (const char* w : kFalseWords)
    if (l == w) return false;
  return std::nullopt;
}

std::optional<int64_t> parse_int(const std::string& s) {
  int64_t v = 0;
  const char* end = s.data() + s.size();
  const auto r = std::from_chars(s.data(), end, v);
  if (s.empty() || r.ec != std::errc() || r.ptr != end) return std::nullopt;
  return v;
}

std::optional<double> parse_double(const std::string& s) {
  double v = 0;
  const char* end = s.data() + s.size();
  const auto r = std::from_chars(s.data(), end, v);
  if (s.empty() || r.ec != std::errc() || r.ptr != end || !std::isfinite(v)) return std::nullopt;
  return v;
}

bool in_range(double v, Range r) {
  switch (r) {
    case Range::positive:
      return v > 0;
    case Range::non_negative:
      return v >= 0;
    case Range::any:
      break;
  }
  return true;
}

// "a positive integer", "a number", ...
std::string expectation(const OptionSpec& o) {
  const char* range = o.range == Range::positive       ? "positive "
                      : o.range == Range::non_negative ? "non-negative "
                                                       : "";
  switch (o.kind) {
    case Kind::flag: {
      std::string words = "true or false";
      for (const auto& w : o.choices) words += " or " + w;
      return words;
    }
    case Kind::integer:
      return fmt::format("a {}integer", range);
    case Kind::number:
      return fmt::format("a {}number", range);
    case Kind::choice:
      return fmt::format("one of {}", fmt::join(o.choices, ", "));
    case Kind::text:
      break;
  }
  return "a value";
}

bool valid_item(const OptionSpec& o, const std::string& v) {
  switch (o.kind) {
    case Kind::flag:
      return parse_bool(v).has_value() ||
             std::find(o.choices.begin(), o.choices.end(), lower(v)) != o.choices.end();
    case Kind::integer: {
      const auto i = parse_int(v);
      return i && in_range(static_cast<double>(*i), o.range);
    }
    case Kind::number: {
      const auto d = parse_double(v);
      return d && in_range(*d, o.range);
    }
    case Kind::choice:
      return std::find(o.choices.begin(), o.choices.end(), v) != o.choices.end();
    case Kind::text:
      return !v.empty();
  }
  return false;
}

// Throws UsageError "<where>: expected <what>, got '<value>'" unless valid.
void validate(const OptionSpec& o, const std::string& value, const std::string& where) {
  const std::vector<std::string> items = o.list ? split_list(value) : std::vector{value};
  for (const auto& item : items) {
    if (valid_item(o, item)) continue;
    std::string what = expectation(o);
    if (o.list) what += " (or a comma-separated list of them)";
    std::string hint;
    if (o.kind == Kind::choice) hint = did_you_mean(item, o.choices);
    throw UsageError(fmt::format("{}: expected {}, got '{}'{}", where, what, value, hint));
  }
}

const OptionSpec* find_spec(const CommandSpec& spec, const std::string& name) {
  for (const auto& o : spec.options)
    if (o.name == name) return &o;
  return nullptr;
}

std::vector<std::string> option_names(const CommandSpec& spec) {
  std::vector<std::string> names;
  for (const auto& o : spec.options) names.push_back(o.name);
  return names;
}

po::options_description boost_description(const CommandSpec& spec) {
  po::options_description desc;
  for (const auto& o : spec.options) {
    // Every value is kept as text and validated by its OptionSpec, so the
    // error messages name the option and the expected form consistently.
    auto* value = po::value<std::string>();
    if (o.kind == Kind::flag) value->implicit_value("true");
    const std::string names = o.name == "help" ? std::string("help,h") : o.name;
    desc.add_options()(names.c_str(), value, o.help.c_str());
  }
  return desc;
}

// The values of one parsed source, checked: unknown names, duplicates, bad values.
void collect(const CommandSpec& spec, const po::parsed_options& parsed, bool from_config,
             const std::string& source, std::map<std::string, std::string>* out) {
  std::set<std::string> seen;
  const auto names = option_names(spec);
  for (const auto& opt : parsed.options) {
    if (!opt.unregistered || opt.string_key.empty() || opt.position_key >= 0) continue;
    const std::string& key = opt.string_key;
    if (from_config && key.find('.') != std::string::npos)
      throw UsageError(
          fmt::format("{}: unknown option '{}' (config files take no [sections]; "
                      "write `name = value` at the top level)",
                      source, key));
    const std::string shown = from_config || key[0] == '-' ? key : "--" + key;
    throw UsageError(fmt::format("{}: unknown option '{}'{}", source, shown,
                                 did_you_mean(key, names, from_config ? "" : "--")));
  }
  for (const auto& opt : parsed.options) {
    if (opt.position_key >= 0 || opt.string_key.empty()) {
      const std::string token = opt.original_tokens.empty() ? "" : opt.original_tokens.front();
      throw UsageError(fmt::format("{}: unexpected argument '{}'", source, token));
    }
    const std::string& name = opt.string_key;
    const std::string where = from_config ? fmt::format("{}: option '{}'", source, name)
                                          : fmt::format("option '--{}'", name);
    if (from_config && (name == "config" || name == "help"))
      throw UsageError(fmt::format("{}: not allowed in a config file", where));
    if (!seen.insert(name).second) throw UsageError(fmt::format("{}: given more than once", where));
    const OptionSpec* o = find_spec(spec, name);
    std::string value = opt.value.empty() ? std::string() : trim(opt.value.front());
    if (value.empty() && !from_config && o->kind == Kind::flag) value = "true";  // bare --flag
    validate(*o, value, where);
    out->emplace(name, value);  // the command line is collected first and wins
  }
}

// The options of a config file (`name = value` lines) read from `in`, checked as collect()
// does and added to `values` (names already there, from the command line, keep their value).
// `spec` includes the common options; `source` names the file.
//
// The file is parsed here, not by Boost's parse_config_file: Boost's error text substitutes
// '%name%' tokens of the offending line into itself and loops forever when the line holds
// such a token (found by fuzz_config). The syntax is Boost's: '#' starts a comment anywhere
// on a line, blanks around names and values are dropped, empty lines are skipped.
void read_config(const CommandSpec& spec, std::istream& in, const std::string& source,
                 std::map<std::string, std::string>* values) {
  const auto shown = [](const std::string& s) {
    return s.size() > 40 ? s.substr(0, 40) + "..." : s;
  };
  po::parsed_options parsed(nullptr);
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    const std::size_t hash = line.find('#');
    const std::string s = trim(hash == std::string::npos ? line : line.substr(0, hash));
    if (s.empty()) continue;
    if (s.front() == '[')
      throw UsageError(fmt::format(
          "{}: line {}: '{}': config files take no [sections]; write `name = value` at the "
          "top level",
          source, n, shown(s)));
    const std::size_t eq = s.find('=');
    const std::string key = eq == std::string::npos ? std::string() : trim(s.substr(0, eq));
    bool name_ok = !key.empty();
    for (char c : key)
      name_ok = name_ok && (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_');
    if (!name_ok)
      throw UsageError(fmt::format(
          "{}: line {}: '{}' is not an option (expected `name = value`, a name of letters, "
          "digits and '-')",
          source, n, shown(s)));
    po::option opt(key, {trim(s.substr(eq + 1))});
    opt.unregistered = find_spec(spec, key) == nullptr;
    opt.original_tokens = {key, opt.value.front()};
    parsed.options.push_back(std::move(opt));
  }
  collect(spec, parsed, true, source, values);
}

// " N", " N[,N...]", " auto|avx2", "[=BOOL]", "[=true|false|both]".
std::string placeholder_of(const OptionSpec& o) {
  if (o.kind == Kind::flag) {
    if (!o.list) return "[=BOOL]";
    std::vector<std::string> words = {"true", "false"};
    words.insert(words.end(), o.choices.begin(), o.choices.end());
    return fmt::format("[={}]", fmt::join(words, "|"));
  }
  if (o.kind == Kind::choice)
    return fmt::format(" {}{}", fmt::join(o.choices, "|"), o.list ? "[,...]" : "");
  std::string p = o.placeholder;
  if (p.empty()) p = o.kind == Kind::integer ? "N" : o.kind == Kind::number ? "X" : "VALUE";
  return o.list ? fmt::format(" {0}[,{0}...]", p) : " " + p;
}

// Words of `text` in lines of at most `width` characters.
std::vector<std::string> wrap(const std::string& text, std::size_t width) {
  std::vector<std::string> lines(1);
  std::size_t pos = 0;
  while (pos < text.size()) {
    const std::size_t end = std::min(text.find(' ', pos), text.size());
    const std::string word = text.substr(pos, end - pos);
    if (!lines.back().empty() && lines.back().size() + 1 + word.size() > width)
      lines.emplace_back();
    if (!lines.back().empty()) lines.back() += ' ';
    lines.back() += word;
    pos = end + 1;
  }
  return lines;
}

std::string help_line(const OptionSpec& o) {
  const std::string left =
      o.name == "help" ? std::string("  -h, --help") : "  --" + o.name + placeholder_of(o);
  std::string right = o.help;
  if (!o.unit.empty()) right += fmt::format(" [{}]", o.unit);
  if (o.required)
    right += " (required)";
  else if (!o.default_text.empty())
    right += fmt::format(" (default: {})", o.default_text);
  else if (!o.default_value.empty())
    right += fmt::format(" (default: {})", o.default_value);
  std::string out = left;
  if (left.size() + 2 > kHelpColumn)
    out += "\n" + std::string(kHelpColumn, ' ');
  else
    out += std::string(kHelpColumn - left.size(), ' ');
  const auto lines = wrap(right, kHelpWidth - kHelpColumn);
  for (std::size_t i = 0; i < lines.size(); ++i) {
    if (i > 0) out += "\n" + std::string(kHelpColumn, ' ');
    out += lines[i];
  }
  return out + "\n";
}

bool is_common(const std::string& name) {
  return name == "config" || name == "help" || name == "metrics" || name == "threads";
}

std::string shell_quote(const std::string& s) {
  const bool plain = !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || std::strchr("-_./,=:+@%", c) != nullptr;
  });
  if (plain) return s;
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// Optimal string alignment distance: Levenshtein plus adjacent transpositions.
std::size_t edit_distance(const std::string& a, const std::string& b) {
  const std::size_t n = a.size(), m = b.size();
  std::vector<std::vector<std::size_t>> d(n + 1, std::vector<std::size_t>(m + 1));
  for (std::size_t i = 0; i <= n; ++i) d[i][0] = i;
  for (std::size_t j = 0; j <= m; ++j) d[0][j] = j;
  for (std::size_t i = 1; i <= n; ++i) {
    for (std::size_t j = 1; j <= m; ++j) {
      const std::size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[n][m];
}

}  // namespace

// ---- OptionSpec builders ---------------------------------------------------

OptionSpec OptionSpec::flag(std::string name, std::string def, std::string help) {
  OptionSpec o;
  o.name = std::move(name);
  o.kind = Kind::flag;
  o.default_value = std::move(def);
  o.help = std::move(help);
  return o;
}

OptionSpec OptionSpec::integer(std::string name, std::string def, std::string help,
                               std::string unit) {
  OptionSpec o;
  o.name = std::move(name);
  o.kind = Kind::integer;
  o.default_value = std::move(def);
  o.help = std::move(help);
  o.unit = std::move(unit);
  return o;
}

OptionSpec OptionSpec::number(std::string name, std::string def, std::string help,
                              std::string unit) {
  OptionSpec o = integer(std::move(name), std::move(def), std::move(help), std::move(unit));
  o.kind = Kind::number;
  return o;
}

OptionSpec OptionSpec::text(std::string name, std::string def, std::string help,
                            std::string placeholder) {
  OptionSpec o;
  o.name = std::move(name);
  o.kind = Kind::text;
  o.default_value = std::move(def);
  o.help = std::move(help);
  o.placeholder = std::move(placeholder);
  return o;
}

OptionSpec OptionSpec::choice(std::string name, std::string def, std::vector<std::string> choices,
                              std::string help) {
  OptionSpec o;
  o.name = std::move(name);
  o.kind = Kind::choice;
  o.default_value = std::move(def);
  o.choices = std::move(choices);
  o.help = std::move(help);
  return o;
}

// ---- ParsedOptions ---------------------------------------------------------

ParsedOptions::ParsedOptions(CommandSpec spec, std::map<std::string, std::string> values)
    : spec_(std::move(spec)), values_(std::move(values)) {}

const OptionSpec& ParsedOptions::spec_of(const std::string& name, Kind kind) const {
  const OptionSpec* o = find_spec(spec_, name);
  if (o == nullptr || o->kind != kind)
    throw std::logic_error(
        fmt::format("ringattn {}: no option '{}' of the requested kind", spec_.name, name));
  return *o;
}

const std::string& ParsedOptions::raw(const std::string& name) const {
  static const std::string empty;
  const auto it = values_.find(name);
  if (it != values_.end()) return it->second;
  const OptionSpec* o = find_spec(spec_, name);
  if (o == nullptr) throw std::logic_error(fmt::format("no option '{}'", name));
  return o->default_value.empty() ? empty : o->default_value;
}

bool ParsedOptions::has(const std::string& name) const {
  return !raw(name).empty();
}

bool ParsedOptions::flag(const std::string& name) const {
  const auto& o = spec_of(name, Kind::flag);
  if (o.list) throw std::logic_error("flag(): '" + name + "' is a list; use flags()");
  return parse_bool(raw(name)).value_or(false);
}

int64_t ParsedOptions::integer(const std::string& name) const {
  spec_of(name, Kind::integer);
  return parse_int(raw(name)).value_or(0);
}

int ParsedOptions::integer_int(const std::string& name) const {
  const int64_t v = integer(name);
  if (v > std::numeric_limits<int>::max() || v < std::numeric_limits<int>::min())
    throw UsageError(fmt::format("option '--{}': value {} is too large", name, v));
  return static_cast<int>(v);
}

double ParsedOptions::number(const std::string& name) const {
  spec_of(name, Kind::number);
  return parse_double(raw(name)).value_or(0.0);
}

const std::string& ParsedOptions::text(const std::string& name) const {
  return raw(name);
}

std::vector<int64_t> ParsedOptions::integers(const std::string& name) const {
  spec_of(name, Kind::integer);
  std::vector<int64_t> out;
  for (const auto& s : split_list(raw(name))) out.push_back(parse_int(s).value_or(0));
  return out;
}

std::vector<std::string> ParsedOptions::texts(const std::string& name) const {
  return has(name) ? split_list(raw(name)) : std::vector<std::string>{};
}

std::vector<bool> ParsedOptions::flags(const std::string& name) const {
  spec_of(name, Kind::flag);
  std::vector<bool> out;
  for (const auto& s : split_list(raw(name))) {
    if (const auto b = parse_bool(s)) {
      out.push_back(*b);
    } else {  // "both"
      out.push_back(false);
      out.push_back(true);
    }
  }
  return out;
}

std::string ParsedOptions::command_line(const std::map<std::string, std::string>& effective) const {
  std::string line = "ringattn " + spec_.name;
  for (const auto& o : spec_.options) {
    if (o.name == "config" || o.name == "help" || o.name == "metrics" || !has(o.name)) continue;
    const auto e = effective.find(o.name);
    const std::string& v = e != effective.end() ? e->second : raw(o.name);
    if (o.kind == Kind::flag && !o.list) {
      line += flag(o.name) ? " --" + o.name : " --" + o.name + "=false";
    } else {
      line += " --" + o.name + (o.kind == Kind::flag ? "=" : " ") + shell_quote(v);
    }
  }
  return line;
}

// ---- parsing and help ------------------------------------------------------

CommandSpec with_common_options(CommandSpec spec) {
  spec.options.push_back(OptionSpec::text("config", "",
                                          "read option values from this .ini file "
                                          "(`name = value` lines); flags override it")
                             .as_input());
  spec.options.push_back(
      OptionSpec::text("metrics", "", "append one JSON object per result to this file")
          .as_output());
  spec.options.push_back(
      OptionSpec::integer("threads", "0", "worker threads (0 = all cores)").non_negative());
  spec.options.push_back(OptionSpec::flag("help", "", "print this help and exit"));
  return spec;
}

std::optional<ParsedOptions> parse_options(const CommandSpec& command, int argc, char** argv) {
  const CommandSpec spec = with_common_options(command);
  const std::string source = "ringattn " + spec.name;
  const po::options_description desc = boost_description(spec);
  std::map<std::string, std::string> values;
  try {
    const auto style =
        po::command_line_style::default_style & ~po::command_line_style::allow_guessing;
    const po::parsed_options parsed =
        po::command_line_parser(argc, argv).options(desc).style(style).allow_unregistered().run();
    collect(spec, parsed, false, source, &values);
  } catch (const po::error& e) {
    throw UsageError(fmt::format("{}: {}", source, e.what()));
  }
  if (values.count("help") != 0 && parse_bool(values["help"]).value_or(false)) {
    fmt::print("{}", help_text(command));
    return std::nullopt;
  }
  if (const auto it = values.find("config"); it != values.end()) {
    const std::string& path = it->second;
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec))
      throw UsageError(fmt::format(
          "option '--config': '{}' is a directory; expected an .ini file of `name = value` lines",
          path));
    std::ifstream in(path);
    if (!in)
      throw UsageError(
          fmt::format("option '--config': cannot open '{}' ({})", path, std::strerror(errno)));
    read_config(spec, in, path, &values);
  }
  for (const auto& o : spec.options)
    if (o.required && values.count(o.name) == 0)
      throw UsageError(fmt::format("{}: missing required option '--{}'", source, o.name));
  check_distinct_files(spec, values);
  return ParsedOptions(spec, std::move(values));
}

std::map<std::string, std::string> parse_config_text(const CommandSpec& command,
                                                     const std::string& text,
                                                     const std::string& source) {
  const CommandSpec spec = with_common_options(command);
  std::istringstream in(text);
  std::map<std::string, std::string> values;
  read_config(spec, in, source, &values);
  return values;
}

std::string help_text(const CommandSpec& command) {
  const CommandSpec spec = with_common_options(command);
  std::string out =
      fmt::format("Usage: ringattn {} {}\n\n{}\n", spec.name, spec.usage, spec.summary);
  out += "\nOptions:\n";
  for (const auto& o : spec.options)
    if (!is_common(o.name)) out += help_line(o);
  out += "\nCommon options:\n";
  for (const auto& o : spec.options)
    if (is_common(o.name)) out += help_line(o);
  out +=
      "\nA config file holds the same options without dashes, one per line "
      "(`seq-len = 4096`);\noptions given on the command line override it.\n";
  if (!spec.epilog.empty()) out += "\n" + spec.epilog + "\n";
  return out;
}

std::string closest_match(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  std::size_t best_d = std::numeric_limits<std::size_t>::max();
  for (const auto& c : candidates) {
    const std::size_t d = edit_distance(lower(word), lower(c));
    if (d < best_d) {
      best_d = d;
      best = c;
    }
  }
  const std::size_t allowed =
      std::max<std::size_t>(1, (word.size() + kCharsPerAllowedEdit - 1) / kCharsPerAllowedEdit);
  if (!best.empty() && best_d <= allowed && best_d < word.size()) return best;
  if (word.size() >= kMinPrefixLength) {  // a truncated name: --seq for --seq-len
    for (const auto& c : candidates)
      if (c.rfind(word, 0) == 0) return c;
  }
  return "";
}

std::string did_you_mean(const std::string& word, const std::vector<std::string>& candidates,
                         const std::string& prefix) {
  const std::string m = closest_match(word, candidates);
  return m.empty() ? std::string() : fmt::format("; did you mean '{}{}'?", prefix, m);
}

}  // namespace ringattn::cli
