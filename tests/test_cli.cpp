// End-to-end tests of the `ringattn` binary (RINGATTN_BIN): attend against the
// float64 reference, option handling, one-line errors that leave no output
// file behind, and small runs of demo and bench-kernel.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "cli_fixture.hpp"
#include "output_check.hpp"
#include "ringattn/npy.hpp"
#include "ringattn/reference.hpp"
#include "util.hpp"

namespace ringattn {
namespace {

namespace fs = std::filesystem;

using Result = test::CliResult;
using test::slurp;

// A scratch directory per test, and running the binary in it.
class Cli : public test::CliFixture {
 protected:
  Result run(const std::vector<std::string>& args) const { return run_binary(args); }
};

using test::random_tensor;

struct Case {
  const char* name;
  DType dtype;
  bool batched;  // 4-d files; 3-d otherwise (B = 1)
  int64_t b, nq, nk, hq, hkv, d;
  bool causal;
  float scale;  // 0: default
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << c.name;
}

std::vector<int64_t> dims(const Case& c, int64_t n, int64_t h) {
  return c.batched ? std::vector<int64_t>{c.b, n, h, c.d} : std::vector<int64_t>{n, h, c.d};
}

// ---- attend against the reference ------------------------------------------

class AttendCase : public Cli, public ::testing::WithParamInterface<Case> {};

TEST_P(AttendCase, MatchesReference) {
  const Case c = GetParam();
  const Tensor q = random_tensor(c.dtype, dims(c, c.nq, c.hq), 1);
  const Tensor k = random_tensor(c.dtype, dims(c, c.nk, c.hkv), 2);
  const Tensor v = random_tensor(c.dtype, dims(c, c.nk, c.hkv), 3);
  save_npy(path("q.npy"), q);
  save_npy(path("k.npy"), k);
  save_npy(path("v.npy"), v);
  std::vector<std::string> args = {
      "attend", "--q",         path("q.npy"), "--k",           path("k.npy"), "--v", path("v.npy"),
      "--out",  path("o.npy"), "--lse-out",   path("lse.npy"), "--threads",   "2"};
  if (c.causal) args.push_back("--causal");
  if (c.scale != 0.0f) args.insert(args.end(), {"--scale", std::to_string(c.scale)});
  args.push_back("--verify");
  const Result r = run(args);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("GFLOP/s"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("verified vs float64"), std::string::npos) << r.out;

  test::FileProblem fp;
  fp.dtype = c.dtype, fp.batched = c.batched, fp.b = c.b, fp.nq = c.nq, fp.nk = c.nk;
  fp.hq = c.hq, fp.hkv = c.hkv, fp.d = c.d, fp.causal = c.causal, fp.scale = c.scale;
  test::expect_outputs_match_reference(fp, q, k, v, path("o.npy"), path("lse.npy"));
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, AttendCase,
    ::testing::Values(
        Case{"f32_4d_full", DType::f32, true, 2, 40, 40, 4, 2, 16, false, 0.0f},
        Case{"f32_4d_causal_gqa_nq_lt_nk", DType::f32, true, 1, 33, 70, 4, 1, 32, true, 0.0f},
        Case{"f32_3d_causal_nq_gt_nk", DType::f32, false, 1, 50, 20, 2, 2, 8, true, 0.0f},
        Case{"f32_3d_scale", DType::f32, false, 1, 17, 29, 3, 1, 24, false, 0.5f},
        Case{"f16_4d_causal_gqa", DType::f16, true, 1, 64, 64, 4, 2, 64, true, 0.0f},
        Case{"bf16_3d_full", DType::bf16, false, 1, 24, 40, 2, 1, 16, false, 0.0f}),
    [](const ::testing::TestParamInfo<Case>& p) { return std::string(p.param.name); });

// ---- help, unknown options, config files -----------------------------------

TEST_F(Cli, TopLevelHelpListsCommands) {
  const Result r = run({"--help"});
  EXPECT_EQ(r.rc, 0);
  for (const char* cmd : {"attend", "demo", "bench-kernel"})
    EXPECT_NE(r.out.find(cmd), std::string::npos);
  EXPECT_EQ(run({"--version"}).rc, 0);
  const Result sub = run({"help", "attend"});
  EXPECT_EQ(sub.rc, 0);
  EXPECT_NE(sub.out.find("--lse-out"), std::string::npos) << sub.out;
  EXPECT_EQ(run({}).rc, 2);
  const Result bad = run({"atend"});
  EXPECT_EQ(bad.rc, 2);
  EXPECT_NE(bad.err.find("did you mean 'attend'"), std::string::npos) << bad.err;
}

TEST_F(Cli, CommandHelpListsEveryOptionWithDefaults) {
  const std::vector<std::pair<std::string, std::vector<std::string>>> commands = {
      {"attend", {"q", "k", "v", "out", "lse-out", "causal", "scale", "isa", "verify"}},
      {"demo",
       {"seed", "batch", "seq-len", "kv-seq-len", "heads", "kv-heads", "head-dim", "dtype",
        "causal", "isa", "warmup", "check-rows"}},
      {"bench-kernel",
       {"batch", "seq-len", "kv-seq-len", "heads", "kv-heads", "head-dim", "causal", "dtype",
        "repeats", "warmup", "isa", "baseline", "check-rows", "seed", "sgemm-size"}},
  };
  for (const auto& [cmd, options] : commands) {
    const Result r = run({cmd, "--help"});
    EXPECT_EQ(r.rc, 0) << cmd;
    for (const auto& o : options)
      EXPECT_NE(r.out.find("--" + o), std::string::npos) << cmd << " --" << o;
    for (const char* common : {"--config", "--metrics", "--threads", "--help"})
      EXPECT_NE(r.out.find(common), std::string::npos) << cmd << " " << common;
    EXPECT_NE(r.out.find("(default: "), std::string::npos) << cmd;
  }
}

TEST_F(Cli, UnknownOptionSuggestsTheClosest) {
  const Result r = run({"attend", "--casual"});
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("unknown option '--casual'; did you mean '--causal'?"), std::string::npos)
      << r.err;

  std::ofstream(path("x.ini")) << "seq-len = 64\ncasual = true\n";
  const Result c = run({"demo", "--config", path("x.ini")});
  EXPECT_EQ(c.rc, 2);
  EXPECT_NE(c.err.find("x.ini: unknown option 'casual'; did you mean 'causal'?"), std::string::npos)
      << c.err;

  const Result missing = run({"demo", "--config", path("missing.ini")});
  EXPECT_EQ(missing.rc, 2);
  EXPECT_NE(missing.err.find("missing.ini"), std::string::npos) << missing.err;
}

// Found by fuzz_config: lines holding Boost's '%token%' placeholders made its error text
// loop forever; the file is parsed by ringattn, and each bad line is named.
TEST_F(Cli, ConfigLinesWithPlaceholdersAreUsageErrors) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"seq-len = 64\n%invalid_line%\n", "line 2: '%invalid_line%' is not an option"},
      {"[%canonical_option%]\nx = 1\n", "line 1: '[%canonical_option%]': config files take no"},
      {"%option% = 1\n", "line 1: '%option% = 1' is not an option"},
      {"  = 1\n", "line 1: '= 1' is not an option"},
      {"seq-len = 64 # a comment\ncasual = %value%\n", "unknown option 'casual'"}};
  for (const auto& [text, message] : cases) {
    std::ofstream(path("p.ini")) << text;
    const Result r = run({"demo", "--config", path("p.ini")});
    EXPECT_EQ(r.rc, 2) << text;
    EXPECT_NE(r.err.find("p.ini: " + message), std::string::npos) << text << r.err;
  }
}

// Found by fuzz_config: the largest int64 as a global position overflowed its range's end.
TEST_F(Cli, GlobalPositionAtTheInt64LimitIsAUsageError) {
  std::ofstream(path("g.ini")) << "seq-len = 64\nglobal = 9223372036854775807\n";
  const Result r = run({"demo", "--config", path("g.ini")});
  EXPECT_EQ(r.rc, 2) << r.out << r.err;
  EXPECT_NE(r.err.find("option '--global'"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("9223372036854775807"), std::string::npos) << r.err;
}

// Found by fuzz_config: a window near the int64 limit overflowed the mask's band
// (diag -/+ window) and hid every key.
TEST_F(Cli, HugeWindowsMeanNoBound) {
  const std::string big = "9223372036854775807";
  for (const std::vector<std::string>& extra : {std::vector<std::string>{"--window-left", big},
                                                {"--window-right", big},
                                                {"--window-left", big, "--window-right", big}}) {
    std::vector<std::string> args = {"mask",         "--seq-len", "64",
                                     "--kv-seq-len", "32",        "--show=false"};
    args.insert(args.end(), extra.begin(), extra.end());
    const Result r = run(args);
    ASSERT_EQ(r.rc, 0) << extra[0] << ": " << r.err;
    EXPECT_NE(r.out.find("visible: 2048 of 2048"), std::string::npos) << extra[0] << ": " << r.out;
  }
}

TEST_F(Cli, ConfigValueIsUsedAndAFlagOverridesIt) {
  std::ofstream(path("demo.ini")) << "# tiny\nseq-len = 48\nheads = 2\nkv-heads = 1\n"
                                     "head-dim = 16\ncausal = false\n";
  const Result a = run({"demo", "--config", path("demo.ini")});
  ASSERT_EQ(a.rc, 0) << a.err;
  EXPECT_NE(a.out.find("Nq=48 Nk=48 Hq=2 Hkv=1 D=16 float32 full"), std::string::npos) << a.out;
  const Result b = run({"demo", "--config", path("demo.ini"), "--seq-len", "40", "--causal"});
  ASSERT_EQ(b.rc, 0) << b.err;
  EXPECT_NE(b.out.find("Nq=40 Nk=40 Hq=2 Hkv=1 D=16 float32 causal"), std::string::npos) << b.out;
}

// ---- bad inputs: one line, non-zero exit, nothing left behind --------------

class AttendError : public Cli {
 protected:
  // Writes valid q/k/v (q [1, 8, 2, 16], k/v [1, 12, 1, 16]) unless overridden.
  void write_defaults() {
    save_npy(path("q.npy"), random_tensor(DType::f32, {1, 8, 2, 16}, 1));
    save_npy(path("k.npy"), random_tensor(DType::f32, {1, 12, 1, 16}, 2));
    save_npy(path("v.npy"), random_tensor(DType::f32, {1, 12, 1, 16}, 3));
  }
  // Runs attend and checks the error contract; returns stderr.
  std::string expect_failure(std::vector<std::string> extra, const std::string& must_name,
                             const std::string& out = "") {
    const std::string out_path = out.empty() ? path("o.npy") : out;
    std::vector<std::string> args = {"attend",      "--q",       path("q.npy"),  "--k",
                                     path("k.npy"), "--v",       path("v.npy"),  "--out",
                                     out_path,      "--lse-out", path("lse.npy")};
    args.insert(args.end(), extra.begin(), extra.end());
    return expect_clean_failure(run(args), must_name, {out_path, path("lse.npy")});
  }
};

// Paths are compared as files, not strings: an output that is another output or an input
// (./x, a/../x, a symlink) is an error naming both, and no file is touched.
TEST_F(AttendError, OutputsThatAliasAnotherPathAreErrors) {
  write_defaults();
  const std::string q_before = slurp(path("q.npy"));
  std::filesystem::create_directory(path("d"));
  const std::string dot_o = (std::filesystem::path(path("d")) / ".." / "o.npy").string();
  auto attend = [&](std::vector<std::string> extra) {
    std::vector<std::string> a = {"attend",      "--q", path("q.npy"), "--k",
                                  path("k.npy"), "--v", path("v.npy")};
    a.insert(a.end(), extra.begin(), extra.end());
    return run(a);
  };
  expect_clean_failure(attend({"--out", path("o.npy"), "--lse-out", dot_o}), "--lse-out",
                       {path("o.npy")});
  expect_clean_failure(attend({"--out", path("q.npy")}), "--q", {});
  std::filesystem::create_symlink(path("k.npy"), path("link.npy"));
  expect_clean_failure(attend({"--out", path("link.npy")}), "--k", {});
  expect_clean_failure(attend({"--out", path("o.npy"), "--metrics", dot_o}), "--metrics",
                       {path("o.npy")});
  EXPECT_EQ(slurp(path("q.npy")), q_before);  // the input is untouched
}

TEST_F(AttendError, ResultsBeyondFloat32AreErrorsNotNaN) {
  write_defaults();
  // scale x q.k overflows float32: the result is not a number; nothing is written.
  expect_failure({"--scale", "1e38"}, "not finite");
  // Finite inputs so large that q.k overflows.
  Tensor q = random_tensor(DType::f32, {1, 8, 2, 16}, 1);
  for (int64_t i = 0; i < q.numel(); ++i) q.set(i, std::copysign(3.0e38f, q.get(i)));
  save_npy(path("q.npy"), q);
  expect_failure({}, "not finite");
}

TEST_F(Cli, ConfigThatIsADirectoryIsAnError) {
  std::filesystem::create_directory(path("cfg"));
  const Result r = run({"demo", "--config", path("cfg"), "--seq-len", "64"});
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("option '--config'"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("is a directory"), std::string::npos) << r.err;
}

TEST_F(AttendError, MalformedNpy) {
  write_defaults();
  std::ofstream(path("q.npy"), std::ios::binary) << "this is not an npy file";
  expect_failure({}, "q.npy");
}

TEST_F(AttendError, TruncatedNpy) {
  write_defaults();
  fs::resize_file(path("k.npy"), fs::file_size(path("k.npy")) - 10);
  expect_failure({}, "k.npy");
}

TEST_F(AttendError, UnsupportedDtype) {
  write_defaults();
  std::string dict = "{'descr': '<f8', 'fortran_order': False, 'shape': (1, 12, 1, 16), }";
  const std::size_t preamble = 10;
  dict.resize(64 * 2 - preamble - 1, ' ');
  dict += '\n';
  std::string file("\x93NUMPY\x01\x00", 8);
  file += static_cast<char>(dict.size() & 0xff);
  file += static_cast<char>(dict.size() >> 8);
  file += dict + std::string(12 * 16 * 8, '\0');
  std::ofstream(path("v.npy"), std::ios::binary) << file;
  expect_failure({}, "v.npy");
}

TEST_F(AttendError, WrongRank) {
  write_defaults();
  save_npy(path("q.npy"), random_tensor(DType::f32, {8, 32}, 1));
  expect_failure({}, "q.npy");
}

TEST_F(AttendError, MismatchedHeadDim) {
  write_defaults();
  save_npy(path("k.npy"), random_tensor(DType::f32, {1, 12, 1, 24}, 2));
  save_npy(path("v.npy"), random_tensor(DType::f32, {1, 12, 1, 24}, 3));
  expect_failure({}, "k.npy");
}

TEST_F(AttendError, UnsupportedHeadDim) {
  save_npy(path("q.npy"), random_tensor(DType::f32, {1, 8, 2, 12}, 1));
  save_npy(path("k.npy"), random_tensor(DType::f32, {1, 8, 2, 12}, 2));
  save_npy(path("v.npy"), random_tensor(DType::f32, {1, 8, 2, 12}, 3));
  expect_failure({}, "head_dim");
}

TEST_F(AttendError, MismatchedBatch) {
  write_defaults();
  save_npy(path("q.npy"), random_tensor(DType::f32, {2, 8, 2, 16}, 1));
  expect_failure({}, "batch");
}

TEST_F(AttendError, MismatchedKeyValueShapes) {
  write_defaults();
  save_npy(path("v.npy"), random_tensor(DType::f32, {1, 11, 1, 16}, 3));
  expect_failure({}, "v.npy");
}

TEST_F(AttendError, MismatchedDtype) {
  write_defaults();
  save_npy(path("k.npy"), random_tensor(DType::f16, {1, 12, 1, 16}, 2));
  expect_failure({}, "k.npy");
}

TEST_F(AttendError, HeadsNotAMultiple) {
  write_defaults();
  save_npy(path("q.npy"), random_tensor(DType::f32, {1, 8, 3, 16}, 1));
  save_npy(path("k.npy"), random_tensor(DType::f32, {1, 12, 2, 16}, 2));
  save_npy(path("v.npy"), random_tensor(DType::f32, {1, 12, 2, 16}, 3));
  expect_failure({}, "multiple");
}

TEST_F(AttendError, ZeroLengthSequence) {
  write_defaults();
  save_npy(path("q.npy"), Tensor(DType::f32, {1, 0, 2, 16}));
  expect_failure({}, "q.npy");
}

TEST_F(AttendError, NanInInputNamesTheIndex) {
  write_defaults();
  Tensor k = random_tensor(DType::f32, {1, 12, 1, 16}, 2);
  k.set(5 * 16 + 3, NAN);
  save_npy(path("k.npy"), k);
  const std::string err = expect_failure({}, "k.npy");
  EXPECT_NE(err.find("[0, 5, 0, 3]"), std::string::npos) << err;
}

TEST_F(AttendError, MissingInputFile) {
  write_defaults();
  fs::remove(path("v.npy"));
  expect_failure({}, "v.npy");
}

TEST_F(AttendError, UnwritableOutput) {
  write_defaults();
  expect_failure({}, "no_such_dir", path("no_such_dir/o.npy"));
}

TEST_F(AttendError, BadScale) {
  write_defaults();
  EXPECT_NE(expect_failure({"--scale", "abc"}, "'--scale'").find("'abc'"), std::string::npos);
  expect_failure({"--scale", "-1"}, "'--scale'");
}

TEST_F(AttendError, MissingRequiredOption) {
  const Result r = run({"attend", "--q", path("q.npy")});
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("'--k'"), std::string::npos) << r.err;
}

// ---- demo and bench-kernel --------------------------------------------------

TEST_F(Cli, DemoTinyConfigPasses) {
  std::ofstream(path("tiny.ini")) << "seq-len = 96\nkv-seq-len = 130\nheads = 4\nkv-heads = 2\n"
                                     "head-dim = 32\ndtype = bf16\ncausal = true\n";
  const Result r = run(
      {"demo", "--config", path("tiny.ini"), "--threads", "2", "--metrics", path("tiny.jsonl")});
  EXPECT_EQ(r.rc, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("PASS"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("all 96 query rows"), std::string::npos) << r.out;
  // bfloat16 inputs convert to float32 exactly and the kernel accumulates in float32: the
  // error against float64 is float32-sized, not bfloat16-sized.
  const std::string m = slurp(path("tiny.jsonl"));
  auto number = [&](const std::string& key) {
    const std::size_t at = m.find("\"" + key + "\": ");
    EXPECT_NE(at, std::string::npos) << key << " in " << m;
    return at == std::string::npos ? 1.0 : std::strtod(m.c_str() + at + key.size() + 4, nullptr);
  };
  EXPECT_LE(number("o_rel_err"), 1e-5);
  EXPECT_LE(number("lse_max_err"), 1e-4);
}

TEST_F(Cli, DemoSamplesRowsOfLargeProblems) {
  const Result r =
      run({"demo", "--seq-len", "2048", "--heads", "1", "--kv-heads", "1", "--head-dim", "128",
           "--check-rows", "16", "--warmup", "0", "--metrics", path("demo.jsonl")});
  EXPECT_EQ(r.rc, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("16 sampled query rows"), std::string::npos) << r.out;
  EXPECT_NE(slurp(path("demo.jsonl")).find("\"pass\": true"), std::string::npos);
}

TEST_F(Cli, BenchKernelPrintsTableAndMetrics) {
  const Result r = run({"bench-kernel",
                        "--seq-len",
                        "256",
                        "--heads",
                        "2",
                        "--kv-heads",
                        "1",
                        "--head-dim",
                        "32,64",
                        "--repeats",
                        "1",
                        "--warmup",
                        "0",
                        "--causal",
                        "both",
                        "--sgemm-size",
                        "128",
                        "--threads",
                        "2",
                        "--metrics",
                        path("bench.jsonl")});
  ASSERT_EQ(r.rc, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("GFLOP/s"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("sgemm"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(" FMA peak "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("%fma"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("# reproduce: ringattn bench-kernel"), std::string::npos) << r.out;
  std::istringstream lines(slurp(path("bench.jsonl")));
  std::string line;
  int rows = 0;
  while (std::getline(lines, line)) {
    ++rows;
    EXPECT_EQ(line.front(), '{') << line;
    EXPECT_EQ(line.back(), '}') << line;
    for (const char* key : {"\"gflops\"", "\"time_ms\"", "\"o_rel_err\"", "\"baseline_ms\""})
      EXPECT_NE(line.find(key), std::string::npos) << key << " in " << line;
  }
  EXPECT_EQ(rows, 4);  // 2 head dims x {full, causal}
}

TEST_F(Cli, BenchKernelBackwardColumnsAndKeys) {
  const Result r = run(
      {"bench-kernel", "--backward", "--seq-len",    "300",  "--heads",      "4",
       "--kv-heads",   "2",          "--head-dim",   "64",   "--repeats",    "1",
       "--warmup",     "0",          "--causal",     "both", "--sgemm-size", "128",
       "--threads",    "2",          "--check-rows", "8",    "--metrics",    path("bwd.jsonl")});
  ASSERT_EQ(r.rc, 0) << r.out << r.err;
  for (const char* col : {"bwd(ms)", "bwdGF/s", "bwd/fwd", "bwd mem", "dQ err"})
    EXPECT_NE(r.out.find(col), std::string::npos) << col << " in " << r.out;
  std::istringstream lines(slurp(path("bwd.jsonl")));
  std::string line;
  int rows = 0;
  while (std::getline(lines, line)) {
    ++rows;
    for (const char* key : {"\"backward_ms\"", "\"backward_gflops\"", "\"backward_ratio\"",
                            "\"backward_peak_bytes\"", "\"backward_dq_rel_err\""})
      EXPECT_NE(line.find(key), std::string::npos) << key << " in " << line;
    EXPECT_NE(line.find("\"backward_pass\": true"), std::string::npos) << line;
    // dQ of the sampled rows against the float64 backward reference: float32-sized.
    const std::size_t at = line.find("\"backward_dq_rel_err\": ");
    ASSERT_NE(at, std::string::npos);
    EXPECT_LE(std::strtod(line.c_str() + at + 23, nullptr), 1e-5) << line;
  }
  EXPECT_EQ(rows, 2);  // full, causal
}

TEST_F(Cli, BenchKernelRejectsBadListValues) {
  const Result r = run({"bench-kernel", "--seq-len", "256,x"});
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("'--seq-len'"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace ringattn
