#include "ringattn/layout.hpp"

#include <fmt/format.h>

#include <algorithm>

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
  }
  return "?";
}

LayoutKind parse_layout(const std::string& s) {
  for (LayoutKind k : {LayoutKind::contiguous, LayoutKind::zigzag, LayoutKind::striped})
    if (s == layout_name(k)) return k;
  throw FieldError("layout",
                   fmt::format("expected contiguous, zigzag, striped or auto, got '{}'", s));
}

Layout::Layout(LayoutKind kind, int64_t n, int ranks) : kind_(kind), n_(n), ranks_(ranks) {
  if (n < 0) throw Error(fmt::format("layout: sequence length must be >= 0, got {}", n));
  if (ranks < 1) throw Error(fmt::format("layout: ranks must be >= 1, got {}", ranks));
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
    }
  }
}

Layout Layout::nested(LayoutKind kind, int64_t n, int nodes, int per_node) {
  if (per_node < 1)
    throw Error(fmt::format("layout: ranks per node must be >= 1, got {}", per_node));
  const Layout top(kind, n, nodes);
  if (per_node == 1) return top;
  Layout l;
  l.kind_ = kind, l.n_ = n, l.ranks_ = nodes * per_node, l.per_node_ = per_node;
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
