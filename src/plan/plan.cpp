#include "ringattn/plan.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <functional>

#include "plan/plan_internal.hpp"
#include "ringattn/error.hpp"
#include "ringattn/hierarchy_stage.hpp"
#include "ringattn/kernel.hpp"
#include "ringattn/kv_select_stage.hpp"
#include "ringattn/schedule.hpp"

namespace ringattn {
namespace {

constexpr int kMessagesPerStep = 2;   // K and V travel as two messages (ring.hpp)
constexpr double kFloatBytes = 4.0;   // O, LSE, partial states and packed K/V are float32
constexpr double kMergeAccesses = 3;  // merge_row reads O_a and O_b, writes O_a

const LinkSpec& require_link(const HardwareProfile& hw, const LinkSpec& l, const char* section,
                             const char* why) {
  if (!l.present) {
    // What measures it: calibrate under mpirun (one node, or one rank per node), or itself.
    const std::string how =
        hw.kind != DeviceKind::cpu ? ""
        : std::string(section) == "intra-node"
            ? "; `mpirun -np 2 ringattn calibrate --out FILE` measures it"
        : std::string(section) == "inter-node"
            ? "; calibrate with one rank on each of two nodes measures it, or give --inter-node"
            : "; `ringattn calibrate --out FILE` measures it";
    throw FieldError("hardware",
                     fmt::format("profile '{}' ({}) has no [link.{}] section, needed {}{}", hw.name,
                                 hw.source, section, why, how));
  }
  return l;
}

// The receive buffers rank r's ring loop allocates (ring.cpp's pool): at step s
// the transfers posted then each take a buffer whose step has passed and whose
// sends have completed (or a new one); a send from a held buffer keeps it busy
// until the end of the step before the one the send delivers. Returns the
// buffers allocated once each step's transfers are posted (the pool only grows).
std::vector<int> recv_buffers_by_step(const RingSchedule& sch, int r) {
  struct Slot {
    int step = -1, sends = 0;
  };
  std::vector<Slot> pool;
  std::vector<int> by_step;
  std::vector<int> buffer_of(static_cast<std::size_t>(sch.steps), -1);
  std::vector<std::vector<int>> posts(static_cast<std::size_t>(sch.steps));
  std::vector<std::vector<int>> release(static_cast<std::size_t>(sch.steps) + 1);  // [deliver]
  for (int t = 1; t < sch.steps; ++t) {
    const RingStep& st = sch.step(r, t);
    if (st.recv_from >= 0 || st.send_to >= 0) posts[static_cast<std::size_t>(st.post)].push_back(t);
  }
  for (int s = 0; s < sch.steps; ++s) {
    const int held = buffer_of[static_cast<std::size_t>(s)];
    for (const int t : posts[static_cast<std::size_t>(s)]) {
      const RingStep& nx = sch.step(r, t);
      if (nx.recv_from >= 0) {
        std::size_t b = 0;
        while (b < pool.size() && !(pool[b].step < s && pool[b].sends == 0)) ++b;
        if (b == pool.size()) pool.push_back({});
        pool[b].step = t;
        buffer_of[static_cast<std::size_t>(t)] = static_cast<int>(b);
      }
      if (nx.send_to >= 0 && sch.transfer != Transfer::direct && held >= 0) {
        ++pool[static_cast<std::size_t>(held)].sends;
        release[static_cast<std::size_t>(t)].push_back(held);
      }
    }
    by_step.push_back(static_cast<int>(pool.size()));
    for (const int b : release[static_cast<std::size_t>(s) + 1])
      --pool[static_cast<std::size_t>(b)].sends;
  }
  return by_step;
}

}  // namespace

int64_t min_hiding_tokens(double a, double b, double latency_total) {
  if (!(a > 0)) return -1;
  const double c = (b + std::sqrt(b * b + 4 * a * latency_total)) / (2 * a);
  int64_t n = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(c)));
  while (n > 1 && a * double(n - 1) * double(n - 1) >= b * double(n - 1) + latency_total) --n;
  while (a * double(n) * double(n) < b * double(n) + latency_total) ++n;  // rounding
  return n;
}

namespace detail {

Plan plan_one(const PlanInput& in, const HardwareProfile& hw, const PlanMachine* machine) {
  if (in.ranks < 1 || in.ranks > kMaxPlanRanks)
    throw FieldError("ranks", fmt::format("expected 1 to {} ranks (the planner evaluates the full "
                                          "P x P schedule), got {}",
                                          kMaxPlanRanks, in.ranks));
  if (in.ranks_per_node < 0)
    throw FieldError("ranks_per_node", fmt::format("expected >= 0, got {}", in.ranks_per_node));
  in.validate();
  validate_moe(in.moe, in.ranks);
  if (in.kv_wire.on()) validate_quant(in.kv_wire, in.head_dim);
  if (in.kv_store && !in.kv_wire.on())
    throw FieldError("kv_store", "needs a quantized format (int8 or int4)");
  check_select_supported(in, in.select, in.kv_wire.on());
  if (in.kv_store && in.hier.on())
    throw FieldError("kv_store",
                     "hierarchical stages read the exact K/V rows; they do not take K/V stored "
                     "quantized yet");
  if (in.backward) {
    const auto refuse = [](const char* what) {
      throw FieldError("backward", fmt::format("the backward pass does not run with {} yet", what));
    };
    if (in.kv_wire.on()) refuse("quantized K/V (--kv-wire, --kv-store)");
    if (in.select.on()) refuse("K/V selection (--kv-keep)");
    if (in.hier.on()) refuse("the hierarchical stages");
    if (in.moe.on()) refuse("the MoE stage");
    if (in.scheme == CommScheme::a2a_ring) refuse("--hierarchy a2a-ring");
    if (hw.kind != DeviceKind::cpu) refuse("a GPU profile (the backward runs on the cpu device)");
  }
  Plan p;
  p.in = in;
  const int np = in.ranks;
  const bool local = in.links == PlanLinks::in_process;
  const bool cpu = hw.kind == DeviceKind::cpu;
  // Nodes of w ranks (the schemes' levels); in-process ranks share one machine
  // whatever w, as run's LevelCounter counts levels by w.
  const int w = in.ranks_per_node > 0 ? std::min(in.ranks_per_node, np)
                : local               ? np
                                      : std::min(np, hw.devices_per_node);
  const int machine_rpn = machine != nullptr ? machine->ranks_per_node : local ? np : w;
  p.ranks_per_node = w;
  p.nodes = (np + w - 1) / w;
  if (in.scheme != CommScheme::flat) check_two_level(in.scheme, np, w, in.hq, in.hkv);
  // Threads per rank as `run` picks them: the ranks of a machine share its
  // cores, in-process ranks or MPI ranks alike (run divides the cores a rank is
  // bound to among the ranks bound to them; launch/mpirun.sh sets cores / P);
  // a GPU rank is one device.
  if (machine != nullptr) {
    p.threads = machine->threads;
  } else if (!cpu) {
    p.threads = 1;
  } else if (in.threads > 0) {
    p.threads = in.threads;
  } else {
    p.threads = std::max(1, hw.devices_per_node / machine_rpn);
  }
  p.oversubscription =
      machine != nullptr
          ? machine->oversubscription
          : std::max(1.0, double(machine_rpn) * p.threads / double(hw.devices_per_node));
  if (in.scheme == CommScheme::a2a_ring)
    return plan_a2a_ring(in, hw, {p.threads, p.oversubscription, machine_rpn}, w);
  const double thread_factor = p.threads * (p.threads > 1 ? hw.parallel_eff : 1.0);
  p.rate = hw.kernel_rate(in.dtype, in.head_dim) * thread_factor / p.oversubscription;
  const double merge_bw = hw.memory_bw_bps * (cpu ? p.threads : 1) / p.oversubscription;

  // Links: the ring's neighbour link names the plan (the slowest one it uses);
  // each transfer uses the link between its two ranks.
  if (np > 1) {
    if (local) {
      p.link =
          require_link(hw, hw.in_process, "in-process", "for in-process ranks (--ranks-local)");
      p.link_name = "in-process";
    } else {
      const bool multi = p.nodes > 1;
      p.link = multi ? require_link(hw, hw.inter, "inter-node", "for a ring over several nodes")
                     : require_link(hw, hw.intra, "intra-node", "for ranks sharing a node");
      p.link_name = multi ? "inter-node" : "intra-node";
    }
    const bool multi = p.nodes > 1;
    if (w > 1) p.intra_link = local ? hw.in_process : p.link;
    if (multi) p.inter_link = local ? hw.in_process : p.link;
    if (!local && multi && w > 1)
      p.intra_link = require_link(hw, hw.intra, "intra-node", "for ranks sharing a node");
  }
  const auto link_of = [&](int from, int to) -> const LinkSpec& {
    if (local) return hw.in_process;
    return from / p.ranks_per_node == to / p.ranks_per_node
               ? require_link(hw, hw.intra, "intra-node", "for ranks sharing a node")
               : require_link(hw, hw.inter, "inter-node", "for a ring over several nodes");
  };

  const Layout ql = Layout::of(in.layout, in, np, false), kvl = Layout::of(in.layout, in, np, true);
  // With a hierarchy the ring runs its exact part; the stage follows (StagePlan).
  PlanInput exact = in;
  exact.mask = hierarchy_ring_mask(in), exact.hier = {};
  const RingSchedule sch = make_ring_schedule(ql, kvl, exact.mask, scheme_options(in.scheme, w));
  p.steps = sch.steps;
  p.imbalance = sch.imbalance();
  p.transfer = transfer_name(sch.transfer);
  const double esz = double(dtype_size(in.dtype));
  const double flops_per_pair = 4.0 * double(in.batch * in.hq * in.head_dim);
  const double b = double(in.batch), hq = double(in.hq), hkv = double(in.hkv),
               d = double(in.head_dim);
  // One token-head row of K (or V): on the wire, and as held in memory.
  const int64_t plain_row = in.head_dim * int64_t(dtype_size(in.dtype));
  p.kv_row_bytes = in.kv_wire.on() ? in.kv_wire.row_bytes(in.head_dim) : plain_row;
  const double wire_row = double(p.kv_row_bytes);
  const double stored_row = double(in.kv_store ? p.kv_row_bytes : plain_row);
  // ring's kv_block_bytes: K then V, in the storage dtype or the wire format (KIVI
  // keys: codes per row, scales per group of token positions and channel).
  const auto k_part = [&](int rank) {
    const int64_t n = kvl.tokens(rank);
    if (!in.kv_wire.on()) return double(in.batch * n * in.hkv) * wire_row;
    const int64_t m = in.kv_wire.kivi ? kivi_group_count(kvl, rank, in.kv_wire.group) : 0;
    return double(in.kv_wire.k_bytes(in.batch, n, m, in.hkv, in.head_dim));
  };
  const auto block_bytes = [&](int rank) {
    return k_part(rank) + double(in.batch * kvl.tokens(rank) * in.hkv) * wire_row;
  };
  for (int r = 0; r < np; ++r) p.block_bytes = std::max(p.block_bytes, block_bytes(r));
  // An unquantized wire carries only the rows its receivers see (RingStep::rows).
  const bool packed = !in.kv_wire.on();
  // The share of its source's block that arrives at (rank, step).
  const auto arriving_share = [&](int rank, int t) {
    const int64_t whole = kvl.tokens(sch.step(rank, t).source);
    return whole == 0 ? 1.0 : double(sch.tokens_arriving(kvl, rank, t, packed)) / double(whole);
  };
  // Bytes of the block that arrives at (rank, step).
  const auto arriving = [&](int rank, int t) {
    return block_bytes(sch.step(rank, t).source) * arriving_share(rank, t);
  };

  // Sinks and global tokens outside the rotation (ring_shared): gathered once
  // by every rank, attended at step 0. Their pairs are the problem's visible
  // pairs the rotation does not compute, spread over ranks by query tokens.
  const SharedPart& sh = sch.shared;
  int64_t ring_pairs = 0;
  for (int r = 0; r < np; ++r) ring_pairs += sch.rank_pairs(r);
  const int64_t all_pairs = exact.pairs();
  const double shared_pairs = sh.on() ? double(std::max<int64_t>(all_pairs - ring_pairs, 0)) : 0;
  const auto chunk_tokens = [](const std::vector<Chunk>& v) {
    int64_t n = 0;
    for (const Chunk& c : v) n += c.count;
    return n;
  };
  // Keys, queries, query states; each buffer at least 1 byte (ring_shared.cpp).
  const double shared_buffers =
      std::max(1.0, double(2 * in.batch * sh.key_tokens * in.hkv * in.head_dim) * esz) +
      std::max(1.0, double(in.batch * sh.query_tokens * in.hq * in.head_dim) * esz) +
      std::max(1.0, b * double(sh.query_tokens) * hq * (d + 1) * kFloatBytes);
  int64_t shared_rows = 0;  // largest global query chunk
  for (const auto& v : sh.query_chunks)
    for (const Chunk& c : v) shared_rows = std::max(shared_rows, c.count);

  // Memory of each rank.
  p.per_rank.resize(static_cast<std::size_t>(np));
  // Extra pairs' worth of time per (rank, step) for the partial tiles (cpu).
  std::vector<std::vector<double>> tile_extra(static_cast<std::size_t>(np),
                                              std::vector<double>(std::size_t(p.steps), 0.0));
  std::vector<double> shared_sent(static_cast<std::size_t>(np), 0.0);
  for (int r = 0; r < np; ++r) {
    const auto ri = static_cast<std::size_t>(r);
    RankPlan& rp = p.per_rank[ri];
    rp.rank = r;
    rp.q_tokens = ql.tokens(r), rp.kv_tokens = kvl.tokens(r);
    const double my_shared = in.nq > 0 ? shared_pairs * double(rp.q_tokens) / double(in.nq) : 0.0;
    rp.ring_pairs = sch.rank_pairs(r);
    rp.pairs = rp.ring_pairs + static_cast<int64_t>(std::llround(my_shared));
    rp.flops = flops_per_pair * double(rp.pairs);
    rp.computed_steps = sch.computed_steps(r);
    MemoryBreakdown& m = rp.mem;
    const double nq = double(rp.q_tokens), nk = double(rp.kv_tokens);
    m.q = b * nq * hq * d * esz;
    m.k = m.v = b * nk * hkv * stored_row;
    if (in.kv_store) m.k = k_part(r);
    m.o = b * nq * hq * d * kFloatBytes;
    m.lse = b * hq * nq * kFloatBytes;
    double recv_block = 1.0;  // ring.cpp: the largest block the rank receives, at least 1 byte
    for (int t = 1; t < p.steps; ++t)
      if (sch.step(r, t).recv_from >= 0) recv_block = std::max(recv_block, arriving(r, t));
    m.wire_copy = in.kv_wire.on() && !in.kv_store && p.steps > 1 ? block_bytes(r) : 0.0;
    // The own K and V in the storage dtype and their codes, while they are quantized.
    m.loading = in.kv_store ? m.q + 2.0 * b * nk * hkv * d * esz + m.k + m.v : 0.0;
    int64_t max_rows = sh.on() ? shared_rows : 0;
    for (const Segment& s : ql.segments(r)) max_rows = std::max(max_rows, s.count);
    m.partial = double(max_rows) * hq * (d + 1) * kFloatBytes;
    m.shared = sh.on() ? shared_buffers : 0.0;
    // The kernel dequantizes held codes: every block with kv_store, received ones otherwise.
    bool quantized = in.kv_store && in.kv_wire.on();
    for (int s = 1; s < p.steps && in.kv_wire.on() && !quantized; ++s)
      quantized = !sch.step(r, s).work.empty();
    // The peak comes at the step where the receive buffers allocated so far
    // (posted at or before it) and its largest kernel call, on the key rows a
    // work item sees (SegmentWork k_lo..k_hi; step 0 also the shared keys), weigh most.
    const std::vector<int> pool = recv_buffers_by_step(sch, r);
    double at_peak = -1;
    for (int s = 0; s < p.steps; ++s) {
      int64_t keys = s == 0 && sh.on() ? sh.key_tokens : 0;
      const RingStep& rs = sch.step(r, s);
      for (const SegmentWork& sw : rs.work) {
        const Segment& qs = ql.segments(r)[static_cast<std::size_t>(sw.q_seg)];
        const Segment& ks = kvl.segments(rs.source)[static_cast<std::size_t>(sw.k_seg)];
        const Positions kpos = ks.positions().from(sw.k_lo);
        const int64_t keys_seen = sw.k_hi - sw.k_lo;
        keys = std::max(
            keys, kernel_packed_keys(sch.ring_mask, qs.positions(), qs.count, kpos, keys_seen));
        if (!cpu) continue;
        // A full pair: every tile of the call is whole.
        const KernelTiles t =
            sw.cls == TileClass::full
                ? KernelTiles{(qs.count + kKernelTileRows - 1) / kKernelTileRows *
                                  ((keys_seen + kKernelTileCols - 1) / kKernelTileCols),
                              0}
                : kernel_tiles(sch.ring_mask, qs.positions(), qs.count, kpos, keys_seen);
        const double heads = b * hq;
        rp.tiles_computed += static_cast<int64_t>(heads) * t.computed;
        rp.tiles_partial += static_cast<int64_t>(heads) * t.partial;
        tile_extra[ri][static_cast<std::size_t>(s)] +=
            hw.partial_tile_cost * double(kKernelTileRows * kKernelTileCols) * double(t.partial);
      }
      const bool calls = cpu && (!sch.step(r, s).work.empty() || (s == 0 && rp.pairs > 0));
      const double ws = calls ? kernel_workspace_bytes(keys, in.head_dim, max_rows, in.group(),
                                                       p.threads, quantized)
                              : 0.0;
      const int count = pool[static_cast<std::size_t>(s)];
      if (count * recv_block + ws > at_peak) {
        at_peak = count * recv_block + ws;
        m.recv_count = count, m.recv_buffers = count * recv_block, m.workspace = ws;
      }
    }
    p.max_rank_memory = std::max(p.max_rank_memory, m.peak());
    p.total_flops += rp.flops;
    if (sh.on() && np > 1)
      shared_sent[ri] =
          (double(2 * in.batch * chunk_tokens(sh.key_chunks[ri]) * in.hkv * in.head_dim) * esz +
           double(in.batch * chunk_tokens(sh.query_chunks[ri]) * in.hq * in.head_dim) * esz) *
          (np - 1);
  }
  p.stage = plan_hierarchy_stage(in, ql, kvl, p.rate, p.link);
  if (p.stage.on)
    for (int r = 0; r < np; ++r) {
      const auto ri = static_cast<std::size_t>(r);
      RankPlan& rp = p.per_rank[ri];
      rp.mem.stage = p.stage.memory[ri];
      rp.flops += 4.0 * double(in.head_dim) * p.stage.scores[ri];
      p.total_flops += 4.0 * double(in.head_dim) * p.stage.scores[ri];
      p.max_rank_memory = std::max(p.max_rank_memory, rp.mem.peak());
    }
  p.moe = plan_moe_stage(in, ql, moe_gemm_rate(hw, in, p.rate), p.link);
  if (p.moe.on)
    for (int r = 0; r < np; ++r) {
      const auto ri = static_cast<std::size_t>(r);
      RankPlan& rp = p.per_rank[ri];
      const MoeRankPlan& mr = p.moe.per_rank[ri];
      rp.mem.moe = mr.memory;
      rp.flops += mr.ffn_flops + mr.router_flops;
      p.total_flops += mr.ffn_flops + mr.router_flops;
      p.max_rank_memory = std::max(p.max_rank_memory, rp.mem.peak());
    }
  p.memory_available =
      cpu ? hw.memory_bytes / machine_rpn : hw.memory_bytes / std::max(1.0, p.oversubscription);
  p.fits = p.max_rank_memory <= p.memory_available;

  // The shared rows' all-gather, before the ring: every rank receives the others' rows.
  std::vector<double> start(static_cast<std::size_t>(np), 0.0), end(start);
  double sent_total = 0, shared_s = 0, shared_total = 0;
  if (sh.on() && np > 1) {
    double gathered = 0;
    for (int r = 0; r < np; ++r) gathered += shared_sent[static_cast<std::size_t>(r)] / (np - 1);
    shared_s = (np - 1) * p.link.latency_s + gathered / p.link.bandwidth_bps;
    for (int r = 0; r < np; ++r) {
      start[static_cast<std::size_t>(r)] = shared_s;
      p.per_rank[static_cast<std::size_t>(r)].wait_s += shared_s;
      shared_total += shared_sent[static_cast<std::size_t>(r)];
    }
    sent_total += shared_total;
  }

  // The ring, step by step (see the header). A transfer delivering step t is
  // posted at step `post` of the sender (RingStep::post: t - 1, or a double
  // ring's round's first step): it starts when the sender starts that step and
  // takes x; the sender waits for it at the end of step t - 1 (ring.cpp waits
  // there for the sends that deliver t), and the receiver cannot end step t - 1
  // before it arrives. A direct transfer's send is posted at the sender's step 0
  // (ring.cpp): it starts when the receiver posts its receive at step `post`
  // (or when the sender's pass starts, if later). A send of the sender's own
  // block (direct, and the ring's first) is waited for only after its last step. The bytes are the
  // block the sender held at `post` (direct: its own). One pass from `start`, its compute scaled by
  // `work` and each rank's block of pass_block(rank) bytes; `record`: the exact pass, whose figures
  // the plan reports. Returns the bytes sent; `end` gets each rank's end time.
  p.per_step.resize(static_cast<std::size_t>(p.steps));
  double transfer_pairs = 0, transfer_area = 0;
  int64_t rotations = 0;
  // posts[r][s]: the steps whose transfers rank r posts at step s.
  std::vector<std::vector<std::vector<int>>> posts(static_cast<std::size_t>(np));
  // Direct: posts[r][s] holds the steps whose blocks rank r receives (posts its
  // receive for) at step s; the sender is the step's recv_from.
  const bool direct = sch.transfer == Transfer::direct;
  for (int r = 0; r < np; ++r) {
    auto& pr = posts[static_cast<std::size_t>(r)];
    pr.resize(static_cast<std::size_t>(p.steps));
    for (int t = 1; t < p.steps; ++t) {
      const RingStep& st = sch.step(r, t);
      if (direct ? st.recv_from >= 0 : st.send_to >= 0)
        pr[static_cast<std::size_t>(st.post)].push_back(t);
    }
  }
  struct Flight {
    int from = 0, to = 0, post = 0;
    double t0 = 0, x = 0;
    bool own = false;  // the sender's own block: it waits for the send after its last step
  };
  const auto same_node = [&](int x, int y) { return x / w == y / w; };
  const auto run_pass = [&](double work, const std::function<double(int)>& pass_block, bool record,
                            bool trim) {
    double sent = 0;
    std::vector<std::vector<Flight>> due(static_cast<std::size_t>(p.steps) + 1);  // [deliver]
    std::vector<double> serial(static_cast<std::size_t>(np)), arrive(serial), posted(serial);
    const std::vector<double> pass_start = start;
    std::vector<double> sends_done(static_cast<std::size_t>(np), 0.0);  // direct: the last arrival
    for (int s = 0; s < p.steps; ++s) {
      StepPlan scratch;
      StepPlan& st = record ? p.per_step[static_cast<std::size_t>(s)] : scratch;
      st.step = s;
      const bool sends = s + 1 < p.steps;
      std::fill(serial.begin(), serial.end(), 0.0);
      std::fill(posted.begin(), posted.end(), 0.0);
      for (int r = 0; r < np; ++r) {
        const RingStep& rs = sch.step(r, s);
        const auto ri = static_cast<std::size_t>(r);
        if (!sends) continue;
        if (record) {
          ++rotations;
          transfer_pairs += double(rs.pairs);
          transfer_area += double(ql.tokens(r)) * double(kvl.tokens(rs.source));
        }
        for (const int t : posts[ri][static_cast<std::size_t>(s)]) {
          const RingStep& nx = sch.step(r, t);
          // Direct: r receives from the owner; else r sends what it holds.
          const int from = direct ? nx.recv_from : r, to = direct ? r : nx.send_to;
          const auto fi = static_cast<std::size_t>(from);
          const double bytes =
              pass_block(direct ? from : rs.source) * (trim ? arriving_share(to, t) : 1.0);
          const LinkSpec& l = link_of(from, to);
          const double x = l.seconds(bytes, kMessagesPerStep);
          const double t0 = direct ? std::max(start[ri], pass_start[fi]) : start[ri];
          const bool own = direct || rs.source == r;
          due[static_cast<std::size_t>(t)].push_back({from, to, s, t0, x, own});
          if (own) sends_done[fi] = std::max(sends_done[fi], t0 + x);
          serial[ri] += (1.0 - l.overlap) * x * (cpu ? p.oversubscription : 1.0);
          posted[ri] += bytes;
          sent += bytes;
          st.transfer_s = std::max(st.transfer_s, x);
          if (record) {
            RankPlan& rp = p.per_rank[fi];
            rp.transfer_s += x;
            (same_node(from, to) ? rp.intra_s : rp.inter_s) += x;
          }
        }
        st.bytes = std::max(st.bytes, posted[ri]);
      }
      // What must have arrived (and been sent) before step s + 1.
      std::fill(arrive.begin(), arrive.end(), 0.0);
      if (sends)
        for (const Flight& f : due[static_cast<std::size_t>(s) + 1]) {
          const double at = f.t0 + f.x;
          if (!f.own)  // an own block's send is waited for after the last step
            arrive[static_cast<std::size_t>(f.from)] =
                std::max(arrive[static_cast<std::size_t>(f.from)], at);
          arrive[static_cast<std::size_t>(f.to)] =
              std::max(arrive[static_cast<std::size_t>(f.to)], at);
        }
      for (int r = 0; r < np; ++r) {
        const RingStep& rs = sch.step(r, s);
        const auto ri = static_cast<std::size_t>(r);
        RankPlan scratch_rank;
        RankPlan& rp = record ? p.per_rank[ri] : scratch_rank;
        double merged_rows = 0;
        for (const SegmentWork& sw : rs.work)
          merged_rows += double(ql.segments(r)[static_cast<std::size_t>(sw.q_seg)].count);
        double pairs = double(rs.pairs);
        if (s == 0) pairs += double(p.per_rank[ri].pairs - p.per_rank[ri].ring_pairs);  // shared
        pairs += tile_extra[ri][static_cast<std::size_t>(s)];
        const double c = work * flops_per_pair * pairs / p.rate;
        const double m =
            merged_rows * b * hq * (kMergeAccesses * d + kMergeAccesses) * kFloatBytes / merge_bw;
        double e = start[ri] + c + m;
        if (sends) {
          e = std::max(e + serial[ri], arrive[ri]);
          rp.wait_s += e - (start[ri] + c + m + serial[ri]);
        }
        rp.compute_s += c;
        rp.merge_s += m;
        st.compute_s = std::max(st.compute_s, c + m);
        end[ri] = e;
        // Hidden: each send completing now fits behind the compute since it was posted.
        if (sends)
          for (const Flight& f : due[static_cast<std::size_t>(s) + 1]) {
            if ((direct ? f.to : f.from) != r) continue;
            const double window = f.post == s && !direct ? c + m : start[ri] + c + m - f.t0;
            st.hidden = st.hidden && link_of(r, f.to).overlap >= 1.0 && f.x <= window;
          }
      }
      start = end;
      if (record) p.all_hidden = p.all_hidden && st.hidden;
    }
    for (int r = 0; r < np; ++r) {  // the own block's sends, waited for after the last step
      const auto ri = static_cast<std::size_t>(r);
      if (sends_done[ri] > end[ri]) {
        if (record) p.per_rank[ri].wait_s += sends_done[ri] - end[ri];
        end[ri] = start[ri] = sends_done[ri];
      }
    }
    return sent;
  };
  sent_total += run_pass(1.0, block_bytes, true, packed);
  // Per level (RankPlan), as LevelCounter counts run's messages: the ring's K and
  // V, the shared rows' all-gathers and the global query states' all-to-all.
  const auto count = [&](int from, int to, double bytes, int64_t messages = 1) {
    if (from == to || !(bytes > 0)) return;
    RankPlan& rp = p.per_rank[static_cast<std::size_t>(from)];
    const int64_t n = std::llround(bytes);
    if (same_node(from, to))
      rp.intra_bytes += n, rp.intra_messages += messages;
    else
      rp.inter_bytes += n, rp.inter_messages += messages;
  };
  for (int r = 0; r < np; ++r)
    for (int t = 1; t < p.steps; ++t) {
      const RingStep& st = sch.step(r, t);
      if (st.send_to < 0) continue;
      const bool own = sch.transfer == Transfer::direct;
      const RingStep& held = sch.step(r, own ? 0 : st.post);
      const RingStep& to = sch.step(st.send_to, t);
      // ring.cpp's messages: a run of rows each (transfer_runs), K's then V's.
      const auto runs = static_cast<int64_t>(transfer_runs(kvl, held, to, in.batch, packed).size());
      const double part = arriving_share(st.send_to, t);
      count(r, st.send_to, k_part(held.source) * part, packed ? runs : 1);
      count(r, st.send_to, (block_bytes(held.source) - k_part(held.source)) * part,
            packed ? runs : 1);
    }
  if (sh.on() && np > 1)
    for (int r = 0; r < np; ++r) {
      const auto ri = static_cast<std::size_t>(r);
      const double kv_rows = double(2 * in.batch * chunk_tokens(sh.key_chunks[ri]) * in.hkv);
      const double q_rows = double(in.batch * chunk_tokens(sh.query_chunks[ri]) * in.hq);
      for (int x = 0; x < np; ++x) {
        count(r, x, kv_rows * d * esz);
        count(r, x, q_rows * d * esz);
        count(r, x,
              double(in.batch * chunk_tokens(sh.query_chunks[static_cast<std::size_t>(x)])) * hq *
                  (d + 1) * kFloatBytes);
      }
      RankPlan& rp = p.per_rank[ri];
      (p.nodes > 1 ? rp.inter_s : rp.intra_s) += shared_s;
    }
  if (in.select.on()) {  // the K/V selection's passes on the same schedule (SelectPlan)
    SelectPlan& sp = p.select;
    sp.on = true;
    const bool rest4 = in.select.rest == KeepRest::int4;
    sp.passes = rest4 ? 3 : 2;
    const auto slowest_end = [&] { return *std::max_element(end.begin(), end.end()); };
    // Each pass gathers the shared rows again (a collective) before its ring.
    const auto later_pass = [&](double work, const std::function<double(int)>& row, bool trim) {
      const double from = slowest_end() + shared_s;
      std::fill(start.begin(), start.end(), from);
      sp.sent += shared_total + run_pass(work, row, false, trim);
    };
    const double exact_end = slowest_end();
    later_pass(0.5, block_bytes, packed);
    const double imp_end = slowest_end();
    sp.importance_s = imp_end - exact_end;
    sp.allreduce_bytes = b * double(in.select.heads(in.hq, in.hkv)) * double(in.nk) * 8.0;
    if (np > 1) {
      const double share = 2.0 * double(np - 1) / double(np) * sp.allreduce_bytes;
      sp.allreduce_s = 2.0 * double(np - 1) * p.link.latency_s + share / p.link.bandwidth_bps;
      sp.sent += share * np;
    }
    std::fill(end.begin(), end.end(), imp_end + sp.allreduce_s);
    later_pass(1.0, block_bytes, packed);
    if (rest4) {
      const double rest_row = double(in.select.rest_format().row_bytes(in.head_dim));
      later_pass(
          1.0,
          [&](int rank) { return 2.0 * double(in.batch * kvl.tokens(rank) * in.hkv) * rest_row; },
          false);
    }
    sp.final_s = slowest_end() - imp_end - sp.allreduce_s;
    const double extra = rest4 ? 2.5 : 1.5;  // x the exact pass: half of it, the final pass(es)
    for (int r = 0; r < np; ++r) {
      RankPlan& rp = p.per_rank[static_cast<std::size_t>(r)];
      const double more = extra * flops_per_pair * double(rp.pairs);
      rp.flops += more;
      p.total_flops += more;
      const double nq = double(rp.q_tokens), nk = double(rp.kv_tokens);
      rp.mem.select = b * double(in.select.heads(in.hq, in.hkv)) * double(in.nk) * 9.0;
      if (rest4)
        rp.mem.select +=
            2.0 * b * nk * hkv * double(in.select.rest_format().row_bytes(in.head_dim)) +
            b * nq * hq * (d + 1) * kFloatBytes;
      p.max_rank_memory = std::max(p.max_rank_memory, rp.mem.peak());
    }
  }
  p.bytes_per_step = rotations > 0 ? sent_total / double(rotations) : 0.0;
  // The stage starts when the ring has ended everywhere (its first step is a
  // collective); so does the MoE stage after them (its first step is an all-to-all).
  double ring_end = 0;
  for (int r = 0; r < np; ++r) ring_end = std::max(ring_end, end[static_cast<std::size_t>(r)]);
  for (int r = 0; r < np; ++r) {
    const auto ri = static_cast<std::size_t>(r);
    p.per_rank[ri].total_s = end[ri] + (p.stage.on ? ring_end - end[ri] + p.stage.seconds[ri] : 0);
  }
  if (p.moe.on) {
    double stage_end = 0;
    for (const RankPlan& rp : p.per_rank) stage_end = std::max(stage_end, rp.total_s);
    for (int r = 0; r < np; ++r) {
      const auto ri = static_cast<std::size_t>(r);
      p.per_rank[ri].total_s = stage_end + p.moe.per_rank[ri].seconds;
    }
  }
  for (const RankPlan& rp : p.per_rank) p.predicted_s = std::max(p.predicted_s, rp.total_s);

  // Hiding condition.
  for (int r = 0; r < np; ++r) p.tokens_per_rank = std::max(p.tokens_per_rank, ql.tokens(r));
  if (p.steps == 1) {
    p.visible_fraction = transfer_area > 0 ? transfer_pairs / transfer_area : 1.0;
    p.min_tokens_hidden = 0;  // nothing to hide
  } else {
    p.visible_fraction = transfer_area > 0 ? transfer_pairs / transfer_area : 0.0;
    const double a = flops_per_pair * p.visible_fraction / p.rate;
    const double bb = 2.0 * b * hkv * wire_row / p.link.bandwidth_bps;
    p.min_tokens_hidden =
        p.link.overlap < 1.0 ? -1 : min_hiding_tokens(a, bb, kMessagesPerStep * p.link.latency_s);
  }

  if (in.backward) p.backward = plan_backward(exact, ql, kvl, w, p.rate, link_of);

  p.naive_scores_per_head = score_matrix_bytes(in.nq, in.nk);
  p.naive_scores_total = p.naive_scores_per_head * b * hq;
  p.flash_block_per_head = flash_block_bytes(in.nq);
  p.kv_cache_bytes = double(kv_cache_values(in.nk, in.hkv, in.head_dim)) * b * esz;
  return p;
}

}  // namespace detail

}  // namespace ringattn
