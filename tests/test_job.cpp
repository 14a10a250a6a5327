// The job library (ringattn/job.hpp) called directly, without the executable:
// whole in-process jobs whose written O and LSE files are checked against the
// float64 reference on the same global inputs.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <omp.h>
#include <stdlib.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "ringattn/comm.hpp"
#include "ringattn/error.hpp"
#include "ringattn/hier_reference.hpp"
#include "ringattn/job.hpp"
#include "ringattn/kv_select_reference.hpp"
#include "ringattn/npy.hpp"
#include "ringattn/plan.hpp"
#include "ringattn/reference.hpp"
#include "ringattn/synth.hpp"
#include "util.hpp"

namespace ringattn {
namespace {

namespace fs = std::filesystem;

class Job : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "ringattn_job_XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (fs::path(dir_) / name).string(); }

  // The global inputs a seeded job generates: value i of each tensor is
  // synth_normal_at(key, i) in global [B, N, H, D] order (ringattn/synth.hpp).
  static Tensor generated(const JobSpec& s, SynthStream stream, int64_t n, int64_t heads) {
    Tensor t(s.dtype, {s.batch, n, heads, s.head_dim}, "generated");
    synth_fill(t.data.data(), s.dtype, synth_key(s.seed, stream), 0, t.numel());
    return t;
  }

  // O and LSE written by the job against reference_attention on q, k, v.
  static void expect_files_match(const JobSpec& s, const Tensor& q, const Tensor& k,
                                 const Tensor& v) {
    const Tensor o = read_npy(s.out_path), lse = read_npy(s.lse_path);
    ASSERT_EQ(o.numel(), s.o_elems());
    ASSERT_EQ(lse.numel(), s.lse_elems());
    const AttentionArgs a(s, q.data.data(), k.data.data(), v.data.data());
    const ReferenceResult ref = reference_attention(a);
    std::vector<float> of(static_cast<std::size_t>(o.numel())),
        lf(static_cast<std::size_t>(lse.numel()));
    for (int64_t i = 0; i < o.numel(); ++i) of[static_cast<std::size_t>(i)] = o.get(i);
    for (int64_t i = 0; i < lse.numel(); ++i) lf[static_cast<std::size_t>(i)] = lse.get(i);
    const ErrorStats e = compare_to_reference(a, of.data(), lf.data(), ref);
    // float32 accumulation; O is stored in the storage dtype (half an ulp of it).
    const Tolerance tol = stored_tolerance(s.dtype);
    EXPECT_LE(e.o_rel_fro, tol.o_rel_fro);
    EXPECT_LE(e.lse_max_abs, tol.lse_max_abs);
    EXPECT_EQ(e.lse_mismatch, 0);
  }

  // The data of a version 1.0 .npy (magic, version, header length, header, data)
  // whose header holds `descr` and `shape`: exactly `bytes` bytes of it.
  static void read_raw_npy(const std::string& file, const std::string& descr,
                           const std::string& shape, void* data, std::size_t bytes) {
    std::FILE* f = std::fopen(file.c_str(), "rb");
    ASSERT_NE(f, nullptr) << file;
    unsigned char pre[10];
    ASSERT_EQ(std::fread(pre, 1, 10, f), 10u);
    std::string head(static_cast<std::size_t>(pre[8] | pre[9] << 8), ' ');
    ASSERT_EQ(std::fread(head.data(), 1, head.size(), f), head.size());
    EXPECT_NE(head.find(descr), std::string::npos) << head;
    EXPECT_NE(head.find(shape), std::string::npos) << head;
    ASSERT_EQ(std::fread(data, 1, bytes, f), bytes);
    EXPECT_EQ(std::fgetc(f), EOF) << file << ": more data than " << bytes << " bytes";
    std::fclose(f);
  }

  std::string dir_;
};

// The caller's arrays in and out (JobArrays: what the bindings pass): every
// dtype, GQA, a layout with several segments per rank; O and LSE against the
// float64 reference on every row, and bit for bit what the same job writes
// from .npy files of the same arrays.
TEST_F(Job, ArraysInAndOutMatchTheReferenceAndTheFiles) {
  int seed = 40;
  for (const DType dt : {DType::f32, DType::bf16, DType::f16}) {
    test::Problem p = test::make_problem(2, 203, 203, 4, 2, 32, dt, seed++);
    JobSpec s(static_cast<const AttentionProblem&>(p.args));
    s.mask = Mask::causal(0);
    s.layout = LayoutKind::zigzag;
    s.verify = true, s.check_rows = 9, s.threads = 1;
    Tensor o(dt, {s.batch, s.nq, s.hq, s.head_dim}), lse(DType::f32, {s.batch, s.hq, s.nq});
    s.arrays = {p.q.data.data(), p.k.data.data(), p.v.data.data(), o.data.data(), lse.as<float>()};
    const JobReport r = run_job_local(3, s);
    ASSERT_TRUE(r.failure.empty()) << r.failure;
    EXPECT_TRUE(r.verify && r.verify->ok);
    EXPECT_TRUE(r.sampled && r.sampled->ok);
    EXPECT_TRUE(r.outputs.empty());  // no files

    const AttentionArgs a(s, p.q.data.data(), p.k.data.data(), p.v.data.data());
    const ReferenceResult ref = reference_attention(a);
    std::vector<float> of(static_cast<std::size_t>(o.numel()));
    for (int64_t i = 0; i < o.numel(); ++i) of[static_cast<std::size_t>(i)] = o.get(i);
    const ErrorStats e = compare_to_reference(a, of.data(), lse.as<float>(), ref);
    const Tolerance tol = stored_tolerance(dt);
    EXPECT_LE(e.o_rel_fro, tol.o_rel_fro) << dtype_name(dt);
    EXPECT_LE(e.lse_max_abs, tol.lse_max_abs) << dtype_name(dt);
    EXPECT_EQ(e.lse_mismatch, 0) << dtype_name(dt);

    // The same job from files of the same arrays writes the same bits.
    save_npy(path("q.npy"), p.q), save_npy(path("k.npy"), p.k), save_npy(path("v.npy"), p.v);
    JobSpec f = s;
    f.arrays = {};
    f.use_input_files(path("q.npy"), path("k.npy"), path("v.npy"));
    f.out_path = path("o.npy"), f.lse_path = path("lse.npy");
    ASSERT_TRUE(run_job_local(3, f).failure.empty());
    const Tensor fo = read_npy(f.out_path), fl = read_npy(f.lse_path);
    ASSERT_EQ(fo.bytes(), o.bytes());
    EXPECT_EQ(std::memcmp(fo.data.data(), o.data.data(), o.bytes()), 0) << dtype_name(dt);
    EXPECT_EQ(std::memcmp(fl.data.data(), lse.data.data(), lse.bytes()), 0) << dtype_name(dt);
  }
}

TEST_F(Job, BadArraysAreFieldErrors) {
  test::Problem p = test::make_problem(1, 64, 64, 2, 2, 32, DType::f32, 3);
  JobSpec s(static_cast<const AttentionProblem&>(p.args));
  s.arrays.q = p.q.data.data();  // k and v missing
  try {
    s.validate();
    FAIL() << "no error";
  } catch (const FieldError& e) {
    EXPECT_EQ(e.field(), "arrays");
  }
  s.arrays.k = p.k.data.data(), s.arrays.v = p.v.data.data();
  save_npy(path("q.npy"), p.q), save_npy(path("k.npy"), p.k), save_npy(path("v.npy"), p.v);
  s.use_input_files(path("q.npy"), path("k.npy"), path("v.npy"));
  EXPECT_THROW(s.validate(), FieldError);
  // A non-finite input is named with its global index, whichever rank holds it.
  s.from_files = false;
  p.k.as<float>()[(40 * 2 + 1) * 32 + 5] = std::nanf("");
  try {
    run_job_local(2, s);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("k: non-finite value (nan) at index [0, 40, 1, 5]"),
              std::string::npos)
        << e.what();
  }
}

TEST_F(Job, ThreeRanksGeneratedInputsMatchTheFloat64Reference) {
  JobSpec s;
  s.batch = 2, s.nq = s.nk = 203, s.hq = 4, s.hkv = 2, s.head_dim = 32;
  s.mask = Mask::causal(0);
  s.layout = LayoutKind::zigzag;
  s.seed = 11;
  s.out_path = path("o.npy"), s.lse_path = path("lse.npy");
  s.verify = true, s.check_rows = 17, s.threads = 1;
  const JobReport r = run_job_local(3, s);
  EXPECT_EQ(r.ranks, 3);
  EXPECT_EQ(r.backend, "local");
  ASSERT_EQ(r.stats.size(), 3u);
  int64_t tokens = 0;
  for (const RankStats& st : r.stats) tokens += st.q_tokens;
  EXPECT_EQ(tokens, s.nq);
  EXPECT_DOUBLE_EQ(r.flops, s.flops());
  ASSERT_TRUE(r.verify && r.sampled);
  EXPECT_TRUE(r.verify->ok);
  EXPECT_TRUE(r.sampled->ok);
  EXPECT_EQ(r.sampled->rows, 17);
  EXPECT_TRUE(r.failure.empty());
  EXPECT_EQ(r.outputs, (std::vector<std::string>{s.out_path, s.lse_path}));
  // Where rank 0's time went: phases that happened took time, and they add up
  // to no more than the job (the passes hold rank 0's ring time).
  const WallTimes& w = r.wall;
  EXPECT_EQ(r.threads_from, "--threads");
  for (const double x : {w.setup_s, w.inputs_s, w.passes_s, w.checks_s, w.outputs_s, w.gather_s})
    EXPECT_GE(x, 0);
  EXPECT_GT(w.inputs_s, 0);
  EXPECT_GT(w.checks_s, 0);
  EXPECT_GT(w.outputs_s, 0);
  EXPECT_GE(w.passes_s, r.stats[0].total_s);
  EXPECT_LE(w.setup_s + w.inputs_s + w.passes_s + w.checks_s + w.outputs_s + w.gather_s,
            w.total_s + 1e-9);
  expect_files_match(s, generated(s, SynthStream::q, s.nq, s.hq),
                     generated(s, SynthStream::k, s.nk, s.hkv),
                     generated(s, SynthStream::v, s.nk, s.hkv));
}

TEST_F(Job, FileInputsCrossAttentionSparseMaskStriped) {
  JobSpec s;
  s.nq = 61, s.nk = 90, s.hq = 6, s.hkv = 2, s.head_dim = 16, s.dtype = DType::bf16;
  s.mask = Mask::causal(s.nk - s.nq);
  s.mask.lo = -20;  // a window of 21 keys, bottom-right aligned
  s.mask.sinks = 3;
  s.layout = LayoutKind::striped;
  const Tensor q = test::random_tensor(s.dtype, {1, s.nq, s.hq, s.head_dim}, 5);
  const Tensor k = test::random_tensor(s.dtype, {1, s.nk, s.hkv, s.head_dim}, 6);
  const Tensor v = test::random_tensor(s.dtype, {1, s.nk, s.hkv, s.head_dim}, 7);
  save_npy(path("q.npy"), q), save_npy(path("k.npy"), k), save_npy(path("v.npy"), v);
  JobSpec read;  // the shape from the file headers, as the spec above declares it
  read.use_input_files(path("q.npy"), path("k.npy"), path("v.npy"));
  EXPECT_EQ(read.shape_text(), s.shape_text());
  EXPECT_EQ(read.q.ndim, 4);
  s.use_input_files(path("q.npy"), path("k.npy"), path("v.npy"));
  s.out_path = path("o.npy"), s.lse_path = path("lse.npy");
  s.threads = 1;
  const JobReport r = run_job_local(3, s);
  EXPECT_FALSE(r.verify.has_value());
  EXPECT_EQ(r.shared_keys, 3);  // the sinks are gathered once, not rotated
  expect_files_match(s, q, k, v);
}

TEST_F(Job, HierarchicalLevelsThroughTheJobMatchReferenceAndPlan) {
  JobSpec s;
  s.batch = 2, s.nq = s.nk = 333, s.hq = 4, s.hkv = 2, s.head_dim = 32;
  s.mask = Mask::causal(0);
  s.mask.lo = -24;  // W1 = 24
  s.hier.regional_block = 8, s.hier.regional_window = 64, s.hier.global_block = 32;
  s.layout = LayoutKind::zigzag;
  s.seed = 5;
  s.out_path = path("o.npy"), s.lse_path = path("lse.npy");
  s.verify = true, s.check_rows = 9, s.threads = 1;
  const JobReport r = run_job_local(3, s);
  ASSERT_TRUE(r.verify && r.sampled);
  EXPECT_TRUE(r.verify->ok) << error_text(r.verify->err, r.verify->tol);
  EXPECT_TRUE(r.sampled->ok) << error_text(r.sampled->err, r.sampled->tol);
  // The files against the hierarchy's float64 reference on the same inputs.
  const Tensor q = generated(s, SynthStream::q, s.nq, s.hq),
               k = generated(s, SynthStream::k, s.nk, s.hkv),
               v = generated(s, SynthStream::v, s.nk, s.hkv);
  const AttentionArgs a(s, q.data.data(), k.data.data(), v.data.data());
  const Tensor o = read_npy(s.out_path), lse = read_npy(s.lse_path);
  std::vector<float> of(static_cast<std::size_t>(o.numel())),
      lf(static_cast<std::size_t>(lse.numel()));
  for (int64_t i = 0; i < o.numel(); ++i) of[static_cast<std::size_t>(i)] = o.get(i);
  for (int64_t i = 0; i < lse.numel(); ++i) lf[static_cast<std::size_t>(i)] = lse.get(i);
  const ErrorStats e = compare_to_reference(a, of.data(), lf.data(), reference_hierarchical(a));
  EXPECT_TRUE(within(e, stored_tolerance(s.dtype))) << error_text(e, stored_tolerance(s.dtype));
  // The plan's stage figures are the job's: summaries, scores per rank, gathered means.
  PlanInput in(s);
  in.layout = s.layout, in.ranks = 3, in.links = PlanLinks::in_process, in.threads = 1;
  const Plan p = make_plan(in, load_hardware_profile(std::string(RINGATTN_SOURCE_DIR) +
                                                     "/configs/hardware/cpu-icelake-2core.ini"));
  ASSERT_TRUE(p.stage.on);
  EXPECT_EQ(p.stage.summaries, r.stats[0].summaries);
  for (int x = 0; x < 3; ++x)
    EXPECT_DOUBLE_EQ(p.stage.scores[static_cast<std::size_t>(x)],
                     r.stats[static_cast<std::size_t>(x)].stage_pair_evals);
  int64_t pairs = 0;
  for (const RankStats& st : r.stats) pairs += st.pairs;
  int64_t planned = 0;
  for (const RankPlan& rp : p.per_rank) planned += rp.ring_pairs;
  EXPECT_EQ(pairs, planned);
}

TEST_F(Job, BlockRoutingWritesItsChoices) {
  JobSpec s;
  s.nq = s.nk = 300, s.hq = 4, s.hkv = 1, s.head_dim = 16;
  s.mask = Mask::causal(0);
  s.hier.route_block = 32, s.hier.route_topk = 3;
  s.layout = LayoutKind::striped;
  s.seed = 9;
  s.out_path = path("o.npy"), s.route_path = path("route.npy");
  s.check_rows = 12, s.threads = 1;
  const JobReport r = run_job_local(4, s);
  ASSERT_TRUE(r.sampled);
  EXPECT_TRUE(r.sampled->ok) << error_text(r.sampled->err, r.sampled->tol);
  EXPECT_EQ(r.outputs, (std::vector<std::string>{s.out_path, s.route_path}));
  const Tensor q = generated(s, SynthStream::q, s.nq, s.hq),
               k = generated(s, SynthStream::k, s.nk, s.hkv),
               v = generated(s, SynthStream::v, s.nk, s.hkv);
  std::vector<int32_t> want;
  std::vector<double> gap;
  const AttentionArgs a(s, q.data.data(), k.data.data(), v.data.data());
  reference_hierarchical(a, &want, &gap);
  std::vector<int32_t> got(want.size());
  read_raw_npy(s.route_path, "'descr': '<i4'", "(1, 300, 4, 3)", got.data(),
               got.size() * sizeof(int32_t));
  // Without a window the plan's scores (own block's causal part + min(k - 1, earlier
  // blocks) whole blocks per query and head) are what the stage computed.
  PlanInput in(s);
  in.layout = s.layout, in.ranks = 4, in.links = PlanLinks::in_process, in.threads = 1;
  const Plan p = make_plan(in, load_hardware_profile(std::string(RINGATTN_SOURCE_DIR) +
                                                     "/configs/hardware/cpu-icelake-2core.ini"));
  for (int x = 0; x < 4; ++x)
    EXPECT_DOUBLE_EQ(p.stage.scores[static_cast<std::size_t>(x)],
                     r.stats[static_cast<std::size_t>(x)].stage_pair_evals);
  EXPECT_EQ(p.stage.summaries, r.stats[0].summaries);
  int64_t differ = 0;
  for (std::size_t row = 0; row < gap.size(); ++row)
    for (int j = 0; j < 3; ++j)
      differ += got[row * 3 + static_cast<std::size_t>(j)] !=
                    want[row * 3 + static_cast<std::size_t>(j)] &&
                !(gap[row] < 1e-4);
  EXPECT_EQ(differ, 0);
}

TEST_F(Job, PlanPredictsAQuantizedWiresBytesAndMemory) {
  // The plan's bytes are the job's with K/V blocks of 136 B per token-head (int8 g64, D = 128;
  // KIVI keys: 128 B of codes per token-head and 128 x 4 B of scales per group of 64 tokens).
  JobSpec s;
  s.nq = s.nk = 600, s.hq = 4, s.hkv = 2, s.head_dim = 128;
  s.mask = Mask::causal(0);
  s.layout = LayoutKind::zigzag;
  s.seed = 3, s.threads = 1;
  s.kv_wire.bits = QuantBits::int8, s.kv_wire.group = 64;
  const HardwareProfile hw = load_hardware_profile(std::string(RINGATTN_SOURCE_DIR) +
                                                   "/configs/hardware/cpu-icelake-2core.ini");
  for (const bool kivi : {false, true})
    for (const bool store : {false, true}) {
      s.kv_store = store, s.kv_wire.kivi = kivi;
      const JobReport r = run_job_local(3, s);
      PlanInput in(s);
      in.layout = s.layout, in.ranks = 3, in.links = PlanLinks::in_process, in.threads = 1;
      in.kv_wire = s.kv_wire, in.kv_store = s.kv_store;
      const Plan p = make_plan(in, hw);
      EXPECT_EQ(p.kv_row_bytes, 136);
      double sent = 0;
      for (const RankStats& st : r.stats) sent += double(st.bytes_sent);
      EXPECT_EQ(p.bytes_per_step * 3 * (p.steps - 1), sent) << store << kivi;
      for (int x = 0; x < 3; ++x)
        EXPECT_EQ(p.per_rank[static_cast<std::size_t>(x)].mem.peak(),
                  double(r.stats[static_cast<std::size_t>(x)].peak_bytes))
            << store << kivi << " rank " << x;
    }
}

// K/V selection through the job: the kept-set file and O equal the float64
// reference of the selection (kept flags away from near-ties of importance),
// and the plan's bytes (exact pass plus the stage's passes and all-reduce) are the run's.
TEST_F(Job, KvSelectionWritesItsKeptSetAndThePlanKnowsItsBytes) {
  JobSpec s;
  s.nq = s.nk = 600, s.hq = 4, s.hkv = 2, s.head_dim = 32;
  s.mask = Mask::causal(0);
  s.mask.sinks = 3;
  s.layout = LayoutKind::zigzag;
  s.seed = 5, s.threads = 1;
  s.select.keep = 0.15, s.select.keep_recent = 20;
  s.out_path = path("o.npy"), s.lse_path = path("lse.npy"), s.keep_path = path("keep.npy");
  s.check_rows = 11;
  const JobReport r = run_job_local(3, s);
  ASSERT_TRUE(r.sampled && r.select);
  EXPECT_TRUE(r.sampled->ok) << error_text(r.sampled->err, r.sampled->tol);
  EXPECT_EQ(r.select->keys, 2 * 600);
  EXPECT_EQ(r.outputs, (std::vector<std::string>{s.out_path, s.lse_path, s.keep_path}));
  const Tensor q = generated(s, SynthStream::q, s.nq, s.hq),
               k = generated(s, SynthStream::k, s.nk, s.hkv),
               v = generated(s, SynthStream::v, s.nk, s.hkv);
  const AttentionArgs a(s, q.data.data(), k.data.data(), v.data.data());
  const SelectReference ref = kv_select_reference(a, s.select);
  std::vector<uint8_t> keep(ref.keep.size());
  read_raw_npy(s.keep_path, "'descr': '|u1'", "(1, 2, 600)", keep.data(), keep.size());
  int64_t differ = 0, kept = 0;
  for (std::size_t x = 0; x < keep.size(); ++x) {
    const bool got = keep[x] != 0;
    kept += got;
    differ += got != (ref.keep[x] != 0) && !(ref.margin[x] < 1e-4);
  }
  EXPECT_EQ(differ, 0);
  EXPECT_EQ(kept, r.select->kept);
  const Tensor o = read_npy(s.out_path), lse = read_npy(s.lse_path);
  std::vector<float> of(static_cast<std::size_t>(o.numel())),
      lf(static_cast<std::size_t>(lse.numel()));
  for (int64_t i = 0; i < o.numel(); ++i) of[static_cast<std::size_t>(i)] = o.get(i);
  for (int64_t i = 0; i < lse.numel(); ++i) lf[static_cast<std::size_t>(i)] = lse.get(i);
  const ErrorStats e =
      compare_to_reference(a, of.data(), lf.data(), ReferenceResult{ref.o, ref.lse});
  EXPECT_TRUE(within(e, stored_tolerance(s.dtype))) << error_text(e, stored_tolerance(s.dtype));
  // What the selection changes, against exact attention: the float64 figure.
  const ReferenceResult dense = reference_attention(a);
  double d2 = 0, e2 = 0;
  for (std::size_t i = 0; i < dense.o.size(); ++i)
    d2 += (ref.o[i] - dense.o[i]) * (ref.o[i] - dense.o[i]), e2 += dense.o[i] * dense.o[i];
  EXPECT_GT(std::sqrt(d2 / e2), 1e-3);  // the selection changes something
  EXPECT_NEAR(r.select->o_rel_vs_exact, std::sqrt(d2 / e2), 1e-4 * std::sqrt(d2 / e2));

  PlanInput in(s);
  in.layout = s.layout, in.ranks = 3, in.links = PlanLinks::in_process, in.threads = 1;
  in.select = s.select;
  const Plan p = make_plan(in, load_hardware_profile(std::string(RINGATTN_SOURCE_DIR) +
                                                     "/configs/hardware/cpu-icelake-2core.ini"));
  ASSERT_TRUE(p.select.on);
  EXPECT_EQ(p.select.passes, 2);
  double sent = 0;
  for (const RankStats& st : r.stats) sent += double(st.bytes_sent);
  const double exact = p.bytes_per_step * 3 * (p.steps - 1);
  // The exact pass, each later pass (its shared rows and rotations), the all-reduce.
  EXPECT_EQ(exact + p.select.sent, sent);
}

TEST_F(Job, ThreadsPerRankSayWhy) {
  // In-process ranks share this process's cores; --threads wins over everything.
  JobSpec s;
  s.nq = s.nk = 64, s.hq = s.hkv = 1, s.head_dim = 16;
  const int cores = omp_get_num_procs();
  run_local(3, [&](Communicator& comm) {
    const ThreadChoice c = choose_threads(s, comm);
    EXPECT_EQ(c.threads, std::max(1, cores / 3));
    EXPECT_EQ(c.why, fmt::format("{} core{} / 3 in-process ranks", cores, cores == 1 ? "" : "s"));
  });
  s.threads = 5;
  run_local(2, [&](Communicator& comm) {
    const ThreadChoice c = choose_threads(s, comm);
    EXPECT_EQ(c.threads, 5);
    EXPECT_EQ(c.why, "--threads");
  });
}

TEST_F(Job, ErrorsNameTheFieldAndWriteNothing) {
  JobSpec s;
  s.nq = s.nk = 64, s.hq = 4, s.hkv = 3, s.head_dim = 16;
  s.out_path = path("o.npy");
  try {
    run_job_local(2, s);
    FAIL() << "expected a FieldError";
  } catch (const FieldError& e) {
    EXPECT_EQ(e.field(), "hkv") << e.what();
  }
  s.hkv = 2;
  s.lse_path = s.out_path;
  EXPECT_THROW(run_job_local(2, s), FieldError);
  s.lse_path.clear();
  s.fail_rank = 1;  // a rank that throws ends every rank, with its number
  try {
    run_job_local(3, s);
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rank 1"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(fs::is_empty(dir_));  // neither the output nor a temporary
}

}  // namespace
}  // namespace ringattn
