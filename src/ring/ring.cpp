#include "ringattn/ring.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <optional>
#include <vector>

#include "ring/ring_loop.hpp"
#include "ring/ring_shared.hpp"
#include "ringattn/error.hpp"
#include "ringattn/interrupt.hpp"

namespace ringattn {
namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

using detail::block_bytes;
using detail::block_rows;
using detail::BlockBytes;
using detail::QuantBlock;

void check_problem(const Communicator& comm, const RingSchedule& sch, const RingProblem& p) {
  if (p.q_layout == nullptr || p.kv_layout == nullptr) throw Error("ring: layouts not set");
  if (p.q_layout->ranks() != comm.size() || p.kv_layout->ranks() != comm.size() ||
      sch.ranks != comm.size())
    throw Error(
        fmt::format("ring: layouts/schedule are for {}/{}/{} ranks, the communicator has {}",
                    p.q_layout->ranks(), p.kv_layout->ranks(), sch.ranks, comm.size()));
  if (p.q_layout->length() != p.nq || p.kv_layout->length() != p.nk)
    throw Error(fmt::format("ring: layouts of {}/{} tokens for a problem of Nq={} Nk={}",
                            p.q_layout->length(), p.kv_layout->length(), p.nq, p.nk));
  p.validate();
  if (p.kv_wire.on()) validate_quant(p.kv_wire, p.head_dim);
  if (p.kv_stored != nullptr && !p.kv_wire.on())
    throw Error("ring: K/V stored quantized without a format (kv_wire)");
}

}  // namespace

std::size_t kv_block_bytes(const RingProblem& p, int rank) {
  return block_bytes(p, rank).total();
}

void quantize_kv_block(const RingProblem& p, int rank, void* out) {
  if (!p.kv_wire.on()) throw Error("quantize_kv_block: no quantized format");
  const QuantBlock q(p, rank, static_cast<char*>(out));
  quantize_values(p.k, p.dtype, block_rows(p, rank), q.k);
  quantize_values(p.v, p.dtype, block_rows(p, rank), q.v);
}

namespace detail {

void run_ring(Communicator& comm, RingEngine& eng, const RingSchedule& sch, const RingProblem& p,
              RingVisitor& pass, RingMetrics& m) {
  check_problem(comm, sch, p);
  const int r = comm.rank(), np = comm.size();
  const int64_t nq = p.q_layout->tokens(r), d = p.head_dim;
  const std::size_t esz = dtype_size(p.dtype);

  m.steps = sch.steps;
  for (int s = 0; s < np; ++s) m.block_bytes = std::max(m.block_bytes, block_bytes(p, s).total());
  // Receive buffers hold the largest block this rank receives (packed rows or whole).
  std::size_t max_block = 0;
  for (int t = 1; t < sch.steps; ++t)
    if (sch.step(r, t).recv_from >= 0)
      max_block = std::max(max_block, detail::held_bytes(p, sch.step(r, t)).total());
  max_block = std::max<std::size_t>(max_block, 1);

  // The own block in the wire format, quantized once: what this rank sends.
  std::unique_ptr<EngineBuffer> own_wire;
  const char* own_codes = static_cast<const char*>(p.kv_stored);  // stored quantized already
  if (p.kv_wire.on() && own_codes == nullptr && sch.steps > 1) {
    if (eng.name() != "cpu")
      throw FieldError("kv_wire",
                       fmt::format("quantized K/V runs on the cpu engine, not {}", eng.name()));
    own_wire =
        eng.alloc(std::max<std::size_t>(block_bytes(p, r).total(), 1), "own K/V block (wire)");
    quantize_kv_block(p, r, own_wire->data());
    own_codes = own_wire->as<char>();
  }

  // Receive buffers, allocated as needed: step 0 computes on the caller's own K
  // and V (no copy), a later step on the buffer its block was received into. A
  // buffer is free once its step has passed and its sends have completed: the
  // ring (and direct) needs two (double buffering), the double ring four (the
  // round's first block stays while it crosses nodes, and the next round's
  // first block arrives into its own buffer).
  struct Buffer {
    std::unique_ptr<EngineBuffer> mem;
    int step = -1;  // the step whose block it holds (or receives)
    int sends = 0;  // sends from it still in flight
  };
  std::vector<Buffer> buffers;
  std::vector<int> buffer_of(static_cast<std::size_t>(sch.steps), -1);  // [step]
  const auto take_buffer = [&](int now) {
    for (std::size_t i = 0; i < buffers.size(); ++i)
      if (buffers[i].step < now && buffers[i].sends == 0) return static_cast<int>(i);
    buffers.push_back({eng.alloc(max_block, "K/V block"), -1, 0});
    return static_cast<int>(buffers.size() - 1);
  };
  // The transfers in flight, waited for before the step they deliver.
  struct InFlight {
    int deliver = 0;
    int from_buffer = -1;  // the buffer the send reads (-1: the own block)
    std::vector<Request> recvs, sends;
  };
  std::vector<InFlight> in_flight;
  // [step]: the later steps whose transfers this rank posts at that step. A
  // direct transfer sends the owner's own block, which it holds from the start:
  // its sends are all posted at step 0, so a receiver never waits for an owner
  // still busy with an earlier step; the receiver posts its receive at
  // RingStep::post, into one of its buffers. Every send of the own block (direct,
  // and the ring's first) is waited for after the last step: the block is never
  // overwritten, and an MPI send completes only once the receiver has taken it,
  // which a receiver busy with a long step does late.
  const bool direct = sch.transfer == Transfer::direct;
  std::vector<std::vector<int>> posts(static_cast<std::size_t>(sch.steps));
  for (int t = 1; t < sch.steps; ++t) {
    const RingStep& st = sch.step(r, t);
    if (st.recv_from >= 0 || (st.send_to >= 0 && !direct))
      posts[static_cast<std::size_t>(st.post)].push_back(t);
    if (st.send_to >= 0 && direct) posts[0].push_back(-t);  // -t: the send only
  }
  std::vector<InFlight> own_sends;  // waited for after the last step

  for (int s = 0; s < sch.steps; ++s) {
    throw_if_interrupted();  // a binding's Ctrl-C: this rank ends the job like an error
    const Clock::time_point t_step = Clock::now();
    const double visitor_wait0 = pass.waited_s;
    pass.begin_step(s);
    const RingStep& st = sch.step(r, s);
    const HeldRows held = detail::held_layout(p, st);
    const BlockBytes held_bytes = detail::held_bytes(p, st);  // K, then V
    const bool held_quantized = p.kv_wire.on() && (s > 0 || p.kv_stored != nullptr);
    const int held_buffer = buffer_of[static_cast<std::size_t>(s)];
    const char* held_k = s == 0 && p.kv_stored != nullptr ? own_codes
                         : s == 0                         ? static_cast<const char*>(p.k)
                         : held_buffer >= 0
                             ? buffers[static_cast<std::size_t>(held_buffer)].mem->as<char>()
                             : nullptr;
    const char* held_v =
        s == 0 && p.kv_stored == nullptr ? static_cast<const char*>(p.v) : held_k + held_bytes.k;

    // Transfers posted at this step (the next step's, and a double ring's next
    // round's): the K messages with tag 2t, then the V messages with tag 2t + 1,
    // for the step t they deliver (detail::transfer_pieces: only the rows the
    // receiver holds).
    for (const int posted : posts[static_cast<std::size_t>(s)]) {
      const int t = posted < 0 ? -posted : posted;
      const bool recv = posted > 0, send = !direct || posted < 0;
      const RingStep& nx = sch.step(r, t);
      InFlight f;
      f.deliver = t;
      if (recv && nx.recv_from >= 0) {
        eng.sync();  // a buffer received into may have been read by an earlier step
        const int b = take_buffer(s);
        buffers[static_cast<std::size_t>(b)].step = t;
        buffer_of[static_cast<std::size_t>(t)] = b;
        char* into = buffers[static_cast<std::size_t>(b)].mem->as<char>();
        char* into_v = into + detail::held_bytes(p, nx).k;
        const RingStep& sender = sch.step(nx.recv_from, direct ? 0 : nx.post);
        for (const detail::Piece& pc : detail::transfer_pieces(p, sender, nx))
          f.recvs.push_back(
              comm.irecv((pc.v ? into_v : into) + pc.dst, pc.bytes, nx.recv_from, 2 * t + pc.v));
      }
      if (send && nx.send_to >= 0) {
        // ring: pass on the held block; direct: send the own block.
        // A quantized wire sends the own block's codes (held at step 0 is the exact block).
        const bool own = sch.transfer == Transfer::direct || (s == 0 && own_codes != nullptr);
        const char* own_k = own_codes != nullptr ? own_codes : static_cast<const char*>(p.k);
        const char* own_v =
            own_codes != nullptr ? own_k + block_bytes(p, r).k : static_cast<const char*>(p.v);
        const char* k = own ? own_k : held_k;
        const char* v = own ? own_v : held_v;
        const RingStep& from = own ? sch.step(r, 0) : st;
        const std::vector<detail::Piece> pieces =
            detail::transfer_pieces(p, from, sch.step(nx.send_to, t));
        if (k == nullptr && !pieces.empty())
          throw Error("ring: schedule sends a block this rank does not hold");
        for (const detail::Piece& pc : pieces) {
          f.sends.push_back(
              comm.isend((pc.v ? v : k) + pc.src, pc.bytes, nx.send_to, 2 * t + pc.v));
          m.bytes_sent += static_cast<int64_t>(pc.bytes);
        }
        if (!own && held_buffer >= 0) {
          f.from_buffer = held_buffer;
          ++buffers[static_cast<std::size_t>(held_buffer)].sends;
        }
      }
      if (send && nx.send_to >= 0 && f.from_buffer < 0) {  // the own block: wait at the end
        InFlight o;
        o.sends = std::move(f.sends);
        f.sends.clear();
        own_sends.push_back(std::move(o));
      }
      if (!(direct && !recv)) in_flight.push_back(std::move(f));
    }

    const Clock::time_point t0 = Clock::now();
    const double visitor_wait1 = pass.waited_s;
    std::optional<QuantBlock> held_q;  // a received or stored block: codes and scales
    if (held_quantized && !st.work.empty()) held_q.emplace(p, st.source, const_cast<char*>(held_k));
    for (const SegmentWork& w : st.work) {
      if (held_k == nullptr) throw Error("ring: schedule computes on a block never received");
      const Segment& qs = p.q_layout->segments(r)[static_cast<std::size_t>(w.q_seg)];
      const Segment& ks = p.kv_layout->segments(st.source)[static_cast<std::size_t>(w.k_seg)];
      // Only the key rows [k_lo, k_hi) some query of the segment sees.
      const int64_t k_first = held.seg_base[static_cast<std::size_t>(w.k_seg)] + w.k_lo;
      for (int64_t b = 0; b < p.batch; ++b) {
        AttentionArgs a = AttentionArgs::block(p, qs.count, w.k_hi - w.k_lo, sch.ring_mask);
        a.qpos = qs.positions(), a.kpos = ks.positions().from(w.k_lo);
        a.keep = p.keep_of(b);
        a.q = static_cast<const char*>(p.q) +
              static_cast<std::size_t>((b * nq + qs.local_offset) * p.hq * d) * esz;
        const int64_t token = b * held.tokens + k_first;
        if (held_q) {
          a.kq = held_q->k.from(token * p.hkv);
          a.vq = held_q->v.from(token * p.hkv);
        } else {
          const std::size_t k_off = static_cast<std::size_t>(token * p.hkv * d) * esz;
          a.k = held_k + k_off;
          a.v = held_v + k_off;
        }
        m.tiles += pass.compute(s, st, a, b, qs.local_offset, ks.local_offset + w.k_lo);
      }
    }
    pass.end_compute(s);
    m.compute_s += since(t0) - (pass.waited_s - visitor_wait1);
    m.pairs += st.pairs;
    m.computed_steps += !st.work.empty();

    // Wait for what the next step holds (and the sends posted with it).
    const Clock::time_point t_wait = Clock::now();
    for (InFlight& f : in_flight) {
      if (f.deliver != s + 1) continue;
      for (Request& q : f.recvs) q.wait();
      for (Request& q : f.sends) q.wait();
      if (f.from_buffer >= 0) --buffers[static_cast<std::size_t>(f.from_buffer)].sends;
    }
    in_flight.erase(std::remove_if(in_flight.begin(), in_flight.end(),
                                   [&](const InFlight& f) { return f.deliver == s + 1; }),
                    in_flight.end());
    const double waited_kv = since(t_wait);
    pass.end_step(s);
    const double waited = waited_kv + (pass.waited_s - visitor_wait0);
    m.wait_s += waited;
    m.step_wait_s.push_back(waited);
    m.step_s.push_back(since(t_step));
  }
  const Clock::time_point t_fin = Clock::now();
  const double visitor_wait = pass.waited_s;
  pass.finish();
  m.wait_s += pass.waited_s - visitor_wait;
  m.merge_s += since(t_fin) - (pass.waited_s - visitor_wait);
  // The own block's sends: their receivers post every receive without waiting
  // for this rank, so these complete.
  const Clock::time_point t_sends = Clock::now();
  for (InFlight& f : own_sends)
    for (Request& q : f.sends) q.wait();
  m.wait_s += since(t_sends);
  eng.sync();
  m.bytes_sent += pass.bytes_sent;
}

}  // namespace detail

namespace {

// The forward: each work item attended and merged into the running state;
// sinks, global keys and global queries (SharedRows) beside the rotation.
class ForwardPass final : public detail::RingVisitor {
 public:
  ForwardPass(Communicator& comm, RingEngine& eng, const RingSchedule& sch, const RingProblem& p,
              float* o, float* lse, RingMetrics& m)
      : eng_(eng), acc_{o, lse, p.batch, p.q_layout->tokens(comm.rank()), p.hq, p.head_dim}, m_(m) {
    eng.clear(acc_);  // running state, starting empty
    // Sinks, global keys and global queries: gathered once, outside the rotation.
    if (sch.shared.on()) {
      const Clock::time_point t0 = Clock::now();
      shared_ = std::make_unique<detail::SharedRows>(comm, eng, sch, p, &m.shared_bytes);
      m.wait_s += since(t0);
    }
    // One batch-1 partial state: the largest query segment or global query chunk.
    int64_t max_rows = shared_ ? shared_->max_rows() : 0;
    for (const Segment& s : p.q_layout->segments(comm.rank()))
      max_rows = std::max(max_rows, s.count);
    work_ =
        eng.alloc(std::max<std::size_t>(RingEngine::partial_bytes(max_rows, p.hq, p.head_dim), 1),
                  "partial state");
  }

  KernelStats compute(int, const RingStep&, const AttentionArgs& a, int64_t b, int64_t q_row0,
                      int64_t) override {
    return eng_.attend_merge(a, acc_, b, q_row0, *work_);
  }
  void end_compute(int s) override {
    if (s == 0 && shared_) m_.tiles += shared_->compute(acc_, *work_);
  }
  void finish() override {
    if (shared_) shared_->finish(acc_, &m_.shared_bytes);
    bytes_sent = m_.shared_bytes;
  }

 private:
  RingEngine& eng_;
  StateView acc_;
  RingMetrics& m_;
  std::unique_ptr<detail::SharedRows> shared_;
  std::unique_ptr<EngineBuffer> work_;
};

}  // namespace

RingMetrics ring_attention(Communicator& comm, RingEngine& eng, const RingSchedule& sch,
                           const RingProblem& p, float* o, float* lse) {
  check_problem(comm, sch, p);
  const Clock::time_point t_start = Clock::now();
  RingMetrics m;
  ForwardPass fwd(comm, eng, sch, p, o, lse, m);
  detail::run_ring(comm, eng, sch, p, fwd, m);
  m.total_s = since(t_start);
  return m;
}

RingMetrics ring_attention(Communicator& comm, const RingSchedule& sch, const RingProblem& p,
                           float* o, float* lse, const KernelOptions& kopt) {
  const auto eng = make_cpu_engine(kopt);
  return ring_attention(comm, *eng, sch, p, o, lse);
}

}  // namespace ringattn
