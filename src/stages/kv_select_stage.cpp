// The K/V selection stage: importance pass, selection, final pass(es).
#include "ringattn/kv_select_stage.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "ringattn/error.hpp"
#include "ringattn/memory.hpp"
#include "ringattn/state.hpp"

namespace ringattn {
namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// The ring's engine for the importance pass: `acc` is the exact pass's final
// state, read (its LSE) and never written; each (query segment, key block)
// pair adds its column sums to the importance at the keys' global positions.
class ImportanceEngine final : public RingEngine {
 public:
  ImportanceEngine(const KernelOptions& kopt, const AttentionProblem& p, const KvSelect& sel,
                   double* imp)
      : cpu_(make_cpu_engine(kopt)),
        kopt_(kopt),
        hq_(p.hq),
        hsel_(sel.heads(p.hq, p.hkv)),
        nk_(p.nk),
        imp_(imp) {}

  std::string name() const override { return "cpu"; }
  std::unique_ptr<EngineBuffer> alloc(std::size_t bytes, const char* what) override {
    return cpu_->alloc(bytes, what);
  }
  KernelStats attend(const AttentionArgs&, float*, float*) override {
    throw Error(
        "importance pass: a partial state was asked for (global queries are not supported)");
  }
  KernelStats attend_merge(const AttentionArgs& a, const StateView& acc, int64_t b, int64_t row0,
                           EngineBuffer& /*work*/) override {
    if (acc.o == nullptr) throw Error("importance pass: no final state");
    part_.assign(static_cast<std::size_t>(a.hq * a.nk), 0.0);
    const KernelStats st = attention_importance(a, acc.lse + b * acc.heads * acc.tokens + row0,
                                                acc.tokens, part_.data(), kopt_);
    const int64_t group = hq_ / hsel_;
    for (int64_t h = 0; h < a.hq; ++h) {
      double* row = imp_ + (b * hsel_ + h / group) * nk_;
      const double* src = part_.data() + h * a.nk;
      for (int64_t j = 0; j < a.nk; ++j) row[a.kpos.at(j)] += src[j];
    }
    return st;
  }
  void merge_rows(const StateView&, int64_t, int64_t, const StateView&) override {}
  void clear(const StateView&) override {}  // the exact state stays: its LSE is read
  void copy(void* dst, const void* src, std::size_t bytes) override { cpu_->copy(dst, src, bytes); }
  void to_host(void* dst, const void* src, std::size_t bytes) override {
    cpu_->to_host(dst, src, bytes);
  }
  void from_host(void* dst, const void* src, std::size_t bytes) override {
    cpu_->from_host(dst, src, bytes);
  }
  void sync() override {}

 private:
  std::unique_ptr<RingEngine> cpu_;
  KernelOptions kopt_;
  int64_t hq_, hsel_, nk_;
  double* imp_;
  std::vector<double> part_;
};

// keep [B, Hsel, Nk] from the importance; returns the kept count.
int64_t select_all(const AttentionProblem& p, const KvSelect& sel, const std::vector<double>& imp,
                   std::vector<uint8_t>* keep) {
  const int64_t hsel = sel.heads(p.hq, p.hkv), nk = p.nk;
  keep->assign(static_cast<std::size_t>(p.batch * hsel * nk), 0);
  const int64_t count = keep_count(sel.keep, nk);
  int64_t kept = 0;
  for (int64_t r = 0; r < p.batch * hsel; ++r) {
    uint8_t* row = keep->data() + r * nk;
    select_keys(imp.data() + r * nk, nk, count, p.mask.sinks, sel.keep_recent, row);
    for (int64_t j = 0; j < nk; ++j) kept += row[j];
  }
  return kept;
}

}  // namespace

void check_select_supported(const AttentionProblem& p, const KvSelect& sel, bool kv_quantized) {
  if (!sel.on()) return;
  validate_select(sel, p.head_dim);
  const auto refuse = [](const char* what) {
    throw FieldError("kv_keep", fmt::format("K/V selection does not run with {}", what));
  };
  if (p.mask.n_global > 0)
    refuse("global tokens (a global query's final LSE is on its owner only)");
  if (kv_quantized) refuse("K/V quantized on the wire or in memory (--kv-wire, --kv-store)");
  if (p.hier.on()) refuse("the hierarchical stage");
}

SelectMetrics kv_select_stage(Communicator& comm, const RingSchedule& sch, const RingProblem& p,
                              const KvSelect& sel, float* o, float* lse, const KernelOptions& kopt,
                              std::vector<uint8_t>* keep) {
  check_select_supported(p, sel, p.kv_wire.on());
  if (p.keep.on()) throw Error("kv_select_stage: the problem already has a kept-key set");
  const Clock::time_point t_start = Clock::now();
  SelectMetrics m;
  const int r = comm.rank();
  const int64_t hsel = sel.heads(p.hq, p.hkv), nq = p.q_layout->tokens(r), d = p.head_dim;
  const auto add = [&m](const RingMetrics& x) {
    m.compute_s += x.compute_s + x.merge_s, m.comm_s += x.wait_s, m.bytes_sent += x.bytes_sent;
    m.tiles += x.tiles;
  };

  // Importance: the ring loop with the column-sum engine, then the all-reduce.
  std::vector<double> imp(static_cast<std::size_t>(p.batch * hsel * p.nk), 0.0);
  {
    ImportanceEngine eng(kopt, p, sel, imp.data());
    add(ring_attention(comm, eng, sch, p, o, lse));
    const Clock::time_point t0 = Clock::now();
    comm.allreduce(imp.data(), imp.size(), ReduceOp::sum);
    m.comm_s += since(t0);
    // A ring all-reduce's share: 2 (P - 1) / P of the array (what plan counts).
    const int np = comm.size();
    m.bytes_sent += static_cast<int64_t>(2.0 * double(np - 1) / double(np) *
                                         double(imp.size() * sizeof(double)));
  }
  m.kept = select_all(p, sel, imp, keep);
  m.keys = static_cast<int64_t>(keep->size());
  m.importance_s = since(t_start);

  // Final pass over the kept keys (replaces o, lse).
  const Clock::time_point t_final = Clock::now();
  // The exact result, kept to measure what the selection changes.
  const std::size_t o_elems = static_cast<std::size_t>(p.batch * nq * p.hq * d);
  Buffer exact(std::max<std::size_t>(o_elems, 1) * sizeof(float), "exact O");
  std::copy(o, o + o_elems, exact.as<float>());
  RingProblem kept = p;
  kept.keep = {keep->data(), hsel, p.nk, false};
  add(ring_attention(comm, sch, kept, o, lse, kopt));
  if (sel.rest == KeepRest::int4) {
    // The rest: the own block as INT4 codes (travelling as such), the complementary set.
    const QuantFormat f = sel.rest_format();
    const int64_t rows = p.batch * p.kv_layout->tokens(r) * p.hkv;
    const std::size_t half = static_cast<std::size_t>(rows * f.row_bytes(d));
    Buffer codes(std::max<std::size_t>(2 * half, 1), "INT4 rest K/V codes");
    quantize_values(p.k, p.dtype, rows, QuantRows::in_buffer(f, rows, d, codes.data()));
    quantize_values(p.v, p.dtype, rows, QuantRows::in_buffer(f, rows, d, codes.as<char>() + half));
    RingProblem rest = p;
    rest.kv_wire = f, rest.kv_stored = codes.data();
    rest.keep = {keep->data(), hsel, p.nk, true};
    Buffer ro(static_cast<std::size_t>(p.batch * nq * p.hq * d) * sizeof(float), "rest O");
    Buffer rl(static_cast<std::size_t>(p.batch * p.hq * nq) * sizeof(float), "rest LSE");
    add(ring_attention(comm, sch, rest, ro.as<float>(), rl.as<float>(), kopt));
    const Clock::time_point t0 = Clock::now();
    merge_states({o, lse, p.batch, nq, p.hq, d},
                 {ro.as<float>(), rl.as<float>(), p.batch, nq, p.hq, d});
    m.compute_s += since(t0);
  }
  m.final_s = since(t_final);
  for (std::size_t i = 0; i < o_elems; ++i) {
    const double e = double(exact.as<float>()[i]);
    m.diff2 += (double(o[i]) - e) * (double(o[i]) - e);
    m.exact2 += e * e;
  }
  m.total_s = since(t_start);
  return m;
}

KernelStats kv_select_attention(const AttentionArgs& a, const KvSelect& sel, float* o, float* lse,
                                const KernelOptions& kopt, std::vector<uint8_t>* keep_out) {
  check_select_supported(a, sel, a.quantized());
  if (a.keep.on()) throw Error("kv_select_attention: the problem already has a kept-key set");
  if (a.qpos.start != 0 || a.qpos.stride != 1 || a.kpos.start != 0 || a.kpos.stride != 1)
    throw Error("kv_select_attention: the whole sequences (positions from 0, stride 1)");
  KernelStats st = attention_forward(a, o, lse, kopt);
  const int64_t hsel = sel.heads(a.hq, a.hkv), d = a.head_dim;
  const std::size_t esz = dtype_size(a.dtype);

  std::vector<double> imp(static_cast<std::size_t>(a.batch * hsel * a.nk), 0.0);
  std::vector<double> part(static_cast<std::size_t>(a.hq * a.nk));
  const int64_t group = a.hq / hsel;
  for (int64_t b = 0; b < a.batch; ++b) {
    AttentionArgs one = AttentionArgs::block(a, a.nq, a.nk, a.mask);
    one.qpos = a.qpos, one.kpos = a.kpos;
    one.q = static_cast<const char*>(a.q) + static_cast<std::size_t>(b * a.nq * a.hq * d) * esz;
    one.k = static_cast<const char*>(a.k) + static_cast<std::size_t>(b * a.nk * a.hkv * d) * esz;
    one.v = static_cast<const char*>(a.v) + static_cast<std::size_t>(b * a.nk * a.hkv * d) * esz;
    std::fill(part.begin(), part.end(), 0.0);
    st += attention_importance(one, lse + b * a.hq * a.nq, a.nq, part.data(), kopt);
    for (int64_t h = 0; h < a.hq; ++h)
      for (int64_t j = 0; j < a.nk; ++j)
        imp[static_cast<std::size_t>((b * hsel + h / group) * a.nk + j)] +=
            part[static_cast<std::size_t>(h * a.nk + j)];
  }
  std::vector<uint8_t> local;
  std::vector<uint8_t>& keep = keep_out != nullptr ? *keep_out : local;
  select_all(a, sel, imp, &keep);

  AttentionArgs kept = a;
  kept.keep = {keep.data(), hsel, a.nk, false};
  st += attention_forward(kept, o, lse, kopt);
  if (sel.rest == KeepRest::int4) {
    const QuantFormat f = sel.rest_format();
    const int64_t rows = a.batch * a.nk * a.hkv;
    const std::size_t half = static_cast<std::size_t>(rows * f.row_bytes(d));
    Buffer codes(std::max<std::size_t>(2 * half, 1), "INT4 rest K/V codes");
    AttentionArgs rest = a;
    rest.kq = QuantRows::in_buffer(f, rows, d, codes.data());
    rest.vq = QuantRows::in_buffer(f, rows, d, codes.as<char>() + half);
    quantize_values(a.k, a.dtype, rows, rest.kq);
    quantize_values(a.v, a.dtype, rows, rest.vq);
    rest.keep = {keep.data(), hsel, a.nk, true};
    Buffer ro(static_cast<std::size_t>(a.q_elems()) * sizeof(float), "rest O");
    Buffer rl(static_cast<std::size_t>(a.lse_elems()) * sizeof(float), "rest LSE");
    st += attention_forward(rest, ro.as<float>(), rl.as<float>(), kopt);
    merge_states({o, lse, a.batch, a.nq, a.hq, d},
                 {ro.as<float>(), rl.as<float>(), a.batch, a.nq, a.hq, d});
  }
  return st;
}

}  // namespace ringattn
