// One ring-attention case run on a communicator and checked, for this rank's
// query rows, against the float64 reference of the whole problem. Shared by
// the in-process tests and the MPI tests (launched with mpiexec).
#pragma once

#include <string>
#include <vector>

#include "ringattn/comm.hpp"
#include "ringattn/reference.hpp"
#include "ringattn/ring.hpp"
#include "util.hpp"

namespace ringattn::test {

struct RingCase {
  int64_t b = 1, nq = 0, nk = 0, hq = 8, hkv = 8, d = 32;
  bool causal = false;
  const Mask* mask = nullptr;  // when set, used instead of none/causal
  std::string mask_name;
  LayoutKind layout = LayoutKind::contiguous;
  uint64_t seed = 1;
  std::string name() const {
    return "B=" + std::to_string(b) + " Nq=" + std::to_string(nq) + " Nk=" + std::to_string(nk) +
           " H=" + std::to_string(hq) + "/" + std::to_string(hkv) + " D=" + std::to_string(d) +
           (mask != nullptr ? " " + mask_name + " "
            : causal        ? " causal "
                            : " full ") +
           layout_name(layout);
  }
};

// Gathers the local tokens of `rank` from a global [B, N, H, D] tensor.
inline Tensor slice_tokens(const Tensor& g, const Layout& l, int rank) {
  const int64_t b = g.shape[0], n = g.shape[1], row = g.shape[2] * g.shape[3];
  const int64_t local = l.tokens(rank);
  Tensor t(g.dtype, {b, local, g.shape[2], g.shape[3]});
  const std::size_t esz = dtype_size(g.dtype);
  for (int64_t bi = 0; bi < b; ++bi)
    for (const Segment& s : l.segments(rank))
      for (int64_t i = 0; i < s.count; ++i)
        std::memcpy(
            static_cast<char*>(t.data.data()) + ((bi * local + s.local_offset + i) * row) * esz,
            static_cast<const char*>(g.data.data()) +
                ((bi * n + s.start + i * s.stride) * row) * esz,
            static_cast<std::size_t>(row) * esz);
  return t;
}

// Rank r's share of a global problem: its slices of q, k, v and the RingProblem
// over them (the global problem's fields, the layouts; pointers into the slices,
// which a move keeps valid).
struct RankShare {
  Tensor q, k, v;
  RingProblem rp;
};
inline RankShare rank_share(const Problem& g, const Layout& ql, const Layout& kl, int r) {
  RankShare s;
  s.q = slice_tokens(g.q, ql, r), s.k = slice_tokens(g.k, kl, r), s.v = slice_tokens(g.v, kl, r);
  s.rp = RingProblem(g.args);
  s.rp.q_layout = &ql, s.rp.kv_layout = &kl;
  s.rp.q = s.q.data.data(), s.rp.k = s.k.data.data(), s.rp.v = s.v.data.data();
  return s;
}

// Every sparse pattern on every layout (the masks stay owned by `patterns`).
inline std::vector<RingCase> sparse_ring_cases(const std::vector<NamedMask>& patterns, int64_t n,
                                               uint64_t seed0) {
  std::vector<RingCase> cases;
  for (const NamedMask& nm : patterns)
    for (LayoutKind layout : {LayoutKind::contiguous, LayoutKind::zigzag, LayoutKind::striped}) {
      RingCase c;
      c.nq = c.nk = n, c.hq = 4, c.hkv = 2, c.d = 32, c.layout = layout;
      c.seed = seed0 + cases.size();
      c.mask = &nm.mask;
      c.mask_name = nm.name;
      cases.push_back(c);
    }
  return cases;
}

struct RingCheck {
  ErrorStats err;
  RingMetrics metrics;
};

// One rank's rows (o [B, n, Hq, D], lse [B, Hq, n] in ql's local order) placed at
// their global positions of [B, nq, Hq, D] / [B, Hq, nq] arrays (zeros elsewhere),
// with the list of those positions.
struct GlobalRows {
  std::vector<int64_t> rows;
  std::vector<float> o, lse;
};
inline GlobalRows to_global(const Layout& ql, int r, int64_t b, int64_t nq, int64_t hq, int64_t d,
                            const float* o, const float* lse) {
  GlobalRows g;
  const int64_t nl = ql.tokens(r);
  g.o.assign(static_cast<std::size_t>(b * nq * hq * d), 0.0f);
  g.lse.assign(static_cast<std::size_t>(b * hq * nq), 0.0f);
  for (const Segment& s : ql.segments(r))
    for (int64_t i = 0; i < s.count; ++i) {
      const int64_t pos = s.start + i * s.stride, li = s.local_offset + i;
      g.rows.push_back(pos);
      for (int64_t bi = 0; bi < b; ++bi) {
        for (int64_t x = 0; x < hq * d; ++x)
          g.o[static_cast<std::size_t>((bi * nq + pos) * hq * d + x)] =
              o[static_cast<std::size_t>((bi * nl + li) * hq * d + x)];
        for (int64_t h = 0; h < hq; ++h)
          g.lse[static_cast<std::size_t>((bi * hq + h) * nq + pos)] =
              lse[static_cast<std::size_t>((bi * hq + h) * nl + li)];
      }
    }
  return g;
}

inline RingCheck run_ring_case(Communicator& comm, const RingCase& c) {
  const int p = comm.size(), r = comm.rank();
  // Every rank builds the same global problem (test sizes are small).
  Problem g = make_problem(c.b, c.nq, c.nk, c.hq, c.hkv, c.d, DType::f32, c.seed);
  if (c.causal) g.args.mask = Mask::causal(c.nk - c.nq);
  if (c.mask != nullptr) g.args.mask = *c.mask;
  const Layout ql(c.layout, c.nq, p), kl(c.layout, c.nk, p);
  const RingSchedule sch = make_ring_schedule(ql, kl, g.args.mask);
  const Tensor q = slice_tokens(g.q, ql, r), k = slice_tokens(g.k, kl, r),
               v = slice_tokens(g.v, kl, r);

  RingProblem rp(g.args);  // the global problem
  rp.q_layout = &ql, rp.kv_layout = &kl;
  rp.q = q.data.data(), rp.k = k.data.data(), rp.v = v.data.data();
  const int64_t nl = ql.tokens(r);
  std::vector<float> o(static_cast<std::size_t>(c.b * nl * c.hq * c.d)),
      lse(static_cast<std::size_t>(c.b * c.hq * nl));
  KernelOptions kopt;
  kopt.threads = 1;
  RingCheck out;
  out.metrics = ring_attention(comm, sch, rp, o.data(), lse.data(), kopt);

  // Scatter into global order and compare this rank's rows.
  const GlobalRows g_rows = to_global(ql, r, c.b, c.nq, c.hq, c.d, o.data(), lse.data());
  const std::vector<int64_t>& rows = g_rows.rows;
  const std::vector<float>&go = g_rows.o, &gl = g_rows.lse;
  if (!rows.empty()) {
    const ReferenceResult ref = reference_attention_rows(g.args, rows);
    out.err = compare_to_reference(g.args, go.data(), gl.data(), ref, rows);
  }
  return out;
}

}  // namespace ringattn::test
