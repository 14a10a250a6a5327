// `ringattn run --backward`: gradients written from file inputs against the
// float64 backward reference, the same gradients for every rank count, the
// checks (--verify, --check-rows) in the report and the metrics, and the
// options' errors, each naming its option and leaving no output behind.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "ringattn/backward_reference.hpp"
#include "run_fixture.hpp"

namespace ringattn {
namespace {

using test::rel_fro;

using test::Result;

std::vector<float> floats(const Tensor& t) {
  std::vector<float> v(static_cast<std::size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) v[static_cast<std::size_t>(i)] = t.get(i);
  return v;
}

class BackwardCli : public test::RunError {};

TEST_F(BackwardCli, GradientsFromFilesEqualTheReference) {
  // B = 2, N = 301, H 4/2, D 32; causal window 61 with 3 sinks; dO from a file.
  const int64_t b = 2, n = 301, hq = 4, hkv = 2, d = 32;
  write_files({b, n, hq, d}, {b, n, hkv, d}, {b, n, hkv, d});
  const Tensor d_o = test::random_tensor(DType::f32, {b, n, hq, d}, 4);
  save_npy(path("do.npy"), d_o);
  const Tensor q = read_npy(path("q.npy")), k = read_npy(path("k.npy")),
               v = read_npy(path("v.npy"));
  AttentionArgs a;
  a.batch = b, a.nq = a.nk = n, a.hq = hq, a.hkv = hkv, a.head_dim = d;
  a.mask = Mask::causal(0);
  a.mask.lo = -60;
  a.mask.sinks = 3;
  a.q = q.data.data(), a.k = k.data.data(), a.v = v.data.data();
  const BackwardReference ref = reference_attention_backward(a, d_o.as<float>());
  for (const char* layout : {"zigzag", "striped"})
    for (const char* ranks : {"1", "3"}) {
      SCOPED_TRACE(std::string(layout) + " on " + ranks);
      std::vector<std::string> args = file_args();
      args.insert(args.end(), {"--ranks-local",
                               ranks,
                               "--layout",
                               layout,
                               "--causal",
                               "--window-left",
                               "60",
                               "--sinks",
                               "3",
                               "--backward",
                               "--do",
                               path("do.npy"),
                               "--dq-out",
                               path("dq.npy"),
                               "--dk-out",
                               path("dk.npy"),
                               "--dv-out",
                               path("dv.npy"),
                               "--threads",
                               "1"});
      const Result r = run(args);
      ASSERT_EQ(r.rc, 0) << r.out << r.err;
      EXPECT_NE(r.out.find(path("dq.npy") + ", " + path("dk.npy") + ", " + path("dv.npy")),
                std::string::npos)
          << r.out;
      EXPECT_LE(rel_fro(floats(read_npy(path("dq.npy"))), ref.dq), 1e-5);
      EXPECT_LE(rel_fro(floats(read_npy(path("dk.npy"))), ref.dk), 1e-5);
      EXPECT_LE(rel_fro(floats(read_npy(path("dv.npy"))), ref.dv), 1e-5);
    }
}

TEST_F(BackwardCli, GeneratedRunPassesBothChecksAndWritesItsMetrics) {
  const Result r = run({"--ranks-local",
                        "3",
                        "--seq-len",
                        "700",
                        "--heads",
                        "4",
                        "--kv-heads",
                        "1",
                        "--head-dim",
                        "64",
                        "--causal",
                        "--dtype",
                        "bfloat16",
                        "--backward",
                        "--verify",
                        "--check-rows",
                        "8",
                        "--dq-out",
                        path("dq.npy"),
                        "--grad-dtype",
                        "float32",
                        "--metrics",
                        path("m.json"),
                        "--threads",
                        "1"});
  ASSERT_EQ(r.rc, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("vs the single-rank kernel's backward (tolerance 1e-05"), std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("): ok"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("on 8 sampled query rows"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("with the run's LSE and Delta): ok"), std::string::npos) << r.out;
  const std::string m = test::slurp(path("m.json"));
  for (const char* key : {"\"bwd_ms\"", "\"bwd_grad_bytes\"", "\"grad_pass\": true",
                          "\"ref_grad_pass\": true", "\"backward\": true"})
    EXPECT_NE(m.find(key), std::string::npos) << key << " in " << m;
  const Tensor dq = read_npy(path("dq.npy"));
  EXPECT_EQ(dq.dtype, DType::f32);
  EXPECT_EQ(dq.shape, (std::vector<int64_t>{1, 700, 4, 64}));
}

TEST_F(BackwardCli, SameGradientsForEveryRankCount) {
  std::vector<std::vector<float>> dk;
  for (const char* ranks : {"1", "4"}) {
    const Result r = run({"--ranks-local", ranks, "--seq-len", "500", "--heads", "2", "--kv-heads",
                          "1", "--head-dim", "32", "--causal", "--sinks", "2", "--backward",
                          "--dk-out", path(std::string("dk") + ranks + ".npy"), "--threads", "1"});
    ASSERT_EQ(r.rc, 0) << r.out << r.err;
    dk.push_back(floats(read_npy(path(std::string("dk") + ranks + ".npy"))));
  }
  ASSERT_EQ(dk[0].size(), dk[1].size());
  double e2 = 0, r2 = 0;
  for (std::size_t i = 0; i < dk[0].size(); ++i)
    e2 += (dk[1][i] - dk[0][i]) * (dk[1][i] - dk[0][i]), r2 += dk[0][i] * dk[0][i];
  EXPECT_LE(std::sqrt(e2 / r2), 1e-6);
}

TEST_F(BackwardCli, OptionErrorsNameTheirOption) {
  write_files({1, 64, 2, 32}, {1, 64, 1, 32}, {1, 64, 1, 32});
  save_npy(path("do_bad.npy"), test::random_tensor(DType::f32, {1, 64, 1, 32}, 5));
  std::vector<std::string> args = file_args();
  args.insert(args.end(), {"--backward", "--do", path("do_bad.npy")});
  expect_failure(args, "--do");
  expect_failure({"--seq-len", "64", "--dq-out", path("dq.npy")}, "--dq-out");
  expect_failure({"--seq-len", "64", "--do", path("do_bad.npy")}, "--do");
  expect_failure({"--seq-len", "64", "--backward", "--kv-wire", "int8"}, "--backward");
  expect_failure({"--seq-len", "64", "--backward", "--moe-experts", "4", "--moe-ffn", "64"},
                 "--backward");
  expect_failure({"--seq-len", "64", "--backward", "--dk-out", path("o.npy")}, "--dk-out");
  args = file_args();
  args.insert(args.end(), {"--backward", "--dv-out", path("q.npy")});
  expect_failure(args, "--dv-out");
  expect_failure({"--seq-len", "64", "--grad-dtype", "float32"}, "--grad-dtype");
}

TEST_F(BackwardCli, AttendWritesGradientsInTheStorageDtype) {
  // bfloat16 files; dO generated from --seed is run's: the same gradients as run
  // on the same files and seed.
  const int64_t n = 200;
  for (const char* name : {"q", "k", "v"})
    save_npy(path(std::string(name) + ".npy"),
             test::random_tensor(DType::bf16, {1, n, name[0] == 'q' ? 4 : 2, 32},
                                 static_cast<uint64_t>(name[0])));
  const Result a = run_binary({"attend", "--q", path("q.npy"), "--k", path("k.npy"), "--v",
                               path("v.npy"), "--out", path("o.npy"), "--causal", "--backward",
                               "--seed", "9", "--verify", "--dk-out", path("dk_attend.npy")});
  ASSERT_EQ(a.rc, 0) << a.out << a.err;
  EXPECT_NE(a.out.find("gradients verified vs float64: dQ"), std::string::npos) << a.out;
  const Tensor dk = read_npy(path("dk_attend.npy"));
  EXPECT_EQ(dk.dtype, DType::bf16);
  const Result r = run({"--q", path("q.npy"), "--k", path("k.npy"), "--v", path("v.npy"),
                        "--ranks-local", "2", "--causal", "--backward", "--seed", "9", "--dk-out",
                        path("dk_run.npy"), "--threads", "1"});
  ASSERT_EQ(r.rc, 0) << r.out << r.err;
  const std::vector<float> x = floats(dk), y = floats(read_npy(path("dk_run.npy")));
  ASSERT_EQ(x.size(), y.size());
  int64_t far = 0;  // rounded to bfloat16 from float32 sums in different orders
  for (std::size_t i = 0; i < x.size(); ++i)
    far += std::fabs(x[i] - y[i]) > 1e-2f * (std::fabs(y[i]) + 1e-3f);
  EXPECT_EQ(far, 0);
}

TEST_F(BackwardCli, AttendOptionErrors) {
  write_files({1, 64, 2, 32}, {1, 64, 1, 32}, {1, 64, 1, 32});
  const std::vector<std::string> files = {"attend",      "--q",         path("q.npy"),
                                          "--k",         path("k.npy"), "--v",
                                          path("v.npy"), "--out",       path("o.npy")};
  const auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> a = files;
    a.insert(a.end(), extra.begin(), extra.end());
    return run_binary(a);
  };
  expect_clean_failure(with({"--dq-out", path("dq.npy")}), "--dq-out", {path("o.npy")});
  expect_clean_failure(with({"--backward", "--do", path("k.npy")}), "k.npy", {path("o.npy")});
  expect_clean_failure(with({"--backward", "--dq-out", path("o.npy")}), "--dq-out",
                       {path("dq.npy")});
}

}  // namespace
}  // namespace ringattn
