// The float64 reference of hierarchical aggregation (levels and block
// routing, ringattn/hierarchy.hpp), written from those semantics alone: no
// shared code with the ring stage or the kernel beyond Mask::allows.
//
// Keys are read through a loader in windows, so the reference needs O(Nk / s)
// memory for the block means plus one window, never Nk x anything per query:
// it serves the tests (whole arrays) and `run --check-rows` at 1M tokens.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "ringattn/attention.hpp"
#include "ringattn/reference.hpp"

namespace ringattn {

class HierarchyReference {
 public:
  // Fills *k and *v with key/value rows [j0, j0 + n) of batch b as doubles
  // [n, Hkv, D] (the stored values).
  using KvLoader = std::function<void(int64_t b, int64_t j0, int64_t n, std::vector<double>* k,
                                      std::vector<double>* v)>;

  // p.hier must be on. Streams every key once per batch to build the block
  // means (level summaries, or the routing means).
  HierarchyReference(const AttentionProblem& p, KvLoader load);

  // Query row t (0 <= t < Nq) of batch b, q [Hq, D]: o [Hq, D] and lse [Hq]
  // (an empty row: O = 0, LSE = -inf). With routing, route [Hq, topk] (the
  // chosen blocks ascending, -1 padded; may be null) and route_gap [Hq] (may
  // be null): the score of the last chosen candidate minus the best unchosen
  // one, relative to max(1, |score|); +inf when no candidate was left out. A
  // result whose routing differs where the gap is below ~1e-4 is a near-tie.
  void row(int64_t b, int64_t t, const double* q, double* o, double* lse, int32_t* route = nullptr,
           double* route_gap = nullptr) const;

 private:
  struct Impl;
  std::shared_ptr<const Impl> impl_;
};

// Every row of whole host arrays (a.q, a.k, a.v in the storage dtype, positions
// from 0): o [B, Nq, Hq, D], lse [B, Hq, Nq]; with routing, *route [B, Nq, Hq,
// topk] and *route_gap [B, Nq, Hq] when not null.
ReferenceResult reference_hierarchical(const AttentionArgs& a,
                                       std::vector<int32_t>* route = nullptr,
                                       std::vector<double>* route_gap = nullptr);

}  // namespace ringattn
