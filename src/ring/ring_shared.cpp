#include "ring/ring_shared.hpp"

#include <algorithm>
#include <optional>
#include <vector>

#include "ringattn/error.hpp"

namespace ringattn::detail {

int64_t block_rows(const RingProblem& p, int rank) {
  return p.batch * p.kv_layout->tokens(rank) * p.hkv;
}

BlockBytes block_bytes(const RingProblem& p, int rank) {
  const int64_t n = p.kv_layout->tokens(rank), d = p.head_dim;
  const QuantFormat& f = p.kv_wire;
  if (!f.on()) {
    const auto b = static_cast<std::size_t>(block_rows(p, rank) * d * int64_t(dtype_size(p.dtype)));
    return {b, b};
  }
  const int64_t m = f.kivi ? kivi_group_count(*p.kv_layout, rank, f.group) : 0;
  return {static_cast<std::size_t>(f.k_bytes(p.batch, n, m, p.hkv, d)),
          static_cast<std::size_t>(f.v_bytes(p.batch, n, p.hkv, d))};
}

QuantBlock::QuantBlock(const RingProblem& p, int rank, char* base) {
  const QuantFormat& f = p.kv_wire;
  const int64_t n = p.kv_layout->tokens(rank), d = p.head_dim;
  int64_t m = 0;
  if (f.kivi) group_of = kivi_groups(*p.kv_layout, rank, f.group, &m);
  k = QuantRows::keys_in_buffer(f, p.batch, n, p.hkv, d, group_of.data(), m, base);
  v = QuantRows::in_buffer(f, block_rows(p, rank), d, base + block_bytes(p, rank).k);
}

HeldRows held_layout(const RingProblem& p, const RingStep& st) {
  return held_rows(*p.kv_layout, st, !p.kv_wire.on());
}

BlockBytes held_bytes(const RingProblem& p, const RingStep& st) {
  const HeldRows h = held_layout(p, st);
  if (!h.packed) return block_bytes(p, st.source);
  const auto b =
      static_cast<std::size_t>(p.batch * h.tokens * p.hkv * p.head_dim) * dtype_size(p.dtype);
  return {b, b};
}

std::vector<Piece> transfer_pieces(const RingProblem& p, const RingStep& from, const RingStep& to) {
  std::vector<Piece> out;
  if (p.kv_wire.on()) {  // quantized: whole blocks, K's codes then V's
    if (from.source != to.source) throw Error("ring: a transfer between different blocks");
    const BlockBytes b = block_bytes(p, to.source);
    if (b.k > 0) out.push_back({false, 0, 0, b.k});
    if (b.v > 0) out.push_back({true, 0, 0, b.v});
    return out;
  }
  const std::size_t token = static_cast<std::size_t>(p.hkv * p.head_dim) * dtype_size(p.dtype);
  for (const bool v : {false, true})
    for (const TokenRun& r : transfer_runs(*p.kv_layout, from, to, p.batch))
      out.push_back({v, static_cast<std::size_t>(r.src) * token,
                     static_cast<std::size_t>(r.dst) * token,
                     static_cast<std::size_t>(r.count) * token});
  return out;
}

namespace {

// Rows [row0, row0 + n) of q dequantized into dst in the storage dtype.
void dequantize_into(const QuantRows& q, int64_t row0, int64_t n, DType dtype, char* dst) {
  std::vector<float> row(static_cast<std::size_t>(q.d));
  for (int64_t i = 0; i < n; ++i) {
    dequantize_rows(q, row0 + i, 1, row.data());
    for (int64_t e = 0; e < q.d; ++e)
      store_from_f32(dst, dtype, static_cast<std::size_t>(i * q.d + e),
                     row[static_cast<std::size_t>(e)]);
  }
}

int64_t chunk_tokens(const std::vector<Chunk>& v) {
  int64_t n = 0;
  for (const Chunk& c : v) n += c.count;
  return n;
}

}  // namespace

SharedRows::SharedRows(Communicator& comm, RingEngine& eng, const RingSchedule& sch,
                       const RingProblem& p, int64_t* bytes_sent)
    : comm_(comm), eng_(eng), sch_(sch), p_(p), esz_(dtype_size(p.dtype)) {
  const int np = comm.size(), r = comm.rank();
  const int64_t kv_row = p.hkv * p.head_dim, q_row = p.hq * p.head_dim;
  const int64_t state_row = p.hq * (p.head_dim + 1);
  std::size_t kv_total = 0, q_total = 0, st_total = 0;
  for (int x = 0; x < np; ++x) {
    m_.push_back(chunk_tokens(sch.shared.key_chunks[static_cast<std::size_t>(x)]));
    g_.push_back(chunk_tokens(sch.shared.query_chunks[static_cast<std::size_t>(x)]));
    kv_base_.push_back(kv_total);
    q_base_.push_back(q_total);
    state_base_.push_back(st_total);
    kv_total += static_cast<std::size_t>(2 * p.batch * m_.back() * kv_row) * esz_;
    q_total += static_cast<std::size_t>(p.batch * g_.back() * q_row) * esz_;
    st_total += static_cast<std::size_t>(p.batch * g_.back() * state_row);
  }
  keys_ = eng.alloc(std::max<std::size_t>(kv_total, 1), "shared K/V rows");
  queries_ = eng.alloc(std::max<std::size_t>(q_total, 1), "global query rows");
  states_ = eng.alloc(std::max<std::size_t>(st_total * sizeof(float), 1), "global query states");

  // Pack this rank's rows into its slot of the gathered buffers, then gather.
  const int64_t nk = p.kv_layout->tokens(r), nq = p.q_layout->tokens(r);
  const std::size_t kv_mine = static_cast<std::size_t>(2 * p.batch * m_[r] * kv_row) * esz_;
  const std::size_t q_mine = static_cast<std::size_t>(p.batch * g_[r] * q_row) * esz_;
  auto stage_kv = eng.alloc(std::max<std::size_t>(kv_mine, 1), "shared K/V staging");
  auto stage_q = eng.alloc(std::max<std::size_t>(q_mine, 1), "global query staging");
  char* skv = stage_kv->as<char>();
  char* sq = stage_q->as<char>();
  const std::size_t v_half = kv_mine / 2;
  std::optional<QuantBlock> own_q;
  if (p.kv_stored != nullptr)
    own_q.emplace(p, r, const_cast<char*>(static_cast<const char*>(p.kv_stored)));
  for (int64_t b = 0; b < p.batch; ++b) {
    int64_t off = 0;
    for (const Chunk& c : sch.shared.key_chunks[static_cast<std::size_t>(r)]) {
      const std::size_t dst = static_cast<std::size_t>((b * m_[r] + off) * kv_row) * esz_;
      const std::size_t src = static_cast<std::size_t>((b * nk + c.local) * kv_row) * esz_;
      const std::size_t n = static_cast<std::size_t>(c.count * kv_row) * esz_;
      if (own_q) {  // K/V held quantized: the rows travel dequantized
        const int64_t row0 = (b * nk + c.local) * p.hkv;
        dequantize_into(own_q->k, row0, c.count * p.hkv, p.dtype, skv + dst);
        dequantize_into(own_q->v, row0, c.count * p.hkv, p.dtype, skv + v_half + dst);
      } else {
        eng.copy(skv + dst, static_cast<const char*>(p.k) + src, n);
        eng.copy(skv + v_half + dst, static_cast<const char*>(p.v) + src, n);
      }
      off += c.count;
    }
    off = 0;
    for (const Chunk& c : sch.shared.query_chunks[static_cast<std::size_t>(r)]) {
      const std::size_t dst = static_cast<std::size_t>((b * g_[r] + off) * q_row) * esz_;
      const std::size_t src = static_cast<std::size_t>((b * nq + c.local) * q_row) * esz_;
      eng.copy(sq + dst, static_cast<const char*>(p.q) + src,
               static_cast<std::size_t>(c.count * q_row) * esz_);
      off += c.count;
    }
  }
  eng.sync();  // staging complete before the communicator reads it
  std::vector<std::size_t> kv_counts, q_counts;
  for (int x = 0; x < np; ++x) {
    kv_counts.push_back(static_cast<std::size_t>(2 * p.batch * m_[x] * kv_row) * esz_);
    q_counts.push_back(static_cast<std::size_t>(p.batch * g_[x] * q_row) * esz_);
  }
  if (sch.shared.key_tokens > 0) comm.allgatherv(skv, kv_counts, keys_->data());
  if (sch.shared.query_tokens > 0) comm.allgatherv(sq, q_counts, queries_->data());
  *bytes_sent += static_cast<int64_t>((kv_mine + q_mine) * static_cast<std::size_t>(np - 1));
}

std::size_t SharedRows::kv_offset(int rank, int64_t b, int64_t chunk_off) const {
  return kv_base_[static_cast<std::size_t>(rank)] +
         static_cast<std::size_t>((b * m_[static_cast<std::size_t>(rank)] + chunk_off) * p_.hkv *
                                  p_.head_dim) *
             esz_;
}
std::size_t SharedRows::q_offset(int rank, int64_t b, int64_t chunk_off) const {
  return q_base_[static_cast<std::size_t>(rank)] +
         static_cast<std::size_t>((b * g_[static_cast<std::size_t>(rank)] + chunk_off) * p_.hq *
                                  p_.head_dim) *
             esz_;
}
std::size_t SharedRows::state_offset(int owner, int64_t b, int64_t chunk_off) const {
  return state_base_[static_cast<std::size_t>(owner)] +
         static_cast<std::size_t>((b * g_[static_cast<std::size_t>(owner)] + chunk_off) * p_.hq *
                                  (p_.head_dim + 1));
}

int64_t SharedRows::max_rows() const {
  int64_t n = 0;
  for (const auto& v : sch_.shared.query_chunks)
    for (const Chunk& c : v) n = std::max(n, c.count);
  return n;
}

KernelStats SharedRows::compute(const StateView& acc, EngineBuffer& work) {
  const int np = comm_.size(), r = comm_.rank();
  const int64_t d = p_.head_dim, nq = p_.q_layout->tokens(r), nk = p_.kv_layout->tokens(r);
  KernelStats total;
  auto add = [&](const KernelStats& s) { total += s; };
  auto args = [&](int64_t nqa, int64_t nka, const Mask& mask) {
    return AttentionArgs::block(p_, nqa, nka, mask);
  };

  // Local queries x shared keys, with the whole mask.
  const char* keys = keys_->as<char>();
  for (const Segment& qs : p_.q_layout->segments(r))
    for (int x = 0; x < np; ++x) {
      int64_t off = 0;
      const std::size_t v_half =
          static_cast<std::size_t>(p_.batch * m_[static_cast<std::size_t>(x)] * p_.hkv * d) * esz_;
      for (const Chunk& c : sch_.shared.key_chunks[static_cast<std::size_t>(x)]) {
        if (p_.mask.classify(qs.start, qs.last(), c.pos.start, c.pos.at(c.count - 1)) !=
            TileClass::empty)
          for (int64_t b = 0; b < p_.batch; ++b) {
            AttentionArgs a = args(qs.count, c.count, p_.mask);
            a.qpos = qs.positions(), a.kpos = c.pos;
            a.keep = p_.keep_of(b);
            a.q = static_cast<const char*>(p_.q) +
                  static_cast<std::size_t>((b * nq + qs.local_offset) * p_.hq * d) * esz_;
            a.k = keys + kv_offset(x, b, off);
            a.v = keys + kv_offset(x, b, off) + v_half;
            add(eng_.attend_merge(a, acc, b, qs.local_offset, work));
          }
        off += c.count;
      }
    }

  // Global queries (of every owner) x this rank's own keys, shared keys skipped.
  Mask own = p_.mask;
  own.n_skip_k = sch_.ring_mask.n_skip_k;
  for (int i = 0; i < own.n_skip_k; ++i) own.skip_k[i] = sch_.ring_mask.skip_k[i];
  float* states = states_->as<float>();
  std::optional<QuantBlock> own_q;
  if (p_.kv_stored != nullptr)
    own_q.emplace(p_, r, const_cast<char*>(static_cast<const char*>(p_.kv_stored)));
  for (int x = 0; x < np; ++x) {
    int64_t off = 0;
    for (const Chunk& c : sch_.shared.query_chunks[static_cast<std::size_t>(x)]) {
      for (int64_t b = 0; b < p_.batch; ++b) {
        float* so = states + state_offset(x, b, off);
        const StateView slot{so, so + c.count * p_.hq * d, 1, c.count, p_.hq, d};
        eng_.clear(slot);
        for (const Segment& ks : p_.kv_layout->segments(r)) {
          if (own.classify(c.pos.start, c.pos.at(c.count - 1), ks.start, ks.last()) ==
              TileClass::empty)
            continue;
          AttentionArgs a = args(c.count, ks.count, own);
          a.qpos = c.pos, a.kpos = ks.positions();
          a.keep = p_.keep_of(b);
          a.q = queries_->as<char>() + q_offset(x, b, off);
          if (own_q) {  // the own block, held quantized
            const int64_t row0 = (b * nk + ks.local_offset) * p_.hkv;
            a.kq = own_q->k.from(row0);
            a.vq = own_q->v.from(row0);
          } else {
            const std::size_t k_off =
                static_cast<std::size_t>((b * nk + ks.local_offset) * p_.hkv * d) * esz_;
            a.k = static_cast<const char*>(p_.k) + k_off;
            a.v = static_cast<const char*>(p_.v) + k_off;
          }
          add(eng_.attend_merge(a, slot, 0, 0, work));
        }
      }
      off += c.count;
    }
  }
  return total;
}

void SharedRows::finish(const StateView& acc, int64_t* bytes_sent) {
  if (sch_.shared.query_tokens == 0) return;
  const int np = comm_.size(), r = comm_.rank();
  const int64_t d = p_.head_dim;
  const std::size_t row = static_cast<std::size_t>(p_.hq * (d + 1)) * sizeof(float);
  std::vector<std::size_t> send(static_cast<std::size_t>(np)), recv(static_cast<std::size_t>(np));
  const std::size_t mine =
      static_cast<std::size_t>(p_.batch * g_[static_cast<std::size_t>(r)]) * row;
  for (int x = 0; x < np; ++x) {
    send[static_cast<std::size_t>(x)] =
        static_cast<std::size_t>(p_.batch * g_[static_cast<std::size_t>(x)]) * row;
    recv[static_cast<std::size_t>(x)] = mine;
  }
  auto in = eng_.alloc(std::max<std::size_t>(mine * static_cast<std::size_t>(np), 1),
                       "global query states received");
  eng_.sync();  // states complete before the communicator reads them
  comm_.alltoallv(states_->data(), send, in->data(), recv);
  for (int x = 0; x < np; ++x)
    if (x != r) *bytes_sent += static_cast<int64_t>(send[static_cast<std::size_t>(x)]);
  // Rank x's states for this rank's rows, in (batch, chunk) order like state_offset(r, ...).
  for (int x = 0; x < np; ++x) {
    float* base = in->as<float>() + static_cast<std::size_t>(x) * (mine / sizeof(float));
    int64_t off = 0;
    for (const Chunk& c : sch_.shared.query_chunks[static_cast<std::size_t>(r)]) {
      for (int64_t b = 0; b < p_.batch; ++b) {
        float* so = base + (state_offset(r, b, off) - state_base_[static_cast<std::size_t>(r)]);
        eng_.merge_rows(acc, b, c.local,
                        StateView{so, so + c.count * p_.hq * d, 1, c.count, p_.hq, d});
      }
      off += c.count;
    }
  }
  eng_.sync();  // `in` is freed on return
}

}  // namespace ringattn::detail
