// `ringattn run --kv-wire`: the quantized wire end to end (its sampled check
// is the float64 reference of what each rank's queries saw; the report shows
// the bytes per token-head beside the storage dtype's), and the options'
// errors, each naming its option and leaving no output behind.
#include <gtest/gtest.h>

#include <algorithm>
#include <sstream>
#include <string>
#include <vector>

#include "cli_fixture.hpp"

namespace ringattn {
namespace {

using test::CliResult;

class KvCli : public test::CliFixture {
 protected:
  std::vector<std::string> small(std::vector<std::string> extra) const {
    std::vector<std::string> a = {"run", "--seq-len",  "700", "--heads",  "4",         "--kv-heads",
                                  "2",   "--head-dim", "64",  "--causal", "--threads", "1"};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }
};

TEST_F(KvCli, QuantizedWirePassesTheCheckOfWhatTravelled) {
  for (const char* wire : {"int8", "int4"})
    for (const char* ranks : {"2", "3"}) {
      SCOPED_TRACE(std::string(wire) + " on " + ranks);
      const std::string o = path(std::string("o_") + wire + ranks + ".npy");
      const CliResult r = run_binary(
          small({"--ranks-local", ranks, "--kv-wire", wire, "--kv-asymmetric", "--kv-group", "32",
                 "--check-rows", "24", "--window-left", "200", "--sinks", "2", "--out", o}));
      ASSERT_EQ(r.rc, 0) << r.out << r.err;
      EXPECT_NE(r.out.find("vs float64 on 24 sampled query rows x 4 heads: ok"), std::string::npos)
          << r.out;
      EXPECT_NE(r.out.find(std::string("kv wire             ") + wire + " g32 asym: "),
                std::string::npos)
          << r.out;
      EXPECT_TRUE(std::filesystem::exists(o));
    }
}

TEST_F(KvCli, KiviKeysPassVerifyAndTheCheckOnEveryLayout) {
  for (const char* layout : {"contiguous", "zigzag", "striped"}) {
    SCOPED_TRACE(layout);
    const CliResult r = run_binary(
        small({"--ranks-local", "3", "--kv-store", "int4", "--kv-kivi", "--kv-group", "32",
               "--verify", "--check-rows", "16", "--layout", layout, "--sinks", "2"}));
    ASSERT_EQ(r.rc, 0) << r.out << r.err;
    EXPECT_NE(r.out.find("vs the single-rank kernel: ok"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("vs float64 on 16 sampled query rows x 4 heads: ok"), std::string::npos)
        << r.out;
    EXPECT_NE(r.out.find("int4 g32 kivi: K about 40.0 B (per channel over 32 tokens)"),
              std::string::npos)
        << r.out;
  }
  const CliResult w = run_binary(small({"--ranks-local", "2", "--kv-wire", "int8", "--kv-kivi",
                                        "--kv-asymmetric", "--check-rows", "16"}));
  ASSERT_EQ(w.rc, 0) << w.out << w.err;
  EXPECT_NE(w.out.find("vs float64 on 16 sampled query rows x 4 heads: ok"), std::string::npos)
      << w.out;
}

TEST_F(KvCli, StoredCodesPassVerifyAndTheCheck) {
  const CliResult r = run_binary(small({"--ranks-local", "3", "--kv-store", "int8", "--verify",
                                        "--check-rows", "16", "--layout", "striped"}));
  ASSERT_EQ(r.rc, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("vs the single-rank kernel: ok"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("vs float64 on 16 sampled query rows x 4 heads: ok"), std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("stored so in memory too"), std::string::npos) << r.out;
}

TEST_F(KvCli, SelectionPassesVerifyAndTheCheckAndWritesItsKeptSet) {
  for (const char* rest : {"drop", "int4"}) {
    SCOPED_TRACE(rest);
    const std::string o = path(std::string("o_") + rest + ".npy"),
                      keep = path(std::string("keep_") + rest + ".npy");
    std::vector<std::string> args = {"--ranks-local",
                                     "3",
                                     "--kv-keep",
                                     "0.2",
                                     "--kv-keep-recent",
                                     "32",
                                     "--kv-rest",
                                     rest,
                                     "--kv-keep-per",
                                     "head",
                                     "--window-left",
                                     "300",
                                     "--sinks",
                                     "2",
                                     "--verify",
                                     "--check-rows",
                                     "16",
                                     "--out",
                                     o,
                                     "--kv-keep-out",
                                     keep};
    if (std::string(rest) == "int4") args.insert(args.end(), {"--kv-group", "32"});
    const CliResult r = run_binary(small(args));
    ASSERT_EQ(r.rc, 0) << r.out << r.err;
    EXPECT_NE(r.out.find("vs the single-rank kernel: ok"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("vs float64 on 16 sampled query rows x 4 heads: ok"), std::string::npos)
        << r.out;
    EXPECT_NE(r.out.find("kept set            0 of 2800 flags differ"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find(std::string("kv keep             keep 0.2 + recent 32, rest ") + rest +
                         ", per head: kept "),
              std::string::npos)
        << r.out;
    EXPECT_TRUE(std::filesystem::exists(o));
    EXPECT_TRUE(std::filesystem::exists(keep));
  }
}

// The reproduce line spells out every option, the stages' defaults included: run
// as it stands it must run (options left at their defaults need no stage).
TEST_F(KvCli, TheReproduceLineRunsAsItStands) {
  const CliResult r = run_binary(small({"--ranks-local", "2"}));
  ASSERT_EQ(r.rc, 0) << r.out << r.err;
  const std::string tag = "  reproduce           ringattn ";
  const std::size_t at = r.out.find(tag);
  ASSERT_NE(at, std::string::npos) << r.out;
  std::istringstream line(r.out.substr(at + tag.size(), r.out.find('\n', at) - at - tag.size()));
  std::vector<std::string> args;
  for (std::string w; line >> w;) args.push_back(w);
  EXPECT_NE(std::find(args.begin(), args.end(), "--kv-group"), args.end());
  EXPECT_NE(std::find(args.begin(), args.end(), "--moe-topk"), args.end());
  const CliResult again = run_binary(args);
  EXPECT_EQ(again.rc, 0) << again.err;
}

TEST_F(KvCli, BadOptionsNameTheOption) {
  const std::string o = path("o.npy");
  struct Case {
    std::vector<std::string> args;
    std::string names;
  };
  const std::vector<Case> cases = {
      {{"--kv-wire", "int3"}, "--kv-wire"},
      {{"--kv-wire", "bfloat16"}, "--kv-wire"},  // not the storage dtype (float32)
      {{"--kv-wire", "int8", "--kv-group", "48"}, "--kv-group"},
      {{"--kv-wire", "int8", "--kv-group", "128"}, "--kv-group"},  // 128 does not divide 64
      {{"--kv-group", "32"}, "--kv-group"},                        // without a quantized wire
      {{"--kv-asymmetric"}, "--kv-asymmetric"},
      {{"--kv-kivi"}, "--kv-kivi"},  // without a quantized wire or store
      {{"--kv-wire", "int8", "--verify"}, "--verify"},
      {{"--kv-wire", "int8", "--device", "cuda"}, "--kv-wire"},
      {{"--kv-store", "float32"}, "--kv-store"},
      {{"--kv-store", "int4", "--kv-wire", "int8"}, "--kv-store"},
      {{"--kv-store", "int8", "--window-left", "64", "--regional-block", "16", "--regional-window",
        "256"},
       "--kv-store"},
      {{"--kv-wire", "int4", "--route-block", "64", "--route-topk", "2"}, "--kv-wire"},
      {{"--kv-keep", "1.5"}, "--kv-keep"},
      {{"--kv-keep", "-0.1"}, "--kv-keep"},
      {{"--kv-keep-recent", "8"}, "--kv-keep-recent"},  // without --kv-keep
      {{"--kv-rest", "int4"}, "--kv-rest"},
      {{"--kv-keep", "0.1", "--kv-rest", "int8"}, "--kv-rest"},
      {{"--kv-keep", "0.1", "--kv-keep-per", "query"}, "--kv-keep-per"},
      {{"--kv-keep", "0.1", "--kv-keep-recent", "-1"}, "--kv-keep-recent"},
      {{"--kv-keep", "0.1", "--kv-rest", "int4", "--kv-group", "128"}, "--kv-group"},
      {{"--kv-keep", "0.1", "--kv-wire", "int8"}, "--kv-keep"},
      {{"--kv-keep", "0.1", "--global", "0-3"}, "--kv-keep"},
      {{"--kv-keep", "0.1", "--device", "cuda"}, "--kv-keep"},
      {{"--kv-keep-out", "k.npy"}, "--kv-keep-out"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.names);
    std::vector<std::string> a = small({"--out", o});
    a.insert(a.end(), c.args.begin(), c.args.end());
    expect_clean_failure(run_binary(a), c.names, {o});
  }
}

}  // namespace
}  // namespace ringattn
