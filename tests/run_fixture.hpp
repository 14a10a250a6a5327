// The fixture of the `ringattn run` tests (test_run.cpp: results; test_run_errors.cpp:
// bad input, failing ranks, signals): the binary through RINGATTN_BIN.
#pragma once

#include <signal.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

#include "cli_fixture.hpp"
#include "ringattn/npy.hpp"
#include "util.hpp"

namespace ringattn::test {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr double kTolO = 1e-5, kTolLse = 1e-4;  // float32, vs the float64 reference
constexpr double kSameAcrossP = 1e-6;           // generated inputs, P = 1 vs P = 3
// Deadlines only catch hangs: generous, so that a loaded or slower machine (ASan on a
// 2-core AVX2 CPU) never fails a correct run. Tests wait for state, not for time.
constexpr int kHangLimitS = 300;
constexpr int kSigtermExit = 128 + SIGTERM;

using Result = CliResult;

class Run : public CliFixture {
 protected:
  // `ringattn run args...`
  Result run(const std::vector<std::string>& args) const {
    std::vector<std::string> all = {"run"};
    all.insert(all.end(), args.begin(), args.end());
    return run_binary(all);
  }
};

// Runs that must fail: one line naming the option or file, nothing left behind.
class RunError : public Run {
 protected:
  void write_files(std::vector<int64_t> q, std::vector<int64_t> k, std::vector<int64_t> v) {
    save_npy(path("q.npy"), random_tensor(DType::f32, std::move(q), 1));
    save_npy(path("k.npy"), random_tensor(DType::f32, std::move(k), 2));
    save_npy(path("v.npy"), random_tensor(DType::f32, std::move(v), 3));
  }
  std::vector<std::string> file_args() const {
    return {"--q", path("q.npy"), "--k", path("k.npy"), "--v", path("v.npy")};
  }
  // Runs with --out/--lse-out in the scratch dir (unless `out` is given) and checks the
  // error contract; returns stderr.
  std::string expect_failure(std::vector<std::string> args, const std::string& must_name,
                             const std::string& out = "") {
    const std::string out_path = out.empty() ? path("o.npy") : out;
    args.insert(args.end(), {"--out", out_path, "--lse-out", path("lse.npy"), "--threads", "1"});
    return expect_clean_failure(run(args), must_name, {out_path, path("lse.npy")});
  }
};

}  // namespace ringattn::test
