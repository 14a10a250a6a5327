// Packed documents through the commands: `run` and `attend` from files with
// --cu-seqlens against each document's own float64 attention, the checks and
// the metrics, the reproduce line, `mask --show`, `plan` against `run`, and the
// options' errors, each naming its option and leaving no output behind.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <numeric>
#include <string>
#include <vector>

#include "ringattn/reference.hpp"
#include "run_fixture.hpp"

namespace ringattn {
namespace {

using test::Result;

class DocumentsCli : public test::RunError {
 protected:
  // A 1-d integer .npy ('<i4' or '<i8').
  void save_ints(const std::string& name, const std::vector<int64_t>& v, bool int64) {
    std::ofstream f(path(name), std::ios::binary);
    const std::string h = npy_header_bytes(int64 ? "<i8" : "<i4", {static_cast<int64_t>(v.size())});
    f.write(h.data(), static_cast<std::streamsize>(h.size()));
    for (const int64_t x : v) {
      if (int64) {
        f.write(reinterpret_cast<const char*>(&x), sizeof x);
      } else {
        const auto y = static_cast<int32_t>(x);
        f.write(reinterpret_cast<const char*>(&y), sizeof y);
      }
    }
  }
};

std::vector<int64_t> offsets(const std::vector<int64_t>& lens) {
  std::vector<int64_t> off(lens.size() + 1, 0);
  std::partial_sum(lens.begin(), lens.end(), off.begin() + 1);
  return off;
}

std::string join(const std::vector<int64_t>& v) {
  std::string s;
  for (const int64_t x : v) s += (s.empty() ? "" : ",") + std::to_string(x);
  return s;
}

// Block-diagonal attention as each document's own attention (3-d q, k, v:
// [N, H, D]), causal with a window of `left` keys and `sinks` sinks inside the
// document: O [N, Hq, D] and LSE [Hq, N] in float64.
struct DocReference {
  std::vector<double> o, lse;
};
DocReference per_document(const Tensor& q, const Tensor& k, const Tensor& v,
                          const std::vector<int64_t>& off, int64_t left, int64_t sinks) {
  const int64_t n = q.shape[0], hq = q.shape[1], hkv = k.shape[1], d = q.shape[2];
  DocReference out;
  out.o.assign(static_cast<std::size_t>(n * hq * d), 0.0);
  out.lse.assign(static_cast<std::size_t>(hq * n), 0.0);
  for (std::size_t i = 0; i + 1 < off.size(); ++i) {
    const int64_t a = off[i], len = off[i + 1] - off[i];
    if (len == 0) continue;
    AttentionArgs args;
    args.nq = args.nk = len, args.hq = hq, args.hkv = hkv, args.head_dim = d;
    args.mask = Mask::causal(0);
    args.mask.lo = -left;
    args.mask.sinks = sinks;
    args.q = q.as<float>() + a * hq * d;
    args.k = k.as<float>() + a * hkv * d;
    args.v = v.as<float>() + a * hkv * d;
    const ReferenceResult r = reference_attention(args);
    for (int64_t t = 0; t < len; ++t)
      for (int64_t h = 0; h < hq; ++h) {
        for (int64_t c = 0; c < d; ++c)
          out.o[static_cast<std::size_t>(((a + t) * hq + h) * d + c)] =
              r.o[static_cast<std::size_t>((t * hq + h) * d + c)];
        out.lse[static_cast<std::size_t>(h * n + a + t)] =
            r.lse[static_cast<std::size_t>(h * len + t)];
      }
  }
  return out;
}

double max_rel(const Tensor& got, const std::vector<double>& want) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < got.numel(); ++i) {
    const double e = double(got.get(i)) - want[static_cast<std::size_t>(i)];
    num += e * e, den += want[static_cast<std::size_t>(i)] * want[static_cast<std::size_t>(i)];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

// Lengths with a 1-token document, an empty one, ones shorter than P and one longer
// than the others together.
const std::vector<int64_t> kLens = {1, 40, 0, 2, 130, 3, 77, 290, 1, 25};

TEST_F(DocumentsCli, RunAndAttendFromFilesEqualEachDocumentsAttention) {
  const std::vector<int64_t> off = offsets(kLens);
  const int64_t n = off.back(), hq = 4, hkv = 2, d = 32;
  write_files({n, hq, d}, {n, hkv, d}, {n, hkv, d});
  save_ints("cu32.npy", off, false);
  save_ints("cu64.npy", off, true);
  const Tensor q = read_npy(path("q.npy")), k = read_npy(path("k.npy")),
               v = read_npy(path("v.npy"));
  const DocReference ref = per_document(q, k, v, off, 37, 2);
  for (const char* layout : {"balanced", "zigzag", "striped"})
    for (const char* ranks : {"1", "3", "4"}) {
      SCOPED_TRACE(std::string(layout) + " on " + ranks);
      std::vector<std::string> args = file_args();
      args.insert(args.end(), {"--ranks-local", ranks, "--layout", layout, "--causal",
                               "--window-left", "37", "--sinks", "2", "--cu-seqlens",
                               path(std::string(ranks) == "3" ? "cu64.npy" : "cu32.npy"), "--out",
                               path("o.npy"), "--lse-out", path("lse.npy"), "--threads", "1"});
      const Result r = run(args);
      ASSERT_EQ(r.rc, 0) << r.err;
      EXPECT_LT(max_rel(read_npy(path("o.npy")), ref.o), test::kTolO);
      EXPECT_LT(max_rel(read_npy(path("lse.npy")), ref.lse), test::kTolO);
    }
  const Result a =
      run_binary({"attend", "--q", path("q.npy"), "--k", path("k.npy"), "--v", path("v.npy"),
                  "--causal", "--window-left", "37", "--sinks", "2", "--doc-lens", join(kLens),
                  "--out", path("oa.npy"), "--lse-out", path("lsea.npy"), "--verify"});
  ASSERT_EQ(a.rc, 0) << a.err;
  EXPECT_LT(max_rel(read_npy(path("oa.npy")), ref.o), test::kTolO);
  EXPECT_LT(max_rel(read_npy(path("lsea.npy")), ref.lse), test::kTolO);
}

TEST_F(DocumentsCli, ChecksMetricsAndTheReproduceLine) {
  const std::string lens = join(kLens);
  const Result r = run({"--ranks-local", "3", "--doc-lens", lens, "--causal", "--heads", "4",
                        "--kv-heads", "1", "--head-dim", "32", "--verify", "--check-rows", "40",
                        "--backward", "--metrics", path("m.json"), "--threads", "1"});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("layout balanced"), std::string::npos) << r.out;  // auto with documents
  EXPECT_NE(r.out.find("10 documents of 0 to 290 tokens"), std::string::npos) << r.out;
  for (const char* check : {"max error", "reference check", "grad error", "grad check"}) {
    const std::size_t at = r.out.find(check);
    ASSERT_NE(at, std::string::npos) << check << " in " << r.out;
    EXPECT_NE(r.out.substr(at, r.out.find('\n', at) - at).find(": ok"), std::string::npos) << r.out;
  }
  // The per-rank pairs: the column and the metrics add up to the problem's pairs.
  EXPECT_NE(r.out.find(" pairs "), std::string::npos) << r.out;
  const std::string m = test::slurp(path("m.json"));
  EXPECT_NE(m.find("\"docs\": 10"), std::string::npos) << m;
  int64_t pairs = 0;
  for (std::size_t at = m.find("\"record\": \"rank\""); at != std::string::npos;
       at = m.find("\"record\": \"rank\"", at + 1)) {
    const std::size_t p = m.find("\"pairs\": ", at);
    ASSERT_NE(p, std::string::npos);
    pairs += std::stoll(m.substr(p + 9));
  }
  int64_t want = 0;  // causal inside each document
  for (const int64_t l : kLens) want += l * (l + 1) / 2;
  EXPECT_EQ(pairs, want);

  // The reproduce line spells the sequence length the documents gave.
  const std::size_t at = r.out.find("reproduce");
  ASSERT_NE(at, std::string::npos);
  const std::string line = r.out.substr(at, r.out.find('\n', at) - at);
  EXPECT_NE(line.find(fmt::format("--seq-len {} ", offsets(kLens).back())), std::string::npos)
      << line;
}

TEST_F(DocumentsCli, MaskShowIsBlockDiagonal) {
  const Result r = run_binary({"mask", "--doc-lens", "3,0,5", "--causal", "--show"});
  ASSERT_EQ(r.rc, 0) << r.err;
  std::vector<std::string> rows;
  for (const std::string& l : test::lines_of(r.out))
    if (l.size() == 8 && l.find_first_not_of("#.") == std::string::npos) rows.push_back(l);
  ASSERT_EQ(rows.size(), 8u) << r.out;
  for (int i = 0; i < 8; ++i)
    for (int j = 0; j < 8; ++j) {
      const bool same = (i < 3) == (j < 3);
      EXPECT_EQ(rows[static_cast<std::size_t>(i)][static_cast<std::size_t>(j)],
                same && j <= i ? '#' : '.')
          << i << "," << j << "\n"
          << r.out;
    }
}

TEST_F(DocumentsCli, PlanPredictsRunsPerRankPairs) {
  const std::string lens = join(kLens);
  const std::vector<std::string> common = {"--doc-lens", lens,         "--causal", "--heads",
                                           "2",          "--head-dim", "32",       "--metrics"};
  std::vector<std::string> plan = {"plan",       "--ranks-local",     "4",
                                   "--hardware", "cpu-icelake-2core", "--json"};
  plan.insert(plan.end(), common.begin(), common.end());
  plan.push_back(path("plan.json"));
  const Result p = run_binary(plan);
  ASSERT_EQ(p.rc, 0) << p.err;
  std::vector<std::string> args = {"--ranks-local", "4", "--threads", "1"};
  args.insert(args.end(), common.begin(), common.end());
  args.push_back(path("run.json"));
  const Result r = run(args);
  ASSERT_EQ(r.rc, 0) << r.err;
  const std::string pm = test::slurp(path("plan.json")), rm = test::slurp(path("run.json"));
  const auto value = [](const std::string& s, const std::string& key) {
    const std::size_t at = s.find("\"" + key + "\": ");
    return at == std::string::npos ? std::string("missing") : s.substr(at + key.size() + 4, 8);
  };
  EXPECT_EQ(value(pm, "imbalance_scheduled"), value(rm, "imbalance_scheduled")) << pm << "\n" << rm;
  EXPECT_NE(pm.find("\"layout\": \"balanced\""), std::string::npos) << pm;
}

TEST_F(DocumentsCli, BadDocumentsNameTheirOption) {
  const int64_t n = 50;
  write_files({n, 2, 16}, {n, 2, 16}, {n, 2, 16});
  const auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = file_args();
    args.insert(args.end(), {"--ranks-local", "2"});
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  };
  save_ints("start1.npy", {1, 20, 50}, false);
  save_ints("down.npy", {0, 30, 20, 50}, false);
  save_ints("short.npy", {0, 20, 40}, true);
  save_ints("one.npy", {0}, false);
  save_npy(path("float.npy"), test::random_tensor(DType::f32, {3}, 5));
  expect_failure(with({"--cu-seqlens", path("start1.npy")}), "--cu-seqlens");
  EXPECT_NE(expect_failure(with({"--cu-seqlens", path("down.npy")}), "--cu-seqlens")
                .find("offset 2 (20) is below offset 1 (30)"),
            std::string::npos);
  EXPECT_NE(expect_failure(with({"--cu-seqlens", path("short.npy")}), "--cu-seqlens")
                .find("ends at 40 but the sequence has 50 tokens"),
            std::string::npos);
  expect_failure(with({"--cu-seqlens", path("one.npy")}), "--cu-seqlens");
  EXPECT_NE(expect_failure(with({"--cu-seqlens", path("float.npy")}), "--cu-seqlens")
                .find("expected int32 ('<i4') or int64 ('<i8')"),
            std::string::npos);
  expect_failure(with({"--cu-seqlens", path("nothere.npy")}), "--cu-seqlens");
  expect_failure(with({"--doc-lens", "20,x"}), "--doc-lens");
  expect_failure(with({"--doc-lens", "20,-3,33"}), "--doc-lens");
  expect_failure(with({"--doc-lens", "20,20"}), "--doc-lens");
  expect_failure(with({"--doc-lens", "20,30", "--cu-seqlens", path("short.npy")}), "--doc-lens");
  expect_failure(with({"--kv-doc-lens", "20,30"}), "--kv-doc-lens");
  expect_failure(with({"--global-across-docs"}), "--global-across-docs");
  expect_failure(with({"--doc-lens", "20,30", "--block-size", "8"}), "--doc-lens");
  expect_failure(with({"--doc-lens", "20,30", "--kv-doc-lens", "10,10,30"}), "--kv-doc-lens");
  // Generated inputs: the documents must add up to a given --seq-len.
  expect_failure({"--ranks-local", "2", "--seq-len", "64", "--doc-lens", "20,30"}, "--doc-lens");
}

}  // namespace
}  // namespace ringattn
