// `ringattn run` given bad input, failing ranks and signals: one line on stderr
// naming the option, file or rank; no output and no temporary left behind.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "ringattn/comm_mpi.hpp"
#include "run_fixture.hpp"

namespace ringattn {
namespace {

using test::Clock;
using test::kHangLimitS;
using test::kSigtermExit;
using test::random_tensor;
using test::Result;
using test::Run;
using test::RunError;
using test::slurp;
namespace fs = std::filesystem;

// ---- bad input: one line naming the option or file, nothing left behind ------

TEST_F(RunError, OutputsThatAliasAnotherPathAreErrors) {
  write_files({1, 8, 2, 16}, {1, 12, 1, 16}, {1, 12, 1, 16});
  const std::string k_before = slurp(path("k.npy"));
  std::filesystem::create_directory(path("d"));
  const std::string dot = (std::filesystem::path(path("d")) / "..").string();
  std::vector<std::string> a = file_args();
  a.insert(a.end(), {"--ranks-local", "2", "--threads", "1"});
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> x = a;
    x.insert(x.end(), extra.begin(), extra.end());
    return run(x);
  };
  expect_clean_failure(with({"--out", path("o.npy"), "--lse-out", dot + "/o.npy"}), "--lse-out",
                       {path("o.npy")});
  expect_clean_failure(with({"--out", dot + "/k.npy"}), "--k", {});
  expect_clean_failure(with({"--out", path("o.npy"), "--metrics", dot + "/o.npy"}), "--metrics",
                       {path("o.npy")});
  EXPECT_EQ(slurp(path("k.npy")), k_before);
}

TEST_F(RunError, ResultsBeyondFloat32AreErrorsNotNaN) {
  expect_failure({"--ranks-local", "2", "--seq-len", "128", "--heads", "2", "--head-dim", "32",
                  "--scale", "1e38"},
                 "not finite");
}

TEST_F(RunError, HugeSequenceLengthIsRefusedBeforeAnyWarning) {
  expect_failure({"--seq-len", "9223372036854775807", "--ranks-local", "2"}, "'--seq-len'");
}

// Built without MPI (the preset nompi): --backend mpi is an error that names the
// option and the rebuild; a job that an MPI launcher started runs in-process in each
// process, says so on stderr, and gives the bytes of the same run started alone.
TEST_F(RunError, WithoutMpiTheMpiBackendNamesTheRebuild) {
  if (mpi_built()) GTEST_SKIP() << "this ringattn has MPI";
  const std::string msg =
      expect_failure({"--backend", "mpi", "--seq-len", "64", "--heads", "2", "--head-dim", "16"},
                     "'--backend mpi'");
  EXPECT_NE(msg.find("built without MPI"), std::string::npos) << msg;

  const std::vector<std::string> args = {"--seq-len", "96",         "--heads", "2",
                                         "--causal",  "--head-dim", "16",      "--check-rows",
                                         "16",        "--threads",  "1"};
  std::vector<std::string> alone = args, launched = args;
  alone.insert(alone.end(), {"--out", path("alone.npy")});
  launched.insert(launched.end(), {"--out", path("launched.npy")});
  const Result a = run(alone);
  ASSERT_EQ(a.rc, 0) << a.err;
  ASSERT_EQ(::setenv("OMPI_COMM_WORLD_SIZE", "2", 1), 0);
  const Result r = run(launched);
  ::unsetenv("OMPI_COMM_WORLD_SIZE");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("started by an MPI launcher, but this ringattn was built without MPI"),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.out.find("P=1 (local)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("vs float64 on 16 sampled query rows x 2 heads: ok"), std::string::npos)
      << r.out;
  EXPECT_EQ(slurp(path("launched.npy")), slurp(path("alone.npy")));
}

// Scores near 1e36 are finite; their LSE is exact in float32 only to ~1e29 absolute, so
// --verify and --check-rows must bound it relative to |LSE|.
TEST_F(Run, VerifyAcceptsACorrectResultWithAHugeLse) {
  Tensor q = random_tensor(DType::f32, {1, 40, 2, 16}, 1),
         k = random_tensor(DType::f32, {1, 40, 2, 16}, 2);
  for (int64_t i = 0; i < q.numel(); ++i) q.set(i, q.get(i) * 1e18f), k.set(i, k.get(i) * 1e18f);
  save_npy(path("q.npy"), q), save_npy(path("k.npy"), k);
  save_npy(path("v.npy"), random_tensor(DType::f32, {1, 40, 2, 16}, 3));
  const Result r = run({"--q", path("q.npy"), "--k", path("k.npy"), "--v", path("v.npy"),
                        "--ranks-local", "3", "--verify", "--check-rows", "8", "--threads", "1"});
  EXPECT_EQ(r.rc, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("single-rank kernel: ok"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("relative to |LSE|"), std::string::npos) << r.out;
}

TEST_F(Run, SizeOptionsBesideInputFilesAreWarnedAbout) {
  save_npy(path("q.npy"), random_tensor(DType::f32, {1, 8, 2, 16}, 1));
  save_npy(path("k.npy"), random_tensor(DType::f32, {1, 8, 2, 16}, 2));
  save_npy(path("v.npy"), random_tensor(DType::f32, {1, 8, 2, 16}, 3));
  const Result r = run({"--q", path("q.npy"), "--k", path("k.npy"), "--v", path("v.npy"),
                        "--seq-len", "99", "--dtype", "f16", "--threads", "1"});
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("warning: --seq-len, --dtype ignored"), std::string::npos) << r.err;
}

TEST_F(RunError, DeviceCudaNeedsHalfPrecisionAGpuAndAKnownHeadDim) {
  expect_failure({"--device", "gpu"}, "'--device'");
  expect_failure({"--device", "cuda", "--dtype", "float32", "--seq-len", "64"}, "'--device'");
  expect_failure({"--device", "cuda", "--dtype", "bf16", "--head-dim", "80", "--seq-len", "64"},
                 "'--device'");
  // No GPU here (or no CUDA in this build): one line naming the option, nothing written.
  const std::string err = expect_failure({"--device", "cuda", "--dtype", "bf16", "--head-dim", "64",
                                          "--seq-len", "256", "--ranks-local", "2"},
                                         "'--device'");
  EXPECT_TRUE(err.find("no usable CUDA device") != std::string::npos ||
              err.find("built without CUDA") != std::string::npos)
      << err;
}

TEST_F(RunError, EmptySequence) {
  expect_failure({"--seq-len", "0"}, "'--seq-len'");
  write_files({1, 0, 2, 16}, {1, 8, 2, 16}, {1, 8, 2, 16});
  expect_failure(file_args(), "q.npy");
}

TEST_F(RunError, MismatchedShapesAcrossFiles) {
  write_files({1, 8, 2, 16}, {1, 12, 1, 16}, {1, 11, 1, 16});
  expect_failure(file_args(), "v.npy");
  write_files({2, 8, 2, 16}, {1, 12, 1, 16}, {1, 12, 1, 16});
  expect_failure(file_args(), "batch");
  write_files({1, 8, 2, 16}, {1, 12, 1, 24}, {1, 12, 1, 24});
  expect_failure(file_args(), "k.npy");
  write_files({1, 8, 3, 16}, {1, 12, 2, 16}, {1, 12, 2, 16});
  expect_failure(file_args(), "multiple");
  write_files({1, 8, 2, 12}, {1, 8, 2, 12}, {1, 8, 2, 12});
  expect_failure(file_args(), "head_dim");
  write_files({1, 8, 2, 16}, {1, 12, 1, 16}, {1, 12, 1, 16});
  expect_failure({"--q", path("q.npy"), "--k", path("k.npy")}, "'--v'");
}

TEST_F(RunError, NonFiniteValueNamesTheGlobalIndex) {
  write_files({1, 12, 2, 16}, {1, 12, 1, 16}, {1, 12, 1, 16});
  Tensor k = random_tensor(DType::f32, {1, 12, 1, 16}, 2);
  k.set(5 * 16 + 3, NAN);  // token 5: rank 1 of 3 (contiguous)
  save_npy(path("k.npy"), k);
  std::vector<std::string> args = file_args();
  args.insert(args.end(), {"--ranks-local", "3"});
  const std::string err = expect_failure(args, "k.npy");
  EXPECT_NE(err.find("[0, 5, 0, 3]"), std::string::npos) << err;
}

TEST_F(RunError, BadOptions) {
  expect_failure({"--ranks-local", "0"}, "'--ranks-local'");
  expect_failure({"--layout", "diagonal"}, "'--layout'");
  EXPECT_NE(expect_failure({"--casual"}, "unknown option '--casual'").find("'--causal'"),
            std::string::npos);
  expect_failure({"--ranks-local", "4", "--fail-rank", "4", "--seq-len", "64"}, "'--fail-rank'");
  expect_failure({"--backend", "mpi", "--ranks-local", "2"}, "'--ranks-local'");
  expect_failure({"--head-dim", "12"}, "'--head-dim'");
  expect_failure({"--heads", "6", "--kv-heads", "4"}, "--kv-heads");
}

TEST_F(RunError, UnwritableOutput) {
  expect_failure({"--seq-len", "64", "--ranks-local", "2"}, "'--out'", path("no_such_dir/o.npy"));
}

TEST_F(RunError, FailingRankEndsTheJobQuickly) {
  const Result r = run({"--ranks-local", "4", "--fail-rank", "2", "--seq-len", "4000", "--heads",
                        "4", "--head-dim", "64", "--out", path("o.npy"), "--lse-out",
                        path("lse.npy"), "--metrics", path("m.jsonl"), "--threads", "1"});
  EXPECT_NE(r.rc, 0);
  EXPECT_LT(r.seconds, kHangLimitS);          // a hang guard, not a timing
  EXPECT_FALSE(fs::exists(path("m.jsonl")));  // metrics are written once a run succeeded
  EXPECT_NE(r.err.find("rank 2"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("injected failure"), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_FALSE(fs::exists(path("o.npy")));
  EXPECT_FALSE(fs::exists(path("lse.npy")));
  EXPECT_TRUE(temporaries().empty());
}

// Starts `ringattn run ARGS...` in a child process (output discarded).
// `bin run args...` in a child; stdout is discarded, stderr goes to `err_path` (or is
// discarded when empty).
pid_t spawn_run(const std::string& bin, std::vector<std::string> args,
                const std::string& err_path = "") {
  args.insert(args.begin(), {bin, "run"});
  std::vector<char*> argv;
  for (std::string& x : args) argv.push_back(x.data());
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int devnull = ::open("/dev/null", O_WRONLY);
    const int err =
        err_path.empty() ? devnull : ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(devnull, 1);
    ::dup2(err, 2);
    ::execv(bin.c_str(), argv.data());
    ::_exit(127);
  }
  return pid;
}

// What MPI does to the surviving ranks when one aborts: SIGTERM. The handler removes the
// temporaries (no destructor runs), says so on stderr and exits with 128 + SIGTERM.
TEST_F(Run, SigtermRemovesTemporaryOutputs) {
  // The output temporaries exist from the end of the ring pass until commit;
  // --verify's single-rank kernel runs in that window (seconds at this size),
  // which is when the SIGTERM arrives.
#ifdef RINGATTN_TEST_SANITIZED
  const char* n = "8192";
#else
  const char* n = "16384";
#endif
  const std::string out = path("o.npy"), lse = path("lse.npy"), err = path("stderr.txt");
  const pid_t pid = spawn_run(bin_,
                              {"--ranks-local", "2", "--seq-len", n, "--heads", "2", "--head-dim",
                               "64", "--verify", "--threads", "1", "--out", out, "--lse-out", lse},
                              err);
  ASSERT_GE(pid, 0);
  const Clock::time_point t0 = Clock::now();
  // Wait for the state (both temporaries exist), however long the ring takes here.
  while (temporaries().size() < 2 && Clock::now() - t0 < std::chrono::seconds(kHangLimitS))
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_EQ(temporaries().size(), 2u);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // into the verification
  ::kill(pid, SIGTERM);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), kSigtermExit);
  EXPECT_TRUE(temporaries().empty()) << temporaries().front();
  EXPECT_FALSE(fs::exists(out));
  EXPECT_FALSE(fs::exists(lse));
  // In-process ranks share the process: the line names no rank.
  const std::string said = slurp(err);
  EXPECT_NE(said.find("ringattn: ended by SIGTERM (signal 15); temporary outputs removed\n"),
            std::string::npos)
      << said;
}

TEST_F(Run, OutputsDoNotExistDuringTheRing) {
  // A job ended during compute (the common case: a failing rank) leaves no
  // temporary behind even if it is killed outright.
  const std::string out = path("o.npy");
  const pid_t pid =
      spawn_run(bin_, {"--ranks-local", "2", "--seq-len", "2048", "--heads", "2", "--head-dim",
                       "64", "--repeats", "1000000", "--threads", "1", "--out", out});
  ASSERT_GE(pid, 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  EXPECT_TRUE(temporaries().empty()) << temporaries().front();
  ::kill(pid, SIGKILL);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(temporaries().empty()) << temporaries().front();
  EXPECT_FALSE(fs::exists(out));
}

TEST_F(RunError, BadMaskOptions) {
  for (const auto& bad : std::vector<std::vector<std::string>>{{"--global", "7-3"},
                                                               {"--global", "x"},
                                                               {"--dilation", "0"},
                                                               {"--window-left", "-2"},
                                                               {"--block-random", "99"}}) {
    std::vector<std::string> args = {"--ranks-local", "2",          "--seq-len", "64",
                                     "--out",         path("o.npy")};
    args.insert(args.end(), bad.begin(), bad.end());
    const Result r = run(args);
    EXPECT_NE(r.rc, 0) << bad[0];
    EXPECT_NE(r.err.find(bad[0]), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_FALSE(fs::exists(path("o.npy")));
    EXPECT_TRUE(temporaries().empty());
  }
}

}  // namespace
}  // namespace ringattn
