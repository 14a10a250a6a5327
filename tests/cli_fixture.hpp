// A GoogleTest fixture for tests that run the ringattn binary (path in the
// RINGATTN_BIN environment variable): a scratch directory per test, running
// the binary there with captured stdout/stderr and exit code, and listing
// stray temporary files.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace ringattn::test {

struct CliResult {
  int rc = -1;
  std::string out, err;
  double seconds = 0;
};

// The non-empty lines of a text (stdout, a metrics file).
inline std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);)
    if (!l.empty()) out.push_back(l);
  return out;
}

inline std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Single-quoted for /bin/sh.
inline std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

class CliFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* bin = std::getenv("RINGATTN_BIN");
    ASSERT_NE(bin, nullptr) << "RINGATTN_BIN must name the ringattn binary";
    bin_ = bin;
    std::string tmpl = (std::filesystem::temp_directory_path() / "ringattn_test_XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  // Runs `ringattn args...` with stdin from /dev/null.
  CliResult run_binary(const std::vector<std::string>& args) const {
    std::string cmd = shell_quote(bin_);
    for (const auto& a : args) cmd += " " + shell_quote(a);
    const std::filesystem::path out = dir_ / "stdout.txt", err = dir_ / "stderr.txt";
    cmd += " < /dev/null > " + shell_quote(out.string()) + " 2> " + shell_quote(err.string());
    CliResult r;
    const auto t0 = std::chrono::steady_clock::now();
    const int status = std::system(cmd.c_str());
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    r.out = slurp(out);
    r.err = slurp(err);
    std::filesystem::remove(out);
    std::filesystem::remove(err);
    return r;
  }

  // The checks every failing invocation must pass: non-zero exit, exactly one
  // stderr line "ringattn: error: ..." naming `must_name`, and none of
  // `outputs` nor any temporary left behind. Returns the message.
  std::string expect_clean_failure(const CliResult& r, const std::string& must_name,
                                   const std::vector<std::string>& outputs) const {
    EXPECT_NE(r.rc, 0);
    EXPECT_EQ(r.err.rfind("ringattn: error: ", 0), 0u) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_NE(r.err.find(must_name), std::string::npos)
        << "expected '" << must_name << "' in: " << r.err;
    for (const std::string& o : outputs) EXPECT_FALSE(std::filesystem::exists(o)) << o;
    const std::vector<std::string> temps = temporaries();
    EXPECT_TRUE(temps.empty()) << temps.front();
    return r.err;
  }

  // Files in the scratch dir whose name contains ".tmp".
  std::vector<std::string> temporaries() const {
    std::vector<std::string> found;
    for (const auto& e : std::filesystem::directory_iterator(dir_))
      if (e.path().filename().string().find(".tmp") != std::string::npos)
        found.push_back(e.path().filename().string());
    return found;
  }

  std::string bin_;
  std::filesystem::path dir_;
};

}  // namespace ringattn::test
