// The planner's model of the MoE stage (ringattn/plan.hpp, MoePlan): balanced
// routing, the all-to-all bytes moe_stage.cpp sends, the FFN at the profile's rate.
#include <algorithm>
#include <limits>

#include "ringattn/plan.hpp"

namespace ringattn {
namespace {

constexpr double kRecordBytes = 24.0;  // struct Record in moe_stage.cpp
constexpr double kFlagBytes = 1.0;     // accept flags (uint8_t)
constexpr double kCountBytes = 8.0;    // int64_t counts, one per peer
constexpr double kFloatBytes = 4.0;    // rows, logits, probabilities, gates
constexpr double kDoubleBytes = 8.0;   // the chunk policy's partial sums (and the chunk id)
constexpr double kSlotBytes = 16.0;    // sent_at and ret_row per record (two 8-byte slots)
constexpr double kFfnFlopsPerRowElement = 6.0;  // three GEMMs of 2 rows d_model d_ff
constexpr double kGemmFlops = 2.0;
constexpr double kFfnTileRows = 1024;  // moe_ffn.cpp: rows per FFN tile
constexpr int kHiddenTiles = 2;        // h1 and h3
// All-to-alls of one pass: counts, records, flags, rows, outputs (+ the chunk
// policy's counts, sums and logits).
constexpr int kAlltoalls = 5, kChunkAlltoalls = 3;

// The chunk policy's chunk parts: a rank sends one partial sum per distinct
// chunk among its rows to the chunk's owner (moe_stage.cpp, ChunkGeometry).
struct ChunkParts {
  std::vector<double> held, sent, received, received_all, owned;  // [rank]
};

ChunkParts chunk_parts(const PlanInput& in, const Layout& ql, int64_t chunk) {
  const int np = ql.ranks();
  const auto n = static_cast<std::size_t>(np);
  ChunkParts cp{std::vector<double>(n, 0.0), {}, {}, {}, {}};
  cp.sent = cp.received = cp.received_all = cp.owned = cp.held;
  const int64_t per_seq = (in.nq + chunk - 1) / chunk;
  const int64_t total = in.batch * per_seq;
  const auto owner = [&](int64_t id) { return static_cast<int>(id * np / total); };
  for (int64_t id = 0; id < total; ++id) cp.owned[static_cast<std::size_t>(owner(id))] += 1;
  std::vector<int64_t> ids;  // chunks within one sequence among the rank's positions
  for (int r = 0; r < np; ++r) {
    ids.clear();
    for (const Segment& s : ql.segments(r)) {
      if (s.count == 0) continue;
      if (s.stride == 1) {
        for (int64_t c = s.start / chunk; c <= (s.start + s.count - 1) / chunk; ++c)
          ids.push_back(c);
      } else {
        for (int64_t t = 0; t < s.count; ++t) {
          const int64_t c = (s.start + t * s.stride) / chunk;
          if (ids.empty() || ids.back() != c) ids.push_back(c);
        }
      }
    }
    std::sort(ids.begin(), ids.end());
    ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
    const auto ri = static_cast<std::size_t>(r);
    for (int64_t b = 0; b < in.batch; ++b)
      for (int64_t c : ids) {
        const int o = owner(b * per_seq + c);
        const auto oi = static_cast<std::size_t>(o);
        cp.held[ri] += 1;
        cp.received_all[oi] += 1;
        if (o != r) {
          cp.sent[ri] += 1;
          cp.received[oi] += 1;
        }
      }
  }
  return cp;
}

}  // namespace

const MoeRankPlan& MoePlan::slowest() const {
  return *std::max_element(
      per_rank.begin(), per_rank.end(),
      [](const MoeRankPlan& a, const MoeRankPlan& b) { return a.seconds < b.seconds; });
}

double MoePlan::max_bytes_sent() const {
  double m = 0;
  for (const MoeRankPlan& r : per_rank) m = std::max(m, r.bytes_sent);
  return m;
}

double MoePlan::max_memory() const {
  double m = 0;
  for (const MoeRankPlan& r : per_rank) m = std::max(m, r.memory);
  return m;
}

double moe_gemm_rate(const HardwareProfile& hw, const PlanInput& in, double rank_rate) {
  // The float32 entry at the largest listed head dim (the map is ordered by (dtype, D)).
  double f32 = 0;
  for (const auto& [key, rate] : hw.kernel_flops)
    if (key.first == DType::f32) f32 = rate;
  if (!(f32 > 0)) return rank_rate;
  return f32 * rank_rate / hw.kernel_rate(in.dtype, in.head_dim);
}

MoePlan plan_moe_stage(const PlanInput& in, const Layout& ql, double gemm_rate,
                       const LinkSpec& link) {
  MoePlan mp;
  const MoeConfig& c = in.moe;
  if (!c.on()) return mp;
  const int np = ql.ranks();
  const bool expert_choice = c.policy == MoePolicy::expert;
  const bool chunked = c.policy == MoePolicy::chunk;
  mp.on = true;
  mp.what = c.describe();
  mp.tokens = in.batch * in.nq;
  mp.d_model = in.hq * in.head_dim;
  mp.capacity = moe_capacity(c, mp.tokens);
  mp.alltoalls = kAlltoalls + (chunked ? kChunkAlltoalls : 0);
  mp.gemm_rate = gemm_rate;
  const double t = double(mp.tokens), dm = double(mp.d_model), dff = double(c.d_ff);
  const double ne = double(c.experts), k = double(c.topk);
  const bool dropless = mp.capacity == std::numeric_limits<int64_t>::max();
  const double cap = dropless ? t * k : double(mp.capacity);
  const double row_bytes = dm * kFloatBytes;
  // Per expert: requested and accepted; expert choice: each keeps min(C, T).
  mp.requested = expert_choice ? std::min(cap, t) : k * t / ne;
  mp.accepted = std::min(mp.requested, cap);
  const double accept = mp.requested > 0 ? mp.accepted / mp.requested : 0.0;

  std::vector<double> rows(static_cast<std::size_t>(np)), local_top(rows.size());
  double local_top_sum = 0;  // expert choice: sum over ranks of min(C, rows)
  for (int r = 0; r < np; ++r) {
    const auto ri = static_cast<std::size_t>(r);
    rows[ri] = double(in.batch) * double(ql.tokens(r));
    local_top[ri] = std::min(cap, rows[ri]);
    local_top_sum += local_top[ri];
  }
  ChunkParts cp;
  if (chunked) cp = chunk_parts(in, ql, c.chunk);

  mp.per_rank.resize(static_cast<std::size_t>(np));
  for (int r = 0; r < np; ++r) {
    const auto ri = static_cast<std::size_t>(r);
    MoeRankPlan& rp = mp.per_rank[ri];
    const double h = double(moe_experts_of(c.experts, np, r).count);
    const double own = rows[ri], others = t - own;
    rp.rank = r;
    rp.experts = moe_experts_of(c.experts, np, r).count;
    rp.rows = own;
    double received_all = 0, dispatched_all = 0;  // records and rows incl. its own
    if (expert_choice) {
      rp.assignments = ne * local_top[ri];
      rp.records_sent = (ne - h) * local_top[ri];
      rp.records_received = h * (local_top_sum - local_top[ri]);
      received_all = h * local_top_sum;
      rp.rows_sent = t > 0 ? (ne - h) * mp.accepted * own / t : 0.0;
      rp.rows_received = t > 0 ? h * mp.accepted * others / t : 0.0;
      dispatched_all = t > 0 ? ne * mp.accepted * own / t : 0.0;
    } else {
      rp.assignments = k * own;
      rp.records_sent = k * own * (ne - h) / ne;
      rp.records_received = k * others * h / ne;
      received_all = k * t * h / ne;
      rp.rows_sent = accept * rp.records_sent;
      rp.rows_received = accept * rp.records_received;
      dispatched_all = accept * rp.assignments;
    }
    rp.rows_computed = h * mp.accepted;
    const double peers = double(np - 1);
    rp.bytes_sent = kCountBytes * peers + kRecordBytes * rp.records_sent +
                    kFlagBytes * rp.records_received +
                    row_bytes * (rp.rows_sent + rp.rows_received);
    double router_rows = own;
    double chunk_memory = 0;
    if (chunked) {
      rp.chunk_parts_sent = cp.sent[ri];
      rp.chunk_parts_received = cp.received[ri];
      rp.bytes_sent += kCountBytes * peers + (1.0 + dm) * kDoubleBytes * rp.chunk_parts_sent +
                       ne * kFloatBytes * rp.chunk_parts_received;
      router_rows = cp.owned[ri];  // the owner's logits of its chunks' means
      chunk_memory = (cp.held[ri] + cp.received_all[ri]) * (1.0 + dm) * kDoubleBytes +
                     cp.owned[ri] * dm * (kDoubleBytes + kFloatBytes) +
                     (cp.held[ri] + cp.received_all[ri]) * ne * kFloatBytes;
    }
    if (np == 1) rp.bytes_sent = 0;
    rp.ffn_flops = kFfnFlopsPerRowElement * rp.rows_computed * dm * dff;
    rp.router_flops = kGemmFlops * router_rows * dm * ne;
    rp.ffn_s = rp.ffn_flops / gemm_rate;
    rp.router_s = rp.router_flops / gemm_rate;
    rp.alltoall_s =
        np > 1 ? mp.alltoalls * peers * link.latency_s + rp.bytes_sent / link.bandwidth_bps : 0.0;
    rp.seconds = rp.router_s + rp.ffn_s + rp.alltoall_s;
    const double weights =
        dm * ne * kFloatBytes + ne * kFloatBytes + h * 3.0 * dm * dff * kFloatBytes;
    const double records = rp.assignments * (2.0 * kRecordBytes + kFlagBytes + kSlotBytes +
                                             (expert_choice ? 0.0 : kFloatBytes)) +
                           received_all * (kRecordBytes + kFlagBytes);
    const double row_buffers = (dispatched_all + 3.0 * rp.rows_computed) * row_bytes;
    const double tiles = kHiddenTiles * std::min(kFfnTileRows, mp.accepted) * dff * kFloatBytes;
    rp.memory = weights + own * ne * kFloatBytes + records + row_buffers + own * row_bytes + tiles +
                chunk_memory;
  }
  return mp;
}

}  // namespace ringattn
