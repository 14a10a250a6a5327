// Packed documents through the ring on the in-process backend: every layout
// (balanced included), P = 1..8, GQA and MQA, causal or not, windows and
// sinks inside documents, global tokens, cross-attention with key documents,
// and the backward pass; each result against the float64 reference of every
// document computed alone (documents_util.hpp), and the schedule's pairs
// against a brute-force count of the visible pairs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "documents_util.hpp"
#include "ring_cases.hpp"
#include "ringattn/comm.hpp"
#include "ringattn/ring.hpp"

namespace ringattn {
namespace {

using test::DocMaskSpec;
using test::DocPredicate;
using test::offsets_of;
using test::rel_fro;

// Relative Frobenius error of float32 results against float64 (O, and the
// gradients), and the largest LSE error relative to max(1, |LSE|).
constexpr double kTol = 1e-5;

// The largest errors of the forward runs so far (printed after each test).
struct Worst {
  double o = 0, lse = 0;
  int runs = 0;
  void print(const char* what) {
    std::printf("[  error   ] %s: %d ring runs, worst O rel. Frobenius %.1e, LSE %.1e\n", what,
                runs, o, lse);
    *this = {};
  }
};
Worst worst;

// One problem: its documents, mask and shapes. Every layout runs it.
struct DocRingCase {
  std::vector<int64_t> q_lens, k_lens;  // k_lens empty: self-attention
  DocMaskSpec mask;
  int64_t b = 1, hq = 4, hkv = 2, d = 16;
  uint64_t seed = 1;

  std::string name() const {
    std::string s = mask.name() + " B=" + std::to_string(b) + " H=" + std::to_string(hq) + "/" +
                    std::to_string(hkv) + " D=" + std::to_string(d) + " docs";
    for (const int64_t l : q_lens) s += " " + std::to_string(l);
    if (!k_lens.empty()) {
      s += " / keys";
      for (const int64_t l : k_lens) s += " " + std::to_string(l);
    }
    return s;
  }
};

constexpr LayoutKind kLayouts[] = {LayoutKind::contiguous, LayoutKind::zigzag, LayoutKind::striped,
                                   LayoutKind::balanced};

// The same for LSE [B, H, local] into [B, H, n].
void scatter_lse(const Layout& l, int r, int64_t b, int64_t h, int64_t n, const float* local,
                 std::vector<float>& global) {
  const int64_t nl = l.tokens(r);
  for (int64_t bh = 0; bh < b * h; ++bh)
    for (const Segment& s : l.segments(r))
      for (int64_t i = 0; i < s.count; ++i)
        global[static_cast<std::size_t>(bh * n + s.start + i * s.stride)] =
            local[static_cast<std::size_t>(bh * nl + s.local_offset + i)];
}

// The global problem with its documents, the brute-force count of its
// visible pairs, and its float64 reference (with the gradients when
// `backward`), built once for every rank count and layout.
struct Built {
  DocRingCase c;
  std::vector<int64_t> qo, ko;  // ko empty: self-attention
  test::Problem g;
  Tensor dO;
  int64_t pairs = 0;
  test::DocReference ref;
};

Built build(const DocRingCase& c, bool backward = false) {
  Built s;
  s.c = c;
  s.qo = offsets_of(c.q_lens);
  if (!c.k_lens.empty()) s.ko = offsets_of(c.k_lens);
  const int64_t nq = s.qo.back(), nk = s.ko.empty() ? nq : s.ko.back();
  s.g = test::make_problem(c.b, nq, nk, c.hq, c.hkv, c.d, DType::f32, c.seed);
  s.g.args.mask = test::spec_mask(c.mask, nq, nk);
  auto d = std::make_shared<DocOffsets>();
  d->q = s.qo, d->k = s.ko, d->global_across = c.mask.global_across;
  s.g.args.set_documents(d);
  const DocPredicate pr(c.mask, s.qo, s.ko);
  s.pairs = pr.count();
  EXPECT_EQ(s.g.args.pairs(), s.pairs) << c.name() << ": problem pairs";
  if (backward) {
    s.dO = test::random_tensor(DType::f32, {c.b, nq, c.hq, c.d}, c.seed + 1000);
    s.ref = test::doc_reference(s.g, c.mask, pr, &s.dO);
  } else if (!c.mask.global.empty() && (c.mask.global_across || !s.ko.empty())) {
    // Global tokens across documents, or in cross-attention, are not block-diagonal.
    s.ref = test::doc_reference_brute(s.g, pr);
  } else {
    s.ref = test::doc_reference(s.g, c.mask, pr);
  }
  return s;
}

// The schedule computes every visible pair exactly once.
void expect_pairs_once(const Built& s, const RingSchedule& sch, int p, const std::string& what) {
  int64_t sum = 0;
  for (int r = 0; r < p; ++r) sum += sch.rank_pairs(r);
  EXPECT_EQ(sum, s.pairs) << what << ": pairs over ranks";
}

std::string case_name(int p, LayoutKind layout, const Built& s) {
  return "P=" + std::to_string(p) + " " + layout_name(layout) + " " + s.c.name();
}

void expect_forward_ok(int p, LayoutKind layout, const Built& s) {
  const std::string what = case_name(p, layout, s);
  const AttentionArgs& a = s.g.args;
  const DocRingCase& c = s.c;
  const Layout ql = Layout::of(layout, a, p, false), kl = Layout::of(layout, a, p, true);
  const RingSchedule sch = make_ring_schedule(ql, kl, a.mask);
  expect_pairs_once(s, sch, p, what);

  std::vector<float> o(static_cast<std::size_t>(a.q_elems()), NAN),
      lse(static_cast<std::size_t>(a.lse_elems()), NAN);
  std::mutex mu;
  run_local(p, [&](Communicator& comm) {
    const int r = comm.rank();
    const test::RankShare sh = test::rank_share(s.g, ql, kl, r);
    const int64_t nl = ql.tokens(r);
    std::vector<float> lo(static_cast<std::size_t>(c.b * nl * c.hq * c.d)),
        ll(static_cast<std::size_t>(c.b * c.hq * nl));
    KernelOptions kopt;
    kopt.threads = 1;
    ring_attention(comm, sch, sh.rp, lo.data(), ll.data(), kopt);
    std::lock_guard<std::mutex> lock(mu);
    test::scatter_rows(ql, r, c.b, a.nq, c.hq * c.d, lo.data(), o);
    scatter_lse(ql, r, c.b, c.hq, a.nq, ll.data(), lse);
  });

  const double eo = rel_fro(o, s.ref.o);
  const test::LseCheck el = test::check_lse(lse, s.ref.lse);
  worst.o = std::max(worst.o, eo), worst.lse = std::max(worst.lse, el.max_scaled), ++worst.runs;
  EXPECT_LE(eo, kTol) << what;
  EXPECT_LE(el.max_scaled, kTol) << what;
  EXPECT_EQ(el.mismatch, 0) << what;
}

// Length mixes for P ranks: 1-token and empty documents, documents shorter
// than P, one document longer than all the others together.
std::vector<std::vector<int64_t>> length_mixes(int p, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::vector<int64_t>> v;
  v.push_back(test::random_lengths(rng, 12, 60, false));  // short and mixed
  v.push_back(test::random_lengths(rng, 6, 40, true));    // one long document
  std::vector<int64_t> tiny;                              // shorter than P, and 1-token
  for (int i = 0; i < 20; ++i) tiny.push_back(i % 4 == 3 ? 0 : 1 + i % std::max(1, p - 1));
  tiny.push_back(37);
  v.push_back(tiny);
  v.push_back({0, 150, 1, 1, 90, 0});  // empty documents at both ends
  v.push_back(test::lengths_summing_to(rng, 600, 150));
  v.push_back({static_cast<int64_t>(p) + 50});  // one document
  return v;
}

std::vector<DocMaskSpec> ring_masks(int64_t n) {
  std::vector<DocMaskSpec> v(7);
  v[1].causal = true;
  v[2].causal = true, v[2].window_left = 12, v[2].sinks = 2;  // window + sinks inside documents
  v[3].window_left = 6, v[3].window_right = 9, v[3].sinks = 1;
  v[4].causal = true, v[4].window_left = 20, v[4].dilation = 2;
  v[5].causal = true, v[5].window_left = 4;  // global tokens inside their documents
  v[5].global = {{0, 1}, {n / 2, n / 2 + 3}};
  v[6] = v[5], v[6].global_across = true;  // and across them
  return v;
}

class DocRingP : public ::testing::TestWithParam<int> {};

TEST_P(DocRingP, SelfAttentionEveryLayoutAgainstDocumentsAlone) {
  const int p = GetParam();
  const int64_t heads[][2] = {{4, 4}, {4, 2}, {4, 1}};
  int i = 0;
  const std::vector<std::vector<int64_t>> mixes = length_mixes(p, 10 + p);
  for (std::size_t m = 0; m < mixes.size(); ++m) {
    int64_t n = 0;
    for (const int64_t l : mixes[m]) n += l;
    const std::vector<DocMaskSpec> masks = ring_masks(n);
    for (std::size_t k = 0; k < masks.size(); ++k) {
      DocRingCase c;
      c.q_lens = mixes[m], c.mask = masks[k], c.seed = 100 + i;
      c.hq = heads[i % 3][0], c.hkv = heads[i % 3][1];  // MHA, GQA, MQA
      c.b = i % 5 == 0 ? 2 : 1;
      c.d = i % 2 == 0 ? 16 : 32;
      const Built s = build(c);
      for (LayoutKind layout : kLayouts) expect_forward_ok(p, layout, s);
      ++i;
    }
  }
  worst.print("self-attention");
}

TEST_P(DocRingP, CrossAttentionWithKeyDocuments) {
  const int p = GetParam();
  std::mt19937_64 rng(500 + p);
  int i = 0;
  for (int mix = 0; mix < 2; ++mix) {
    // Key documents of other lengths (Nk != Nq); documents without queries
    // (first, so that only global tokens across documents see their keys) and
    // without keys.
    std::vector<int64_t> ql = {0}, kl = {6};
    for (const int64_t l : test::random_lengths(rng, 9, 50, mix == 1)) ql.push_back(l);
    for (const int64_t l : test::random_lengths(rng, 9, 70, false)) kl.push_back(l);
    ql.push_back(0), kl.push_back(13);  // keys nobody sees
    ql.push_back(5), kl.push_back(0);   // queries that see nothing
    std::vector<DocMaskSpec> masks(6);
    masks[1].causal = true;
    masks[2].causal = true, masks[2].window_left = 8, masks[2].sinks = 2;
    masks[3].window_left = 5, masks[3].window_right = 5, masks[3].dilation = 2;
    masks[4].causal = true, masks[4].global = {{3, 5}, {60, 62}};
    masks[5].global = {{3, 5}, {60, 62}}, masks[5].global_across = true;
    for (const DocMaskSpec& m : masks) {
      DocRingCase c;
      c.q_lens = ql, c.k_lens = kl, c.mask = m, c.seed = 900 + i;
      c.hq = 4, c.hkv = i % 2 == 0 ? 1 : 2;
      const Built s = build(c);
      for (LayoutKind layout : kLayouts) expect_forward_ok(p, layout, s);
      ++i;
    }
  }
  worst.print("cross-attention");
}

INSTANTIATE_TEST_SUITE_P(Ranks, DocRingP, ::testing::Values(1, 2, 3, 4, 8));

// ---- backward ----------------------------------------------------------------

void expect_backward_ok(int p, LayoutKind layout, const Built& s) {
  const std::string what = case_name(p, layout, s);
  const AttentionArgs& a = s.g.args;
  const DocRingCase& c = s.c;
  const Layout ql = Layout::of(layout, a, p, false), kl = Layout::of(layout, a, p, true);
  ScheduleOptions bwd_opt;
  bwd_opt.share = false;  // sinks ride the ring (the backward takes no shared part)
  const RingSchedule fwd = make_ring_schedule(ql, kl, a.mask);
  const RingSchedule bwd = make_ring_schedule(ql, kl, a.mask, bwd_opt);
  expect_pairs_once(s, bwd, p, what);

  std::vector<float> dq(static_cast<std::size_t>(a.q_elems()), NAN),
      dk(static_cast<std::size_t>(a.kv_elems()), NAN), dv = dk;
  std::mutex mu;
  run_local(p, [&](Communicator& comm) {
    const int r = comm.rank();
    const test::RankShare sh = test::rank_share(s.g, ql, kl, r);
    const Tensor go = test::slice_tokens(s.dO, ql, r);
    const int64_t nl = ql.tokens(r), kn = kl.tokens(r);
    std::vector<float> o(static_cast<std::size_t>(c.b * nl * c.hq * c.d)),
        lse(static_cast<std::size_t>(c.b * c.hq * nl)), lq(o.size()),
        lk(static_cast<std::size_t>(c.b * kn * c.hkv * c.d)), lv(lk.size());
    KernelOptions kopt;
    kopt.threads = 1;
    ring_attention(comm, fwd, sh.rp, o.data(), lse.data(), kopt);
    ring_attention_backward(comm, bwd, sh.rp, o.data(), lse.data(), go.as<float>(), lq.data(),
                            lk.data(), lv.data(), kopt);
    std::lock_guard<std::mutex> lock(mu);
    test::scatter_rows(ql, r, c.b, a.nq, c.hq * c.d, lq.data(), dq);
    test::scatter_rows(kl, r, c.b, a.nk, c.hkv * c.d, lk.data(), dk);
    test::scatter_rows(kl, r, c.b, a.nk, c.hkv * c.d, lv.data(), dv);
  });
  const double edq = rel_fro(dq, s.ref.dq), edk = rel_fro(dk, s.ref.dk),
               edv = rel_fro(dv, s.ref.dv);
  std::printf("[  error   ] %-90s dq %.1e dk %.1e dv %.1e\n", what.substr(0, 90).c_str(), edq, edk,
              edv);
  EXPECT_LE(edq, kTol) << what;
  EXPECT_LE(edk, kTol) << what;
  EXPECT_LE(edv, kTol) << what;
}

TEST(DocRingBackward, LayoutsMasksAndCrossAttentionAgainstDocumentsAlone) {
  const std::vector<int64_t> mix = {40, 1, 0, 3, 120, 1, 2, 75, 0, 9};
  std::vector<DocRingCase> cases(4);
  cases[1].mask.causal = true;
  cases[2].mask.causal = true, cases[2].mask.window_left = 10, cases[2].mask.sinks = 2;
  cases[3].mask.window_left = 7, cases[3].mask.window_right = 4, cases[3].mask.dilation = 2;
  for (std::size_t i = 0; i < cases.size(); ++i) {
    DocRingCase& c = cases[i];
    c.q_lens = mix, c.seed = 40 + i, c.hq = 4, c.hkv = i % 2 == 0 ? 2 : 1, c.b = i == 1 ? 2 : 1;
    const Built s = build(c, true);
    for (int p : {1, 2, 3, 4, 8})
      for (LayoutKind layout : kLayouts) expect_backward_ok(p, layout, s);
  }
  // Cross-attention with key documents (two without queries, one without keys).
  for (bool causal : {false, true}) {
    DocRingCase c;
    c.q_lens = {0, 30, 0, 7, 60, 4}, c.k_lens = {6, 50, 11, 3, 20, 0};
    c.mask.causal = causal, c.seed = causal ? 71 : 70, c.hq = 4, c.hkv = 2;
    const Built s = build(c, true);
    for (int p : {1, 2, 3, 4, 8})
      for (LayoutKind layout : kLayouts) expect_backward_ok(p, layout, s);
  }
}

}  // namespace
}  // namespace ringattn
