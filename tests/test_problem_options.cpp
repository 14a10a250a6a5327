// The problem options (cli/problem_options.hpp) end to end (RINGATTN_BIN): every
// command that takes one documents it with the same default and unit, a bad
// value names the option in every command, and the metrics records of every
// command carry the problem's shape under the same keys (docs/METRICS.md).
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "cli_fixture.hpp"

namespace ringattn {
namespace {

using test::lines_of;

using Result = test::CliResult;

const std::vector<std::string> kAll = {"batch",    "seq-len", "kv-seq-len", "heads", "kv-heads",
                                       "head-dim", "dtype",   "scale",      "causal"};
// The problem options each command takes.
const std::map<std::string, std::vector<std::string>> kTakes = {
    {"demo", kAll},
    {"bench-kernel", kAll},
    {"run", kAll},
    {"plan", kAll},
    {"mask", {"seq-len", "kv-seq-len", "causal"}},
    {"attend", {"scale", "causal"}},
    {"calibrate", {}},
};
// The shape keys of every metrics record that describes a problem.
const std::vector<std::string> kShapeKeys = {"b", "nq",    "nk",     "hq",  "hkv",
                                             "d", "dtype", "causal", "mask"};

struct HelpEntry {
  bool found = false;
  std::string unit, default_value;
};

// The --help entry of option `name`: its text (continuation lines joined), the
// unit in [brackets] and the "(default: X)".
HelpEntry help_entry(const std::string& help, const std::string& name) {
  std::istringstream in(help);
  std::string line, text;
  bool inside = false;
  HelpEntry e;
  while (std::getline(in, line)) {
    const bool starts = line.rfind("  --", 0) == 0;
    if (inside && (starts || line.empty() || line[2] != ' ')) break;
    if (starts) {
      const std::string rest = line.substr(4);
      if (rest.rfind(name, 0) == 0 &&
          (rest.size() == name.size() || rest[name.size()] == ' ' || rest[name.size()] == '[')) {
        inside = e.found = true;
      }
    }
    if (inside) {
      const std::size_t b = line.find_first_not_of(' ');
      text += " " + line.substr(b == std::string::npos ? line.size() : b);
    }
  }
  const std::size_t d = text.find("(default: ");
  if (d != std::string::npos) {
    const std::size_t end = text.find(')', d);
    e.default_value = text.substr(d + 10, end - d - 10);
  }
  const std::size_t u = text.rfind(" [", d);
  if (u != std::string::npos && u > text.find("  ")) {
    const std::size_t end = text.find(']', u);
    e.unit = text.substr(u + 2, end - u - 2);
  }
  return e;
}

// The value of `key` in a one-line JSON object, as written ("64", "\"full\"", "false").
std::string json_value(const std::string& line, const std::string& key) {
  const std::string k = "\"" + key + "\": ";
  const std::size_t at = line.find(k);
  if (at == std::string::npos) return "";
  const std::size_t from = at + k.size();
  std::size_t to = from;
  if (line[from] == '"') {
    to = line.find('"', from + 1) + 1;
  } else {
    while (to < line.size() && line[to] != ',' && line[to] != '}') ++to;
  }
  return line.substr(from, to - from);
}

class ProblemOptions : public test::CliFixture {};

TEST_F(ProblemOptions, HelpShowsOneDefaultAndUnitPerOption) {
  std::map<std::string, std::string> help;
  for (const auto& [cmd, takes] : kTakes) {
    const Result r = run_binary({cmd, "--help"});
    ASSERT_EQ(r.rc, 0) << cmd << r.err;
    help[cmd] = r.out;
  }
  for (const std::string& name : kAll) {
    const HelpEntry ref = help_entry(help["run"], name);
    ASSERT_TRUE(ref.found) << name;
    EXPECT_FALSE(ref.default_value.empty()) << name;
    for (const auto& [cmd, takes] : kTakes) {
      const bool takes_it = std::find(takes.begin(), takes.end(), name) != takes.end();
      const HelpEntry e = help_entry(help[cmd], name);
      EXPECT_EQ(e.found, takes_it) << cmd << " --" << name;
      if (!takes_it) continue;
      EXPECT_EQ(e.default_value, ref.default_value) << cmd << " --" << name;
      EXPECT_EQ(e.unit, ref.unit) << cmd << " --" << name;
    }
  }
  // The shared defaults (README "Option defaults").
  EXPECT_EQ(help_entry(help["run"], "seq-len").default_value, "4096");
  EXPECT_EQ(help_entry(help["run"], "seq-len").unit, "tokens");
  EXPECT_EQ(help_entry(help["run"], "heads").default_value, "8");
  EXPECT_EQ(help_entry(help["run"], "kv-heads").default_value, "0");
  EXPECT_EQ(help_entry(help["run"], "causal").default_value, "false");
  EXPECT_EQ(help_entry(help["calibrate"], "probe-tokens").unit, "tokens");
}

// Arguments that get each command past its own required options.
std::vector<std::string> base_args(const std::string& cmd) {
  if (cmd == "plan") return {"plan", "--hardware", "cpu-icelake-2core"};
  if (cmd == "attend")
    return {"attend", "--q", "q.npy", "--k", "k.npy", "--v", "v.npy", "--out", "o.npy"};
  return {cmd};
}

TEST_F(ProblemOptions, BadValueNamesTheOptionInEveryCommand) {
  struct Bad {
    std::string option;
    std::vector<std::string> args;
  };
  const std::vector<Bad> bad = {
      {"batch", {"--batch", "0"}},
      {"seq-len", {"--seq-len", "0"}},
      {"kv-seq-len", {"--kv-seq-len", "-1"}},
      {"heads", {"--heads", "0"}},
      {"kv-heads", {"--kv-heads", "3", "--heads", "8"}},
      {"head-dim", {"--head-dim", "9"}},
      {"dtype", {"--dtype", "float8"}},
      {"scale", {"--scale", "-1"}},
      {"causal", {"--causal=maybe"}},
  };
  for (const auto& [cmd, takes] : kTakes) {
    for (const Bad& b : bad) {
      if (std::find(takes.begin(), takes.end(), b.option) == takes.end()) continue;
      std::vector<std::string> args = base_args(cmd);
      args.insert(args.end(), b.args.begin(), b.args.end());
      const Result r = run_binary(args);
      EXPECT_EQ(r.rc, 2) << cmd << " " << b.option << ": " << r.err;
      expect_clean_failure(r, "option '--" + b.option + "'", {});
    }
  }
  // A list value is checked item by item.
  expect_clean_failure(run_binary({"bench-kernel", "--head-dim", "64,9"}), "option '--head-dim'",
                       {});
}

TEST_F(ProblemOptions, MetricsRecordsShareTheShapeKeys) {
  const std::vector<std::string> shape = {"--seq-len",  "64", "--heads",    "2",
                                          "--kv-heads", "1",  "--head-dim", "32"};
  const std::map<std::string, std::vector<std::string>> runs = {
      {"run", {"run", "--ranks-local", "2", "--threads", "1"}},
      {"plan", {"plan", "--hardware", "cpu-icelake-2core", "--ranks-local", "2"}},
      {"bench-kernel",
       {"bench-kernel", "--repeats", "1", "--warmup", "0", "--sgemm-size", "64", "--threads", "1"}},
      {"demo", {"demo", "--threads", "1"}},
  };
  for (const auto& [cmd, base] : runs) {
    std::vector<std::string> args = base;
    args.insert(args.end(), shape.begin(), shape.end());
    const std::string metrics = path(cmd + ".jsonl");
    args.insert(args.end(), {"--metrics", metrics});
    const Result r = run_binary(args);
    ASSERT_EQ(r.rc, 0) << cmd << ": " << r.err;
    int records = 0;
    for (const std::string& l : lines_of(test::slurp(metrics))) {
      const std::string rec = json_value(l, "record");
      if (rec == "\"rank\"" || rec == "\"step\"") continue;
      ++records;
      for (const std::string& k : kShapeKeys) EXPECT_NE(json_value(l, k), "") << cmd << " " << k;
      EXPECT_EQ(json_value(l, "n"), "") << cmd << ": 'nq', not 'n'";
      EXPECT_EQ(json_value(l, "command"), "\"" + cmd + "\"");
      EXPECT_EQ(json_value(l, "b"), "1") << cmd;
      EXPECT_EQ(json_value(l, "nq"), "64") << cmd;
      EXPECT_EQ(json_value(l, "nk"), "64") << cmd;
      EXPECT_EQ(json_value(l, "hq"), "2") << cmd;
      EXPECT_EQ(json_value(l, "hkv"), "1") << cmd;
      EXPECT_EQ(json_value(l, "d"), "32") << cmd;
      EXPECT_EQ(json_value(l, "dtype"), "\"float32\"") << cmd;
      EXPECT_EQ(json_value(l, "causal"), "false") << cmd;
      EXPECT_EQ(json_value(l, "mask"), "\"full\"") << cmd;
    }
    EXPECT_GE(records, 1) << cmd;
  }

  // calibrate: its kernel probes are recorded with the same keys.
  const std::string metrics = path("calibrate.jsonl");
  const Result c =
      run_binary({"calibrate", "--out", path("me.ini"), "--dtypes", "f32", "--head-dims", "32",
                  "--probe-tokens", "64", "--probe-heads", "1", "--max-message", "4096",
                  "--repeats", "1", "--threads", "1", "--metrics", metrics});
  ASSERT_EQ(c.rc, 0) << c.err;
  const std::vector<std::string> lines = lines_of(test::slurp(metrics));
  ASSERT_FALSE(lines.empty());
  for (const std::string& l : lines) {
    for (const std::string& k : kShapeKeys) EXPECT_NE(json_value(l, k), "") << "calibrate " << k;
    EXPECT_EQ(json_value(l, "nq"), "64");
    EXPECT_EQ(json_value(l, "d"), "32");
  }
}

}  // namespace
}  // namespace ringattn
