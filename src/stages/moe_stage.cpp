// The MoE stage (ringattn/moe_stage.hpp): gating, the owners' capacity
// decisions, dispatch, the experts' FFNs and combine.
#include "ringattn/moe_stage.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <map>
#include <numeric>

#include "ringattn/error.hpp"
#include "ringattn/memory.hpp"
#include "stages/moe_ffn.hpp"

namespace ringattn {
namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// One assignment of a token to an expert, as its owner sees it.
struct Record {
  int64_t t = 0;    // global token index
  int32_t j = 0;    // choice rank (expert choice: 0)
  int32_t e = 0;    // expert
  float p = 0;      // router probability p_t,e (chunk: the chunk's)
  int32_t row = 0;  // the sender's local row (meaningless on the owner)
};
static_assert(sizeof(Record) == 24, "records travel as bytes");

// All-to-all of typed elements with this stage's timing and byte counts.
class Exchange {
 public:
  Exchange(Communicator& comm, MoeMetrics& m) : comm_(comm), m_(m) {}
  int ranks() const { return comm_.size(); }

  // What each rank will send to this one, from what this one sends to each.
  std::vector<int64_t> counts(const std::vector<int64_t>& send) {
    const std::vector<std::size_t> bytes(send.size(), sizeof(int64_t));
    std::vector<int64_t> recv(send.size());
    run(send.data(), bytes, recv.data(), bytes);
    return recv;
  }
  // send_n[r] / recv_n[r] elements of `unit` Ts each, concatenated in rank order.
  template <class T>
  void move(const T* send, const std::vector<int64_t>& send_n, T* recv,
            const std::vector<int64_t>& recv_n, int64_t unit = 1) {
    std::vector<std::size_t> sb(send_n.size()), rb(recv_n.size());
    for (std::size_t r = 0; r < sb.size(); ++r) {
      sb[r] = static_cast<std::size_t>(send_n[r] * unit) * sizeof(T);
      rb[r] = static_cast<std::size_t>(recv_n[r] * unit) * sizeof(T);
    }
    run(send, sb, recv, rb);
  }

 private:
  void run(const void* send, const std::vector<std::size_t>& sb, void* recv,
           const std::vector<std::size_t>& rb) {
    const auto t0 = Clock::now();
    comm_.alltoallv(send, sb, recv, rb);
    m_.comm_s += since(t0);
    for (std::size_t r = 0; r < sb.size(); ++r)
      if (static_cast<int>(r) != comm_.rank()) m_.bytes_sent += static_cast<int64_t>(sb[r]);
  }
  Communicator& comm_;
  MoeMetrics& m_;
};

std::vector<int64_t> offsets_of(const std::vector<int64_t>& n) {
  std::vector<int64_t> off(n.size() + 1, 0);
  std::partial_sum(n.begin(), n.end(), off.begin() + 1);
  return off;
}

// Chunks of the chunk policy: id over all sequences and the chunk's length.
struct ChunkGeometry {
  int64_t seq_len = 1, c = 1, per_seq = 1, total = 0;
  ChunkGeometry(int64_t tokens, int64_t seq, int64_t chunk)
      : seq_len(seq), c(chunk), per_seq((seq + chunk - 1) / chunk), total(tokens / seq * per_seq) {}
  int64_t id(int64_t t) const { return t / seq_len * per_seq + t % seq_len / c; }
  int64_t length(int64_t id) const { return std::min(c, seq_len - id % per_seq * c); }
  int owner(int64_t id, int ranks) const { return static_cast<int>(id * ranks / total); }
};

// The chunk policy's logits per local row: partial sums of each chunk's rows
// (float64) go to the chunk's owner, which sums them in rank order, takes the
// mean, computes its logits and returns them to every contributor.
std::vector<float> chunk_logits(Exchange& ex, const MoeConfig& c, const MoeWeights& w,
                                const MoeTokens& in) {
  const int np = ex.ranks();
  const int64_t dm = w.d_model, ne = w.experts;
  const ChunkGeometry g(in.tokens, in.seq_len, c.chunk);
  // This rank's rows by (chunk, token).
  std::vector<int64_t> order(static_cast<std::size_t>(in.rows));
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(),
            [&](int64_t a, int64_t b) { return in.index[a] < in.index[b]; });
  std::vector<int64_t> ids;  // distinct chunk ids, ascending (so grouped by owner, in rank order)
  std::vector<double> sums;  // [1 + dm] per chunk: id, then the row sum
  for (int64_t i : order) {
    const int64_t id = g.id(in.index[i]);
    if (ids.empty() || ids.back() != id) {
      ids.push_back(id);
      sums.push_back(double(id));
      sums.resize(sums.size() + static_cast<std::size_t>(dm), 0.0);
    }
    double* s = sums.data() + (ids.size() - 1) * static_cast<std::size_t>(1 + dm) + 1;
    const float* xr = in.x + i * dm;
    for (int64_t d = 0; d < dm; ++d) s[d] += double(xr[d]);
  }
  std::vector<int64_t> send_n(static_cast<std::size_t>(np), 0);
  for (int64_t id : ids) ++send_n[static_cast<std::size_t>(g.owner(id, np))];
  const std::vector<int64_t> recv_n = ex.counts(send_n);
  const int64_t nrecv = std::accumulate(recv_n.begin(), recv_n.end(), int64_t{0});
  std::vector<double> parts(static_cast<std::size_t>(nrecv * (1 + dm)));
  ex.move(sums.data(), send_n, parts.data(), recv_n, 1 + dm);

  // The owner: sum the parts of each chunk in rank order, then the mean's logits.
  std::map<int64_t, int64_t> slot;  // chunk id -> row of `means`
  for (int64_t i = 0; i < nrecv; ++i)
    slot.emplace(static_cast<int64_t>(parts[static_cast<std::size_t>(i * (1 + dm))]), 0);
  int64_t next = 0;
  for (auto& kv : slot) kv.second = next++;
  std::vector<double> total(static_cast<std::size_t>(next * dm), 0.0);
  for (int64_t i = 0; i < nrecv; ++i) {
    const double* part = parts.data() + i * (1 + dm);
    double* s = total.data() + slot[static_cast<int64_t>(part[0])] * dm;
    for (int64_t d = 0; d < dm; ++d) s[d] += part[1 + d];
  }
  std::vector<float> means(total.size());
  for (const auto& [id, row] : slot)
    for (int64_t d = 0; d < dm; ++d)
      means[static_cast<std::size_t>(row * dm + d)] =
          static_cast<float>(total[static_cast<std::size_t>(row * dm + d)] / double(g.length(id)));
  std::vector<float> own_logits(static_cast<std::size_t>(next * ne));
  moe::gemm(means.data(), w.router.data(), own_logits.data(), next, ne, dm);
  std::vector<float> back(static_cast<std::size_t>(nrecv * ne));
  for (int64_t i = 0; i < nrecv; ++i) {
    const int64_t row = slot[static_cast<int64_t>(parts[static_cast<std::size_t>(i * (1 + dm))])];
    std::copy_n(own_logits.data() + row * ne, ne, back.data() + i * ne);
  }
  std::vector<float> mine(ids.size() * static_cast<std::size_t>(ne));
  ex.move(back.data(), recv_n, mine.data(), send_n, ne);

  // Every row takes its chunk's logits.
  std::vector<float> logits(static_cast<std::size_t>(in.rows * ne));
  std::size_t k = 0;
  for (int64_t i : order) {
    while (ids[k] != g.id(in.index[i])) ++k;
    std::copy_n(mine.data() + k * static_cast<std::size_t>(ne), ne, logits.data() + i * ne);
  }
  return logits;
}

// Softmax of each row's logits (float32), in place; adds lse^2 to z_sum and p to p_sum.
void softmax_rows(float* l, int64_t rows, int64_t ne, double& z_sum, std::vector<double>& p_sum) {
  for (int64_t i = 0; i < rows; ++i) {
    float* r = l + i * ne;
    const float m = *std::max_element(r, r + ne);
    float s = 0;
    for (int64_t e = 0; e < ne; ++e) s += (r[e] = std::exp(r[e] - m));
    const double lse = double(m) + std::log(double(s));
    z_sum += lse * lse;
    for (int64_t e = 0; e < ne; ++e) {
      r[e] /= s;
      p_sum[static_cast<std::size_t>(e)] += double(r[e]);
    }
  }
}

// Token and chunk choice: each row's top k of p + bias (ties: lowest expert).
// Records in row order, then choice order; gates renormalised over the k.
void choose_topk(const MoeConfig& c, const MoeWeights& w, const MoeTokens& in, const float* p,
                 std::vector<Record>& recs, std::vector<float>& gate) {
  const int64_t ne = w.experts, k = c.topk;
  recs.resize(static_cast<std::size_t>(in.rows * k));
  gate.resize(recs.size());
  std::vector<int32_t> idx(static_cast<std::size_t>(ne));
  for (int64_t i = 0; i < in.rows; ++i) {
    const float* pr = p + i * ne;
    std::iota(idx.begin(), idx.end(), 0);
    auto score = [&](int32_t e) {
      return pr[e] + (w.bias.empty() ? 0.0f : w.bias[static_cast<std::size_t>(e)]);
    };
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int32_t a, int32_t b) {
      const float sa = score(a), sb = score(b);
      return sa > sb || (sa == sb && a < b);
    });
    float norm = 0;
    for (int64_t j = 0; j < k; ++j) norm += pr[idx[static_cast<std::size_t>(j)]];
    for (int64_t j = 0; j < k; ++j) {
      const int32_t e = idx[static_cast<std::size_t>(j)];
      const auto at = static_cast<std::size_t>(i * k + j);
      recs[at] = {in.index[i], static_cast<int32_t>(j), e, pr[e], static_cast<int32_t>(i)};
      gate[at] = pr[e] / norm;
    }
  }
}

// Expert choice: per expert, this rank's top min(C, rows) rows by p (ties: lowest t).
void local_expert_candidates(const MoeWeights& w, const MoeTokens& in, const float* p, int64_t cap,
                             std::vector<Record>& recs) {
  const int64_t ne = w.experts;
  const int64_t take = std::min(cap, in.rows);
  std::vector<int64_t> rows(static_cast<std::size_t>(in.rows));
  for (int64_t e = 0; e < ne; ++e) {
    std::iota(rows.begin(), rows.end(), 0);
    std::partial_sort(rows.begin(), rows.begin() + take, rows.end(), [&](int64_t a, int64_t b) {
      const float pa = p[a * ne + e], pb = p[b * ne + e];
      return pa > pb || (pa == pb && in.index[a] < in.index[b]);
    });
    for (int64_t i = 0; i < take; ++i) {
      const int64_t r = rows[static_cast<std::size_t>(i)];
      recs.push_back(
          {in.index[r], 0, static_cast<int32_t>(e), p[r * ne + e], static_cast<int32_t>(r)});
    }
  }
}

// The owner's decisions over the records it received: accept flags (1/0) in
// their order, and its experts' accepted counts into load.
std::vector<uint8_t> decide(const MoeConfig& c, const std::vector<Record>& recs, int64_t cap,
                            const ChunkGeometry* chunks, std::vector<int64_t>& load) {
  std::vector<uint8_t> ok(recs.size(), 0);
  std::map<int32_t, std::vector<std::size_t>> per_expert;
  for (std::size_t i = 0; i < recs.size(); ++i) per_expert[recs[i].e].push_back(i);
  for (auto& [e, list] : per_expert) {
    auto by_order = [&](std::size_t a, std::size_t b) {
      const Record &ra = recs[a], &rb = recs[b];
      return ra.j != rb.j ? ra.j < rb.j : ra.t < rb.t;
    };
    auto by_score = [&](std::size_t a, std::size_t b) {
      const Record &ra = recs[a], &rb = recs[b];
      if (ra.p != rb.p) return ra.p > rb.p;
      return by_order(a, b);
    };
    if (c.policy == MoePolicy::expert || c.priority == MoePriority::score)
      std::sort(list.begin(), list.end(), by_score);
    else
      std::sort(list.begin(), list.end(), by_order);
    int64_t held = 0;
    if (chunks == nullptr) {
      for (std::size_t i = 0; i < list.size() && held < cap; ++i, ++held) ok[list[i]] = 1;
    } else {  // whole chunks: the records of one chunk are consecutive
      for (std::size_t i = 0; i < list.size();) {
        const int64_t id = chunks->id(recs[list[i]].t);
        std::size_t end = i;
        while (end < list.size() && chunks->id(recs[list[end]].t) == id &&
               recs[list[end]].j == recs[list[i]].j)
          ++end;
        const auto len = static_cast<int64_t>(end - i);
        if (len != chunks->length(id))
          throw Error(fmt::format("moe: chunk {} reached its expert with {} of its {} tokens", id,
                                  len, chunks->length(id)));
        if (held + len <= cap) {
          for (std::size_t q = i; q < end; ++q) ok[list[q]] = 1;
          held += len;
        }
        i = end;
      }
    }
    load[static_cast<std::size_t>(e)] += held;
  }
  return ok;
}

void check_inputs(Communicator& comm, const MoeConfig& c, const MoeWeights& w,
                  const MoeTokens& in) {
  validate_moe(c, comm.size());
  const ExpertRange held = moe_experts_of(c.experts, comm.size(), comm.rank());
  if (w.experts != c.experts || w.first != held.first || w.count != held.count)
    throw Error(fmt::format(
        "moe: the weights hold experts [{}, {}) of {}, this rank needs [{}, {}) of {}", w.first,
        w.first + w.count, w.experts, held.first, held.first + held.count, c.experts));
  const auto per = static_cast<std::size_t>(w.d_model * w.d_ff) * static_cast<std::size_t>(w.count);
  if (w.router.size() != static_cast<std::size_t>(w.d_model * w.experts) || w.w1.size() != per ||
      w.w3.size() != per || w.w2.size() != per ||
      (!w.bias.empty() && w.bias.size() != static_cast<std::size_t>(w.experts)))
    throw Error("moe: the weights' arrays do not match d_model, d_ff and the experts held");
  if (in.seq_len < 1 || in.tokens % in.seq_len != 0)
    throw Error(fmt::format("moe: {} tokens are not whole sequences of {}", in.tokens, in.seq_len));
}

}  // namespace

MoeMetrics moe_stage(Communicator& comm, const MoeConfig& c, const MoeWeights& w,
                     const MoeTokens& in, float* y, int32_t* routing, float* gates,
                     int blas_threads, MoeWorkspace* workspace) {
  const auto t_start = Clock::now();
  MoeWorkspace local_ws;
  MoeWorkspace& ws = workspace != nullptr ? *workspace : local_ws;
  check_inputs(comm, c, w, in);
  if (blas_threads > 0) moe::set_blas_threads(blas_threads);
  MoeMetrics m;
  Exchange ex(comm, m);
  const int np = comm.size();
  const int64_t ne = c.experts, dm = w.d_model, rows = in.rows;
  m.capacity = moe_capacity(c, in.tokens);
  m.requested.assign(static_cast<std::size_t>(ne), 0);
  m.load.assign(static_cast<std::size_t>(ne), 0);

  // Route: probabilities, this rank's assignments (records), the owners' decisions.
  auto t0 = Clock::now();
  std::vector<float> p;
  if (c.policy == MoePolicy::chunk) {
    p = chunk_logits(ex, c, w, in);
  } else {
    p.resize(static_cast<std::size_t>(rows * ne));
    moe::gemm(in.x, w.router.data(), p.data(), rows, ne, dm);
  }
  double z_sum = 0;
  std::vector<double> p_sum(static_cast<std::size_t>(ne), 0.0);
  softmax_rows(p.data(), rows, ne, z_sum, p_sum);
  std::vector<Record> recs;
  std::vector<float> gate;  // token/chunk: per record
  if (c.policy == MoePolicy::expert)
    local_expert_candidates(w, in, p.data(), m.capacity, recs);
  else
    choose_topk(c, w, in, p.data(), recs, gate);
  // Records grouped by owner (stable: row then choice order within).
  std::vector<int64_t> send_n(static_cast<std::size_t>(np), 0);
  for (const Record& r : recs) ++send_n[static_cast<std::size_t>(moe_owner(c.experts, np, r.e))];
  const std::vector<int64_t> send_off = offsets_of(send_n);
  std::vector<std::size_t> sent_at(recs.size());  // record i's slot in the send order
  {
    std::vector<int64_t> fill(send_off.begin(), send_off.end() - 1);
    for (std::size_t i = 0; i < recs.size(); ++i)
      sent_at[i] = static_cast<std::size_t>(
          fill[static_cast<std::size_t>(moe_owner(c.experts, np, recs[i].e))]++);
  }
  std::vector<Record> out(recs.size());
  for (std::size_t i = 0; i < recs.size(); ++i) out[sent_at[i]] = recs[i];
  const std::vector<int64_t> recv_n = ex.counts(send_n);
  const std::vector<int64_t> recv_off = offsets_of(recv_n);
  std::vector<Record> got(static_cast<std::size_t>(recv_off.back()));
  ex.move(out.data(), send_n, got.data(), recv_n);
  const ChunkGeometry geometry(in.tokens, in.seq_len, std::max<int64_t>(c.chunk, 1));
  const std::vector<uint8_t> accept_got =
      decide(c, got, m.capacity, c.policy == MoePolicy::chunk ? &geometry : nullptr, m.load);
  std::vector<uint8_t> accept_out(out.size());
  ex.move(accept_got.data(), recv_n, accept_out.data(), send_n);
  m.route_s = since(t0);

  // Dispatch: accepted rows to the owners, then into one contiguous run per held expert.
  t0 = Clock::now();
  std::vector<int64_t> rows_out_n(static_cast<std::size_t>(np), 0), rows_in_n(rows_out_n);
  for (int r = 0; r < np; ++r) {
    const auto ru = static_cast<std::size_t>(r);
    for (int64_t i = send_off[ru]; i < send_off[ru + 1]; ++i)
      rows_out_n[ru] += accept_out[static_cast<std::size_t>(i)];
    for (int64_t i = recv_off[ru]; i < recv_off[ru + 1]; ++i)
      rows_in_n[ru] += accept_got[static_cast<std::size_t>(i)];
  }
  const std::vector<int64_t> rows_out_off = offsets_of(rows_out_n);
  auto* xbuf = static_cast<float*>(
      moe::ensure(ws.rows_out, static_cast<std::size_t>(rows_out_off.back() * dm) * sizeof(float),
                  "MoE rows out"));
  std::vector<int64_t> ret_row(out.size(), -1);  // send slot -> row of the returned outputs
  {
    int64_t n = 0;
    for (std::size_t i = 0; i < out.size(); ++i)
      if (accept_out[i]) ret_row[i] = n++;
#pragma omp parallel for schedule(static)
    for (std::size_t i = 0; i < out.size(); ++i)
      if (ret_row[i] >= 0)
        std::memcpy(xbuf + ret_row[i] * dm, in.x + int64_t{out[i].row} * dm,
                    static_cast<std::size_t>(dm) * sizeof(float));
  }
  for (int r = 0; r < np; ++r)
    if (r != comm.rank()) m.rows_sent += rows_out_n[static_cast<std::size_t>(r)];
  const int64_t nin = std::accumulate(rows_in_n.begin(), rows_in_n.end(), int64_t{0});
  const std::size_t in_bytes = static_cast<std::size_t>(nin * dm) * sizeof(float);
  auto* rbuf = static_cast<float*>(moe::ensure(ws.rows_in, in_bytes, "MoE rows in"));
  ex.move(xbuf, rows_out_n, rbuf, rows_in_n, dm);
  // Each received accepted record's place in its expert's run.
  std::vector<int64_t> per_expert(static_cast<std::size_t>(w.count), 0);
  for (std::size_t i = 0; i < got.size(); ++i)
    if (accept_got[i]) ++per_expert[static_cast<std::size_t>(got[i].e - w.first)];
  const std::vector<int64_t> expert_off = offsets_of(per_expert);
  std::vector<int64_t> slot(static_cast<std::size_t>(nin));
  {
    std::vector<int64_t> fill(expert_off.begin(), expert_off.end() - 1);
    int64_t n = 0;
    for (std::size_t i = 0; i < got.size(); ++i)
      if (accept_got[i])
        slot[static_cast<std::size_t>(n++)] = fill[static_cast<std::size_t>(got[i].e - w.first)]++;
  }
  auto* ein = static_cast<float*>(moe::ensure(ws.expert_in, in_bytes, "MoE expert inputs"));
  auto* eout = static_cast<float*>(moe::ensure(ws.expert_out, in_bytes, "MoE expert outputs"));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < nin; ++i)
    std::memcpy(ein + slot[static_cast<std::size_t>(i)] * dm, rbuf + i * dm,
                static_cast<std::size_t>(dm) * sizeof(float));
  m.dispatch_s = since(t0);

  // The experts.
  t0 = Clock::now();
  for (int x = 0; x < w.count; ++x) {
    const int64_t n = per_expert[static_cast<std::size_t>(x)];
    if (n == 0) continue;
    const int64_t at = expert_off[static_cast<std::size_t>(x)] * dm;
    moe::expert_ffn(w, w.first + x, ein + at, n, eout + at, ws.hidden1, ws.hidden3);
    m.ffn_flops += moe::ffn_flops(n, dm, w.d_ff);
  }
  m.rows_computed = nin;
  m.ffn_s = since(t0);

  // Combine: outputs back in the order the rows came, then gate x output per row.
  t0 = Clock::now();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < nin; ++i)
    std::memcpy(rbuf + i * dm, eout + slot[static_cast<std::size_t>(i)] * dm,
                static_cast<std::size_t>(dm) * sizeof(float));
  ex.move(rbuf, rows_in_n, xbuf, rows_out_n, dm);
  const int width = c.width();
  // Each row's entries in output order: (gate, expert, returned row or -1).
  struct Entry {
    float g;
    int32_t e;
    int64_t ret;
  };
  std::vector<std::vector<Entry>> entries;
  std::vector<Entry> flat;
  if (c.policy == MoePolicy::expert) {
    entries.resize(static_cast<std::size_t>(rows));
    for (std::size_t i = 0; i < recs.size(); ++i) {
      const std::size_t s = sent_at[i];
      if (accept_out[s])
        entries[static_cast<std::size_t>(recs[i].row)].push_back(
            {recs[i].p, recs[i].e, ret_row[s]});
    }
    for (auto& list : entries)
      std::sort(list.begin(), list.end(),
                [](const Entry& a, const Entry& b) { return a.g != b.g ? a.g > b.g : a.e < b.e; });
  }
  int64_t unrouted = 0;
#pragma omp parallel for schedule(static) reduction(+ : unrouted)
  for (int64_t i = 0; i < rows; ++i) {
    float* yr = y + i * dm;
    std::fill(yr, yr + dm, 0.0f);
    int accepted = 0;
    for (int j = 0; j < width; ++j) {
      Entry en{0.0f, -1, -1};
      if (c.policy == MoePolicy::expert) {
        const auto& list = entries[static_cast<std::size_t>(i)];
        if (j < static_cast<int>(list.size())) en = list[static_cast<std::size_t>(j)];
      } else {
        const auto at = static_cast<std::size_t>(i * width + j);
        const std::size_t s = sent_at[at];
        en = {gate[at], recs[at].e, accept_out[s] ? ret_row[s] : -1};
      }
      const bool ok = en.ret >= 0;
      if (routing != nullptr) routing[i * width + j] = ok ? en.e : -1;
      if (gates != nullptr) gates[i * width + j] = ok ? en.g : 0.0f;
      if (!ok) continue;
      ++accepted;
      const float* yo = xbuf + en.ret * dm;
      for (int64_t d = 0; d < dm; ++d) yr[d] += en.g * yo[d];
    }
    unrouted += accepted == 0;
  }
  m.combine_s = since(t0);

  // Global statistics.
  for (const Record& r : recs) ++m.requested[static_cast<std::size_t>(r.e)];
  if (c.policy == MoePolicy::expert) m.requested.assign(m.requested.size(), 0);
  std::vector<int64_t> counts(m.requested);
  counts.insert(counts.end(), m.load.begin(), m.load.end());
  counts.push_back(unrouted);
  counts.push_back(rows);
  comm.allreduce(counts.data(), counts.size(), ReduceOp::sum);
  std::copy_n(counts.begin(), ne, m.requested.begin());
  std::copy_n(counts.begin() + ne, ne, m.load.begin());
  m.unrouted = counts[static_cast<std::size_t>(2 * ne)];
  if (counts[static_cast<std::size_t>(2 * ne + 1)] != in.tokens)
    throw Error(fmt::format("moe: the ranks hold {} rows together, expected T = {}",
                            counts[static_cast<std::size_t>(2 * ne + 1)], in.tokens));
  if (c.policy == MoePolicy::expert) m.requested = m.load;  // expert choice: requested = taken
  m.assignments = std::accumulate(m.requested.begin(), m.requested.end(), int64_t{0});
  m.dropped = m.assignments - std::accumulate(m.load.begin(), m.load.end(), int64_t{0});
  p_sum.push_back(z_sum);
  comm.allreduce(p_sum.data(), p_sum.size(), ReduceOp::sum);
  const double tokens = std::max<double>(1.0, double(in.tokens));
  m.z_loss = p_sum.back() / tokens;
  for (int64_t e = 0; e < ne; ++e) {
    const double f = m.assignments > 0
                         ? double(m.requested[static_cast<std::size_t>(e)]) / double(m.assignments)
                         : 0.0;
    m.aux_loss += double(ne) * f * p_sum[static_cast<std::size_t>(e)] / tokens;
  }
  std::vector<float> bias =
      w.bias.empty() ? std::vector<float>(static_cast<std::size_t>(ne), 0.0f) : w.bias;
  m.next_bias = moe_next_bias(bias, m.requested, c.bias_rate);
  m.total_s = since(t_start);
  return m;
}

}  // namespace ringattn
