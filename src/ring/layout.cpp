#include "ringattn/layout.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "ringattn/attention.hpp"
#include "ringattn/error.hpp"

namespace ringattn {

std::string layout_name(LayoutKind k) {
  switch (k) {
    case LayoutKind::contiguous:
      return "contiguous";
    case LayoutKind::zigzag:
      return "zigzag";
    case LayoutKind::striped:
      return "striped";
    case LayoutKind::balanced:
      return "balanced";
  }
  return "?";
}

LayoutKind parse_layout(const std::string& s) {
  for (LayoutKind k :
       {LayoutKind::contiguous, LayoutKind::zigzag, LayoutKind::striped, LayoutKind::balanced})
    if (s == layout_name(k)) return k;
  throw FieldError(
      "layout", fmt::format("expected contiguous, zigzag, striped, balanced or auto, got '{}'", s));
}

LayoutKind auto_layout(const Mask& mask, bool causal, int64_t nk) {
  if (mask.docs.on()) return LayoutKind::balanced;
  if (!causal) return LayoutKind::contiguous;
  // A causal window of W keys on contiguous chunks: every query sees W keys
  // but the first W, so the fullest rank has 1 / (1 - W / 2N) of the mean work
  // at any P (at most 3.2% over for W <= N / 16), and a rank needs only the W
  // rows before its chunk from one neighbour, where zigzag's two chunks need
  // them from two.
  const int64_t window = mask.lo > -kUnbounded ? 1 - mask.lo : kUnbounded;
  if (!mask.aligned() && window <= nk / kWindowContiguousShare) return LayoutKind::contiguous;
  return LayoutKind::zigzag;
}

Layout::Layout(LayoutKind kind, int64_t n, int ranks) : kind_(kind), n_(n), ranks_(ranks) {
  if (n < 0) throw Error(fmt::format("layout: sequence length must be >= 0, got {}", n));
  if (ranks < 1) throw Error(fmt::format("layout: ranks must be >= 1, got {}", ranks));
  if (kind == LayoutKind::balanced)
    throw Error("layout: balanced is built from the mask (Layout::of), not from a length");
  segs_.resize(static_cast<std::size_t>(ranks));
  const int64_t p = ranks;
  auto add = [&](int r, int64_t start, int64_t count, int64_t stride) {
    auto& v = segs_[static_cast<std::size_t>(r)];
    if (count <= 0) return;
    const int64_t off = v.empty() ? 0 : v.back().local_offset + v.back().count;
    v.push_back({start, count, stride, off});
  };
  for (int r = 0; r < ranks; ++r) {
    switch (kind) {
      case LayoutKind::contiguous: {
        const int64_t a = r * n / p, b = (r + 1) * n / p;
        add(r, a, b - a, 1);
        break;
      }
      case LayoutKind::zigzag: {
        const int64_t c1 = r, c2 = 2 * p - 1 - r;
        add(r, c1 * n / (2 * p), (c1 + 1) * n / (2 * p) - c1 * n / (2 * p), 1);
        add(r, c2 * n / (2 * p), (c2 + 1) * n / (2 * p) - c2 * n / (2 * p), 1);
        break;
      }
      case LayoutKind::striped:
        add(r, r, r < n ? (n - r + p - 1) / p : 0, p);
        break;
      case LayoutKind::balanced:
        break;
    }
  }
}

Layout Layout::nested(LayoutKind kind, int64_t n, int nodes, int per_node) {
  if (per_node < 1)
    throw Error(fmt::format("layout: ranks per node must be >= 1, got {}", per_node));
  return nested(Layout(kind, n, nodes), per_node);
}

Layout Layout::nested(const Layout& top, int per_node) {
  if (per_node < 1)
    throw Error(fmt::format("layout: ranks per node must be >= 1, got {}", per_node));
  if (per_node == 1) return top;
  const int nodes = top.ranks();
  Layout l;
  l.kind_ = top.kind_, l.n_ = top.n_, l.ranks_ = nodes * per_node, l.per_node_ = per_node;
  l.segs_.resize(static_cast<std::size_t>(l.ranks_));
  for (int a = 0; a < nodes; ++a) {
    const int64_t len = top.tokens(a);
    for (int i = 0; i < per_node; ++i) {
      // Node-local indices [lo, hi) of this rank's piece, cut out of the node's segments.
      const int64_t lo = i * len / per_node, hi = (i + 1) * len / per_node;
      auto& v = l.segs_[static_cast<std::size_t>(a * per_node + i)];
      int64_t off = 0;
      for (const Segment& s : top.segments(a)) {
        const int64_t b0 = std::max(lo, s.local_offset),
                      b1 = std::min(hi, s.local_offset + s.count);
        if (b1 <= b0) continue;
        v.push_back({s.start + (b0 - s.local_offset) * s.stride, b1 - b0, s.stride, off});
        off += b1 - b0;
      }
    }
  }
  return l;
}

Layout Layout::from_cuts(int64_t n, const std::vector<int64_t>& cuts) {
  const int p = static_cast<int>(cuts.size() - 1) / 2;
  Layout l;
  l.kind_ = LayoutKind::balanced, l.n_ = n, l.ranks_ = p;
  l.segs_.resize(static_cast<std::size_t>(p));
  for (int r = 0; r < p; ++r) {
    auto& v = l.segs_[static_cast<std::size_t>(r)];
    for (const int piece : {r, 2 * p - 1 - r}) {
      const int64_t a = cuts[static_cast<std::size_t>(piece)],
                    b = cuts[static_cast<std::size_t>(piece) + 1];
      if (b <= a) continue;
      if (!v.empty() && v.back().start + v.back().count == a) {  // the last rank's middle
        v.back().count += b - a;
        continue;
      }
      const int64_t off = v.empty() ? 0 : v.back().local_offset + v.back().count;
      v.push_back({a, b - a, 1, off});
    }
  }
  return l;
}

std::vector<int64_t> Layout::balanced_cuts(const AttentionProblem& p, int ranks) {
  if (ranks < 1) throw Error(fmt::format("layout: ranks must be >= 1, got {}", ranks));
  const int64_t n = p.nq;
  // Work of query t: its visible keys (prefix sums w[t] over queries before t).
  std::vector<int64_t> w(static_cast<std::size_t>(n) + 1, 0);
  for (int64_t t = 0; t < n; ++t)
    w[static_cast<std::size_t>(t) + 1] =
        w[static_cast<std::size_t>(t)] + visible_pairs(p.mask, {t, 1}, 1, {0, 1}, p.nk);
  const auto W = [&](int64_t a, int64_t b) {  // work of queries [a, b)
    return w[static_cast<std::size_t>(b)] - w[static_cast<std::size_t>(a)];
  };
  std::vector<int64_t> cuts(2 * static_cast<std::size_t>(ranks) + 1, 0);
  int64_t f = 0, b = n;  // the middle [f, b) is left
  for (int r = 0; r < ranks - 1; ++r) {
    const int left = ranks - r;
    const int64_t tokens = b - f, target_tokens = tokens / left;
    const double target = double(W(f, b)) / left;
    // For front lengths x (a sample of them), the back length y whose work
    // brings the rank closest to the target; keep the pair whose token count
    // is closest to target_tokens among those within the work tolerance.
    const int64_t step = std::max<int64_t>(1, tokens / 4096);
    int64_t best_x = 0, best_y = 0;
    double best_err = -1.0;
    int64_t best_dt = 0;
    for (int64_t x = 0; x <= tokens; x = (x == tokens ? tokens + 1 : std::min(tokens, x + step))) {
      const double need = target - double(W(f, f + x));
      // Smallest y in [0, tokens - x] with W(b - y, b) >= need (W grows with y).
      int64_t lo = 0, hi = tokens - x;
      while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (double(W(b - mid, b)) >= need)
          hi = mid;
        else
          lo = mid + 1;
      }
      for (const int64_t y : {lo - 1, lo}) {
        if (y < 0 || y > tokens - x) continue;
        const double err = std::abs(double(W(f, f + x) + W(b - y, b)) - target);
        const int64_t dt = std::abs(x + y - target_tokens);
        // Work first (within 0.5% of the target, or the best so far), then tokens.
        const double tol = std::max(0.005 * target, 1.0);
        const bool ok = err <= tol, best_ok = best_err >= 0 && best_err <= tol;
        if (best_err < 0 || (ok && !best_ok) || (ok && best_ok && dt < best_dt) ||
            (!ok && !best_ok && err < best_err))
          best_x = x, best_y = y, best_err = err, best_dt = dt;
      }
    }
    cuts[static_cast<std::size_t>(r) + 1] = f + best_x;
    cuts[2 * static_cast<std::size_t>(ranks) - 1 - static_cast<std::size_t>(r)] = b - best_y;
    f += best_x, b -= best_y;
  }
  cuts[static_cast<std::size_t>(ranks)] = b;  // the last rank: [f, b) as pieces ranks-1 and ranks
  cuts[static_cast<std::size_t>(ranks) - 1] = f;
  cuts[2 * static_cast<std::size_t>(ranks)] = n;
  return cuts;
}

Layout Layout::of(LayoutKind kind, const AttentionProblem& p, int ranks, bool keys) {
  const int64_t n = keys ? p.nk : p.nq;
  if (kind != LayoutKind::balanced) return Layout(kind, n, ranks);
  std::vector<int64_t> cuts = balanced_cuts(p, ranks);
  if (keys && (p.nk != p.nq || (p.mask.docs.on() && p.mask.docs.k != p.mask.docs.q))) {
    // Each cut moves to the same place in its document's keys (without
    // documents: the same fraction of the keys), so a rank keeps its documents' keys.
    for (int64_t& c : cuts) {
      if (p.mask.docs.on()) {
        const Documents& d = p.mask.docs;
        const int64_t i = c >= p.nq ? d.count - 1 : d.q_doc(c);
        const int64_t lq = d.q[i + 1] - d.q[i], lk = d.k[i + 1] - d.k[i];
        c = c >= p.nq ? p.nk : d.k[i] + (lq > 0 ? (c - d.q[i]) * lk / lq : 0);
      } else {
        c = p.nq > 0 ? c * p.nk / p.nq : 0;
      }
    }
    // The first cut stays at 0: documents without queries before the first
    // query still hold keys, which a rank must hold (their dK and dV; global
    // tokens across documents see them).
    cuts.front() = 0;
    for (std::size_t i = 1; i < cuts.size(); ++i) cuts[i] = std::max(cuts[i], cuts[i - 1]);
  }
  return from_cuts(n, cuts);
}

Layout Layout::nested_of(LayoutKind kind, const AttentionProblem& p, int nodes, int per_node,
                         bool keys) {
  return nested(of(kind, p, nodes, keys), per_node);
}

int64_t Layout::tokens(int rank) const {
  int64_t t = 0;
  for (const Segment& s : segments(rank)) t += s.count;
  return t;
}

int64_t Layout::max_tokens() const {
  int64_t m = 0;
  for (int r = 0; r < ranks_; ++r) m = std::max(m, tokens(r));
  return m;
}

int64_t Layout::local_index(int rank, int64_t pos) const {
  for (const Segment& s : segments(rank)) {
    const int64_t i = pos - s.start;
    if (i >= 0 && i % s.stride == 0 && i / s.stride < s.count) return s.local_offset + i / s.stride;
  }
  return -1;
}

}  // namespace ringattn
