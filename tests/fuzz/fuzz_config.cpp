// libFuzzer target: the config-file parser (`--config FILE`, cli/options.hpp) on arbitrary text.
//
// Each input is a whole .ini file, parsed by parse_config_text as parse_options parses
// `--config`, against a command like `ringattn run`: the shared problem and mask options
// (problem_option_specs, mask_option_specs) and run's own kinds of option (choices, ranges,
// files, flags), plus a list of integers and a flag list (bench-kernel's kind) so that every
// option kind and list form is reached. An accepted file then goes through what a command does
// with it: every option read through its typed accessor, the problem and mask options resolved
// (parse_problem_options, which validates them) and the reproducing command line built.
// ringattn::Error (UsageError, FieldError) is the expected rejection; anything else (a crash, a
// sanitizer report, another exception type, a leak) is a finding. scripts/fuzz.sh runs it on
// the seed corpus in tests/fuzz/corpus/config.
//
// (run_spec() itself is not linked: cli/run_config.cpp pulls in the CPU kernels, which do not
// build with clang; see CMakeLists.txt.)
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

#include "cli/options.hpp"
#include "cli/problem_options.hpp"
#include "ringattn/error.hpp"

namespace {

using ringattn::cli::CommandSpec;
using ringattn::cli::Kind;
using ringattn::cli::OptionSpec;
using ringattn::cli::ParsedOptions;

// A command like `ringattn run` (cli/run_config.cpp) with two list options added.
CommandSpec fuzz_spec() {
  CommandSpec s;
  s.name = "fuzz";
  s.options = {
      OptionSpec::choice("backend", "auto", {"auto", "local", "mpi"}, "ranks"),
      OptionSpec::integer("ranks-local", "", "in-process ranks").positive().shown_default("1"),
      OptionSpec::integer("seed", "0", "seed").non_negative(),
      OptionSpec::text("q", "", "queries (.npy)"),
      OptionSpec::choice("layout", "auto", {"auto", "contiguous", "zigzag", "striped"}, "layout"),
      OptionSpec::flag("verify", "false", "check against the single-rank kernel"),
      OptionSpec::integer("check-rows", "0", "sampled rows").non_negative(),
      OptionSpec::number("tolerance", "", "a positive number").positive(),
      OptionSpec::integer("fail-rank", "-1", "testing: this rank fails"),
      OptionSpec::integer("sizes", "4096", "a list of sizes", "tokens").positive().as_list(),
      OptionSpec::flag("sweep", "false", "a flag list").also({"both"}).as_list(),
  };
  ringattn::cli::insert_options(&s.options, "seed", ringattn::cli::problem_option_specs());
  for (OptionSpec& o : ringattn::cli::mask_option_specs()) s.options.push_back(std::move(o));
  return s;
}

// Every option through the accessor its kind and list-ness call for.
void read_every_option(const ParsedOptions& opt, const CommandSpec& spec) {
  for (const OptionSpec& o : spec.options) {
    if (!opt.has(o.name)) continue;
    switch (o.kind) {
      case Kind::flag:
        if (o.list)
          (void)opt.flags(o.name);
        else
          (void)opt.flag(o.name);
        break;
      case Kind::integer:
        if (o.list)
          (void)opt.integers(o.name);
        else
          (void)opt.integer(o.name);
        break;
      case Kind::number:
        (void)opt.number(o.name);
        break;
      case Kind::text:
      case Kind::choice:
        (void)opt.text(o.name);
        (void)opt.texts(o.name);
        break;
    }
  }
  (void)opt.threads();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  static const CommandSpec command = fuzz_spec();
  static const CommandSpec full = ringattn::cli::with_common_options(command);
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    auto values = ringattn::cli::parse_config_text(command, text, "fuzz.ini");
    const ParsedOptions opt(full, std::move(values));
    read_every_option(opt, full);
    const ringattn::cli::ProblemShape shape = ringattn::cli::parse_problem_options(opt);
    (void)shape.str();
    (void)opt.command_line();
  } catch (const ringattn::Error&) {
    // the expected rejection (UsageError, FieldError)
  }
  return 0;
}
