// The job library (ringattn/job.hpp) called directly, without the executable:
// whole in-process jobs whose written O and LSE files are checked against the
// float64 reference on the same global inputs.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <string>
#include <vector>

#include "ringattn/error.hpp"
#include "ringattn/job.hpp"
#include "ringattn/npy.hpp"
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

  std::string dir_;
};

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
