// How a sequence of n tokens is split over P ranks.
//
//   contiguous  rank r holds one chunk [r n / P, (r + 1) n / P)
//   zigzag      2P chunks c_i = [i n / 2P, (i + 1) n / 2P); rank r holds c_r and
//               c_{2P-1-r}, so under a causal mask every rank gets an early
//               (cheap) and a late (expensive) chunk: balanced work
//   striped     token t on rank t mod P (positions r, r + P, r + 2P, ...)
//   balanced    two pieces per rank like zigzag (a front piece and a back piece,
//               working inwards; the last rank takes the middle), with cut
//               points chosen from the mask so that every rank gets the same
//               visible (query, key) pairs for any mix of document lengths:
//               each rank in turn takes 1/(ranks left) of the work left, split
//               between the front and the back so that its token count is as
//               close as that allows to 1/(ranks left) of the tokens left. A
//               single causal document gives zigzag's cuts; many short
//               documents give equal token counts. Keys follow the query cuts
//               (through the documents for cross-attention). Needs the mask:
//               Layout::of.
//
// Any n works (no divisibility, no padding); a rank may hold zero tokens when
// n < P (or n < 2P for zigzag). Local token order is segment order, each
// segment in increasing position.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ringattn/mask.hpp"

namespace ringattn {

struct AttentionProblem;  // ringattn/attention.hpp

enum class LayoutKind : uint8_t { contiguous, zigzag, striped, balanced };

std::string layout_name(LayoutKind k);
LayoutKind parse_layout(const std::string& s);  // throws Error naming --layout
// What `--layout auto` means: balanced with documents; when causal,
// contiguous for a window of at most nk / kWindowContiguousShare keys (work
// within 3.2% of even, one neighbour's boundary rows sent), else zigzag;
// contiguous when not causal.
inline constexpr int64_t kWindowContiguousShare = 16;
LayoutKind auto_layout(const Mask& mask, bool causal, int64_t nk);

// Global positions start + i * stride for i in [0, count).
struct Segment {
  int64_t start = 0;
  int64_t count = 0;
  int64_t stride = 1;
  int64_t local_offset = 0;  // index of its first token in the rank's local order
  Positions positions() const { return {start, stride}; }
  int64_t last() const { return start + (count - 1) * stride; }
};

class Layout {
 public:
  Layout() = default;
  Layout(LayoutKind kind, int64_t n, int ranks);  // not balanced (it needs the mask)
  // Any kind for the queries (keys = false: n = p.nq) or the keys (n = p.nk) of p.
  static Layout of(LayoutKind kind, const AttentionProblem& p, int ranks, bool keys);
  // Layout::nested over Layout::of's node level.
  static Layout nested_of(LayoutKind kind, const AttentionProblem& p, int nodes, int per_node,
                          bool keys);
  // The balanced cut points for the queries: 2 ranks + 1 boundaries c_0 = 0 <=
  // c_1 <= ... <= c_{2 ranks} = nq of pieces i = [c_i, c_{i+1}); rank r holds
  // pieces r and 2 ranks - 1 - r.
  static std::vector<int64_t> balanced_cuts(const AttentionProblem& p, int ranks);
  // Two levels (ranks grouped in nodes of `per_node`, rank = node x per_node +
  // i): the sequence is split over the nodes by `kind` (Layout(kind, n, nodes)),
  // and rank i of a node holds the i-th of per_node contiguous pieces of its
  // node's tokens in the node's local order ([i len / w, (i + 1) len / w)).
  // per_node = 1 is Layout(kind, n, nodes).
  static Layout nested(LayoutKind kind, int64_t n, int nodes, int per_node);
  static Layout nested(const Layout& top, int per_node);
  // The nested layout's node level (nodes() ranks), and its nodes and ranks per node
  // (1 and ranks() for a flat layout).
  int per_node() const { return per_node_; }
  int nodes() const { return ranks_ / per_node_; }

  LayoutKind kind() const { return kind_; }
  int64_t length() const { return n_; }
  int ranks() const { return ranks_; }
  const std::vector<Segment>& segments(int rank) const {
    return segs_[static_cast<std::size_t>(rank)];
  }
  int64_t tokens(int rank) const;
  int64_t max_tokens() const;
  // Local index on `rank` of global position `pos`, or -1 if not held there.
  int64_t local_index(int rank, int64_t pos) const;

 private:
  LayoutKind kind_ = LayoutKind::contiguous;
  int64_t n_ = 0;
  int ranks_ = 1;
  int per_node_ = 1;
  std::vector<std::vector<Segment>> segs_;
  static Layout from_cuts(int64_t n, const std::vector<int64_t>& cuts);
};

}  // namespace ringattn
