// The planner over nodes (ringattn/plan.hpp): the a2a-ring scheme around the
// ring across nodes, and the comparison of the three schemes.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "plan/plan_internal.hpp"
#include "ringattn/error.hpp"
#include "ringattn/layout.hpp"
#include "ringattn/plan.hpp"
#include "ringattn/two_level.hpp"

namespace ringattn {
namespace detail {
namespace {

constexpr double kFloatBytes = 4.0;  // O and LSE travel back as float32

std::size_t at(int64_t i) {
  return static_cast<std::size_t>(i);
}

}  // namespace

// The a2a-ring as two_level.cpp runs it, on the nested layout: local rank i of
// node n holds its own tokens (all heads); all-to-all 1 sends rank j of its node
// Q of j's query heads and K, V of j's K/V heads for its tokens (storage dtype),
// one message per other rank; the ring across the P / w nodes runs among the
// ranks of local index i on Layout(kind, N, P / w) with Hq / w query heads (all
// w rings have the same shape: one plan_one of P / w ranks, a node each, gives
// every one); all-to-all 2 sends rank j O and LSE (float32) of its tokens for
// this rank's heads. Each all-to-all takes (w - 1) latencies + max(bytes sent,
// received) / bandwidth on the intra-node link; it starts when every rank of the
// node has reached it (the first when the job starts, the ring after every
// node's first, the second when the node's ring has ended).
Plan plan_a2a_ring(const PlanInput& in, const HardwareProfile& hw, const PlanMachine& machine,
                   int w) {
  const auto refuse = [](const char* what) {
    throw FieldError("hierarchy", fmt::format("a2a-ring does not run with {} yet", what));
  };
  if (in.kv_wire.on() || in.kv_store) refuse("quantized K/V (--kv-wire, --kv-store)");
  if (in.select.on()) refuse("K/V selection (--kv-keep)");
  if (in.hier.on()) refuse("the hierarchical stages");
  const int np = in.ranks, nodes = np / w;
  const bool local = in.links == PlanLinks::in_process;
  const HeadShare share = a2a_heads(in.hq, in.hkv, w, 0);  // the same counts on every rank

  PlanInput sub = in;
  sub.hq = share.nq, sub.hkv = share.nkv;
  sub.scale = in.softmax_scale();
  sub.ranks = nodes, sub.ranks_per_node = 1, sub.scheme = CommScheme::flat;
  sub.moe = {};
  const Plan ring = plan_one(sub, hw, &machine);

  Plan p = ring;
  p.in = in;
  p.ranks_per_node = w, p.nodes = nodes;
  p.schemes.clear();
  const LinkSpec* a2a_link = nullptr;
  if (w > 1) {
    if (local) {
      if (!hw.in_process.present)
        throw FieldError("hardware", fmt::format("profile '{}' ({}) has no [link.in-process] "
                                                 "section, needed for in-process ranks",
                                                 hw.name, hw.source));
      a2a_link = &hw.in_process;
    } else {
      if (!hw.intra.present)
        throw FieldError("hardware",
                         fmt::format("profile '{}' ({}) has no [link.intra-node] section, needed "
                                     "for the a2a-ring's all-to-alls inside a node",
                                     hw.name, hw.source));
      a2a_link = &hw.intra;
    }
    p.intra_link = *a2a_link;
    if (nodes == 1) p.link = *a2a_link, p.link_name = local ? "in-process" : "intra-node";
  }
  p.inter_link = nodes > 1 ? ring.link : LinkSpec{};

  const Layout ql = Layout::nested_of(in.layout, in, nodes, w, false);
  const Layout kvl = Layout::nested_of(in.layout, in, nodes, w, true);
  const double b = double(in.batch), d = double(in.head_dim);
  const double esz = double(dtype_size(in.dtype)), hq = double(in.hq), hkv = double(in.hkv);
  const double nq_h = double(share.nq), nkv_h = double(share.nkv);
  // Bytes rank (n, i) sends rank (n, j) in each all-to-all (equal shares: j does not matter).
  const auto send1 = [&](int r) {
    return b * (double(ql.tokens(r)) * nq_h + 2.0 * double(kvl.tokens(r)) * nkv_h) * d * esz;
  };
  const auto send2 = [&](int to) {
    return b * double(ql.tokens(to)) * nq_h * (d + 1) * kFloatBytes;
  };
  const auto a2a_time = [&](double sent, double received) {
    return a2a_link == nullptr ? 0.0 : a2a_link->seconds(std::max(sent, received), w - 1);
  };

  p.per_rank.assign(at(np), {});
  p.max_rank_memory = 0;
  std::vector<double> t1(at(np)), t2(at(np));
  double first = 0;
  for (int r = 0; r < np; ++r) {
    const int node = r / w, i = r % w;
    RankPlan& rp = p.per_rank[at(r)];
    rp = ring.per_rank[at(node)];
    rp.rank = r;
    rp.q_tokens = ql.tokens(r), rp.kv_tokens = kvl.tokens(r);
    double s1 = 0, r1 = 0, s2 = 0, r2 = 0;
    for (int j = 0; j < w; ++j) {
      if (j == i) continue;
      const int peer = node * w + j;
      const double out1 = send1(r), out2 = send2(peer);
      s1 += out1, r1 += send1(peer), s2 += out2, r2 += send2(r);
      for (const double bytes : {out1, out2})
        if (bytes > 0) rp.intra_bytes += std::llround(bytes), ++rp.intra_messages;
    }
    t1[at(r)] = a2a_time(s1, r1), t2[at(r)] = a2a_time(s2, r2);
    rp.intra_s += t1[at(r)] + t2[at(r)];
    first = std::max(first, t1[at(r)]);

    // Memory: the own tokens (the job's Q, K, V, O, LSE) throughout; the node's
    // tokens for this rank's heads through the ring (ring.mem's q .. lse); the
    // all-to-alls' staging beside them.
    MemoryBreakdown& m = rp.mem;
    const MemoryBreakdown& nm = ring.per_rank[at(node)].mem;
    const double nq_me = double(ql.tokens(r)), nk_me = double(kvl.tokens(r));
    m.q = b * nq_me * hq * d * esz;
    m.k = m.v = b * nk_me * hkv * d * esz;
    m.o = b * nq_me * hq * d * kFloatBytes;
    m.lse = b * hq * nq_me * kFloatBytes;
    m.node_share = nm.q + nm.k + nm.v + nm.o + nm.lse;
    const double held = m.node_share + nm.recv_buffers + nm.partial + nm.shared + nm.workspace;
    // All-to-all 1: the send buffer (w shares of its tokens), the receive buffer
    // and the node's Q, K, V unpacked from it; 2: the node's O and LSE, the send
    // buffer (as large) and the receive buffer (its tokens, all heads).
    const double phase1 = double(w) * send1(r) + 2.0 * (nm.q + nm.k + nm.v);
    const double phase2 = 2.0 * (nm.o + nm.lse) + b * nq_me * hq * (d + 1) * kFloatBytes;
    m.a2a_staging = std::max({0.0, phase1 - held, phase2 - held});
    p.max_rank_memory = std::max(p.max_rank_memory, m.peak());
  }
  // Times: the ring starts after the first all-to-all everywhere, the second
  // all-to-all of a node when its ring has ended.
  p.a2a_s = first;
  double second = 0;
  for (int node = 0; node < nodes; ++node) {
    double t = 0;
    for (int i = 0; i < w; ++i) t = std::max(t, t2[at(node * w + i)]);
    second = std::max(second, t);
    for (int i = 0; i < w; ++i) {
      RankPlan& rp = p.per_rank[at(node * w + i)];
      rp.wait_s += first + t;
      rp.total_s = first + ring.per_rank[at(node)].total_s + t;
    }
  }
  p.a2a_s += second;
  // As run counts it: the all-to-alls' bytes join the ring's, per rotation of every rank.
  double a2a_bytes = 0;
  for (const RankPlan& rp : p.per_rank) a2a_bytes += double(rp.intra_bytes);
  const double rotations = double(np) * double(std::max(ring.steps - 1, 0));
  if (rotations > 0) p.bytes_per_step = ring.bytes_per_step + a2a_bytes / rotations;
  p.total_flops = 0;
  for (const RankPlan& rp : p.per_rank) p.total_flops += rp.flops;

  p.moe = plan_moe_stage(in, ql, moe_gemm_rate(hw, in, p.rate), p.link);
  if (p.moe.on) {
    double attention_end = 0;
    for (const RankPlan& rp : p.per_rank) attention_end = std::max(attention_end, rp.total_s);
    for (int r = 0; r < np; ++r) {
      RankPlan& rp = p.per_rank[at(r)];
      const MoeRankPlan& mr = p.moe.per_rank[at(r)];
      rp.mem.moe = mr.memory;
      rp.flops += mr.ffn_flops + mr.router_flops;
      p.total_flops += mr.ffn_flops + mr.router_flops;
      rp.total_s = attention_end + mr.seconds;
      p.max_rank_memory = std::max(p.max_rank_memory, rp.mem.peak());
    }
  }
  p.predicted_s = 0;
  for (const RankPlan& rp : p.per_rank) p.predicted_s = std::max(p.predicted_s, rp.total_s);
  p.fits = p.max_rank_memory <= p.memory_available;
  p.naive_scores_total = p.naive_scores_per_head * b * hq;
  p.kv_cache_bytes = double(kv_cache_values(in.nk, in.hkv, in.head_dim)) * b * esz;
  return p;
}

}  // namespace detail

std::vector<SchemeEstimate> compare_schemes(const PlanInput& in, const HardwareProfile& hw) {
  std::vector<SchemeEstimate> out;
  for (const CommScheme s : {CommScheme::flat, CommScheme::double_ring, CommScheme::a2a_ring}) {
    SchemeEstimate e;
    e.scheme = s;
    PlanInput x = in;
    x.scheme = s;
    try {
      const Plan p = detail::plan_one(x, hw, nullptr);
      e.ok = true;
      e.predicted_s = p.predicted_s;
      e.memory = p.max_rank_memory;
      e.fits = p.fits;
      for (int node = 0; node < p.nodes; ++node) {
        double inter = 0, intra = 0;
        for (const RankPlan& rp : p.per_rank)
          if (rp.rank / p.ranks_per_node == node)
            inter += double(rp.inter_bytes), intra += double(rp.intra_bytes);
        e.inter_bytes = std::max(e.inter_bytes, inter);
        e.intra_bytes = std::max(e.intra_bytes, intra);
      }
    } catch (const FieldError& err) {
      if (s == CommScheme::flat) throw;
      e.why = err.what();
    }
    out.push_back(e);
  }
  return out;
}

namespace {
CommScheme winner(const std::vector<SchemeEstimate>& v) {
  const SchemeEstimate* best = nullptr;
  for (const SchemeEstimate& e : v)
    if (e.ok && (best == nullptr || e.predicted_s < best->predicted_s)) best = &e;
  return best == nullptr ? CommScheme::flat : best->scheme;
}
}  // namespace

CommScheme best_scheme(const PlanInput& in, const HardwareProfile& hw) {
  PlanInput flat = in;
  flat.scheme = CommScheme::flat;
  const Plan p = detail::plan_one(flat, hw, nullptr);
  if (p.nodes <= 1) return CommScheme::flat;
  return winner(compare_schemes(in, hw));
}

Plan make_plan(const PlanInput& in, const HardwareProfile& hw) {
  Plan p = detail::plan_one(in, hw, nullptr);
  if (p.nodes > 1) {
    p.schemes = compare_schemes(in, hw);
    p.best = winner(p.schemes);
  } else {
    p.best = CommScheme::flat;
  }
  return p;
}

}  // namespace ringattn
