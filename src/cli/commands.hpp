// The `ringattn` commands. Each takes the arguments after `ringattn`
// (argv[0] is the command name), returns the process exit status, and throws
// UsageError / ringattn::Error for main() to report in one line.
// Adding a command: write cmd_<name>.cpp, declare it here, add one line to kCommands in main.cpp.
#pragma once

namespace ringattn::cli {

int cmd_attend(int argc, char** argv);
int cmd_demo(int argc, char** argv);
int cmd_bench_kernel(int argc, char** argv);
int cmd_run(int argc, char** argv);
int cmd_moe(int argc, char** argv);
int cmd_mask(int argc, char** argv);
int cmd_plan(int argc, char** argv);
int cmd_calibrate(int argc, char** argv);

}  // namespace ringattn::cli
