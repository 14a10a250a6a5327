// Packed documents in tests, written from the documented semantics
// (ringattn/documents.hpp, ringattn/mask.hpp) without the library's document
// code: random length mixes, the mask options of a case, a visibility
// predicate per document, and float64 references that compute each document
// alone (block-diagonal attention) and stitch the rows back.
//
// The predicate and the references never call Mask::allows with documents,
// Documents::q_doc/k_doc or Mask::classify: a query's document is found by a
// linear scan of the offsets, and the mask inside a document is written in the
// document's own coordinates (qr = qp - q[i], kr = kp - k[i], bottom-right
// aligned on the document's diagonal kr = qr + nk_i - nq_i).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "ringattn/attention.hpp"
#include "ringattn/backward_reference.hpp"
#include "ringattn/reference.hpp"
#include "util.hpp"

namespace ringattn::test {

// Cumulative offsets [0, l0, l0 + l1, ...] of the lengths.
inline std::vector<int64_t> offsets_of(const std::vector<int64_t>& lengths) {
  std::vector<int64_t> off(1, 0);
  for (const int64_t l : lengths) off.push_back(off.back() + l);
  return off;
}

// A random mix of `count` document lengths with the edge cases documents meet:
// empty documents, 1-token documents, documents shorter than 8, and (when
// `long_doc`) one document longer than all the others together.
inline std::vector<int64_t> random_lengths(std::mt19937_64& rng, int count, int64_t max_len,
                                           bool long_doc) {
  auto pick = [&](int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  };
  std::vector<int64_t> l;
  for (int i = 0; i < count; ++i) {
    const int64_t kind = pick(0, 5);
    l.push_back(kind == 0 ? 0 : kind == 1 ? 1 : kind == 2 ? pick(2, 7) : pick(1, max_len));
  }
  if (long_doc && !l.empty()) {
    int64_t rest = 0;
    for (const int64_t x : l) rest += x;
    l[static_cast<std::size_t>(pick(0, count - 1))] = rest + pick(1, max_len);
  }
  return l;
}

// Document lengths summing to exactly n.
inline std::vector<int64_t> lengths_summing_to(std::mt19937_64& rng, int64_t n, int64_t max_len) {
  std::vector<int64_t> l;
  int64_t left = n;
  while (left > 0) {
    const int64_t kind = std::uniform_int_distribution<int64_t>(0, 5)(rng);
    int64_t x = kind == 0   ? 0
                : kind == 1 ? 1
                : kind == 2 ? std::uniform_int_distribution<int64_t>(2, 7)(rng)
                            : std::uniform_int_distribution<int64_t>(1, max_len)(rng);
    x = std::min(x, left);
    l.push_back(x);
    left -= x;
  }
  return l;
}

// The mask of a case as a user gives it (the CLI's options): causal, a window
// of window_left keys before and window_right after the diagonal (-1:
// unbounded), dilation, sinks, global ranges (absolute positions), and whether
// global tokens cross documents.
struct DocMaskSpec {
  bool causal = false;
  int64_t window_left = -1, window_right = -1, dilation = 1, sinks = 0;
  std::vector<PosRange> global;
  bool global_across = false;

  std::string name() const {
    std::string s = causal ? "causal" : "full";
    if (window_left >= 0 || window_right >= 0)
      s += " window " + std::to_string(window_left) + "/" + std::to_string(window_right);
    if (dilation != 1) s += " dilation " + std::to_string(dilation);
    if (sinks > 0) s += " sinks " + std::to_string(sinks);
    for (const PosRange& g : global)
      s += " global " + std::to_string(g.begin) + "-" + std::to_string(g.end - 1);
    if (global_across) s += " across";
    return s;
  }
};

// The mask of a sequence of nq queries and nk keys, without documents, as the
// options build it: bottom-right aligned (diag = nk - nq); the window's ends
// relative to the diagonal.
inline Mask spec_mask(const DocMaskSpec& s, int64_t nq, int64_t nk) {
  const int64_t diag = nk - nq;
  Mask m = s.causal ? Mask::causal(diag) : Mask::none();
  if (s.window_left >= 0) m.lo = diag - s.window_left;
  if (s.window_right >= 0) m.hi = std::min(m.hi, diag + s.window_right);
  m.dilation = s.dilation;
  m.sinks = s.sinks;
  m.n_global = static_cast<int>(s.global.size());
  for (std::size_t i = 0; i < s.global.size(); ++i) m.global[i] = s.global[i];
  return m;
}

// A problem of nq queries against nk keys under `s`, with documents q_off
// (and key documents k_off for cross-attention; empty: the same).
inline AttentionProblem doc_problem(const DocMaskSpec& s, int64_t nq, int64_t nk,
                                    const std::vector<int64_t>& q_off,
                                    const std::vector<int64_t>& k_off) {
  AttentionProblem p;
  p.nq = nq, p.nk = nk, p.head_dim = 16;
  p.mask = spec_mask(s, nq, nk);
  auto d = std::make_shared<DocOffsets>();
  d->q = q_off, d->k = k_off, d->global_across = s.global_across;
  p.set_documents(d);
  return p;
}

// Which key a query sees, from the documented rule, one document at a time.
struct DocPredicate {
  DocMaskSpec s;
  std::vector<int64_t> q, k;  // offsets (k: the key documents, or q's)
  int64_t nq = 0, nk = 0;

  DocPredicate(DocMaskSpec spec, std::vector<int64_t> q_off, std::vector<int64_t> k_off)
      : s(std::move(spec)), q(std::move(q_off)), k(k_off.empty() ? q : std::move(k_off)) {
    nq = q.back(), nk = k.back();
  }
  int64_t docs() const { return static_cast<int64_t>(q.size()) - 1; }
  // The document whose queries hold qp (a linear scan; empty documents hold none).
  int64_t doc_of_query(int64_t qp) const {
    for (int64_t i = 0; i < docs(); ++i)
      if (q[static_cast<std::size_t>(i)] <= qp && qp < q[static_cast<std::size_t>(i) + 1]) return i;
    return -1;
  }
  bool global(int64_t p) const {
    for (const PosRange& g : s.global)
      if (p >= g.begin && p < g.end) return true;
    return false;
  }
  // The rule inside document i, in its coordinates; e is the distance from the
  // document's diagonal (e = 0: kr = qr + nk_i - nq_i). The window's ends are
  // relative to that diagonal; the dilation counts kr - qr, the distance in the
  // document's own positions, as for the document alone (without documents the
  // mask's dilation counts kp - qp, whatever Nk - Nq).
  bool inside(int64_t i, int64_t qp, int64_t kp) const {
    const std::size_t u = static_cast<std::size_t>(i);
    if (kp < k[u] || kp >= k[u + 1]) return false;
    const int64_t nq_i = q[u + 1] - q[u], nk_i = k[u + 1] - k[u];
    const int64_t qr = qp - q[u], kr = kp - k[u];
    const int64_t e = kr - qr - (nk_i - nq_i);
    if (s.causal && e > 0) return false;
    const bool band = (s.window_left < 0 || e >= -s.window_left) &&
                      (s.window_right < 0 || e <= s.window_right) &&
                      (s.dilation == 1 || (kr - qr) % s.dilation == 0);
    const bool sink = kr < s.sinks;
    const bool glob = !s.global_across && (global(qp) || global(kp));
    return band || sink || glob;
  }
  bool operator()(int64_t qp, int64_t kp) const {
    const int64_t i = doc_of_query(qp);
    if (i >= 0 && inside(i, qp, kp)) return true;
    // Global tokens across documents: under the causal bound in global positions.
    return s.global_across && (global(qp) || global(kp)) && (!s.causal || kp - qp <= nk - nq);
  }
  int64_t count() const {
    int64_t n = 0;
    for (int64_t qp = 0; qp < nq; ++qp)
      for (int64_t kp = 0; kp < nk; ++kp) n += (*this)(qp, kp);
    return n;
  }
};

// Rows [a, b) of every batch of a [B, N, H, D] tensor: [B, b - a, H, D].
inline Tensor rows_of(const Tensor& t, int64_t a, int64_t b) {
  const int64_t bn = t.shape[0], n = t.shape[1], row = t.shape[2] * t.shape[3];
  Tensor out(t.dtype, {bn, b - a, t.shape[2], t.shape[3]});
  for (int64_t bi = 0; bi < bn; ++bi)
    for (int64_t i = a; i < b; ++i)
      for (int64_t x = 0; x < row; ++x)
        out.set((bi * (b - a) + i - a) * row + x, t.get((bi * n + i) * row + x));
  return out;
}

// The float64 results of a whole problem: o [B, Nq, Hq, D], lse [B, Hq, Nq];
// with the gradients dq [B, Nq, Hq, D], dk, dv [B, Nk, Hkv, D] for the backward.
struct DocReference {
  std::vector<double> o, lse, dq, dk, dv;
};

// Document i of `g` alone: a problem of its nq_i queries and nk_i keys under
// the mask built for those lengths, without documents (global ranges, only for
// self-attention, moved to the document's coordinates).
inline AttentionArgs document_args(const Problem& g, const DocMaskSpec& s, const DocPredicate& pr,
                                   int64_t i, const Tensor& q, const Tensor& k, const Tensor& v) {
  const std::size_t u = static_cast<std::size_t>(i);
  const int64_t nq_i = pr.q[u + 1] - pr.q[u], nk_i = pr.k[u + 1] - pr.k[u];
  DocMaskSpec local = s;
  local.global.clear();
  for (const PosRange& r : s.global) {
    const int64_t a = std::max(r.begin, pr.q[u]), b = std::min(r.end, pr.q[u + 1]);
    if (a < b) local.global.push_back({a - pr.q[u], b - pr.q[u]});
  }
  AttentionArgs a;
  a.batch = g.args.batch, a.hq = g.args.hq, a.hkv = g.args.hkv, a.head_dim = g.args.head_dim;
  a.dtype = g.args.dtype, a.scale = g.args.softmax_scale();
  a.nq = nq_i, a.nk = nk_i;
  a.mask = spec_mask(local, nq_i, nk_i);
  a.q = q.data.data(), a.k = k.data.data(), a.v = v.data.data();
  return a;
}

// Block-diagonal attention: each document computed alone by the float64
// reference (and its backward when dO is given), stitched into the whole
// sequence. A query whose document has no keys: O = 0, LSE = -inf (dQ = 0);
// keys of a document without queries: dK = dV = 0. Not for global tokens
// across documents or in cross-attention (doc_reference_brute).
inline DocReference doc_reference(const Problem& g, const DocMaskSpec& s, const DocPredicate& pr,
                                  const Tensor* dO = nullptr) {
  const AttentionArgs& ga = g.args;
  const int64_t b = ga.batch, hq = ga.hq, hkv = ga.hkv, d = ga.head_dim;
  DocReference ref;
  ref.o.assign(static_cast<std::size_t>(b * pr.nq * hq * d), 0.0);
  ref.lse.assign(static_cast<std::size_t>(b * hq * pr.nq),
                 -std::numeric_limits<double>::infinity());
  if (dO != nullptr) {
    ref.dq.assign(ref.o.size(), 0.0);
    ref.dk.assign(static_cast<std::size_t>(b * pr.nk * hkv * d), 0.0);
    ref.dv = ref.dk;
  }
  for (int64_t i = 0; i < pr.docs(); ++i) {
    const std::size_t u = static_cast<std::size_t>(i);
    const int64_t q0 = pr.q[u], q1 = pr.q[u + 1], k0 = pr.k[u], k1 = pr.k[u + 1];
    if (q0 == q1 || k0 == k1) continue;  // no rows, or rows that see nothing
    const Tensor q = rows_of(g.q, q0, q1), k = rows_of(g.k, k0, k1), v = rows_of(g.v, k0, k1);
    const AttentionArgs a = document_args(g, s, pr, i, q, k, v);
    const int64_t nq_i = q1 - q0, nk_i = k1 - k0;
    auto put_q = [&](std::vector<double>& dst, const std::vector<double>& src) {
      for (int64_t bi = 0; bi < b; ++bi)
        for (int64_t r = 0; r < nq_i; ++r)
          for (int64_t x = 0; x < hq * d; ++x)
            dst[static_cast<std::size_t>((bi * pr.nq + q0 + r) * hq * d + x)] =
                src[static_cast<std::size_t>((bi * nq_i + r) * hq * d + x)];
    };
    auto put_lse = [&](const std::vector<double>& src) {
      for (int64_t bi = 0; bi < b; ++bi)
        for (int64_t h = 0; h < hq; ++h)
          for (int64_t r = 0; r < nq_i; ++r)
            ref.lse[static_cast<std::size_t>((bi * hq + h) * pr.nq + q0 + r)] =
                src[static_cast<std::size_t>((bi * hq + h) * nq_i + r)];
    };
    auto put_k = [&](std::vector<double>& dst, const std::vector<double>& src) {
      for (int64_t bi = 0; bi < b; ++bi)
        for (int64_t r = 0; r < nk_i; ++r)
          for (int64_t x = 0; x < hkv * d; ++x)
            dst[static_cast<std::size_t>((bi * pr.nk + k0 + r) * hkv * d + x)] =
                src[static_cast<std::size_t>((bi * nk_i + r) * hkv * d + x)];
    };
    if (dO == nullptr) {
      const ReferenceResult r = reference_attention(a);
      put_q(ref.o, r.o);
      put_lse(r.lse);
    } else {
      const Tensor go = rows_of(*dO, q0, q1);
      const BackwardReference r = reference_attention_backward(a, go.as<float>());
      put_q(ref.o, r.o);
      put_lse(r.lse);
      put_q(ref.dq, r.dq);
      put_k(ref.dk, r.dk);
      put_k(ref.dv, r.dv);
    }
  }
  return ref;
}

// Forward attention in float64 over the pairs the predicate allows, one row
// at a time (for global tokens across documents and in cross-attention, which
// are not block-diagonal).
inline DocReference doc_reference_brute(const Problem& g, const DocPredicate& pr) {
  const AttentionArgs& ga = g.args;
  const int64_t b = ga.batch, hq = ga.hq, hkv = ga.hkv, d = ga.head_dim, grp = hq / hkv;
  const double scale = ga.softmax_scale();
  DocReference ref;
  ref.o.assign(static_cast<std::size_t>(b * pr.nq * hq * d), 0.0);
  ref.lse.assign(static_cast<std::size_t>(b * hq * pr.nq),
                 -std::numeric_limits<double>::infinity());
  std::vector<double> sc(static_cast<std::size_t>(pr.nk));
  auto f64 = [](const Tensor& t) {
    std::vector<double> v(static_cast<std::size_t>(t.numel()));
    for (int64_t i = 0; i < t.numel(); ++i) v[static_cast<std::size_t>(i)] = t.get(i);
    return v;
  };
  const std::vector<double> q = f64(g.q), k = f64(g.k), v = f64(g.v);
  for (int64_t bi = 0; bi < b; ++bi)
    for (int64_t h = 0; h < hq; ++h)
      for (int64_t i = 0; i < pr.nq; ++i) {
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < pr.nk; ++j) {
          double x = -std::numeric_limits<double>::infinity();
          if (pr(i, j)) {
            x = 0.0;
            for (int64_t e = 0; e < d; ++e)
              x += q[static_cast<std::size_t>(((bi * pr.nq + i) * hq + h) * d + e)] *
                   k[static_cast<std::size_t>(((bi * pr.nk + j) * hkv + h / grp) * d + e)];
            x *= scale;
          }
          sc[static_cast<std::size_t>(j)] = x;
          mx = std::max(mx, x);
        }
        if (mx == -std::numeric_limits<double>::infinity()) continue;
        double sum = 0.0;
        double* o = &ref.o[static_cast<std::size_t>(((bi * pr.nq + i) * hq + h) * d)];
        for (int64_t j = 0; j < pr.nk; ++j) {
          const double w = std::exp(sc[static_cast<std::size_t>(j)] - mx);
          if (w == 0.0) continue;
          sum += w;
          for (int64_t e = 0; e < d; ++e)
            o[e] += w * v[static_cast<std::size_t>(((bi * pr.nk + j) * hkv + h / grp) * d + e)];
        }
        for (int64_t e = 0; e < d; ++e) o[e] /= sum;
        ref.lse[static_cast<std::size_t>((bi * hq + h) * pr.nq + i)] = mx + std::log(sum);
      }
  return ref;
}

// LSE of a float32 result against float64: the largest |difference| relative
// to max(1, |ref|) over rows finite on both sides, and the rows where exactly
// one side is -inf or either is NaN (mismatches).
struct LseCheck {
  double max_scaled = 0.0;
  int64_t mismatch = 0;
};
inline LseCheck check_lse(const std::vector<float>& x, const std::vector<double>& ref) {
  LseCheck c;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const bool xe = x[i] == -std::numeric_limits<float>::infinity();
    const bool re = ref[i] == -std::numeric_limits<double>::infinity();
    if (std::isnan(x[i]) || std::isnan(ref[i]) || xe != re) {
      ++c.mismatch;
      continue;
    }
    if (!xe)
      c.max_scaled =
          std::max(c.max_scaled, std::abs(double(x[i]) - ref[i]) / std::max(1.0, std::abs(ref[i])));
  }
  return c;
}

}  // namespace ringattn::test
