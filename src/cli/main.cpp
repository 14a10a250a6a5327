// ringattn <command> [options]: dispatch, --help/--version, and the one place
// that turns exceptions into a one-line message and an exit status
// (2: usage error, 1: runtime error).
#include <fmt/format.h>

#include <boost/program_options/errors.hpp>
#include <cstdio>
#include <exception>
#include <new>
#include <string>
#include <vector>

#include "cli/commands.hpp"
#include "cli/options.hpp"

namespace {

using namespace ringattn::cli;
using ringattn::FieldError;

// The build may pass the project version; keep the fallback in step with project() in
// CMakeLists.txt.
#ifndef RINGATTN_VERSION
#define RINGATTN_VERSION "0.1.0"
#endif

struct Command {
  const char* name;
  const char* summary;
  int (*run)(int argc, char** argv);
};

// One line per command.
const Command kCommands[] = {
    {"attend", "attention of q/k/v .npy files, written to .npy (O and LSE)", cmd_attend},
    {"demo", "run the kernel on random inputs and check it against the float64 reference",
     cmd_demo},
    {"run", "ring attention over P ranks (in-process or MPI), checked and timed", cmd_run},
    {"moe", "the MoE routing stage alone over P ranks: routed, dispatched, run, combined, checked",
     cmd_moe},
    {"bench-kernel", "benchmark the CPU kernel against the materialised OpenBLAS baseline",
     cmd_bench_kernel},
    {"mask", "draw a mask at block resolution (ASCII or SVG), with rank boundaries", cmd_mask},
    {"plan", "predict time, memory and comm/compute overlap on a hardware profile", cmd_plan},
    {"calibrate", "measure this machine and write a hardware profile for plan", cmd_calibrate},
};

void print_usage(std::FILE* to) {
  fmt::print(to,
             "ringattn {}: exact attention over very long sequences\n\n"
             "Usage: ringattn <command> [options]\n"
             "       ringattn <command> --help    every option of a command, with defaults\n"
             "       ringattn --version\n\nCommands:\n",
             RINGATTN_VERSION);
  for (const Command& c : kCommands) fmt::print(to, "  {:<14}{}\n", c.name, c.summary);
}

const Command* find_command(const std::string& name) {
  for (const Command& c : kCommands)
    if (name == c.name) return &c;
  return nullptr;
}

int dispatch(int argc, char** argv) {
  if (argc < 2) {
    print_usage(stderr);
    return kExitUsage;
  }
  const std::string first = argv[1];
  if (first == "--help" || first == "-h" || first == "help") {
    if (first == "help" && argc > 2) {  // `ringattn help attend` = `ringattn attend --help`
      const Command* c = find_command(argv[2]);
      if (c == nullptr) throw UsageError(fmt::format("unknown command '{}'", argv[2]));
      char help_flag[] = "--help";
      char* sub_argv[] = {argv[2], help_flag, nullptr};
      return c->run(2, sub_argv);
    }
    print_usage(stdout);
    return kExitOk;
  }
  if (first == "--version") {
    fmt::print("ringattn {}\n", RINGATTN_VERSION);
    return kExitOk;
  }
  const Command* c = find_command(first);
  if (c == nullptr) {
    std::vector<std::string> names;
    for (const Command& k : kCommands) names.emplace_back(k.name);
    throw UsageError(fmt::format("unknown command '{}'{} (see 'ringattn --help')", first,
                                 did_you_mean(first, names)));
  }
  return c->run(argc - 1, argv + 1);
}

void report(const char* what) {
  std::fflush(stdout);
  fmt::print(stderr, "ringattn: error: {}\n", what);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return dispatch(argc, argv);
  } catch (const UsageError& e) {
    report(e.what());
    return kExitUsage;
  } catch (const FieldError& e) {  // a library field that an option set: a bad option value
    report(option_message(e).c_str());
    return option_for_field(e.field()).empty() ? kExitFailure : kExitUsage;
  } catch (const boost::program_options::error& e) {
    report(e.what());
    return kExitUsage;
  } catch (const std::bad_alloc&) {
    report("out of memory");
    return kExitFailure;
  } catch (const std::exception& e) {
    report(e.what());
    return kExitFailure;
  } catch (...) {
    report("unknown internal error");
    return kExitFailure;
  }
}
