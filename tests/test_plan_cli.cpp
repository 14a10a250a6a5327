// `ringattn plan` end to end (RINGATTN_BIN): --json is consistent with itself and
// with what `run` measures (memory, steps, bytes, kernel tiles), the schemes over
// nodes, quantized K/V and the MoE stage are planned, and every bad input is one
// clear line with exit status 2. Profiles and calibrate: test_profiles_cli.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "plan_cli_fixture.hpp"

namespace ringattn {
namespace {

using namespace plan_cli;  // NOLINT: the fixture and its helpers
using test::lines_of;

TEST_F(PlanCli, HelpDocumentsTheOptions) {
  const Result r = plan({"--help"});
  ASSERT_EQ(r.rc, 0) << r.err;
  for (const char* s : {"--hardware", "--ranks ", "--ranks-local", "--ranks-per-node", "--json",
                        "--seq-len", "--kv-heads", "--causal", "--window-left", "(default: 4096)"})
    EXPECT_NE(r.out.find(s), std::string::npos) << s;
  EXPECT_NE(r.out.find("(run only: accepted, does not change the plan)"), std::string::npos);
  // What the plan reads is not marked run-only.
  for (const char* s : {"--kv-wire", "--kv-store", "--kv-group", "--moe-experts"}) {
    const auto at = r.out.find(std::string("  ") + s + " ");
    ASSERT_NE(at, std::string::npos) << s;
    const std::string help = r.out.substr(at, r.out.find("\n  --", at + 1) - at);
    EXPECT_EQ(help.find("run only"), std::string::npos) << help;
  }
}

TEST_F(PlanCli, PlansARunsConfigFile) {
  const std::string cfg = std::string(RINGATTN_SOURCE_DIR) + "/configs/default.ini";
  const Result r = plan({"--hardware", "h100-sxm", "--ranks", "8", "--config", cfg});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("N=16384"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("mask causal"), std::string::npos) << r.out;
}

TEST_F(PlanCli, SourceDesignNumbersInTheJson) {
  // d_model 512 = 32 heads of 16, GQA with 8 K/V heads, 1M (2^20) tokens, float32.
  const Result r = plan({"--hardware", "h100-sxm", "--ranks", "64", "--seq-len", "1048576",
                         "--heads", "32", "--kv-heads", "8", "--head-dim", "16", "--json"});
  ASSERT_EQ(r.rc, 0) << r.err;
  const std::string s = lines_of(r.out).front();
  EXPECT_EQ(json_number(s, "naive_score_bytes_per_head"), 4398046511104.0);  // 4 TiB
  EXPECT_EQ(json_number(s, "flash_block_bytes_per_head"), 1073741824.0);     // 1 GiB
  EXPECT_EQ(json_number(s, "kv_cache_values"), 1048576.0 * 256);             // N x 256
}

TEST_F(PlanCli, JsonHasOneSummaryThenRanksThenSteps) {
  const std::string hw = write_profile("cpu.ini", kCpuProfile);
  const Result r = plan({"--hardware", hw, "--ranks-local", "4", "--seq-len", "4096", "--heads",
                         "2", "--causal", "--json", "--metrics", path("m.jsonl")});
  ASSERT_EQ(r.rc, 0) << r.err;
  const auto lines = lines_of(r.out);
  ASSERT_EQ(lines.size(), 1u + 4u + 4u);  // zigzag causal: 4 steps
  EXPECT_EQ(json_field(lines[0], "record"), "summary");
  EXPECT_EQ(json_field(lines[0], "backend"), "local");
  EXPECT_EQ(json_field(lines[0], "layout"), "zigzag");
  EXPECT_EQ(json_number(lines[0], "steps"), 4);
  for (int i = 1; i <= 4; ++i) EXPECT_EQ(json_field(lines[i], "record"), "rank");
  for (int i = 5; i < 9; ++i) EXPECT_EQ(json_field(lines[i], "record"), "step");
  // The link does not overlap: never hidden.
  EXPECT_EQ(json_field(lines[0], "hidden"), "false");
  EXPECT_EQ(json_number(lines[0], "min_tokens_hidden"), -1);
  // --metrics gets the same records.
  EXPECT_EQ(lines_of(test::slurp(path("m.jsonl"))), lines);
}

// What plan predicts for memory, steps, transfers and bytes is what run measures:
// a plain causal ring, a window with sinks (shared rows, direct transfers), and
// K/V quantized on the wire or in memory.
class PlanVsRun : public PlanCli, public ::testing::WithParamInterface<std::vector<std::string>> {};

bool has(const std::vector<std::string>& args, const std::string& a) {
  return std::find(args.begin(), args.end(), a) != args.end();
}

// Each: --ranks-local P first, then the rest. Two threads on a small problem check the
// kernel's thread cap on its workspace.
INSTANTIATE_TEST_SUITE_P(
    Problems, PlanVsRun,
    ::testing::Values(
        std::vector<std::string>{"--ranks-local", "3", "--seq-len", "1000", "--causal", "--threads",
                                 "1"},
        std::vector<std::string>{"--ranks-local", "4", "--seq-len", "2000", "--causal",
                                 "--window-left", "200", "--sinks", "4", "--threads", "1"},
        std::vector<std::string>{"--ranks-local", "1", "--seq-len", "100", "--threads", "2"},
        // A quantized wire (the own block's wire copy), with sinks (exact, shared rows).
        std::vector<std::string>{"--ranks-local", "3", "--seq-len", "1000", "--causal", "--sinks",
                                 "4", "--kv-wire", "int8", "--threads", "1"},
        // K/V stored as codes (the wire carries them), asymmetric int4.
        std::vector<std::string>{"--ranks-local", "4", "--seq-len", "1000", "--kv-store", "int4",
                                 "--kv-group", "32", "--kv-asymmetric", "--threads", "1"},
        // Stored, with 40x more keys than queries: the peak is the load (float K/V beside codes).
        std::vector<std::string>{"--ranks-local", "2", "--seq-len", "200", "--kv-seq-len", "8000",
                                 "--kv-store", "int8", "--threads", "1"},
        // Nodes of 2 (per-level bytes and messages): the flat ring with sinks, the double
        // ring (up to 4 receive buffers), the a2a-ring (all-to-alls inside the nodes).
        std::vector<std::string>{"--ranks-local", "4", "--seq-len", "1000", "--causal", "--sinks",
                                 "4", "--ranks-per-node", "2", "--threads", "1"},
        std::vector<std::string>{"--ranks-local", "4", "--seq-len", "1000", "--ranks-per-node", "2",
                                 "--hierarchy", "double-ring", "--threads", "1"},
        std::vector<std::string>{"--ranks-local", "4", "--seq-len", "1000", "--causal",
                                 "--window-left", "300", "--ranks-per-node", "2", "--hierarchy",
                                 "double-ring", "--threads", "1"},
        std::vector<std::string>{"--ranks-local", "4", "--seq-len", "1000", "--causal",
                                 "--ranks-per-node", "2", "--hierarchy", "a2a-ring", "--threads",
                                 "1"},
        // Partial tiles of other shapes: striped causal, a two-sided window over contiguous
        // blocks, a dilated band, batch 2.
        std::vector<std::string>{"--ranks-local", "3", "--seq-len", "3000", "--causal", "--layout",
                                 "striped", "--threads", "1"},
        std::vector<std::string>{"--ranks-local", "3", "--seq-len", "3000", "--window-left", "300",
                                 "--window-right", "200", "--layout", "contiguous", "--threads",
                                 "1"},
        std::vector<std::string>{"--ranks-local", "2", "--seq-len", "3000", "--batch", "2",
                                 "--causal", "--dilation", "2", "--window-left", "400", "--threads",
                                 "1"}));

TEST_P(PlanVsRun, MemoryStepsAndBytesMatch) {
  const std::string hw = write_profile("cpu.ini", kCpuProfile);
  std::vector<std::string> problem = {"--heads", "4", "--kv-heads", "2", "--head-dim", "64"};
  problem.insert(problem.end(), GetParam().begin(), GetParam().end());
  const int ranks = std::stoi(GetParam()[1]);
  std::vector<std::string> pargs = {"--hardware", hw, "--json"};
  pargs.insert(pargs.end(), problem.begin(), problem.end());
  const Result p = plan(pargs);
  ASSERT_EQ(p.rc, 0) << p.err;
  std::vector<std::string> rargs = {"run", "--metrics", path("run.jsonl")};
  rargs.insert(rargs.end(), problem.begin(), problem.end());
  const Result r = run_binary(rargs);
  ASSERT_EQ(r.rc, 0) << r.err;
  const auto planned = lines_of(p.out);
  const auto measured = lines_of(test::slurp(path("run.jsonl")));
  ASSERT_EQ(measured.size(), static_cast<std::size_t>(ranks + 1));  // ranks + summary
  const std::string& sum = measured.back();
  EXPECT_EQ(json_number(planned[0], "steps"), json_number(sum, "steps"));
  EXPECT_EQ(json_field(planned[0], "transfer"), json_field(sum, "transfer"));
  EXPECT_EQ(json_number(planned[0], "bytes_per_step"), json_number(sum, "bytes_per_step"));
  EXPECT_NEAR(json_number(planned[0], "imbalance_scheduled"),
              json_number(sum, "imbalance_scheduled"), 1e-9);
  for (int rank = 0; rank < ranks; ++rank) {
    const std::string& pr = planned[static_cast<std::size_t>(1 + rank)];
    const std::string& mr = measured[static_cast<std::size_t>(rank)];
    EXPECT_EQ(json_number(pr, "pairs"), json_number(mr, "pairs")) << rank;
    EXPECT_EQ(json_number(pr, "memory_bytes"), json_number(mr, "peak_bytes")) << rank;
    for (const char* k : {"intra_bytes", "inter_bytes", "intra_messages", "inter_messages"})
      EXPECT_EQ(json_number(pr, k), json_number(mr, k)) << k << " rank " << rank;
    // The kernel's tiles, whole and partial (the plan prices the partial ones): exact where
    // every kernel call is the rotation's (sinks add calls on the shared rows; the a2a-ring
    // plan does not count tiles).
    if (!has(problem, "--sinks") && !has(problem, "a2a-ring")) {
      for (const char* k : {"tiles_computed", "tiles_partial"})
        EXPECT_EQ(json_number(pr, k), json_number(mr, k)) << k << " rank " << rank;
    }
  }
  EXPECT_EQ(json_field(planned[0], "comm_scheme"), json_field(sum, "comm_scheme"));
  EXPECT_EQ(json_number(planned[0], "ranks_per_node"), json_number(sum, "ranks_per_node"));
}

// Over nodes: the levels line, the three schemes compared and the fastest named;
// --hierarchy auto plans the fastest; --inter-node swaps the link between nodes.
TEST_F(PlanCli, ComparesSchemesOverNodes) {
  const std::vector<std::string> problem = {
      "--hardware", "h100-sxm", "--ranks",    "32", "--ranks-per-node", "8", "--seq-len", "262144",
      "--heads",    "32",       "--kv-heads", "8",  "--causal"};
  std::vector<std::string> args = problem;
  const Result text = plan(args);
  ASSERT_EQ(text.rc, 0) << text.err;
  for (const char* s : {"levels", "inside nodes", "across nodes", "intra-node link",
                        "inter-node link", "schemes", "double-ring", "a2a-ring", "fastest"})
    EXPECT_NE(text.out.find(s), std::string::npos) << s << "\n" << text.out;
  args.push_back("--json");
  const Result flat = plan(args);
  ASSERT_EQ(flat.rc, 0) << flat.err;
  const std::string s = lines_of(flat.out).front();
  EXPECT_EQ(json_field(s, "comm_scheme"), "flat");
  const std::string best = json_field(s, "best_scheme");
  double fastest = 1e300;
  for (const char* k : {"flat", "double_ring", "a2a_ring"}) {
    EXPECT_EQ(json_field(s, std::string("scheme_") + k + "_ok"), "true") << k;
    EXPECT_GT(json_number(s, std::string("scheme_") + k + "_inter_bytes_per_node"), 0) << k;
    fastest = std::min(fastest, json_number(s, std::string("scheme_") + k + "_time_ms"));
  }
  std::string key = best;
  std::replace(key.begin(), key.end(), '-', '_');
  EXPECT_EQ(json_number(s, "scheme_" + key + "_time_ms"), fastest);
  EXPECT_EQ(json_number(s, "scheme_flat_time_ms"), json_number(s, "time_ms"));
  EXPECT_GT(json_number(s, "inter_bytes"), 0);
  EXPECT_GT(json_number(s, "intra_messages"), 0);
  // auto: the fastest, planned.
  args.insert(args.end(), {"--hierarchy", "auto"});
  const Result chosen = plan(args);
  ASSERT_EQ(chosen.rc, 0) << chosen.err;
  const std::string c = lines_of(chosen.out).front();
  EXPECT_EQ(json_field(c, "comm_scheme"), best);
  EXPECT_EQ(json_field(c, "comm_scheme_auto"), "true");
  EXPECT_EQ(json_number(c, "time_ms"), fastest);
  // A slower link between nodes: every scheme slower, its name in the output.
  args.insert(args.end(), {"--inter-node", "eth400"});
  const Result eth = plan(args);
  ASSERT_EQ(eth.rc, 0) << eth.err;
  const std::string e = lines_of(eth.out).front();
  EXPECT_NE(json_field(e, "inter_link").find("400G Ethernet"), std::string::npos) << e;
  EXPECT_GE(json_number(e, "scheme_flat_time_ms"), json_number(s, "scheme_flat_time_ms"));
  args.back() = "12.5";
  const Result custom = plan(args);
  ASSERT_EQ(custom.rc, 0) << custom.err;
  EXPECT_NE(json_field(lines_of(custom.out).front(), "inter_link").find("12.50 GB/s"),
            std::string::npos);
}

TEST_F(PlanCli, BadSchemeOptions) {
  const std::vector<std::string> base = {"--hardware", "h100-sxm", "--ranks", "16",
                                         "--seq-len",  "65536",    "--heads", "8",
                                         "--kv-heads", "8"};
  std::vector<std::string> a = base;
  a.insert(a.end(), {"--inter-node", "fast"});
  expect_usage_error(plan(a), "--inter-node");
  a = base;
  a.insert(a.end(), {"--hierarchy", "triple-ring"});
  expect_usage_error(plan(a), "--hierarchy");
  a = base;  // 6 ranks per node do not divide 16 ranks
  a.insert(a.end(), {"--hierarchy", "double-ring", "--ranks-per-node", "6"});
  expect_usage_error(plan(a), "--ranks-per-node");
  a = base;
  a.insert(a.end(), {"--hierarchy", "a2a-ring", "--kv-wire", "int8"});
  expect_usage_error(plan(a), "--hierarchy");
}

TEST_F(PlanCli, KvWireAndStoreFormats) {
  const std::string hw = write_profile("cpu.ini", kCpuProfile);
  const std::vector<std::string> base = {
      "--hardware", hw,  "--ranks-local", "4",   "--seq-len", "4096",      "--heads", "4",
      "--kv-heads", "2", "--head-dim",    "128", "--causal",  "--kv-wire", "int8"};
  const Result r = plan(base);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("  kv wire "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("int8 g64: 136 B per token-head vs 512 B float32"), std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("own block (wire)"), std::string::npos) << r.out;

  std::vector<std::string> json = base;
  json.push_back("--json");
  const Result j = plan(json);
  ASSERT_EQ(j.rc, 0) << j.err;
  std::vector<std::string> fp = json;
  fp.resize(fp.size() - 3), fp.push_back("--json");  // without --kv-wire int8
  const Result f = plan(fp);
  ASSERT_EQ(f.rc, 0) << f.err;
  const std::string s = lines_of(j.out).front(), s0 = lines_of(f.out).front();
  EXPECT_EQ(json_field(s, "kv_wire"), "int8 g64");
  EXPECT_EQ(json_field(s, "kv_store"), "false");
  EXPECT_EQ(json_number(s, "kv_wire_row_bytes"), 136);
  EXPECT_EQ(json_field(s0, "kv_wire"), "float32");
  EXPECT_EQ(json_number(s0, "kv_wire_row_bytes"), 512);
  // The quantized wire sends whole blocks; the float32 one leaves out rows no
  // receiver sees (rank 0's back chunk: nobody after it in the ring sees it).
  const double scaled = json_number(s0, "bytes_per_step") * 136 / 512;
  EXPECT_GT(json_number(s, "bytes_per_step"), scaled);
  EXPECT_LT(json_number(s, "bytes_per_step"), scaled * 4 / 3);
  EXPECT_EQ(json_number(s, "mem_k"), json_number(s0, "mem_k"));
  EXPECT_GT(json_number(s, "mem_wire_copy"), 0);

  // --kv-store: K/V in memory are the codes.
  std::vector<std::string> store = {
      "--hardware", hw,  "--ranks-local", "4",   "--seq-len",  "4096", "--heads", "4",
      "--kv-heads", "2", "--head-dim",    "128", "--kv-store", "int8", "--json"};
  const Result st = plan(store);
  ASSERT_EQ(st.rc, 0) << st.err;
  const std::string ss = lines_of(st.out).front();
  EXPECT_EQ(json_field(ss, "kv_store"), "true");
  EXPECT_EQ(json_number(ss, "mem_k"), 1024.0 * 2 * 136);
  EXPECT_EQ(json_number(ss, "mem_wire_copy"), 0);
  store.pop_back();
  const Result st_table = plan(store);
  ASSERT_EQ(st_table.rc, 0) << st_table.err;
  EXPECT_NE(st_table.out.find("K/V stored as the codes in memory too"), std::string::npos)
      << st_table.out;

  // Without quantization: no kv line.
  fp.pop_back();
  const Result plain = plan(fp);
  ASSERT_EQ(plain.rc, 0) << plain.err;
  EXPECT_EQ(plain.out.find("  kv wire "), std::string::npos) << plain.out;
}

TEST_F(PlanCli, BadKvOptions) {
  const std::string hw = write_profile("cpu.ini", kCpuProfile);
  expect_usage_error(plan({"--hardware", hw, "--kv-wire", "int3"}), "--kv-wire");
  expect_usage_error(plan({"--hardware", hw, "--kv-group", "48", "--kv-wire", "int8"}),
                     "--kv-group");
  expect_usage_error(plan({"--hardware", hw, "--kv-group", "32"}), "--kv-group");
  expect_usage_error(plan({"--hardware", hw, "--kv-store", "float32"}), "--kv-store");
}

TEST_F(PlanCli, BadRanksAndLinks) {
  const std::string hw = write_profile("cpu.ini", kCpuProfile);
  expect_usage_error(plan({"--hardware", hw, "--ranks", "0"}), "--ranks");
  expect_usage_error(plan({"--hardware", hw, "--ranks", "2", "--ranks-local", "2"}),
                     "--ranks-local");
  expect_usage_error(plan({"--hardware", hw, "--ranks", "100000"}), "--ranks");
  expect_usage_error(plan({"--hardware", hw, "--ranks-per-node", "-1"}), "--ranks-per-node");
  // The profile has no inter-node link, and no bfloat16 rate.
  expect_usage_error(plan({"--hardware", hw, "--ranks", "4", "--ranks-per-node", "2"}),
                     "[link.inter-node]");
  expect_usage_error(plan({"--hardware", hw, "--dtype", "bf16"}), "bfloat16");
  // run's checks apply as they are.
  expect_usage_error(plan({"--hardware", hw, "--heads", "6", "--kv-heads", "4"}), "--kv-heads");
  expect_usage_error(plan({"--hardware", hw, "--head-dim", "12"}), "--head-dim");
}

TEST_F(PlanCli, PredictsTheMoeStage) {
  const std::string hw = write_profile("cpu.ini", kCpuProfile);
  const std::vector<std::string> args = {
      "--hardware", hw,   "--ranks-local", "4", "--seq-len",  "1024", "--heads", "4",
      "--head-dim", "32", "--moe-experts", "8", "--moe-topk", "2"};
  const Result r = plan(args);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("  moe "), std::string::npos) << r.out;
  for (const char* s : {"E=8 k=2 d_ff=512 token cf=1.25", "capacity C=320", "all-to-all bytes",
                        "FFN ", "all-to-all "})
    EXPECT_NE(r.out.find(s), std::string::npos) << s << "\n" << r.out;

  std::vector<std::string> json = args;
  json.push_back("--json");
  const Result j = plan(json);
  ASSERT_EQ(j.rc, 0) << j.err;
  const std::string s = lines_of(j.out).front();
  EXPECT_EQ(json_field(s, "moe"), "E=8 k=2 d_ff=512 token cf=1.25");
  EXPECT_EQ(json_number(s, "moe_experts"), 8);
  EXPECT_EQ(json_number(s, "moe_topk"), 2);
  EXPECT_EQ(json_number(s, "moe_d_ff"), 512);  // 4 x d_model
  EXPECT_EQ(json_number(s, "moe_d_model"), 128);
  EXPECT_EQ(json_number(s, "moe_capacity"), 320);
  EXPECT_EQ(json_number(s, "moe_rows_sent"), 384);
  // counts, records, flags, rows out and back (include/ringattn/plan.hpp, MoePlan).
  EXPECT_EQ(json_number(s, "moe_bytes_sent"), 8.0 * 3 + 24 * 384 + 384 + 512.0 * 2 * 384);
  EXPECT_NEAR(json_number(s, "moe_ffn_gflop"), 6.0 * 512 * 128 * 512 / 1e9, 1e-9);
  for (const char* k : {"moe_ffn_ms", "moe_alltoall_ms", "moe_ms", "mem_moe", "moe_memory_bytes"})
    EXPECT_GT(json_number(s, k), 0) << k;

  // Without the stage the keys are there, zero; the table has no moe line.
  const Result off = plan({"--hardware", hw, "--ranks-local", "4", "--json"});
  ASSERT_EQ(off.rc, 0) << off.err;
  EXPECT_EQ(json_number(lines_of(off.out).front(), "moe_bytes_sent"), 0);
  EXPECT_EQ(json_field(lines_of(off.out).front(), "moe"), "");
  const Result table = plan({"--hardware", hw, "--ranks-local", "4"});
  ASSERT_EQ(table.rc, 0) << table.err;
  EXPECT_EQ(table.out.find("  moe "), std::string::npos) << table.out;
}

TEST_F(PlanCli, BadMoeOptions) {
  const std::string hw = write_profile("cpu.ini", kCpuProfile);
  const Result r = plan({"--hardware", "h100-sxm", "--ranks", "4", "--moe-experts", "3"});
  expect_usage_error(r, "--moe-experts");
  EXPECT_NE(r.err.find("E >= P"), std::string::npos) << r.err;
  expect_usage_error(plan({"--hardware", hw, "--moe-topk", "3"}), "--moe-experts");
  expect_usage_error(plan({"--hardware", hw, "--moe-experts", "4", "--moe-topk", "5"}),
                     "--moe-topk");
  expect_usage_error(plan({"--hardware", hw, "--moe-experts", "4", "--moe-policy", "chunk"}),
                     "--moe-chunk");
}

}  // namespace
}  // namespace ringattn
