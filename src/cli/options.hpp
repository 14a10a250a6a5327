// Command-line and config-file options shared by every `ringattn` command.
//
// Each command declares its options once, as a list of OptionSpec (name,
// kind, default, unit, help). From that list this file builds the Boost
// program_options description, parses the command line and an optional
// `--config FILE` (.ini, same option names without the leading dashes,
// `seq-len = 4096`), validates every value against its kind, and prints
// `--help`. Flags override config values (the command line is stored first).
//
// Every command also gets the common options --config, --help, --metrics and
// --threads. Problems with options throw UsageError (exit status 2), a
// single line naming the option and the expected form, e.g.
//   ringattn attend: unknown option '--casual'; did you mean '--causal'?
//   option '--heads': expected a positive integer, got 'abc'
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "ringattn/error.hpp"

namespace ringattn::cli {

// A mistake in how the program was invoked (bad option, bad value, missing
// config file). main() exits with kExitUsage for these, kExitFailure for other errors.
class UsageError : public Error {
 public:
  using Error::Error;
};

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;

enum class Kind {
  flag,     // boolean: bare `--x` means true; `--x=false` or `--x false`; `x = false` in a config
  integer,  // 64-bit integer, see Range
  number,   // finite floating-point value, see Range
  text,     // any string (file names)
  choice,   // one of OptionSpec::choices
};

enum class Range { any, non_negative, positive };

// What a text option names: a file read, a file written, or neither. No output
// may be the same file as another output or an input (compared as files:
// ./o.npy, a/../o.npy and a symlink to it are one file): a UsageError naming both.
enum class FileRole : uint8_t { none, input, output };

struct OptionSpec {
  std::string name;  // without dashes: "seq-len"
  Kind kind = Kind::text;
  std::string default_value;  // as typed on the command line; empty: no default (unset)
  std::string help;           // one line, no trailing period
  std::string unit;           // "tokens", "ms", ...; shown in --help
  std::string placeholder;    // value name in --help ("N", "FILE"); derived from kind if empty
  std::string
      default_text;  // shown instead of default_value in --help when the default is computed
  Range range = Range::any;
  std::vector<std::string> choices;  // Kind::choice (and the extra words of a flag list)
  bool list = false;                 // a comma-separated list of values ("8192,32768")
  bool required = false;
  FileRole file = FileRole::none;

  // Builders, so a command's option table reads as one line per option.
  static OptionSpec flag(std::string name, std::string def, std::string help);
  static OptionSpec integer(std::string name, std::string def, std::string help,
                            std::string unit = "");
  static OptionSpec number(std::string name, std::string def, std::string help,
                           std::string unit = "");
  static OptionSpec text(std::string name, std::string def, std::string help,
                         std::string placeholder = "FILE");
  static OptionSpec choice(std::string name, std::string def, std::vector<std::string> choices,
                           std::string help);
  OptionSpec& positive() {
    range = Range::positive;
    return *this;
  }
  OptionSpec& non_negative() {
    range = Range::non_negative;
    return *this;
  }
  OptionSpec& as_list() {
    list = true;
    return *this;
  }
  OptionSpec& as_required() {
    required = true;
    return *this;
  }
  OptionSpec& as_input() {
    file = FileRole::input;
    return *this;
  }
  OptionSpec& as_output() {
    file = FileRole::output;
    return *this;
  }
  OptionSpec& shown_default(std::string s) {
    default_text = std::move(s);
    return *this;
  }
  // Extra words a flag list accepts besides true/false (e.g. "both").
  OptionSpec& also(std::vector<std::string> words) {
    choices = std::move(words);
    return *this;
  }
};

// One command: its name (as typed after `ringattn`), a one-line summary, a
// usage line and its options (the common options are appended automatically).
struct CommandSpec {
  std::string name;
  std::string summary;
  std::string usage;  // e.g. "--q FILE --k FILE --v FILE --out FILE [options]"
  std::vector<OptionSpec> options;
  std::string epilog;  // extra --help text (notes, tolerances); may be empty
};

// The validated values of one invocation: explicit values (command line, then
// config) over the defaults of the spec.
class ParsedOptions {
 public:
  // `spec` must include the common options (see with_common_options).
  ParsedOptions(CommandSpec spec, std::map<std::string, std::string> values);

  // True when the option has a value (given, or a non-empty default).
  bool has(const std::string& name) const;
  // True when the option was given (command line or config file), not defaulted.
  bool given(const std::string& name) const { return values_.count(name) != 0; }
  bool flag(const std::string& name) const;
  int64_t integer(const std::string& name) const;
  int integer_int(const std::string& name) const;  // integer() checked to fit an int
  double number(const std::string& name) const;
  const std::string& text(const std::string& name) const;         // also for choices
  std::vector<int64_t> integers(const std::string& name) const;   // list options
  std::vector<std::string> texts(const std::string& name) const;  // list options
  // A flag list: "true", "false", "true,false", or "both" (= false,true).
  std::vector<bool> flags(const std::string& name) const;

  // Common options.
  int threads() const { return integer_int("threads"); }
  std::string metrics_path() const { return has("metrics") ? text("metrics") : std::string(); }

  // `ringattn <command> --opt value ...` with every effective value spelled
  // out (not --config, --metrics or --help): reproduces the run on its own.
  // `effective` replaces the values of options that were derived from others
  // (--seq-len from the documents).
  std::string command_line(const std::map<std::string, std::string>& effective = {}) const;

 private:
  const OptionSpec& spec_of(const std::string& name, Kind kind) const;
  const std::string& raw(const std::string& name) const;

  CommandSpec spec_;  // including the common options
  std::map<std::string, std::string> values_;
};

// Throws UsageError when an output option names the same file as another
// output or an input option (FileRole); parse_options calls it.
void check_distinct_files(const CommandSpec& spec,
                          const std::map<std::string, std::string>& values);

// The spec plus --config, --help, --metrics and --threads.
CommandSpec with_common_options(CommandSpec spec);

// Parses `argv` (argv[0] is the command name). Returns nullopt when --help was
// given (the help has then been printed to stdout). Throws UsageError.
std::optional<ParsedOptions> parse_options(const CommandSpec& spec, int argc, char** argv);

// The values of a config file's text (`name = value` lines, `#` comments), validated against
// the command's options as `--config FILE` validates them; `source` names the file in
// messages. Throws UsageError. parse_options reads `--config` through the same code.
std::map<std::string, std::string> parse_config_text(const CommandSpec& command,
                                                     const std::string& text,
                                                     const std::string& source);

// The full --help text of a command.
std::string help_text(const CommandSpec& spec);

// The candidate closest to `word` by edit distance (adjacent transpositions
// count one), or "" when none is close enough to be a plausible typo.
std::string closest_match(const std::string& word, const std::vector<std::string>& candidates);

// Whether option `o` (of opt's command) holds a value other than its default: given
// with its default value (as `reproduce` lines spell every option out) counts as not.
bool differs_from_default(const ParsedOptions& opt, const OptionSpec& o);

// The option that gives a library field (FieldError::field(), error.hpp):
// "nq" -> "seq-len", "hkv" -> "kv-heads", "lse_out" -> "lse-out", ...; "" for a
// field no option sets (an internal argument).
std::string option_for_field(const std::string& field);
// "option '--<option>': <detail>" for a field an option sets, else e.what().
std::string option_message(const FieldError& e);
// Runs `f`; a FieldError naming an option's field becomes a UsageError naming the option.
template <class F>
auto with_option_names(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const FieldError& e) {
    if (option_for_field(e.field()).empty()) throw;
    throw UsageError(option_message(e));
  }
}

// "'; did you mean '<x>'?" style suffix, or "" when nothing is close.
std::string did_you_mean(const std::string& word, const std::vector<std::string>& candidates,
                         const std::string& prefix = "");

}  // namespace ringattn::cli
