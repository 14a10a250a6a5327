// `ringattn moe` end to end (RINGATTN_BIN): a small job on 1, 2 and 3
// in-process ranks passes its float64 check and writes Y, R and G with the
// right shapes and the same routing for every P; --x equals the generated X;
// one-line errors naming the option or file that leave no output behind.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "cli_fixture.hpp"
#include "ringattn/moe.hpp"
#include "ringattn/npy.hpp"
#include "util.hpp"

namespace ringattn {
namespace {

namespace fs = std::filesystem;
using test::CliResult;
using test::IntArray;

constexpr int64_t kT = 256, kD = 32, kE = 8, kK = 2;

IntArray read_int32_npy(const std::string& path) {
  IntArray a = test::read_npy_i32(path);
  EXPECT_NE(a.header.find("'descr': '<i4'"), std::string::npos) << path << ": " << a.header;
  return a;
}

std::vector<float> floats(const Tensor& t) {
  std::vector<float> v(static_cast<std::size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) v[static_cast<std::size_t>(i)] = t.get(i);
  return v;
}

class MoeCli : public test::CliFixture {
 protected:
  CliResult run(std::vector<std::string> args) const {
    args.insert(args.begin(), "moe");
    return run_binary(args);
  }
  // The small problem's options (generated X and weights, seed 3).
  static std::vector<std::string> small(std::vector<std::string> more) {
    std::vector<std::string> a = {"--tokens",      std::to_string(kT),
                                  "--d-model",     std::to_string(kD),
                                  "--moe-experts", std::to_string(kE),
                                  "--moe-topk",    std::to_string(kK),
                                  "--seed",        "3",
                                  "--threads",     "1",
                                  "--no-baseline"};
    a.insert(a.end(), more.begin(), more.end());
    return a;
  }
  // Router [kD, kE] and experts [kE, kD, dff] / [kE, dff, kD], with `bad` shaped wrong.
  void write_weights(const std::string& dir, int64_t d_model, int64_t dff,
                     const std::string& bad = "") const {
    fs::create_directories(dir);
    const auto save = [&](const std::string& name, std::vector<int64_t> shape) {
      if (name == bad) shape.back() += 1;
      Tensor t(DType::f32, shape);
      for (int64_t i = 0; i < t.numel(); ++i) t.set(i, 0.01f * float(i % 7) - 0.03f);
      save_npy((fs::path(dir) / name).string(), t);
    };
    save("router.npy", {d_model, kE});
    save("w1.npy", {kE, d_model, dff});
    save("w3.npy", {kE, d_model, dff});
    save("w2.npy", {kE, dff, d_model});
  }
  // `a` with the output options appended.
  std::vector<std::string> with_outputs(std::vector<std::string> a) const {
    const std::vector<std::string> o = output_args();
    a.insert(a.end(), o.begin(), o.end());
    return a;
  }
  std::vector<std::string> outputs() const {
    return {path("y.npy"), path("r.npy"), path("g.npy"), path("m.jsonl")};
  }
  std::vector<std::string> output_args() const {
    return {"--out",       path("y.npy"), "--routing-out", path("r.npy"),
            "--gates-out", path("g.npy"), "--metrics",     path("m.jsonl")};
  }
};

TEST_F(MoeCli, SmallRunPassesItsCheckAndRoutesAlikeOnEveryRankCount) {
  std::vector<int32_t> routing1;
  std::vector<float> y1;
  for (const int p : {1, 2, 3}) {
    SCOPED_TRACE("ranks " + std::to_string(p));
    const std::string y = path("y" + std::to_string(p) + ".npy");
    const std::string r = path("r" + std::to_string(p) + ".npy");
    const std::string g = path("g" + std::to_string(p) + ".npy");
    const std::string m = path("m" + std::to_string(p) + ".jsonl");
    const CliResult res =
        run(small({"--ranks-local", std::to_string(p), "--check-rows", "32", "--out", y,
                   "--routing-out", r, "--gates-out", g, "--metrics", m}));
    ASSERT_EQ(res.rc, 0) << res.out << res.err;
    EXPECT_NE(res.out.find("# reproduce: ringattn moe "), std::string::npos) << res.out;
    EXPECT_NE(res.out.find(": ok"), std::string::npos) << res.out;
    const Tensor yt = read_npy(y);
    EXPECT_EQ(yt.dtype, DType::f32);
    EXPECT_EQ(yt.shape, (std::vector<int64_t>{kT, kD}));
    const IntArray rt = read_int32_npy(r);
    EXPECT_EQ(rt.shape, (std::vector<int64_t>{kT, kK}));
    const Tensor gt = read_npy(g);
    EXPECT_EQ(gt.dtype, DType::f32);
    EXPECT_EQ(gt.shape, (std::vector<int64_t>{kT, kK}));
    for (std::size_t i = 0; i < rt.v.size(); ++i) {
      ASSERT_GE(rt.v[i], -1) << i;
      ASSERT_LT(rt.v[i], kE) << i;
      if (rt.v[i] == -1) {
        EXPECT_EQ(gt.get(static_cast<int64_t>(i)), 0.0f) << i;
      }
    }
    const std::vector<std::string> lines = test::lines_of(test::slurp(m));
    ASSERT_EQ(lines.size(), static_cast<std::size_t>(p) + 1);
    EXPECT_NE(lines.back().find("\"record\": \"summary\""), std::string::npos);
    EXPECT_NE(lines.back().find("\"moe_ref_pass\": true"), std::string::npos) << lines.back();
    if (p == 1) {
      routing1 = rt.v, y1 = floats(yt);
      continue;
    }
    EXPECT_EQ(rt.v, routing1);
    const std::vector<float> yp = floats(yt);
    ASSERT_EQ(yp.size(), y1.size());
    for (std::size_t i = 0; i < yp.size(); ++i)
      ASSERT_NEAR(yp[i], y1[i], 1e-5 + 1e-4 * std::abs(y1[i])) << i;
  }
}

TEST_F(MoeCli, XFromAFileEqualsTheGeneratedX) {
  Tensor x(DType::f32, {kT, kD});
  moe_generate_tokens(3, kD, 0, kT, x.as<float>());
  save_npy(path("x.npy"), x);
  const CliResult gen = run(small({"--ranks-local", "2", "--out", path("y_gen.npy")}));
  ASSERT_EQ(gen.rc, 0) << gen.err;
  const CliResult file =
      run({"--x", path("x.npy"), "--moe-experts", std::to_string(kE), "--seed", "3", "--threads",
           "1", "--no-baseline", "--ranks-local", "2", "--out", path("y_file.npy")});
  ASSERT_EQ(file.rc, 0) << file.err;
  EXPECT_EQ(floats(read_npy(path("y_gen.npy"))), floats(read_npy(path("y_file.npy"))));
}

TEST_F(MoeCli, WeightsWithAWrongShapeNameTheFile) {
  write_weights(path("w"), kD, 64, "w3.npy");
  expect_clean_failure(run(with_outputs(small({"--ranks-local", "2", "--moe-weights", path("w")}))),
                       "w3.npy", outputs());
}

TEST_F(MoeCli, XWiderThanTheRouterIsAnError) {
  write_weights(path("w"), kD, 64);
  Tensor x(DType::f32, {kT, kD / 2});
  save_npy(path("x.npy"), x);
  expect_clean_failure(run(with_outputs({"--x", path("x.npy"), "--moe-weights", path("w"),
                                         "--ranks-local", "2", "--no-baseline"})),
                       "option '--x': X has d_model = 16, but the router", outputs());
}

TEST_F(MoeCli, BadOptionsNameTheOptionAndWriteNothing) {
  struct Case {
    std::vector<std::string> args;
    std::string names;
  };
  const std::vector<Case> cases = {
      {{"--tokens", "256", "--moe-experts", "2", "--ranks-local", "4"}, "--moe-experts"},
      {{"--tokens", "256", "--moe-topk", "9"}, "--moe-topk"},
      {{"--tokens", "256", "--moe-capacity-factor", "-1"}, "--moe-capacity-factor"},
      {{"--tokens", "256", "--moe-experts", "0"}, "--moe-experts"},
      {{"--tokens", "256", "--moe-policy", "chunk"}, "--moe-chunk"},
      {{"--tokens", "100", "--seq-len", "64"}, "--seq-len"},
      {{"--x", path("missing.npy")}, "--x"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.names);
    std::vector<std::string> a = {"--d-model", "32", "--no-baseline"};
    a.insert(a.end(), c.args.begin(), c.args.end());
    expect_clean_failure(run(with_outputs(a)), c.names, outputs());
  }
}

// `run` with the stage after attention: options that cannot run name themselves.
TEST_F(MoeCli, RunWithTheStageRejectsWhatCannotRun) {
  const std::string y = path("run_y.npy");
  struct Case {
    std::vector<std::string> args;
    std::string names;
  };
  const std::vector<Case> cases = {
      {{"--moe-out", y}, "--moe-out"},                                                  // no stage
      {{"--moe-topk", "3"}, "--moe-topk"},                                              // no stage
      {{"--moe-experts", "2", "--ranks-local", "4", "--moe-out", y}, "--moe-experts"},  // E < P
      {{"--moe-experts", "4", "--moe-topk", "5", "--moe-out", y}, "--moe-topk"},
      {{"--moe-experts", "4", "--device", "cuda", "--moe-out", y}, "--moe-experts"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.names);
    std::vector<std::string> a = {"run", "--seq-len", "64", "--heads", "2", "--head-dim", "8"};
    a.insert(a.end(), c.args.begin(), c.args.end());
    expect_clean_failure(run_binary(a), c.names, {y});
  }
}

}  // namespace
}  // namespace ringattn
