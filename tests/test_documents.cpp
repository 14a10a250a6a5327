// Packed documents without a ring: the offsets' checks, the mask's closed
// forms (allows, classify, visible_pairs, key/query bounds) against a
// predicate written per document from the documented rule, the kernel's tile
// skipping, and the balanced layout's cuts and balance.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "documents_util.hpp"
#include "ringattn/error.hpp"
#include "ringattn/kernel.hpp"
#include "ringattn/layout.hpp"
#include "ringattn/schedule.hpp"
#include "util.hpp"

namespace ringattn {
namespace {

using test::DocMaskSpec;
using test::DocPredicate;
using test::offsets_of;

// ---- offsets -----------------------------------------------------------------

struct BadOffsets {
  std::vector<int64_t> q, k;
  int64_t nq, nk;
  std::string field, says;  // the FieldError's field and a phrase its message holds
};

TEST(DocumentOffsets, EachBadFormNamesItsFieldAndProblem) {
  const std::vector<BadOffsets> bad = {
      {{}, {}, 10, 10, "documents", "expected at least 2"},
      {{0}, {}, 10, 10, "documents", "expected at least 2"},
      {{1, 5, 10}, {}, 10, 10, "documents", "starts at 1"},
      {{0, 6, 4, 10}, {}, 10, 10, "documents", "offset 2 (4) is below offset 1 (6)"},
      {{0, 5, 9}, {}, 10, 10, "documents", "ends at 9 but the sequence has 10 tokens"},
      {{0, 5, 11}, {}, 10, 10, "documents", "ends at 11"},
      {{0, 5, 10}, {}, 10, 12, "kv_documents", "Nk = 12 differs from Nq = 10"},
      {{0, 5, 10}, {2, 6, 12}, 10, 12, "kv_documents", "starts at 2"},
      {{0, 5, 10}, {0, 7, 3, 12}, 10, 12, "kv_documents", "below"},
      {{0, 5, 10}, {0, 7, 11}, 10, 12, "kv_documents", "ends at 11"},
      {{0, 5, 10}, {0, 3, 6, 12}, 10, 12, "kv_documents", "3 key documents for 2 query documents"},
      {{0, 5, 10}, {0, 12}, 10, 12, "kv_documents", "1 key documents for 2 query documents"},
  };
  for (const BadOffsets& b : bad) {
    AttentionProblem p;
    p.nq = b.nq, p.nk = b.nk, p.head_dim = 16;
    auto d = std::make_shared<DocOffsets>();
    d->q = b.q, d->k = b.k;
    try {
      p.set_documents(d);
      ADD_FAILURE() << "accepted offsets expected to fail with: " << b.says;
    } catch (const FieldError& e) {
      EXPECT_EQ(e.field(), b.field) << e.what();
      EXPECT_NE(std::string(e.what()).find(b.says), std::string::npos)
          << "message '" << e.what() << "' does not say '" << b.says << "'";
    }
  }
}

TEST(DocumentOffsets, EmptyDocumentsAreAllowedAndChangeNothing) {
  // The same three documents with empty ones before, between and after them.
  const std::vector<int64_t> plain = {0, 4, 9, 15}, padded = {0, 0, 4, 4, 4, 9, 15, 15};
  for (bool causal : {false, true}) {
    DocMaskSpec s;
    s.causal = causal, s.window_left = 2, s.sinks = 1;
    const AttentionProblem a = test::doc_problem(s, 15, 15, plain, {});
    AttentionProblem b;
    ASSERT_NO_THROW(b = test::doc_problem(s, 15, 15, padded, {}));
    EXPECT_NO_THROW(b.validate());
    for (int64_t i = 0; i < 15; ++i)
      for (int64_t j = 0; j < 15; ++j) EXPECT_EQ(a.mask.allows(i, j), b.mask.allows(i, j));
    EXPECT_EQ(a.pairs(), b.pairs());
    EXPECT_EQ(b.pairs(), DocPredicate(s, padded, {}).count());
  }
  // Cross-attention: an empty query document with keys, and the reverse.
  DocMaskSpec s;
  s.causal = true;
  EXPECT_NO_THROW(test::doc_problem(s, 9, 12, {0, 0, 4, 9}, {0, 5, 5, 12}));
}

TEST(DocumentOffsets, BlockSparseAndHierarchyAreRefused) {
  AttentionProblem p = test::doc_problem({}, 32, 32, {0, 10, 32}, {});
  AttentionProblem bb = p;
  bb.mask.blocks.size = 8, bb.mask.blocks.key_blocks = 4;
  try {
    bb.validate();
    ADD_FAILURE() << "block sparsity with documents accepted";
  } catch (const FieldError& e) {
    EXPECT_EQ(e.field(), "documents");
    EXPECT_NE(std::string(e.what()).find("BigBird"), std::string::npos) << e.what();
  }
  AttentionProblem h = p;
  h.hier.route_block = 8, h.hier.route_topk = 2;
  try {
    h.validate();
    ADD_FAILURE() << "block routing with documents accepted";
  } catch (const FieldError& e) {
    EXPECT_EQ(e.field(), "documents");
    EXPECT_NE(std::string(e.what()).find("hierarch"), std::string::npos) << e.what();
  }
  // A mask rebuilt after set_documents has lost them: validate() says so.
  AttentionProblem rebuilt = p;
  rebuilt.mask = Mask::causal(0);
  EXPECT_THROW(rebuilt.validate(), FieldError);
  EXPECT_NO_THROW(p.validate());
}

// ---- the mask against brute force ------------------------------------------------

// Every mask part alone and combined, for nq queries and nk keys.
std::vector<DocMaskSpec> specs(std::mt19937_64& rng, int64_t nq, int64_t nk) {
  auto pick = [&](int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  };
  auto ranges = [&]() {
    std::vector<PosRange> g;
    const int64_t n = std::max(nq, nk);
    for (int64_t i = pick(1, 3); i > 0; --i) {
      const int64_t a = pick(0, n - 1);
      g.push_back({a, a + pick(1, 4)});
    }
    return g;
  };
  std::vector<DocMaskSpec> v;
  DocMaskSpec s;
  v.push_back(s);  // full
  s.causal = true;
  v.push_back(s);
  s.window_left = pick(0, 6);
  v.push_back(s);  // causal window
  s.sinks = pick(1, 3);
  v.push_back(s);  // causal window + sinks
  s = {};
  s.window_left = pick(0, 5), s.window_right = pick(0, 5);
  v.push_back(s);  // two-sided window
  s.sinks = pick(1, 3);
  v.push_back(s);
  s = {};
  s.causal = true, s.window_left = pick(2, 9), s.dilation = 2;
  v.push_back(s);  // causal dilated window
  s = {};
  s.window_left = pick(2, 8), s.window_right = pick(2, 8), s.dilation = 2;
  v.push_back(s);
  s = {};
  s.causal = pick(0, 1) == 1, s.sinks = pick(1, 4);
  s.window_left = 0, s.window_right = 0;  // sinks and the diagonal only
  v.push_back(s);
  for (bool across : {false, true})
    for (bool causal : {false, true}) {
      s = {};
      s.causal = causal, s.window_left = pick(0, 3), s.window_right = causal ? -1 : pick(0, 3);
      s.global = ranges(), s.global_across = across;
      v.push_back(s);
    }
  s = {};  // everything at once
  s.causal = true, s.window_left = pick(3, 9), s.dilation = 3, s.sinks = 2, s.global = ranges();
  v.push_back(s);
  return v;
}

// One (documents, mask) case: allows, visible_pairs, pairs, classify and the
// bounds against the predicate (vis: its matrix).
void check_against_predicate(const AttentionProblem& p, const DocPredicate& pr,
                             std::mt19937_64& rng, const std::string& what) {
  SCOPED_TRACE(what);
  const int64_t nq = pr.nq, nk = pr.nk;
  std::vector<uint8_t> vis(static_cast<std::size_t>(nq * nk));
  int64_t total = 0;
  for (int64_t i = 0; i < nq; ++i)
    for (int64_t j = 0; j < nk; ++j) {
      const bool v = pr(i, j);
      vis[static_cast<std::size_t>(i * nk + j)] = v;
      total += v;
      if (p.mask.allows(i, j) != v) {
        ADD_FAILURE() << "allows(" << i << ", " << j << ") = " << !v << ", expected " << v;
        return;
      }
    }
  const auto at = [&](int64_t i, int64_t j) { return vis[static_cast<std::size_t>(i * nk + j)]; };
  EXPECT_EQ(p.pairs(), total);
  EXPECT_EQ(visible_pairs(p.mask, {0, 1}, nq, {0, 1}, nk), total);
  if (nq == 0 || nk == 0) return;

  auto pick = [&](int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  };
  // Random blocks of positions start + i stride; the tile is the rectangle of
  // their extremes (what classify() is told).
  for (int t = 0; t < 60; ++t) {
    const int64_t qs = pick(1, 2) == 1 ? 1 : 3, ks = pick(1, 2) == 1 ? 1 : 3;
    const int64_t q0 = pick(0, nq - 1), k0 = pick(0, nk - 1);
    const int64_t qn = pick(1, std::min<int64_t>(12, (nq - 1 - q0) / qs + 1));
    const int64_t kn = pick(1, std::min<int64_t>(12, (nk - 1 - k0) / ks + 1));
    const int64_t q1 = q0 + (qn - 1) * qs, k1 = k0 + (kn - 1) * ks;
    int64_t strided = 0;
    for (int64_t a = 0; a < qn; ++a)
      for (int64_t b = 0; b < kn; ++b) strided += at(q0 + a * qs, k0 + b * ks);
    EXPECT_EQ(visible_pairs(p.mask, {q0, qs}, qn, {k0, ks}, kn), strided)
        << "queries " << q0 << "+" << qs << "i (" << qn << "), keys " << k0 << "+" << ks << "j ("
        << kn << ")";
    bool any = false, all = true;
    for (int64_t i = q0; i <= q1; ++i)
      for (int64_t j = k0; j <= k1; ++j) any = any || at(i, j), all = all && at(i, j);
    const TileClass c = p.mask.classify(q0, q1, k0, k1);
    EXPECT_FALSE(c == TileClass::empty && any)
        << "tile q " << q0 << ".." << q1 << " k " << k0 << ".." << k1 << " empty but sees a key";
    EXPECT_FALSE(c == TileClass::full && !all)
        << "tile q " << q0 << ".." << q1 << " k " << k0 << ".." << k1 << " full but hides a key";

    // The bounds hold every visible pair of the range.
    int64_t lo = 0, hi = 0;
    p.mask.key_bounds(q0, q1, &lo, &hi);
    for (int64_t i = q0; i <= q1; ++i)
      for (int64_t j = 0; j < nk; ++j)
        if (at(i, j) && (j < lo || j > hi))
          ADD_FAILURE() << "key_bounds(" << q0 << ", " << q1 << ") = [" << lo << ", " << hi
                        << "] misses (" << i << ", " << j << ")";
    p.mask.query_bounds(k0, k1, &lo, &hi);
    for (int64_t j = k0; j <= k1; ++j)
      for (int64_t i = 0; i < nq; ++i)
        if (at(i, j) && (i < lo || i > hi))
          ADD_FAILURE() << "query_bounds(" << k0 << ", " << k1 << ") = [" << lo << ", " << hi
                        << "] misses (" << i << ", " << j << ")";
  }
}

std::string lengths_str(const std::vector<int64_t>& off) {
  std::string s;
  for (std::size_t i = 1; i < off.size(); ++i)
    s += (i > 1 ? "," : "") + std::to_string(off[i] - off[i - 1]);
  return s;
}

TEST(DocumentMask, SelfAttentionAgainstPerDocumentPredicate) {
  std::mt19937_64 rng(2024);
  for (int mix = 0; mix < 30; ++mix) {
    const int count = std::uniform_int_distribution<int>(1, 14)(rng);
    const std::vector<int64_t> off =
        offsets_of(test::random_lengths(rng, count, mix % 3 == 0 ? 30 : 12, mix % 4 == 1));
    const int64_t n = off.back();
    for (const DocMaskSpec& s : specs(rng, n, n)) {
      const AttentionProblem p = test::doc_problem(s, n, n, off, {});
      check_against_predicate(p, DocPredicate(s, off, {}), rng,
                              "docs " + lengths_str(off) + " mask " + s.name());
    }
  }
}

TEST(DocumentMask, CrossAttentionAgainstPerDocumentPredicate) {
  std::mt19937_64 rng(77);
  for (int mix = 0; mix < 30; ++mix) {
    const int count = std::uniform_int_distribution<int>(1, 12)(rng);
    const std::vector<int64_t> qo = offsets_of(test::random_lengths(rng, count, 14, mix % 4 == 1));
    const std::vector<int64_t> ko = offsets_of(test::random_lengths(rng, count, 20, mix % 4 == 2));
    for (const DocMaskSpec& s : specs(rng, qo.back(), ko.back())) {
      const AttentionProblem p = test::doc_problem(s, qo.back(), ko.back(), qo, ko);
      check_against_predicate(
          p, DocPredicate(s, qo, ko), rng,
          "query docs " + lengths_str(qo) + " key docs " + lengths_str(ko) + " mask " + s.name());
    }
  }
}

// One document holding every query and key is the plain mask (Documents: "0:
// off (one document, the plain mask)"), cross-attention and dilation included.
TEST(DocumentMask, OneDocumentIsThePlainMask) {
  std::mt19937_64 rng(8);
  for (const auto& [nq, nk] : {std::pair<int64_t, int64_t>{30, 30}, {17, 30}, {30, 17}, {9, 40}})
    for (DocMaskSpec s : specs(rng, nq, nk)) {
      s.global_across = false;
      const AttentionProblem p = test::doc_problem(
          s, nq, nk, {0, nq}, nq == nk ? std::vector<int64_t>{} : std::vector<int64_t>{0, nk});
      const Mask plain = test::spec_mask(s, nq, nk);
      const DocPredicate pr(s, {0, nq}, {0, nk});
      int64_t differ = 0, wrong = 0;
      for (int64_t i = 0; i < nq; ++i)
        for (int64_t j = 0; j < nk; ++j) {
          differ += p.mask.allows(i, j) != plain.allows(i, j);
          wrong += pr(i, j) != plain.allows(i, j);
        }
      EXPECT_EQ(differ, 0) << "Nq=" << nq << " Nk=" << nk << " " << s.name();
      EXPECT_EQ(wrong, 0) << "predicate, Nq=" << nq << " Nk=" << nk << " " << s.name();
    }
}

// The predicate is the block-diagonal definition: the float64 attention over
// the pairs it allows equals each document computed alone under the mask built
// for its own lengths (documents_util.hpp), global tokens inside documents included.
TEST(DocumentMask, PredicateIsEachDocumentAlone) {
  std::mt19937_64 rng(5);
  for (int mix = 0; mix < 12; ++mix) {
    const bool cross = mix % 2 == 1;
    const int count = std::uniform_int_distribution<int>(1, 8)(rng);
    const std::vector<int64_t> qo = offsets_of(test::random_lengths(rng, count, 20, mix % 3 == 0));
    const std::vector<int64_t> ko =
        cross ? offsets_of(test::random_lengths(rng, count, 25, false)) : std::vector<int64_t>{};
    const int64_t nq = qo.back(), nk = cross ? ko.back() : nq;
    for (DocMaskSpec s : specs(rng, nq, nk)) {
      if (s.global_across || (cross && !s.global.empty())) continue;  // not block-diagonal
      const DocPredicate pr(s, qo, ko);
      test::Problem g = test::make_problem(2, nq, nk, 4, 2, 16, DType::f32, 300 + mix);
      g.args.mask = test::spec_mask(s, nq, nk);
      const test::DocReference a = test::doc_reference(g, s, pr),
                               b = test::doc_reference_brute(g, pr);
      double worst = 0.0;
      for (std::size_t i = 0; i < a.o.size(); ++i)
        worst = std::max(worst, std::abs(a.o[i] - b.o[i]));
      for (std::size_t i = 0; i < a.lse.size(); ++i)
        if (!(a.lse[i] == b.lse[i] || std::abs(a.lse[i] - b.lse[i]) <= 1e-12))
          worst = std::max(worst, 1.0);
      EXPECT_LE(worst, 1e-12) << "docs " << lengths_str(qo) << " / " << lengths_str(ko) << " "
                              << s.name();
    }
  }
}

// ---- the kernel skips every tile outside the documents ---------------------------

// Query blocks and key tiles of the CPU kernel (src/cpu/kernel_isa.hpp).
constexpr int64_t kBlockQ = 96, kBlockK = 128;

void expect_exact_tiles(const std::vector<int64_t>& qo, const std::vector<int64_t>& ko,
                        const DocMaskSpec& s) {
  const int64_t nq = qo.back(), nk = ko.empty() ? nq : ko.back();
  const std::string what = "docs " + lengths_str(qo) + " / " + lengths_str(ko) + " " + s.name();
  const DocPredicate pr(s, qo, ko);
  test::Problem g = test::make_problem(1, nq, nk, 2, 1, 16, DType::f32, 11);
  g.args.mask = test::spec_mask(s, nq, nk);
  auto d = std::make_shared<DocOffsets>();
  d->q = qo, d->k = ko;
  g.args.set_documents(d);
  const test::Output out = test::run_kernel(g.args);

  int64_t tiles = 0;  // (query block, key tile) pairs with a visible pair, per head
  const int64_t nqb = (nq + kBlockQ - 1) / kBlockQ, nkt = (nk + kBlockK - 1) / kBlockK;
  for (int64_t bq = 0; bq < nqb; ++bq)
    for (int64_t bk = 0; bk < nkt; ++bk) {
      bool any = false;
      for (int64_t i = bq * kBlockQ; i < std::min(nq, (bq + 1) * kBlockQ) && !any; ++i)
        for (int64_t j = bk * kBlockK; j < std::min(nk, (bk + 1) * kBlockK) && !any; ++j)
          any = pr(i, j);
      tiles += any;
    }
  EXPECT_EQ(out.stats.tiles_total, g.args.hq * nqb * nkt) << what;
  EXPECT_EQ(out.stats.tiles_computed, g.args.hq * tiles) << what;

  const test::DocReference ref = test::doc_reference(g, s, pr);
  EXPECT_LE(test::rel_fro(out.o, ref.o), 1e-5) << what;
  const test::LseCheck lc = test::check_lse(out.lse, ref.lse);
  EXPECT_EQ(lc.mismatch, 0) << what;
  EXPECT_LE(lc.max_scaled, 1e-5) << what;
}

TEST(DocumentKernel, ComputesExactlyTheTilesWithVisiblePairs) {
  // Self-attention: documents on multiples of 384 (= lcm of the query block and key tile).
  const std::vector<int64_t> self = offsets_of({384, 0, 768, 384, 1152});
  // Cross-attention: query documents on multiples of 96, key documents of 128.
  const std::vector<int64_t> cq = offsets_of({96, 288, 0, 192, 480});
  const std::vector<int64_t> ck = offsets_of({256, 128, 128, 384, 128});
  std::vector<DocMaskSpec> masks(5);
  masks[1].causal = true;
  masks[2].causal = true, masks[2].window_left = 100;
  masks[3].window_left = 50, masks[3].window_right = 70;
  masks[4].causal = true, masks[4].window_left = 30, masks[4].sinks = 4;
  for (const DocMaskSpec& s : masks) {
    expect_exact_tiles(self, {}, s);
    expect_exact_tiles(cq, ck, s);
  }
}

// ---- the balanced layout ------------------------------------------------------

// Every token of [0, n) on exactly one rank, at most two stride-1 segments per
// rank, local offsets in segment order.
void expect_partition(const Layout& l, int64_t n, const std::string& what) {
  std::vector<int> seen(static_cast<std::size_t>(n), 0);
  for (int r = 0; r < l.ranks(); ++r) {
    const std::vector<Segment>& segs = l.segments(r);
    EXPECT_LE(segs.size(), 2u) << what << " rank " << r;
    int64_t off = 0;
    for (const Segment& s : segs) {
      EXPECT_EQ(s.stride, 1) << what;
      EXPECT_GT(s.count, 0) << what;
      EXPECT_EQ(s.local_offset, off) << what;
      off += s.count;
      for (int64_t i = 0; i < s.count; ++i) {
        ASSERT_TRUE(s.start + i >= 0 && s.start + i < n) << what;
        ++seen[static_cast<std::size_t>(s.start + i)];
        EXPECT_EQ(l.local_index(r, s.start + i), s.local_offset + i) << what;
      }
    }
    EXPECT_EQ(l.tokens(r), off) << what;
  }
  for (int64_t t = 0; t < n; ++t)
    ASSERT_EQ(seen[static_cast<std::size_t>(t)], 1) << what << ": token " << t;
}

// Long-tailed document lengths (lognormal, median 400, clipped to 16..8192) summing to n.
std::vector<int64_t> lognormal_lengths(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::lognormal_distribution<double> ln(std::log(400.0), 1.3);
  std::vector<int64_t> l;
  int64_t sum = 0;
  while (sum < n) {
    const int64_t x = std::clamp<int64_t>(std::llround(ln(rng)), 16, 8192);
    l.push_back(std::min(x, n - sum));
    sum += l.back();
  }
  return l;
}

// Visible pairs of one document of length L alone (self-attention), counted per query.
int64_t doc_pairs(int64_t len, const DocMaskSpec& s) {
  int64_t n = 0;
  for (int64_t qr = 0; qr < len; ++qr) {
    int64_t lo = s.window_left < 0 ? 0 : std::max<int64_t>(0, qr - s.window_left);
    int64_t hi =
        s.causal ? qr : (s.window_right < 0 ? len - 1 : std::min(len - 1, qr + s.window_right));
    n += hi - lo + 1;
  }
  return n;
}

struct Balance {
  double balanced = 0, zigzag = 0;
};

Balance check_balance(const std::vector<int64_t>& lens, const DocMaskSpec& s, int p,
                      const std::string& what) {
  const std::vector<int64_t> off = offsets_of(lens);
  const int64_t n = off.back();
  const AttentionProblem prob = test::doc_problem(s, n, n, off, {});
  int64_t expected = 0;
  for (const int64_t l : lens) expected += doc_pairs(l, s);
  EXPECT_EQ(prob.pairs(), expected) << what;

  const std::vector<int64_t> cuts = Layout::balanced_cuts(prob, p);
  EXPECT_EQ(cuts.size(), 2 * static_cast<std::size_t>(p) + 1) << what;
  EXPECT_EQ(cuts.front(), 0) << what;
  EXPECT_EQ(cuts.back(), n) << what;
  for (std::size_t i = 1; i < cuts.size(); ++i) EXPECT_LE(cuts[i - 1], cuts[i]) << what;
  const Layout ql = Layout::of(LayoutKind::balanced, prob, p, false);
  const Layout kl = Layout::of(LayoutKind::balanced, prob, p, true);
  expect_partition(ql, n, what + " queries");
  expect_partition(kl, n, what + " keys");
  for (int r = 0; r < p; ++r) {  // rank r holds pieces r and 2p - 1 - r
    const std::size_t a = static_cast<std::size_t>(r), b = 2 * static_cast<std::size_t>(p) - 1 - a;
    EXPECT_EQ(ql.tokens(r), (cuts[a + 1] - cuts[a]) + (cuts[b + 1] - cuts[b])) << what << " " << r;
  }

  Balance out;
  for (LayoutKind k : {LayoutKind::balanced, LayoutKind::zigzag}) {
    const Layout lq = Layout::of(k, prob, p, false), lk = Layout::of(k, prob, p, true);
    const RingSchedule sch = make_ring_schedule(lq, lk, prob.mask);
    int64_t sum = 0, mx = 0;
    for (int r = 0; r < p; ++r) sum += sch.rank_pairs(r), mx = std::max(mx, sch.rank_pairs(r));
    EXPECT_EQ(sum, expected) << what << " " << layout_name(k) << ": pairs over ranks";
    const double imb = double(mx) / (double(sum) / p);
    (k == LayoutKind::balanced ? out.balanced : out.zigzag) = imb;
  }
  std::printf("[ balance  ] %-58s P=%d  balanced %.4f  zigzag %.4f\n", what.c_str(), p,
              out.balanced, out.zigzag);
  return out;
}

TEST(BalancedLayout, LongTailedDocumentMixesBalanceWithinFivePercent) {
  const int64_t n = test::kSanitized ? 16384 : 65536;
  for (uint64_t seed : {1u, 2u, 3u}) {
    const std::vector<int64_t> lens = lognormal_lengths(n, seed);
    DocMaskSpec causal, full, window;
    causal.causal = true;
    window.causal = true, window.window_left = 255;
    for (const DocMaskSpec& s : {causal, full, window})
      for (int p : {2, 4, 8}) {
        const std::string what =
            std::to_string(lens.size()) + " docs seed " + std::to_string(seed) + " " + s.name();
        const Balance b = check_balance(lens, s, p, what);
        EXPECT_LE(b.balanced, 1.05) << what << " P=" << p << " (zigzag " << b.zigzag << ")";
      }
  }
}

TEST(BalancedLayout, OneCausalDocumentBalancesLikeZigzag) {
  DocMaskSpec causal;
  causal.causal = true;
  for (int64_t n : {int64_t{65536}, int64_t{1000}})
    for (int p : {2, 4, 8}) {
      const Balance b =
          check_balance({n}, causal, p, "one causal document of " + std::to_string(n));
      EXPECT_LE(b.balanced, std::max(1.01, b.zigzag + 0.005)) << "P=" << p << " N=" << n;
    }
}

TEST(BalancedLayout, SmallAndCrossAttentionMixesPartitionEveryToken) {
  std::mt19937_64 rng(99);
  for (int mix = 0; mix < 20; ++mix) {
    const int count = std::uniform_int_distribution<int>(1, 10)(rng);
    const std::vector<int64_t> qo = offsets_of(test::random_lengths(rng, count, 40, mix % 3 == 0));
    const std::vector<int64_t> ko = offsets_of(test::random_lengths(rng, count, 30, false));
    DocMaskSpec s;
    s.causal = mix % 2 == 0;
    for (bool cross : {false, true})
      for (int p : {1, 2, 3, 5, 8}) {
        const AttentionProblem prob = test::doc_problem(s, qo.back(), cross ? ko.back() : qo.back(),
                                                        qo, cross ? ko : std::vector<int64_t>{});
        const std::string what = "docs " + lengths_str(qo) +
                                 (cross ? " / " + lengths_str(ko) : "") + " P=" + std::to_string(p);
        const Layout ql = Layout::of(LayoutKind::balanced, prob, p, false);
        const Layout kl = Layout::of(LayoutKind::balanced, prob, p, true);
        expect_partition(ql, prob.nq, what + " queries");
        expect_partition(kl, prob.nk, what + " keys");
        const RingSchedule sch = make_ring_schedule(ql, kl, prob.mask);
        int64_t sum = 0;
        for (int r = 0; r < p; ++r) sum += sch.rank_pairs(r);
        EXPECT_EQ(sum, DocPredicate(s, qo, cross ? ko : std::vector<int64_t>{}).count()) << what;
      }
  }
}

}  // namespace
}  // namespace ringattn
