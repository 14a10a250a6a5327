// `ringattn run --hierarchy a2a-ring|double-ring --ranks-per-node w` end to end
// (verify and the float64 check pass; the per-level figures are reported), the
// flat ring's per-level figures, and the options' errors naming the option.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "cli_fixture.hpp"

namespace ringattn {
namespace {

using test::CliResult;

class TwoLevelCli : public test::CliFixture {
 protected:
  std::vector<std::string> small(std::vector<std::string> extra) const {
    std::vector<std::string> a = {"run", "--ranks-local", "8", "--seq-len",  "900", "--heads",
                                  "8",   "--kv-heads",    "2", "--head-dim", "32",  "--threads",
                                  "1"};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }
};

TEST_F(TwoLevelCli, A2aRingPassesVerifyAndTheCheckOnEveryLayout) {
  for (const char* layout : {"contiguous", "zigzag", "striped"})
    for (const char* w : {"2", "4"}) {
      SCOPED_TRACE(std::string(layout) + " w=" + w);
      const CliResult r =
          run_binary(small({"--hierarchy", "a2a-ring", "--ranks-per-node", w, "--layout", layout,
                            "--causal", "--sinks", "2", "--verify", "--check-rows", "16"}));
      ASSERT_EQ(r.rc, 0) << r.out << r.err;
      EXPECT_NE(r.out.find("vs the single-rank kernel: ok"), std::string::npos) << r.out;
      EXPECT_NE(r.out.find("vs float64 on 16 sampled query rows x 8 heads: ok"), std::string::npos)
          << r.out;
      EXPECT_NE(r.out.find(std::string("levels              a2a-ring, ") +
                           (std::string(w) == "2" ? "4 nodes x 2" : "2 nodes x 4") + " ranks"),
                std::string::npos)
          << r.out;
    }
}

TEST_F(TwoLevelCli, DoubleRingPassesVerifyAndTheCheckWithMasksAndLayouts) {
  for (const char* layout : {"contiguous", "zigzag", "striped"})
    for (const char* w : {"2", "4"}) {
      SCOPED_TRACE(std::string(layout) + " w=" + w);
      const CliResult r = run_binary(
          small({"--hierarchy", "double-ring", "--ranks-per-node", w, "--layout", layout,
                 "--causal", "--sinks", "2", "--window-left", "300", "--verify", "--check-rows",
                 "16", "--metrics", path(std::string("m") + layout + w + ".jsonl")}));
      ASSERT_EQ(r.rc, 0) << r.out << r.err;
      EXPECT_NE(r.out.find("vs the single-rank kernel: ok"), std::string::npos) << r.out;
      EXPECT_NE(r.out.find("vs float64 on 16 sampled query rows x 8 heads: ok"), std::string::npos)
          << r.out;
      EXPECT_NE(r.out.find(std::string("levels              double-ring, ") +
                           (std::string(w) == "2" ? "4 nodes x 2" : "2 nodes x 4") + " ranks"),
                std::string::npos)
          << r.out;
      EXPECT_NE(r.out.find("level waits         waiting for K/V blocks: inside nodes "),
                std::string::npos)
          << r.out;
      EXPECT_NE(r.out.find(std::string("run (double ring: rounds of ") + w + " steps inside nodes"),
                std::string::npos)
          << r.out;
    }
}

TEST_F(TwoLevelCli, TheFlatRingReportsItsTrafficByLevel) {
  const CliResult r = run_binary(small({"--ranks-per-node", "4", "--layout", "contiguous"}));
  ASSERT_EQ(r.rc, 0) << r.out << r.err;
  // A full ring of 8 ranks in 2 nodes: 2 of the 8 links cross nodes, 7 rotations, K and V.
  // "inside nodes X MiB in N messages, across nodes Y MiB in M messages"
  const std::size_t in = r.out.find(" messages, across nodes ");
  ASSERT_NE(in, std::string::npos) << r.out;
  const std::size_t n0 = r.out.rfind(" in ", in) + 4;
  EXPECT_EQ(r.out.substr(n0, in - n0), "84");
  const std::size_t across = r.out.find(" messages", in + 10);
  const std::size_t m0 = r.out.rfind(" in ", across) + 4;
  EXPECT_EQ(r.out.substr(m0, across - m0), "28");
}

// auto runs the scheme `plan --hierarchy auto` names for the same job and profile.
TEST_F(TwoLevelCli, AutoRunsThePlansChoice) {
  for (const char* w : {"2", "4"}) {
    SCOPED_TRACE(std::string("w=") + w);
    const std::vector<std::string> job = {
        "--seq-len", "4096",     "--heads",          "8", "--kv-heads", "2", "--head-dim",
        "64",        "--causal", "--ranks-per-node", w};
    std::vector<std::string> plan = {"plan", "--hardware",  "h100-sxm", "--ranks",
                                     "8",    "--hierarchy", "auto",     "--json"};
    plan.insert(plan.end(), job.begin(), job.end());
    const CliResult p = run_binary(plan);
    ASSERT_EQ(p.rc, 0) << p.err;
    const std::string key = "\"best_scheme\": \"";
    const std::size_t at = p.out.find(key);
    ASSERT_NE(at, std::string::npos) << p.out;
    const std::size_t from = at + key.size();
    const std::string best = p.out.substr(from, p.out.find('"', from) - from);
    std::vector<std::string> run = {"run",      "--ranks-local", "8",    "--threads",
                                    "1",        "--hierarchy",   "auto", "--hardware",
                                    "h100-sxm", "--check-rows",  "8"};
    run.insert(run.end(), job.begin(), job.end());
    const CliResult r = run_binary(run);
    ASSERT_EQ(r.rc, 0) << r.out << r.err;
    EXPECT_NE(r.out.find("comm scheme         " + best + " chosen by auto on h100-sxm: flat "),
              std::string::npos)
        << best << "\n"
        << r.out;
    EXPECT_NE(r.out.find("levels              " + best + ", "), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("vs float64 on 8 sampled query rows x 8 heads: ok"), std::string::npos)
        << r.out;
  }
}

TEST_F(TwoLevelCli, BadOptionsNameTheOption) {
  const std::string o = path("o.npy");
  struct Case {
    std::vector<std::string> args;
    std::string names;
  };
  const std::vector<Case> cases = {
      {{"--hierarchy", "double"}, "--hierarchy"},
      {{"--ranks-per-node", "3"}, "--ranks-per-node"},  // 3 does not divide 8 ranks
      {{"--ranks-per-node", "-1"}, "--ranks-per-node"},
      {{"--hierarchy", "a2a-ring", "--ranks-per-node", "2", "--kv-wire", "int8", "--kv-group",
        "32"},
       "--hierarchy"},
      {{"--hierarchy", "a2a-ring", "--ranks-per-node", "2", "--kv-keep", "0.5"}, "--hierarchy"},
      {{"--hierarchy", "auto"}, "--hardware"},     // auto plans on a profile
      {{"--hardware", "h100-sxm"}, "--hardware"},  // read by auto only
      {{"--hierarchy", "auto", "--hardware", "no-such-profile"}, "--hardware"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.names);
    std::vector<std::string> a = small({"--out", o});
    a.insert(a.end(), c.args.begin(), c.args.end());
    expect_clean_failure(run_binary(a), c.names, {o});
  }
  // 8 ranks in one node and 4 query heads: a2a-ring cannot split the heads.
  expect_clean_failure(run_binary({"run", "--ranks-local", "8", "--seq-len", "100", "--heads", "4",
                                   "--head-dim", "32", "--hierarchy", "a2a-ring", "--out", o}),
                       "--ranks-per-node", {o});
}

}  // namespace
}  // namespace ringattn
