// Hardware profiles end to end (RINGATTN_BIN): the shipped ones plan, calibrate
// writes one that plan reads (naming its CPU, ISA and probe spreads), plan warns
// when a cpu profile was measured on another CPU or for another ISA, partial tiles
// cost what the profile says, and a bad profile or calibrate option is one clear
// line with exit status 2.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "plan_cli_fixture.hpp"

namespace ringattn {
namespace {

using namespace plan_cli;  // NOLINT: the fixture and its helpers
using test::lines_of;

TEST_F(PlanCli, ShippedProfilesPlan) {
  for (const std::string hw : {"h100-sxm", "a100", "h200", "cpu-icelake-2core", "cpu-zen4-2core"}) {
    const bool cpu = hw.rfind("cpu-", 0) == 0;  // one node, threads of one process
    const Result r =
        plan({"--hardware", hw, cpu ? "--ranks-local" : "--ranks", "16", "--seq-len", "131072",
              "--heads", "32", "--kv-heads", "8", "--dtype", "bf16", "--causal"});
    ASSERT_EQ(r.rc, 0) << hw << ": " << r.err;
    for (const char* s : {"predicted time", "transfer hidden", "memory (rank", "naive attention",
                          "KV cache", "receive buffers"})
      EXPECT_NE(r.out.find(s), std::string::npos) << hw << ": " << s << "\n" << r.out;
  }
}

TEST_F(PlanCli, CalibrateWritesAProfilePlanReads) {
  const Result c = run_binary({"calibrate",
                               "--out",
                               path("me.ini"),
                               "--dtypes",
                               "f32",
                               "--head-dims",
                               "64",
                               "--probe-tokens",
                               "256",
                               "--probe-heads",
                               "1",
                               "--max-message",
                               "65536",
                               "--repeats",
                               "2",
                               "--probe-seconds",
                               "0.01",
                               "--threads",
                               "1",
                               "--isa",
                               "generic"});
  ASSERT_EQ(c.rc, 0) << c.err;
  EXPECT_NE(c.out.find("GFLOP/s"), std::string::npos) << c.out;
  EXPECT_TRUE(temporaries().empty());
  const std::string text = test::slurp(path("me.ini"));
  for (const char* s :
       {"[device]", "kind = cpu", "float32.d64", "[link.in-process]", "cpu = ", "isa = generic",
        "[probe-spread]", "float32.d64 = ", "causal = ", "# Binding: rank 0"})
    EXPECT_NE(text.find(s), std::string::npos) << s << "\n" << text;
  const Result p = plan({"--hardware", path("me.ini"), "--ranks-local", "2", "--seq-len", "2048",
                         "--heads", "1", "--head-dim", "64"});
  EXPECT_EQ(p.rc, 0) << p.err;
}

// A cpu profile names the CPU and ISA it was measured on; plan warns (stderr, and
// cpu_warning in --json) when this machine is another CPU or the job another ISA.
TEST_F(PlanCli, WarnsWhenTheProfileIsAnotherCpu) {
  const auto with = [&](const std::string& lines) {
    std::string text = kCpuProfile;
    text.insert(text.find("\n[kernel-gflops]"), lines);
    return write_profile("named.ini", text);
  };
  const std::vector<std::string> job = {"--ranks", "2",          "--seq-len", "4096",    "--heads",
                                        "2",       "--head-dim", "64",        "--causal"};
  const auto plan_on = [&](const std::string& hw, bool json) {
    std::vector<std::string> a = {"--hardware", hw};
    a.insert(a.end(), job.begin(), job.end());
    if (json) a.push_back("--json");
    return plan(a);
  };
  // This machine, as plan sees it.
  const Result plain = plan_on(write_profile("plain.ini", kCpuProfile), true);
  ASSERT_EQ(plain.rc, 0) << plain.err;
  EXPECT_EQ(plain.err, "");  // a profile that names no CPU: nothing to compare
  const std::string summary = lines_of(plain.out).front();
  const std::string here = json_field(summary, "this_cpu"), isa = json_field(summary, "job_isa");
  ASSERT_NE(here, "");
  ASSERT_NE(isa, "");

  const Result same = plan_on(with("cpu = " + here + "\nisa = " + isa + "\n"), false);
  ASSERT_EQ(same.rc, 0) << same.err;
  EXPECT_EQ(same.err, "");
  EXPECT_NE(same.out.find("measured on         " + here + " (" + isa + ")"), std::string::npos)
      << same.out;

  const std::string other = "Other CPU 9000 (family 1, model 2)";
  const Result differs = plan_on(with("cpu = " + other + "\nisa = " + isa + "\n"), false);
  ASSERT_EQ(differs.rc, 0) << differs.err;
  for (const std::string& s : {std::string("warning: profile 'test-cpu' was measured on ") + other,
                               "but this machine is " + here, std::string("ringattn calibrate")})
    EXPECT_NE(differs.err.find(s), std::string::npos) << s << "\n" << differs.err;
  const Result differs_json = plan_on(with("cpu = " + other + "\n"), true);
  EXPECT_NE(json_field(lines_of(differs_json.out).front(), "cpu_warning"), "");

  const std::string other_isa = isa == "generic" ? "avx2" : "generic";
  const Result isa_differs = plan_on(with("cpu = " + here + "\nisa = " + other_isa + "\n"), false);
  ASSERT_EQ(isa_differs.rc, 0) << isa_differs.err;
  EXPECT_NE(isa_differs.err.find("kernel rates for " + other_isa + ", but the job would run the " +
                                 isa + " kernel"),
            std::string::npos)
      << isa_differs.err;
}

// partial-tile-cost prices each partial tile at that fraction of a whole tile's
// (96 x 128 pairs) time on top of its visible pairs: the compute grows by exactly that.
TEST_F(PlanCli, PartialTilesCostWhatTheProfileSays) {
  std::string text = kCpuProfile;
  text.insert(text.find("\n[kernel-gflops]"), "partial-tile-cost = 0.5\n");
  const std::vector<std::string> job = {"--ranks-local", "2",  "--seq-len", "3000",  "--heads", "2",
                                        "--head-dim",    "64", "--causal",  "--json"};
  std::vector<std::string> a = {"--hardware", write_profile("free.ini", kCpuProfile)};
  a.insert(a.end(), job.begin(), job.end());
  const Result free = plan(a);
  a[1] = write_profile("priced.ini", text);
  const Result priced = plan(a);
  ASSERT_EQ(free.rc, 0) << free.err;
  ASSERT_EQ(priced.rc, 0) << priced.err;
  const auto f = lines_of(free.out), p = lines_of(priced.out);
  const double rate = json_number(p[0], "rank_gflops") * 1e9;
  for (int rank = 0; rank < 2; ++rank) {
    const std::string& fr = f[static_cast<std::size_t>(1 + rank)];
    const std::string& pr = p[static_cast<std::size_t>(1 + rank)];
    const double tiles = json_number(pr, "tiles_partial");
    EXPECT_GT(tiles, 0) << rank;
    const double extra_ms = 0.5 * tiles * 96 * 128 * 4 * 64 / rate * 1e3;
    EXPECT_NEAR(json_number(pr, "compute_ms") - json_number(fr, "compute_ms"), extra_ms,
                1e-6 * extra_ms)
        << rank;
  }
}

// The profile keys calibrate writes beyond the measured rates, and their bad values.
TEST_F(PlanCli, CpuKeysOfProfiles) {
  std::string text = kCpuProfile;
  text.insert(text.find("\n[kernel-gflops]"),
              "cpu = Some CPU (family 6, model 106)\nisa = avx512\npartial-tile-cost = 0.3\n");
  text += "\n[probe-spread]\nfloat32.d64 = 0.02\nall-cores = 0.12\n";
  EXPECT_EQ(plan({"--hardware", write_profile("ok.ini", text), "--seq-len", "1024"}).rc, 0);
  struct Bad {
    std::string from, to, expect;
  };
  const std::vector<Bad> bad = {
      {"isa = avx512", "isa = sse4", "[device] isa: expected avx512, avx2 or generic, got 'sse4'"},
      {"partial-tile-cost = 0.3", "partial-tile-cost = -1", "partial-tile-cost"},
      {"partial-tile-cost = 0.3", "partial-tile-cost = 99", "partial-tile-cost"},
      {"all-cores = 0.12", "all-cores = lots", "got 'lots'"},
      {"kind = cpu", "kind = gpu", "describe cpu profiles"},
  };
  for (const Bad& b : bad) {
    std::string t = text;
    t.replace(t.find(b.from), b.from.size(), b.to);
    expect_usage_error(plan({"--hardware", write_profile("bad.ini", t), "--seq-len", "1024"}),
                       b.expect);
  }
}

TEST_F(PlanCli, CalibrateBadInput) {
  expect_usage_error(run_binary({"calibrate", "--out", path("x.ini"), "--head-dims", "7"}),
                     "--head-dims");
  expect_usage_error(run_binary({"calibrate"}), "--out");
  expect_usage_error(run_binary({"calibrate", "--out", path("x.ini"), "--isa", "sse"}), "--isa");
  expect_usage_error(run_binary({"calibrate", "--out", path("x.ini"), "--probe-seconds", "0"}),
                     "--probe-seconds");
  const Result r = run_binary({"calibrate", "--out", path("no/such/dir/x.ini")});
  expect_clean_failure(r, "no/such/dir", {});
}

TEST_F(PlanCli, BadHardwareIsOneLineAndExitTwo) {
  expect_usage_error(plan({"--seq-len", "1024"}), "--hardware");
  expect_usage_error(plan({"--hardware", "h9000"}), "unknown hardware profile 'h9000'");
  expect_usage_error(plan({"--hardware", path("missing.ini")}), "missing.ini");
  struct Bad {
    std::string from, to, expect;
  };
  const std::vector<Bad> bad = {
      {"[link.in-process]", "[link.in-process", "malformed section"},
      {"kind = cpu", "kind = fpga", "expected gpu or cpu"},
      {"memory-gib = 8\n", "", "missing key 'memory-gib'"},
      {"bandwidth-gb-s = 3\n", "bandwidth-gb-s = -3\n", "positive number"},
      {"float32.d64 = 100", "float32.d64 = lots", "got 'lots'"},
      {"latency-us = 5", "latency = 5", "unknown key 'latency'"},
      {"float32.d64", "fp99.d64", "<dtype>.d<head dim>"},
  };
  for (const Bad& b : bad) {
    std::string text = kCpuProfile;
    const auto at = text.find(b.from);
    ASSERT_NE(at, std::string::npos) << b.from;
    text.replace(at, b.from.size(), b.to);
    const std::string f = write_profile("bad.ini", text);
    const Result r = plan({"--hardware", f, "--ranks-local", "2"});
    expect_usage_error(r, b.expect);
    EXPECT_NE(r.err.find("option '--hardware'"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("bad.ini"), std::string::npos) << r.err;
  }
}

}  // namespace
}  // namespace ringattn
