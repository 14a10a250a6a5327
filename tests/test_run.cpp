// End-to-end tests of `ringattn run` (the binary, found through RINGATTN_BIN)
// on in-process ranks: every layout, mask, head layout and rank count against
// the float64 reference; generated inputs independent of P; --verify. Plus the
// pieces testable without the binary: the configuration hash comparison and
// the counter-based generator. Bad input, failing ranks and signals:
// test_run_errors.cpp.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <omp.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "output_check.hpp"
#include "ringattn/job.hpp"
#include "ringattn/layout.hpp"
#include "ringattn/npy.hpp"
#include "ringattn/reference.hpp"
#include "ringattn/synth.hpp"
#include "run_fixture.hpp"
#include "util.hpp"

namespace ringattn {
namespace {

using test::kSameAcrossP;
using test::kTolLse;
using test::kTolO;
using test::random_tensor;
using test::Result;
using test::Run;
using test::slurp;
namespace fs = std::filesystem;

std::vector<float> as_floats(const Tensor& t) {
  std::vector<float> v(static_cast<std::size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) v[static_cast<std::size_t>(i)] = t.get(i);
  return v;
}

// ---- every layout, mask, head layout and rank count against the reference ---

struct RunCase {
  std::string name;
  int ranks;
  std::string layout;
  bool causal;
  int64_t b, nq, nk, hq, hkv, d;
  bool batched;  // 4-d files (else 3-d, B = 1)
  DType dtype = DType::f32;
};

void PrintTo(const RunCase& c, std::ostream* os) {
  *os << c.name;
}

std::vector<int64_t> dims(const RunCase& c, int64_t n, int64_t h) {
  return c.batched ? std::vector<int64_t>{c.b, n, h, c.d} : std::vector<int64_t>{n, h, c.d};
}

std::string case_name(int p, const char* layout, bool causal, const char* shape) {
  return "P" + std::to_string(p) + "_" + layout + (causal ? "_causal_" : "_full_") + shape;
}

// P x layout x mask, cycling through three shapes: GQA with batch 2; cross-attention with
// Nq < Nk, MQA, 3-d files; cross-attention with Nq > Nk (causal: early rows see no key).
std::vector<RunCase> all_cases() {
  struct Shape {
    const char* name;
    int64_t b, nq, nk, hq, hkv, d;
    bool batched;
  };
  const Shape shapes[] = {{"gqa_b2", 2, 37, 37, 4, 2, 16, true},
                          {"cross_mqa_3d", 1, 29, 53, 2, 1, 32, false},
                          {"cross_long_q", 1, 61, 23, 3, 3, 8, true}};
  std::vector<RunCase> cases;
  int i = 0;
  for (int p : {1, 2, 3, 5})
    for (const char* layout : {"contiguous", "zigzag", "striped"})
      for (bool causal : {false, true}) {
        const Shape& s = shapes[i++ % 3];
        cases.push_back({case_name(p, layout, causal, s.name), p, layout, causal, s.b, s.nq, s.nk,
                         s.hq, s.hkv, s.d, s.batched});
      }
  // Fewer tokens than ranks: some ranks hold nothing.
  cases.push_back({"P5_zigzag_causal_n_lt_p", 5, "zigzag", true, 1, 3, 3, 2, 1, 16, true});
  cases.push_back({"P5_striped_full_n_lt_p", 5, "striped", false, 2, 2, 4, 2, 2, 8, true});
  // Longer than a read window (kReadWindowRows), so that files are read in several slices;
  // striped outputs with small rows (written by read-modify-write) and wide ones (per row).
  cases.push_back(
      {"P3_striped_causal_long_narrow", 3, "striped", true, 2, 2100, 2100, 2, 1, 8, true});
  cases.push_back(
      {"P2_striped_full_long_wide", 2, "striped", false, 1, 1500, 1100, 4, 2, 32, false});
  cases.push_back({"P4_zigzag_causal_long", 4, "zigzag", true, 1, 2500, 2500, 2, 2, 16, true});
  // 16-bit storage.
  RunCase f16{"P3_zigzag_causal_f16", 3, "zigzag", true, 1, 40, 40, 4, 2, 32, true};
  f16.dtype = DType::f16;
  cases.push_back(f16);
  RunCase bf16{"P2_striped_full_bf16", 2, "striped", false, 1, 33, 47, 2, 1, 16, false};
  bf16.dtype = DType::bf16;
  cases.push_back(bf16);
  return cases;
}

class RunCaseTest : public Run, public ::testing::WithParamInterface<RunCase> {};

TEST_P(RunCaseTest, MatchesReference) {
  const RunCase c = GetParam();
  const Tensor q = random_tensor(c.dtype, dims(c, c.nq, c.hq), 1);
  const Tensor k = random_tensor(c.dtype, dims(c, c.nk, c.hkv), 2);
  const Tensor v = random_tensor(c.dtype, dims(c, c.nk, c.hkv), 3);
  save_npy(path("q.npy"), q);
  save_npy(path("k.npy"), k);
  save_npy(path("v.npy"), v);
  std::vector<std::string> args = {
      "--ranks-local", std::to_string(c.ranks), "--layout",  c.layout,
      "--q",           path("q.npy"),           "--k",       path("k.npy"),
      "--v",           path("v.npy"),           "--out",     path("o.npy"),
      "--lse-out",     path("lse.npy"),         "--threads", "1"};
  if (c.causal) args.push_back("--causal");
  const Result r = run(args);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("GFLOP/s"), std::string::npos) << r.out;
  if (c.nq < c.ranks) {
    EXPECT_NE(r.err.find("warning"), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
  EXPECT_TRUE(temporaries().empty());

  test::FileProblem fp;
  fp.dtype = c.dtype, fp.batched = c.batched, fp.b = c.b, fp.nq = c.nq, fp.nk = c.nk;
  fp.hq = c.hq, fp.hkv = c.hkv, fp.d = c.d, fp.causal = c.causal, fp.scale = 0.0f;
  test::expect_outputs_match_reference(fp, q, k, v, path("o.npy"), path("lse.npy"));
}

INSTANTIATE_TEST_SUITE_P(Cases, RunCaseTest, ::testing::ValuesIn(all_cases()),
                         [](const ::testing::TestParamInfo<RunCase>& p) { return p.param.name; });

// ---- sparse masks from the command line ---------------------------------------

TEST_F(Run, SampledFloat64CheckOnGeneratedInputs) {
  // --check-rows recomputes sampled rows in float64 from only their visible keys.
  const Result r = run({"--ranks-local",
                        "3",
                        "--batch",
                        "2",
                        "--seq-len",
                        "3001",
                        "--heads",
                        "4",
                        "--kv-heads",
                        "2",
                        "--head-dim",
                        "32",
                        "--causal",
                        "--window-left",
                        "300",
                        "--sinks",
                        "4",
                        "--global",
                        "1000-1003",
                        "--check-rows",
                        "64",
                        "--threads",
                        "1"});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("vs float64 on 64 sampled query rows x 4 heads: ok"), std::string::npos)
      << r.out;
}

TEST_F(Run, SparseMaskOptionsMatchTheReference) {
  const int64_t n = 900, h = 2, d = 32;
  const Tensor q = random_tensor(DType::f32, {1, n, h, d}, 11);
  const Tensor k = random_tensor(DType::f32, {1, n, h, d}, 12);
  const Tensor v = random_tensor(DType::f32, {1, n, h, d}, 13);
  save_npy(path("q.npy"), q);
  save_npy(path("k.npy"), k);
  save_npy(path("v.npy"), v);
  struct Case {
    std::vector<std::string> flags;
    Mask mask;  // what the flags mean, written out by hand
  };
  std::vector<Case> cases;
  {
    Mask m = Mask::causal(0);
    m.lo = -99, m.sinks = 4;
    cases.push_back({{"--causal", "--window-left", "99", "--sinks", "4"}, m});
  }
  {
    Mask m = Mask::band(-50, 20);
    m.dilation = 2, m.n_global = 2, m.global[0] = {0, 1}, m.global[1] = {400, 411};
    cases.push_back({{"--window-left", "50", "--window-right", "20", "--dilation", "2", "--global",
                      "0,400-410"},
                     m});
  }
  {
    Mask m = Mask::band(1, 0);
    m.blocks.size = 64, m.blocks.window = 1, m.blocks.global = 1, m.blocks.random = 2;
    m.blocks.seed = 5, m.blocks.key_blocks = (n + 63) / 64;
    cases.push_back(
        {{"--block-size", "64", "--block-global", "1", "--block-random", "2", "--block-seed", "5"},
         m});
  }
  for (const Case& c : cases)
    for (const char* layout : {"contiguous", "zigzag", "striped"}) {
      std::vector<std::string> args = {
          "--ranks-local", "3",           "--layout",  layout,        "--q",          path("q.npy"),
          "--k",           path("k.npy"), "--v",       path("v.npy"), "--out",        path("o.npy"),
          "--lse-out",     path("l.npy"), "--threads", "1",           "--check-rows", "40"};
      args.insert(args.end(), c.flags.begin(), c.flags.end());
      const Result r = run(args);
      ASSERT_EQ(r.rc, 0) << r.err;
      AttentionArgs a;
      a.batch = 1, a.nq = n, a.nk = n, a.hq = h, a.hkv = h, a.head_dim = d;
      a.q = q.data.data(), a.k = k.data.data(), a.v = v.data.data(), a.mask = c.mask;
      const ReferenceResult ref = reference_attention(a);
      const Tensor o = read_npy(path("o.npy")), l = read_npy(path("l.npy"));
      const ErrorStats e = compare_to_reference(a, o.as<float>(), l.as<float>(), ref);
      EXPECT_LE(e.o_rel_fro, kTolO) << c.flags[0] << " " << layout;
      EXPECT_LE(e.lse_max_abs, kTolLse) << c.flags[0] << " " << layout;
      EXPECT_EQ(e.lse_mismatch, 0) << c.flags[0] << " " << layout;
    }
}

// ---- generated inputs ------------------------------------------------------

// The problem `run --seed S` generates, built here from the synth convention directly.
Tensor synth_tensor(uint64_t seed, SynthStream s, std::vector<int64_t> shape) {
  Tensor t(DType::f32, std::move(shape));
  synth_fill(t.data.data(), DType::f32, synth_key(seed, s), 0, t.numel());
  return t;
}

TEST_F(Run, GeneratedInputsDoNotDependOnRanksOrLayout) {
  const std::vector<std::string> common = {
      "--seed",   "7",          "--seq-len", "45",         "--kv-seq-len", "70",      "--heads",
      "4",        "--kv-heads", "2",         "--head-dim", "16",           "--batch", "2",
      "--causal", "--threads",  "1"};
  const auto run_with = [&](int p, const std::string& layout, const std::string& out) {
    std::vector<std::string> args = common;
    args.insert(args.end(), {"--ranks-local", std::to_string(p), "--layout", layout, "--out",
                             path(out), "--lse-out", path("l" + out)});
    const Result r = run(args);
    EXPECT_EQ(r.rc, 0) << r.err;
  };
  run_with(1, "contiguous", "p1.npy");
  run_with(3, "striped", "p3.npy");
  run_with(4, "zigzag", "p4.npy");
  const std::vector<float> o1 = as_floats(read_npy(path("p1.npy")));
  const std::vector<float> l1 = as_floats(read_npy(path("lp1.npy")));
  for (const char* other : {"p3.npy", "p4.npy"}) {
    const std::vector<float> o = as_floats(read_npy(path(other)));
    const std::vector<float> l = as_floats(read_npy(path(std::string("l") + other)));
    ASSERT_EQ(o.size(), o1.size());
    for (std::size_t i = 0; i < o.size(); ++i) ASSERT_NEAR(o[i], o1[i], kSameAcrossP) << other;
    for (std::size_t i = 0; i < l.size(); ++i)
      if (std::isfinite(l1[i])) {
        ASSERT_NEAR(l[i], l1[i], kSameAcrossP) << other;
      }
  }

  // And they are the documented synth streams, indexed by global position.
  const Tensor q = synth_tensor(7, SynthStream::q, {2, 45, 4, 16});
  const Tensor k = synth_tensor(7, SynthStream::k, {2, 70, 2, 16});
  const Tensor v = synth_tensor(7, SynthStream::v, {2, 70, 2, 16});
  AttentionArgs a;
  a.batch = 2, a.nq = 45, a.nk = 70, a.hq = 4, a.hkv = 2, a.head_dim = 16;
  a.q = q.data.data(), a.k = k.data.data(), a.v = v.data.data(), a.mask = Mask::causal(70 - 45);
  const ErrorStats e = compare_to_reference(a, o1.data(), l1.data(), reference_attention(a));
  EXPECT_LE(e.o_rel_fro, kTolO);
  EXPECT_LE(e.lse_max_abs, kTolLse);
}

TEST_F(Run, VerifyPassesAndReportsEfficiencyAndMetrics) {
  const Result r =
      run({"--ranks-local", "3",  "--seq-len", "300",          "--heads",   "4", "--kv-heads", "1",
           "--head-dim",    "32", "--causal",  "--verify",     "--repeats", "2", "--warmup",   "1",
           "--threads",     "1",  "--metrics", path("m.jsonl")});
  ASSERT_EQ(r.rc, 0) << r.out << r.err;
  for (const char* s : {"efficiency", "max error", "vs the single-rank kernel: ok", "best of 2",
                        "work imbalance", "bytes per step", "reproduce", "peak_mem"})
    EXPECT_NE(r.out.find(s), std::string::npos) << s << " in\n" << r.out;
  std::istringstream lines(slurp(path("m.jsonl")));
  std::string line;
  std::vector<std::string> rows;
  while (std::getline(lines, line)) rows.push_back(line);
  ASSERT_EQ(rows.size(), 4u);  // 3 ranks + summary
  for (std::size_t i = 0; i < 3; ++i)
    EXPECT_NE(rows[i].find("\"rank\": " + std::to_string(i)), std::string::npos) << rows[i];
  for (const char* key : {"\"efficiency\"", "\"gflops\"", "\"o_rel_err\"", "\"pass\": true"})
    EXPECT_NE(rows[3].find(key), std::string::npos) << key << " in " << rows[3];
}

TEST_F(Run, DefaultConfigRunsScaledDown) {
  const Result r =
      run({"--config", std::string(RINGATTN_SOURCE_DIR) + "/configs/default.ini", "--seq-len",
           "256", "--head-dim", "32", "--ranks-local", "2", "--threads", "1"});
  ASSERT_EQ(r.rc, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("N=256 Nk=256 B=1 H=8/2 D=32 float32 | mask causal | P=2 (local) | "
                       "layout zigzag"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("efficiency"), std::string::npos) << r.out;
}

TEST_F(Run, HelpListsEveryOption) {
  const Result r = run({"--help"});
  ASSERT_EQ(r.rc, 0);
  for (const char* o :
       {"--backend", "--ranks-local", "--seed",     "--batch",   "--seq-len",   "--kv-seq-len",
        "--heads",   "--kv-heads",    "--head-dim", "--dtype",   "--q",         "--k",
        "--v",       "--causal",      "--layout",   "--scale",   "--isa",       "--repeats",
        "--warmup",  "--verify",      "--out",      "--lse-out", "--fail-rank", "--threads",
        "--metrics", "--config",      "O(N) memory"})
    EXPECT_NE(r.out.find(o), std::string::npos) << o;
}

// ---- without the binary ----------------------------------------------------

TEST(RunConfigHash, MismatchNamesTheRanksAndHashes) {
  EXPECT_EQ(config_mismatch({}), "");
  EXPECT_EQ(config_mismatch({42}), "");
  EXPECT_EQ(config_mismatch({7, 7, 7, 7}), "");
  const std::string m = config_mismatch({0x1234, 0x1234, 0xabcd, 0x99});
  EXPECT_NE(m.find("ranks disagree on the configuration (rank 0 hash 0000000000001234, rank 2 "
                   "hash 000000000000abcd)"),
            std::string::npos)
      << m;
  EXPECT_NE(config_hash("seq-len:4096"), config_hash("seq-len:4097"));
  EXPECT_EQ(config_hash("x"), config_hash("x"));
}

TEST(Synth, CounterBasedStandardNormal) {
  const uint64_t key = synth_key(3, SynthStream::k);
  EXPECT_NE(key, synth_key(3, SynthStream::v));
  EXPECT_NE(key, synth_key(4, SynthStream::k));
  constexpr int64_t n = 200000;
  std::vector<float> all(n), parts(n);
  synth_fill(all.data(), DType::f32, key, 0, n);
  // Filled in pieces, in any order: the same values.
  for (int64_t first : {int64_t{150000}, int64_t{0}, int64_t{77777}})
    synth_fill(parts.data() + first, DType::f32, key, static_cast<uint64_t>(first),
               std::min<int64_t>(n - first, first == 0       ? 77777
                                            : first == 77777 ? 72223
                                                             : 50000));
  EXPECT_EQ(all, parts);
  double sum = 0, sum2 = 0;
  for (float x : all) {
    ASSERT_TRUE(std::isfinite(x));
    sum += x;
    sum2 += double(x) * x;
  }
  EXPECT_NEAR(sum / n, 0.0, 0.01);
  EXPECT_NEAR(sum2 / n, 1.0, 0.02);
  EXPECT_EQ(synth_normal_at(key, 12345), all[12345]);
  uint16_t h[4];
  synth_fill(h, DType::f16, key, 10, 4);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(f16_to_f32(h[i]), round_to(DType::f16, all[10 + i]));
}

TEST(Synth, BoxMullerOfTheHashToFloatPrecision) {
  // The generator's own log and cos (vectorized, the same bits everywhere)
  // against Box-Muller in float64 with the C library's log and cos on the same
  // hash: within float32 rounding, on every value, for every thread count.
  const uint64_t key = synth_key(9, SynthStream::q);
  constexpr int64_t n = 1 << 20;
  std::vector<float> one(n), two(n);
  omp_set_num_threads(1);
  synth_fill(one.data(), DType::f32, key, 5, n);
  omp_set_num_threads(2);
  synth_fill(two.data(), DType::f32, key, 5, n);
  EXPECT_EQ(one, two);
  double worst = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t bits = splitmix64(key ^ splitmix64(static_cast<uint64_t>(i + 5)));
    const double u1 = (double(bits >> 32) + 0.5) / 4294967296.0;
    const double u2 = (double(bits & 0xffffffffu) + 0.5) / 4294967296.0;
    const double r = std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
    // One float32 rounding of r, plus the double-precision error of the series.
    const double tol = std::fabs(r) * 6e-8 + 1e-12;
    worst = std::max(worst, std::fabs(double(one[static_cast<std::size_t>(i)]) - r) / tol);
    ASSERT_LE(std::fabs(double(one[static_cast<std::size_t>(i)]) - r), tol) << "value " << i;
  }
  RecordProperty("worst_over_tolerance", std::to_string(worst));
}

}  // namespace
}  // namespace ringattn
