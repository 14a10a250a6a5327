// Block routing (MoBA) over the ranks: route locally on all-gathered block
// means, fetch only the chosen blocks from the ranks that hold them, attend
// each (block, batch, head)'s queries with the kernel, minus the keys the ring
// already covered (the mask's window, sinks and global tokens).
#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <cstring>

#include "ringattn/error.hpp"
#include "ringattn/schedule.hpp"  // chunks_in
#include "ringattn/state.hpp"
#include "stages/block_means.hpp"
#include "stages/stage_common.hpp"

namespace ringattn::stage {
namespace {

constexpr int kLanes = 8;  // head dims are multiples of 8

// q . k over d values (d a multiple of kLanes), lane-wise so it vectorises.
float dot(const float* q, const float* k, int64_t d) {
  float acc[kLanes] = {};
  for (int64_t e = 0; e < d; e += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += q[e + l] * k[e + l];
  float s = 0;
  for (float a : acc) s += a;
  return s;
}

struct Routing {
  int64_t topk = 0, nb = 0, block = 0;
  std::vector<int32_t> chosen;  // [B, nq_local, Hq, topk], ascending, -1 padded
};

// Chooses the blocks of every local (batch, row, head).
Routing route_queries(const RingProblem& p, const stage::BlockMeans& means,
                      const std::vector<int64_t>& qpos, int threads) {
  Routing rt;
  rt.topk = p.hier.route_topk, rt.nb = means.blocks, rt.block = p.hier.route_block;
  const int64_t nq = static_cast<int64_t>(qpos.size()), hq = p.hq, d = p.head_dim, nb = rt.nb,
                k = rt.topk, group = p.group(), diag = p.nk - p.nq;
  const bool causal = p.mask.limit < kUnbounded;
  rt.chosen.assign(static_cast<std::size_t>(p.batch * nq * hq * k), -1);
  std::vector<float> kbar(static_cast<std::size_t>(p.batch * nb * p.hkv * d));
  for (std::size_t e = 0; e < kbar.size(); ++e) kbar[e] = load_as_f32(means.k.data(), p.dtype, e);
  const std::size_t esz = dtype_size(p.dtype);
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> q(static_cast<std::size_t>(d));
    std::vector<std::pair<float, int64_t>> best;  // (score, block), best first
#pragma omp for schedule(dynamic, 64)
    for (int64_t bi = 0; bi < p.batch * nq; ++bi) {
      const int64_t bb = bi / nq, li = bi % nq, i = qpos[static_cast<std::size_t>(li)] + diag;
      const int64_t own = (i >= 0 && i < p.nk) ? i / rt.block : -1;
      const int64_t cand_end = causal ? std::max<int64_t>(own, 0) : nb;
      for (int64_t h = 0; h < hq; ++h) {
        const char* qr =
            static_cast<const char*>(p.q) + static_cast<std::size_t>((bi * hq + h) * d) * esz;
        for (int64_t e = 0; e < d; ++e)
          q[static_cast<std::size_t>(e)] = load_as_f32(qr, p.dtype, static_cast<std::size_t>(e));
        best.clear();
        const float* kb = kbar.data() + (bb * nb * p.hkv + h / group) * d;
        for (int64_t c = 0; c < cand_end && k > 1; ++c) {
          if (c == own) continue;
          const float s = dot(q.data(), kb + c * p.hkv * d, d);
          // Keep the k - 1 best: higher score first, then lower block index.
          if (static_cast<int64_t>(best.size()) == k - 1 && !(s > best.back().first)) continue;
          auto at = std::upper_bound(best.begin(), best.end(), std::pair<float, int64_t>{s, c},
                                     [](const auto& a, const auto& b) {
                                       return a.first != b.first ? a.first > b.first
                                                                 : a.second < b.second;
                                     });
          best.insert(at, {s, c});
          if (static_cast<int64_t>(best.size()) > k - 1) best.pop_back();
        }
        int32_t* out = rt.chosen.data() + (bi * hq + h) * k;
        int64_t n = 0;
        for (const auto& b : best) out[n++] = static_cast<int32_t>(b.second);
        if (own >= 0) out[n++] = static_cast<int32_t>(own);
        std::sort(out, out + n);
      }
    }
  }
  return rt;
}

// One fetched block: K and V [B, len, Hkv, D] in position order.
struct Fetched {
  int64_t block = 0, len = 0;
  std::vector<char> k, v;
};

// Fetches `blocks` (ascending) from the ranks holding their tokens (collective).
std::vector<Fetched> fetch_blocks(Communicator& comm, const RingProblem& p,
                                  const std::vector<int64_t>& blocks, int64_t bsize,
                                  StageMetrics* m) {
  const int np = comm.size(), r = comm.rank();
  const Layout& kvl = *p.kv_layout;
  const int64_t row = p.hkv * p.head_dim, nloc = kvl.tokens(r);
  const std::size_t esz = dtype_size(p.dtype), rowb = static_cast<std::size_t>(row) * esz;
  auto range = [&](int64_t c) {
    return std::vector<PosRange>{{c * bsize, std::min((c + 1) * bsize, p.nk)}};
  };
  // Requests: to each rank, the blocks of which it holds tokens.
  std::vector<std::vector<int64_t>> req(static_cast<std::size_t>(np));
  for (int64_t c : blocks)
    for (int x = 0; x < np; ++x)
      if (!chunks_in(kvl, x, range(c)).empty()) req[static_cast<std::size_t>(x)].push_back(c);
  std::vector<uint64_t> nreq(static_cast<std::size_t>(np)), all(static_cast<std::size_t>(np * np));
  std::vector<int64_t> req_flat;
  std::vector<std::size_t> sc(static_cast<std::size_t>(np)), rc(static_cast<std::size_t>(np));
  for (int x = 0; x < np; ++x) {
    const auto& v = req[static_cast<std::size_t>(x)];
    nreq[static_cast<std::size_t>(x)] = v.size();
    sc[static_cast<std::size_t>(x)] = v.size() * sizeof(int64_t);
    req_flat.insert(req_flat.end(), v.begin(), v.end());
  }
  comm.allgather(nreq.data(), nreq.size() * sizeof(uint64_t), all.data());
  std::size_t nin = 0;
  for (int x = 0; x < np; ++x) {
    rc[static_cast<std::size_t>(x)] = all[static_cast<std::size_t>(x * np + r)] * sizeof(int64_t);
    nin += all[static_cast<std::size_t>(x * np + r)];
  }
  std::vector<int64_t> asked(std::max<std::size_t>(nin, 1));
  comm.alltoallv(req_flat.data(), sc, asked.data(), rc);
  for (int x = 0; x < np; ++x)
    if (x != r) m->bytes_sent += static_cast<int64_t>(sc[static_cast<std::size_t>(x)]);

  // Serve: for each asker, per block: K [B][my tokens][row], then V likewise.
  std::vector<std::size_t> ssz(static_cast<std::size_t>(np), 0),
      rsz(static_cast<std::size_t>(np), 0);
  std::vector<char> out;
  std::size_t ai = 0;
  for (int y = 0; y < np; ++y) {
    const std::size_t begin = out.size();
    for (uint64_t q = 0; q < all[static_cast<std::size_t>(y * np + r)]; ++q) {
      const std::vector<Chunk> mine = chunks_in(kvl, r, range(asked[ai++]));
      for (const void* src : {p.k, p.v})
        for (int64_t bb = 0; bb < p.batch; ++bb)
          for (const Chunk& ch : mine) {
            const char* s = static_cast<const char*>(src) +
                            static_cast<std::size_t>(bb * nloc + ch.local) * rowb;
            out.insert(out.end(), s, s + static_cast<std::size_t>(ch.count) * rowb);
          }
    }
    ssz[static_cast<std::size_t>(y)] = out.size() - begin;
  }
  int64_t tokens_in = 0;
  for (int x = 0; x < np; ++x)
    for (int64_t c : req[static_cast<std::size_t>(x)]) {
      int64_t n = 0;
      for (const Chunk& ch : chunks_in(kvl, x, range(c))) n += ch.count;
      rsz[static_cast<std::size_t>(x)] += static_cast<std::size_t>(2 * p.batch * n) * rowb;
      if (x != r) tokens_in += n;
    }
  std::size_t in_total = 0;
  for (std::size_t v : rsz) in_total += v;
  std::vector<char> in(std::max<std::size_t>(in_total, 1));
  comm.alltoallv(out.data(), ssz, in.data(), rsz);
  for (int y = 0; y < np; ++y)
    if (y != r) m->bytes_sent += static_cast<int64_t>(ssz[static_cast<std::size_t>(y)]);
  m->fetched_tokens += tokens_in;
  out.clear();
  out.shrink_to_fit();

  // Assemble each block in position order.
  std::vector<Fetched> f(blocks.size());
  for (std::size_t i = 0; i < blocks.size(); ++i) {
    f[i].block = blocks[i];
    f[i].len = std::min((blocks[i] + 1) * bsize, p.nk) - blocks[i] * bsize;
    f[i].k.resize(static_cast<std::size_t>(p.batch * f[i].len) * rowb);
    f[i].v.resize(f[i].k.size());
  }
  const char* src = in.data();
  for (int x = 0; x < np; ++x)
    for (int64_t c : req[static_cast<std::size_t>(x)]) {
      Fetched& fb = f[static_cast<std::size_t>(std::lower_bound(blocks.begin(), blocks.end(), c) -
                                               blocks.begin())];
      const std::vector<Chunk> theirs = chunks_in(kvl, x, range(c));
      for (std::vector<char>* dst : {&fb.k, &fb.v})
        for (int64_t bb = 0; bb < p.batch; ++bb)
          for (const Chunk& ch : theirs)
            for (int64_t t = 0; t < ch.count; ++t, src += rowb)
              std::memcpy(
                  dst->data() +
                      static_cast<std::size_t>(bb * fb.len + ch.pos.at(t) - c * bsize) * rowb,
                  src, rowb);
    }
  return f;
}

// The keys of a chosen block the ring did not already cover, for a query on
// the given side of the block: not in the mask's band, not a sink, not global.
Mask complement(const Mask& base, bool left_of_band) {
  Mask m;
  m.limit = base.limit;
  const bool band = !base.band_empty();
  if (band && left_of_band) m.hi = base.lo <= -kUnbounded ? -kUnbounded - 1 : base.lo - 1;
  if (band && !left_of_band) m.lo = base.hi >= kUnbounded ? kUnbounded + 1 : base.hi + 1;
  if (base.sinks > 0) m.skip_k[m.n_skip_k++] = {0, base.sinks};
  for (int g = 0; g < base.n_global; ++g) m.skip_k[m.n_skip_k++] = base.global[g];
  return m;
}

}  // namespace

StageMetrics routing_stage(Communicator& comm, const RingProblem& p, float* o, float* lse,
                           const KernelOptions& kopt, int32_t* route) {
  StageMetrics m;
  const int r = comm.rank();
  const int threads = kopt.threads > 0 ? kopt.threads : omp_get_max_threads();
  const int64_t bsize = p.hier.route_block, nq = p.q_layout->tokens(r), d = p.head_dim;
  const int64_t k = p.hier.route_topk, diag = p.nk - p.nq, hq = p.hq;
  const std::size_t esz = dtype_size(p.dtype);
  std::vector<int64_t> qpos(static_cast<std::size_t>(nq));
  for (const Segment& s : p.q_layout->segments(r))
    for (int64_t i = 0; i < s.count; ++i)
      qpos[static_cast<std::size_t>(s.local_offset + i)] = s.start + i * s.stride;

  Clock::time_point t0 = Clock::now();
  const BlockMeans means = gather_block_means(comm, p, bsize, false, false);
  m.comm_s += since(t0);
  m.bytes_sent += means.bytes_sent;
  m.summaries = means.blocks;
  t0 = Clock::now();
  const Routing rt = route_queries(p, means, qpos, threads);
  m.compute_s += since(t0);
  if (route != nullptr) std::copy(rt.chosen.begin(), rt.chosen.end(), route);

  // Entries (block, batch, head, row) bucketed by block; global query rows
  // see every key through the ring already.
  std::vector<int64_t> need;
  std::vector<std::vector<uint64_t>> by_block(static_cast<std::size_t>(rt.nb));
  for (int64_t bb = 0; bb < p.batch; ++bb)
    for (int64_t li = 0; li < nq; ++li) {
      if (p.mask.in_global(qpos[static_cast<std::size_t>(li)])) continue;
      for (int64_t h = 0; h < hq; ++h)
        for (int64_t j = 0; j < k; ++j) {
          const int32_t c = rt.chosen[static_cast<std::size_t>(((bb * nq + li) * hq + h) * k + j)];
          if (c >= 0)
            by_block[static_cast<std::size_t>(c)].push_back(
                (static_cast<uint64_t>(bb * hq + h) << 32) | static_cast<uint64_t>(li));
        }
    }
  for (int64_t c = 0; c < rt.nb; ++c)
    if (!by_block[static_cast<std::size_t>(c)].empty()) need.push_back(c);

  // Rounds of blocks whose K/V fit in about the rank's own K/V (at least one block).
  const std::size_t block_bytes = static_cast<std::size_t>(2 * p.batch * bsize * p.hkv * d) * esz;
  const std::size_t budget = std::max<std::size_t>(
      static_cast<std::size_t>(2 * p.batch * p.kv_layout->max_tokens() * p.hkv * d) * esz,
      block_bytes);
  const int64_t per_round = std::max<int64_t>(1, static_cast<int64_t>(budget / block_bytes));
  const int64_t rounds = comm.allreduce_one(
      static_cast<int64_t>((need.size() + static_cast<std::size_t>(per_round) - 1) /
                           static_cast<std::size_t>(per_round)),
      ReduceOp::max);

  const Mask base = routing_base_mask(p.mask);  // what the ring covered
  const Mask left = complement(base, true), right = complement(base, false);
  const bool band = !base.band_empty();
  std::vector<char> qg, kh, vh;
  std::vector<float> part;
  std::vector<int64_t> rows;
  // Each round is a collective: split this rank's blocks into `rounds` groups of
  // about equal work (query rows to attend), at most per_round blocks each, so
  // that the ranks reach each round's exchange together.
  std::vector<std::size_t> bounds(static_cast<std::size_t>(rounds) + 1, need.size());
  {
    double total = 0, done = 0;
    for (int64_t c : need) total += double(by_block[static_cast<std::size_t>(c)].size());
    std::size_t at = 0;
    for (int64_t round = 0; round < rounds; ++round) {
      bounds[static_cast<std::size_t>(round)] = at;
      const std::size_t remaining = need.size() - at;
      const std::size_t later =
          static_cast<std::size_t>(rounds - round - 1) * static_cast<std::size_t>(per_round);
      const std::size_t min_take = remaining > later ? remaining - later : 0;
      const double target = total * double(round + 1) / double(rounds);
      std::size_t take = 0;
      while (at < need.size() && take < static_cast<std::size_t>(per_round) &&
             (take < min_take || done < target)) {
        done += double(by_block[static_cast<std::size_t>(need[at])].size());
        ++at, ++take;
      }
    }
  }
  for (int64_t round = 0; round < rounds; ++round) {
    const std::size_t b0 = bounds[static_cast<std::size_t>(round)];
    const std::size_t b1 = bounds[static_cast<std::size_t>(round) + 1];
    const std::vector<int64_t> mine(need.begin() + static_cast<std::ptrdiff_t>(b0),
                                    need.begin() + static_cast<std::ptrdiff_t>(b1));
    t0 = Clock::now();
    const std::vector<Fetched> blocks = fetch_blocks(comm, p, mine, bsize, &m);
    m.comm_s += since(t0);
    t0 = Clock::now();
    for (const Fetched& fb : blocks) {
      std::vector<uint64_t>& entries = by_block[static_cast<std::size_t>(fb.block)];
      std::sort(entries.begin(), entries.end());
      const int64_t kb0 = fb.block * bsize, kb1 = kb0 + fb.len - 1;
      for (std::size_t e0 = 0; e0 < entries.size();) {
        const uint64_t key = entries[e0] >> 32;
        std::size_t e1 = e0;
        while (e1 < entries.size() && entries[e1] >> 32 == key) ++e1;
        const int64_t bb = static_cast<int64_t>(key) / hq, h = static_cast<int64_t>(key) % hq;
        const int64_t g = h / p.group();
        // This (batch, K/V head)'s keys of the block, one head.
        kh.resize(static_cast<std::size_t>(fb.len * d) * esz);
        vh.resize(kh.size());
        for (int64_t t = 0; t < fb.len; ++t) {
          const std::size_t src =
              static_cast<std::size_t>(((bb * fb.len + t) * p.hkv + g) * d) * esz;
          std::memcpy(kh.data() + static_cast<std::size_t>(t * d) * esz, fb.k.data() + src,
                      static_cast<std::size_t>(d) * esz);
          std::memcpy(vh.data() + static_cast<std::size_t>(t * d) * esz, fb.v.data() + src,
                      static_cast<std::size_t>(d) * esz);
        }
        // Attends rows (local indices, ascending positions within a run) under mask.
        auto attend = [&](const std::vector<int64_t>& rs, const Mask& mask, Positions qp) {
          for (std::size_t i0 = 0; i0 < rs.size(); i0 += static_cast<std::size_t>(kChunkRows)) {
            const int64_t n = std::min<int64_t>(kChunkRows, static_cast<int64_t>(rs.size() - i0));
            qg.resize(static_cast<std::size_t>(n * d) * esz);
            for (int64_t i = 0; i < n; ++i) {
              const int64_t li = rs[i0 + static_cast<std::size_t>(i)];
              std::memcpy(qg.data() + static_cast<std::size_t>(i * d) * esz,
                          static_cast<const char*>(p.q) +
                              static_cast<std::size_t>(((bb * nq + li) * hq + h) * d) * esz,
                          static_cast<std::size_t>(d) * esz);
            }
            AttentionArgs a = AttentionArgs::block(p, n, fb.len, mask);
            a.hq = a.hkv = 1;
            a.q = qg.data(), a.k = kh.data(), a.v = vh.data();
            a.qpos = qp.from(static_cast<int64_t>(i0)), a.kpos = {kb0, 1};
            part.resize(static_cast<std::size_t>(n * (d + 1)));
            m.tiles += attention_forward(a, part.data(), part.data() + n * d, kopt);
            m.pair_evals += mask.is_none() ? double(n * fb.len) : double(a.block_pairs());
            const float* pl = part.data() + n * d;
#pragma omp parallel for num_threads(threads) schedule(static)
            for (int64_t i = 0; i < n; ++i) {
              const int64_t li = rs[i0 + static_cast<std::size_t>(i)];
              merge_row(o + ((bb * nq + li) * hq + h) * d, lse + (bb * hq + h) * nq + li,
                        part.data() + i * d, pl[i], d);
            }
          }
        };
        // Rows whose whole block is new to them go in one call without a mask;
        // the others in runs of evenly spaced positions, under their mask.
        std::vector<int64_t> clean;
        std::vector<std::pair<const Mask*, int64_t>> masked;  // (mask, row)
        for (std::size_t e = e0; e < e1; ++e) {
          const int64_t li = static_cast<int64_t>(entries[e] & 0xffffffffu);
          const int64_t t = qpos[static_cast<std::size_t>(li)], i = t + diag;
          // Which side of the mask's band the block lies on decides what the ring
          // covered: a block before the query only its left part, after it only
          // its right part; the query's own block both (the right one only
          // without a causal bound). Without a band the ring covered no band key.
          const bool before = kb1 < i;
          const bool after = kb0 > i;
          std::vector<const Mask*> ms{&left};
          if (band && after) ms = {&right};
          if (band && !before && !after && p.mask.limit >= kUnbounded) ms.push_back(&right);
          if (ms.size() == 1 && ms[0]->classify(t, t, kb0, kb1) == TileClass::full) {
            clean.push_back(li);
            continue;
          }
          for (const Mask* mk : ms)
            if (mk->classify(t, t, kb0, kb1) != TileClass::empty) masked.push_back({mk, li});
        }
        if (!clean.empty()) attend(clean, Mask::none(), Positions{0, 1});
        std::stable_sort(masked.begin(), masked.end(),
                         [](const auto& a, const auto& b) { return a.first < b.first; });
        for (std::size_t x0 = 0; x0 < masked.size();) {
          // A run: same mask, positions evenly spaced.
          rows.assign(1, masked[x0].second);
          const Mask* mk = masked[x0].first;
          const int64_t start = qpos[static_cast<std::size_t>(masked[x0].second)];
          int64_t stride = 0;
          std::size_t x1 = x0 + 1;
          for (; x1 < masked.size() && masked[x1].first == mk; ++x1) {
            const int64_t pos = qpos[static_cast<std::size_t>(masked[x1].second)];
            const int64_t step = pos - qpos[static_cast<std::size_t>(rows.back())];
            if (step <= 0 || (stride != 0 && step != stride)) break;
            stride = step;
            rows.push_back(masked[x1].second);
          }
          attend(rows, *mk, Positions{start, std::max<int64_t>(stride, 1)});
          x0 = x1;
        }
        e0 = e1;
      }
      std::vector<uint64_t>().swap(entries);
    }
    m.compute_s += since(t0);
  }
  return m;
}

}  // namespace ringattn::stage
