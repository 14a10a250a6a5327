// The options of `ringattn run` and the job they resolve to.
#pragma once

#include <cstdint>
#include <string>

#include "cli/mask_options.hpp"
#include "cli/options.hpp"
#include "ringattn/hardware.hpp"
#include "ringattn/job.hpp"

namespace ringattn::cli {

// What `ringattn run` resolves its options to: the job (ringattn/job.hpp) and
// what only the command needs. Every process builds it from its own command
// line; the job then compares the ranks' config_text() hashes before any work.
struct RunConfig : JobSpec {
  bool causal = false;       // --causal (the mask has it already; for the report)
  MaskOptions masks;         // the mask options as given
  std::string metrics_path;  // --metrics
  std::string command_line;  // `ringattn run ...` with every effective option
};

// A hardware profile named by --hardware: a name in $RINGATTN_HARDWARE_DIR,
// ./configs/hardware or the shipped profiles, or an .ini path. Throws UsageError
// naming the option.
HardwareProfile load_hardware_option(const std::string& value);

// The `run` command's options (without the common ones).
CommandSpec run_spec();

// Resolves and validates the options; with --q/--k/--v reads the three .npy
// headers (not the data) and checks their shapes against each other. Throws
// UsageError or Error with one line naming the option or file.
RunConfig make_run_config(const ParsedOptions& opt);

// Only the problem: sizes (options or file headers), dtype, causal, mask and
// layout; reads none of the execution options (for `ringattn plan`, whose spec
// keeps run's problem options: batch, seq-len, kv-seq-len, heads, kv-heads,
// head-dim, dtype, q, k, v, causal, layout and the mask options).
RunConfig make_problem_config(const ParsedOptions& opt);

}  // namespace ringattn::cli
