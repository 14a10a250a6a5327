// What the `ringattn plan` and `ringattn calibrate` CLI tests share
// (test_plan_cli.cpp, test_profiles_cli.cpp): a cpu profile to break in one
// place, readers of flat JSON lines, and the PlanCli fixture (RINGATTN_BIN).
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "cli_fixture.hpp"

namespace ringattn::plan_cli {

using Result = test::CliResult;

inline constexpr int kExitUsage = 2;

// A profile with every section; tests break it in one place.
inline const char* const kCpuProfile = R"([device]
name = test-cpu
kind = cpu
devices-per-node = 2
memory-gib = 8
memory-bandwidth-gb-s = 20

[kernel-gflops]
float32.d64 = 100
float32.d128 = 120

[link.intra-node]
latency-us = 2
bandwidth-gb-s = 5
overlap = 0

[link.in-process]
latency-us = 5
bandwidth-gb-s = 3
overlap = 0
)";

// The value of "key" in a flat JSON line, as text ("" when absent).
inline std::string json_field(const std::string& line, const std::string& key) {
  const std::string k = "\"" + key + "\": ";
  const auto at = line.find(k);
  if (at == std::string::npos) return "";
  const auto b = at + k.size();
  if (line[b] == '"') return line.substr(b + 1, line.find('"', b + 1) - b - 1);
  return line.substr(b, line.find_first_of(",}", b) - b);
}

inline double json_number(const std::string& line, const std::string& key) {
  const std::string v = json_field(line, key);
  EXPECT_FALSE(v.empty()) << key << " in " << line;
  return std::atof(v.c_str());
}

class PlanCli : public test::CliFixture {
 protected:
  std::string write_profile(const std::string& name, const std::string& text) const {
    std::ofstream(path(name)) << text;
    return path(name);
  }
  Result plan(std::vector<std::string> args) const {
    args.insert(args.begin(), "plan");
    return run_binary(args);
  }
  // Exit 2, one line naming `must_name`.
  void expect_usage_error(const Result& r, const std::string& must_name) const {
    EXPECT_EQ(r.rc, kExitUsage) << r.err;
    expect_clean_failure(r, must_name, {});
  }
};

}  // namespace ringattn::plan_cli
