// Two-level schemes (ringattn/two_level.hpp).
#include "ringattn/two_level.hpp"

#include <fmt/format.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "ringattn/error.hpp"
#include "ringattn/memory.hpp"

namespace ringattn {
namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Tag ranges of the two levels' sub-communicators (below the job's own tags).
constexpr int kNodeTags = 8192, kCrossTags = kNodeTags + kSubTagSpan;

std::size_t at(int64_t i) {
  return static_cast<std::size_t>(i);
}

}  // namespace

const char* comm_scheme_name(CommScheme s) {
  switch (s) {
    case CommScheme::flat:
      return "flat";
    case CommScheme::double_ring:
      return "double-ring";
    case CommScheme::a2a_ring:
      return "a2a-ring";
  }
  return "?";
}

CommScheme parse_comm_scheme(const std::string& s, const std::string& field) {
  if (s == "flat") return CommScheme::flat;
  if (s == "double-ring") return CommScheme::double_ring;
  if (s == "a2a-ring") return CommScheme::a2a_ring;
  throw FieldError(field, fmt::format("expected flat, double-ring or a2a-ring, got '{}'", s));
}

ScheduleOptions scheme_options(CommScheme s, int per_node) {
  ScheduleOptions opt;
  if (s == CommScheme::double_ring) opt.per_node = per_node;
  return opt;
}

void check_two_level(CommScheme s, int ranks, int per_node, int64_t hq, int64_t hkv) {
  if (per_node < 1 || ranks % per_node != 0)
    throw FieldError("ranks_per_node",
                     fmt::format("{} ranks per node do not divide the {} ranks into whole nodes",
                                 per_node, ranks));
  if (s != CommScheme::a2a_ring) return;
  if (hq % per_node != 0)
    throw FieldError("ranks_per_node",
                     fmt::format("a2a-ring splits the {} query heads over the {} ranks of a "
                                 "node: the ranks per node must divide Hq",
                                 hq, per_node));
  const int64_t share = hq / per_node, g = hq / hkv;
  if (share % g != 0 && g % share != 0)
    throw FieldError("ranks_per_node",
                     fmt::format("a2a-ring gives each rank {} query heads, which neither cover "
                                 "whole GQA groups of {} nor fit in one (Hq {}, Hkv {}, {} ranks "
                                 "per node)",
                                 share, g, hq, hkv, per_node));
}

HeadShare a2a_heads(int64_t hq, int64_t hkv, int per_node, int local) {
  HeadShare h;
  const int64_t g = hq / hkv;
  h.nq = hq / per_node;
  h.q0 = local * h.nq;
  h.kv0 = h.q0 / g;
  h.nkv = h.nq % g == 0 ? h.nq / g : 1;
  return h;
}

// ---- LevelCounter ---------------------------------------------------------------

void LevelCounter::count(int dest, std::size_t bytes) {
  if (dest == inner_.rank() || bytes == 0) return;
  if (dest / per_node_ == inner_.rank() / per_node_)
    t_->intra_bytes += static_cast<int64_t>(bytes), ++t_->intra_messages;
  else
    t_->inter_bytes += static_cast<int64_t>(bytes), ++t_->inter_messages;
}

Request LevelCounter::isend(const void* buf, std::size_t bytes, int dest, int tag) {
  count(dest, bytes);
  return inner_.isend(buf, bytes, dest, tag);
}

void LevelCounter::allgather(const void* in, std::size_t bytes, void* out) {
  for (int r = 0; r < size(); ++r) count(r, bytes);
  inner_.allgather(in, bytes, out);
}

void LevelCounter::allgatherv(const void* in, const std::vector<std::size_t>& counts, void* out) {
  for (int r = 0; r < size(); ++r) count(r, counts[at(rank())]);
  inner_.allgatherv(in, counts, out);
}

void LevelCounter::alltoallv(const void* in, const std::vector<std::size_t>& send_counts, void* out,
                             const std::vector<std::size_t>& recv_counts) {
  for (int r = 0; r < size(); ++r) count(r, send_counts[at(r)]);
  inner_.alltoallv(in, send_counts, out, recv_counts);
}

void LevelCounter::abort(const std::string& message, int exit_code) {
  inner_.abort(message, exit_code);
  std::abort();  // not reached
}

// ---- a2a-ring -------------------------------------------------------------------

RingMetrics a2a_ring_attention(Communicator& comm, int per_node, const RingProblem& p, float* o,
                               float* lse, const KernelOptions& kopt, LevelTraffic* traffic) {
  const Clock::time_point t_start = Clock::now();
  const int np = comm.size(), r = comm.rank(), w = per_node;
  check_two_level(CommScheme::a2a_ring, np, w, p.hq, p.hkv);
  const int nodes = np / w, node = r / w, me = r % w;
  if (p.q_layout == nullptr || p.kv_layout == nullptr || p.q_layout->per_node() != w ||
      p.kv_layout->per_node() != w || p.q_layout->ranks() != np || p.kv_layout->ranks() != np)
    throw Error("a2a-ring: the layouts must be Layout::nested over the ranks, w per node");
  if (p.kv_wire.on() || p.kv_stored != nullptr || p.keep.on() || p.hier.on())
    throw Error("a2a-ring: exact K/V only (no quantized K/V, kept-key sets or hierarchy)");
  p.validate();

  std::vector<int> node_members, cross_members;
  for (int j = 0; j < w; ++j) node_members.push_back(node * w + j);
  for (int x = 0; x < nodes; ++x) cross_members.push_back(x * w + me);
  const auto node_comm = make_sub_communicator(comm, node_members, kNodeTags);
  const auto cross = make_sub_communicator(comm, cross_members, kCrossTags);

  const int64_t b = p.batch, d = p.head_dim;
  const std::size_t esz = dtype_size(p.dtype);
  std::vector<HeadShare> hs;
  for (int j = 0; j < w; ++j) hs.push_back(a2a_heads(p.hq, p.hkv, w, j));
  const HeadShare& mine = hs[at(me)];
  std::vector<int64_t> tq(at(w)), tk(at(w)), offq(at(w + 1), 0), offk(at(w + 1), 0);
  for (int j = 0; j < w; ++j) {
    tq[at(j)] = p.q_layout->tokens(node * w + j), tk[at(j)] = p.kv_layout->tokens(node * w + j);
    offq[at(j + 1)] = offq[at(j)] + tq[at(j)], offk[at(j + 1)] = offk[at(j)] + tk[at(j)];
  }
  const int64_t nq_node = offq[at(w)], nk_node = offk[at(w)];
  const int64_t nq_me = tq[at(me)], nk_me = tk[at(me)];

  // All-to-all 1: to rank j of the node, this rank's tokens' Q for j's query
  // heads and K, V for j's K/V heads; from rank j, its tokens' for this rank's.
  const Clock::time_point t_a2a = Clock::now();
  std::vector<std::size_t> sc(at(w)), rc(at(w));
  for (int j = 0; j < w; ++j) {
    sc[at(j)] =
        static_cast<std::size_t>(b * (nq_me * hs[at(j)].nq + 2 * nk_me * hs[at(j)].nkv) * d) * esz;
    rc[at(j)] =
        static_cast<std::size_t>(b * (tq[at(j)] * mine.nq + 2 * tk[at(j)] * mine.nkv) * d) * esz;
  }
  std::size_t send_total = 0, recv_total = 0;
  for (int j = 0; j < w; ++j) send_total += sc[at(j)], recv_total += rc[at(j)];
  Buffer sendbuf(std::max<std::size_t>(send_total, 1), "a2a-ring send");
  Buffer recvbuf(std::max<std::size_t>(recv_total, 1), "a2a-ring receive");
  const std::size_t row = static_cast<std::size_t>(d) * esz;  // one token-head
  {
    char* dst = sendbuf.as<char>();
    for (int j = 0; j < w; ++j) {
      const HeadShare& h = hs[at(j)];
      for (int64_t bi = 0; bi < b; ++bi)
        for (int64_t t = 0; t < nq_me; ++t, dst += h.nq * row)
          std::memcpy(dst, static_cast<const char*>(p.q) + at((bi * nq_me + t) * p.hq + h.q0) * row,
                      at(h.nq) * row);
      for (const void* src : {p.k, p.v})
        for (int64_t bi = 0; bi < b; ++bi)
          for (int64_t t = 0; t < nk_me; ++t, dst += h.nkv * row)
            std::memcpy(dst,
                        static_cast<const char*>(src) + at((bi * nk_me + t) * p.hkv + h.kv0) * row,
                        at(h.nkv) * row);
    }
  }
  node_comm->alltoallv(sendbuf.data(), sc, recvbuf.data(), rc);
  // The node's tokens (in node order: rank 0's piece first) for this rank's heads.
  Buffer qn(std::max<std::size_t>(at(b * nq_node * mine.nq) * row, 1), "a2a-ring node Q");
  Buffer kn(std::max<std::size_t>(at(b * nk_node * mine.nkv) * row, 1), "a2a-ring node K");
  Buffer vn(std::max<std::size_t>(at(b * nk_node * mine.nkv) * row, 1), "a2a-ring node V");
  {
    const char* src = recvbuf.as<char>();
    for (int j = 0; j < w; ++j) {
      const std::size_t qpart = at(b * tq[at(j)] * mine.nq) * row;
      for (int64_t bi = 0; bi < b; ++bi)
        std::memcpy(qn.as<char>() + at((bi * nq_node + offq[at(j)]) * mine.nq) * row,
                    src + at(bi * tq[at(j)] * mine.nq) * row, at(tq[at(j)] * mine.nq) * row);
      src += qpart;
      for (Buffer* x : {&kn, &vn}) {
        for (int64_t bi = 0; bi < b; ++bi)
          std::memcpy(x->as<char>() + at((bi * nk_node + offk[at(j)]) * mine.nkv) * row,
                      src + at(bi * tk[at(j)] * mine.nkv) * row, at(tk[at(j)] * mine.nkv) * row);
        src += at(b * tk[at(j)] * mine.nkv) * row;
      }
    }
  }
  sendbuf = Buffer(), recvbuf = Buffer();
  double a2a_s = since(t_a2a);
  int64_t a2a_bytes = 0;
  for (int j = 0; j < w; ++j)
    if (j != me) a2a_bytes += static_cast<int64_t>(sc[at(j)]);

  // The ring across the nodes, among the ranks of this local index.
  const Layout nql = Layout::of(p.q_layout->kind(), p, nodes, false),
               nkl = Layout::of(p.kv_layout->kind(), p, nodes, true);
  RingProblem sub(static_cast<const AttentionProblem&>(p));
  sub.hq = mine.nq, sub.hkv = mine.nkv;
  sub.scale = p.softmax_scale();
  sub.q_layout = &nql, sub.kv_layout = &nkl;
  sub.q = qn.data(), sub.k = kn.data(), sub.v = vn.data();
  const RingSchedule sch = make_ring_schedule(nql, nkl, p.mask);
  Buffer on(std::max<std::size_t>(at(b * nq_node * mine.nq * d) * sizeof(float), 1),
            "a2a-ring node O");
  Buffer ln(std::max<std::size_t>(at(b * mine.nq * nq_node) * sizeof(float), 1),
            "a2a-ring node LSE");
  RingMetrics m = ring_attention(*cross, sch, sub, on.as<float>(), ln.as<float>(), kopt);
  qn = Buffer(), kn = Buffer(), vn = Buffer();

  // All-to-all 2: each token's O and LSE of this rank's heads back to its rank.
  const Clock::time_point t_back = Clock::now();
  for (int j = 0; j < w; ++j) {
    sc[at(j)] = at(b * tq[at(j)] * mine.nq * (d + 1)) * sizeof(float);
    rc[at(j)] = at(b * nq_me * hs[at(j)].nq * (d + 1)) * sizeof(float);
  }
  send_total = recv_total = 0;
  for (int j = 0; j < w; ++j) send_total += sc[at(j)], recv_total += rc[at(j)];
  sendbuf = Buffer(std::max<std::size_t>(send_total, 1), "a2a-ring send");
  recvbuf = Buffer(std::max<std::size_t>(recv_total, 1), "a2a-ring receive");
  {
    float* dst = sendbuf.as<float>();
    for (int j = 0; j < w; ++j) {
      for (int64_t bi = 0; bi < b; ++bi) {
        const float* src = on.as<float>() + at((bi * nq_node + offq[at(j)]) * mine.nq * d);
        std::copy(src, src + tq[at(j)] * mine.nq * d, dst);
        dst += tq[at(j)] * mine.nq * d;
      }
      for (int64_t bi = 0; bi < b; ++bi)
        for (int64_t h = 0; h < mine.nq; ++h) {
          const float* src = ln.as<float>() + at((bi * mine.nq + h) * nq_node + offq[at(j)]);
          std::copy(src, src + tq[at(j)], dst);
          dst += tq[at(j)];
        }
    }
  }
  node_comm->alltoallv(sendbuf.data(), sc, recvbuf.data(), rc);
  {
    const float* src = recvbuf.as<float>();
    for (int j = 0; j < w; ++j) {
      const HeadShare& h = hs[at(j)];
      for (int64_t bi = 0; bi < b; ++bi)
        for (int64_t t = 0; t < nq_me; ++t, src += h.nq * d)
          std::copy(src, src + h.nq * d, o + at(((bi * nq_me + t) * p.hq + h.q0) * d));
      for (int64_t bi = 0; bi < b; ++bi)
        for (int64_t hh = 0; hh < h.nq; ++hh, src += nq_me)
          std::copy(src, src + nq_me, lse + at((bi * p.hq + h.q0 + hh) * nq_me));
    }
  }
  for (int j = 0; j < w; ++j)
    if (j != me) a2a_bytes += static_cast<int64_t>(sc[at(j)]);
  a2a_s += since(t_back);

  if (traffic != nullptr) traffic->a2a_s += a2a_s;
  m.bytes_sent += a2a_bytes;
  m.wait_s += a2a_s;
  m.total_s = since(t_start);
  return m;
}

}  // namespace ringattn
