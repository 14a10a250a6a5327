#include "cli/plan_report.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <limits>

#include "cli/problem_options.hpp"
#include "cli/table.hpp"
#include "ringattn/memory.hpp"

namespace ringattn::cli {
namespace {

// The most one rank sends in one step (transfers carry only the rows their
// receivers see: a window's boundary rows, not whole blocks).
double max_step_bytes(const Plan& p) {
  double m = 0;
  for (const StepPlan& st : p.per_step) m = std::max(m, st.bytes);
  return m;
}

constexpr int kLabelWidth = 20;
constexpr double kMs = 1e3;
constexpr double kGiga = 1e9;
constexpr double kMicro = 1e6;
constexpr double kTera = 1e12;
constexpr double kPeta = 1e15;
constexpr std::size_t kMaxRows = 12;  // longer tables: the first and last rows only

// "4.00 TB (3.6 TiB)": decimal and binary, as the source design writes decimal.
std::string bytes2(double b) {
  const char* units[] = {"B", "kB", "MB", "GB", "TB", "PB"};
  double v = b;
  int u = 0;
  while (v >= 1000.0 && u < 5) v /= 1000.0, ++u;
  return fmt::format("{:.{}f} {} ({})", v, u == 0 ? 0 : 2, units[u], format_bytes(b));
}

// "335.0 TFLOP/s", "127.1 GFLOP/s".
std::string rate_text(double flops_per_s) {
  if (flops_per_s >= kPeta) return fmt::format("{:.2f} PFLOP/s", flops_per_s / kPeta);
  if (flops_per_s >= kTera) return fmt::format("{:.1f} TFLOP/s", flops_per_s / kTera);
  return fmt::format("{:.1f} GFLOP/s", flops_per_s / kGiga);
}

// Rows to print of a list of n: all, or the first and last kMaxRows / 2.
void skip_rows(std::size_t n, std::size_t* i) {
  if (n <= kMaxRows || *i != kMaxRows / 2) return;
  fmt::print("  ... {} more ...\n", n - kMaxRows);
  *i = n - kMaxRows / 2;
}

std::string backend_name(const Plan& p) {
  return p.in.links == PlanLinks::in_process ? "local" : "mpi";
}

const RankPlan& slowest(const Plan& p) {
  return *std::max_element(
      p.per_rank.begin(), p.per_rank.end(),
      [](const RankPlan& a, const RankPlan& b) { return a.total_s < b.total_s; });
}

const RankPlan& largest(const Plan& p) {
  return *std::max_element(
      p.per_rank.begin(), p.per_rank.end(),
      [](const RankPlan& a, const RankPlan& b) { return a.mem.peak() < b.mem.peak(); });
}

double max_step(const Plan& p, double StepPlan::*f) {
  double m = 0;
  for (const StepPlan& s : p.per_step) m = std::max(m, s.*f);
  return m;
}

int exposed_steps(const Plan& p) {
  int n = 0;
  for (std::size_t s = 0; s + 1 < p.per_step.size(); ++s) n += !p.per_step[s].hidden;
  return n;
}

std::string hiding_text(const Plan& p) {
  if (p.steps == 1) return "no transfers (one ring step)";
  const int exposed = exposed_steps(p), transfers = p.steps - 1;
  std::string s = exposed == 0
                      ? fmt::format("yes: all {} transfer steps", transfers)
                      : fmt::format("no: {} of {} transfer steps exposed", exposed, transfers);
  if (p.min_tokens_hidden < 0)
    return s + fmt::format(" (the {} link does not overlap compute: overlap {:.2f})", p.link_name,
                           p.link.overlap);
  return s + fmt::format("; hides from {} tokens per rank (now {}; visible fraction f = {:.3f})",
                         p.min_tokens_hidden, p.tokens_per_rank, p.visible_fraction);
}

std::string capacity_text(const MoePlan& m) {
  return m.capacity == std::numeric_limits<int64_t>::max() ? std::string("dropless")
                                                           : fmt::format("C={}", m.capacity);
}

// The MoE stage's line: capacity, bytes, FFN and all-to-all time (slowest rank).
std::string moe_text(const Plan& p) {
  const MoePlan& m = p.moe;
  const MoeRankPlan& s = m.slowest();
  return fmt::format(
      "{}: {} tokens of d_model {}, capacity {} per expert, each accepting {:.1f} of the {:.1f} "
      "asked (balanced routing); {} all-to-all bytes sent per rank (at most), {:.0f} rows to other "
      "ranks; FFN {:.3f} ms ({:.4g} GFLOP at {}), all-to-all {:.3f} ms ({} exchanges), stage "
      "{:.3f} ms (slowest rank {}); {} memory per rank",
      m.what, m.tokens, m.d_model, capacity_text(m), m.accepted, m.requested,
      format_bytes(m.max_bytes_sent()), s.rows_sent, s.ffn_s * kMs, s.ffn_flops / kGiga,
      rate_text(m.gemm_rate), s.alltoall_s * kMs, m.alltoalls, s.seconds * kMs, s.rank,
      format_bytes(m.max_memory()));
}

std::string link_text(const LinkSpec& l, const std::string& name) {
  return fmt::format("{} link, {:.2f} GB/s, {:.1f} us", name, l.bandwidth_bps / kGiga,
                     l.latency_s * kMicro);
}

// Which link each level uses: "intra-node link, 370.00 GB/s, 8.0 us".
std::string level_link(const PlanReport& r, bool inter) {
  const Plan& p = *r.plan;
  const LinkSpec& l = inter ? p.inter_link : p.intra_link;
  if (!l.present) return "no link";
  if (p.in.links == PlanLinks::in_process) return link_text(l, "in-process");
  return inter ? link_text(l, "inter-node") + (r.inter_link == "profile" ? "" : "; " + r.inter_link)
               : link_text(l, "intra-node");
}

struct LevelTotals {
  int64_t intra_bytes = 0, inter_bytes = 0, intra_messages = 0, inter_messages = 0;
  double intra_s = 0, inter_s = 0;  // slowest rank
};
LevelTotals level_totals(const Plan& p) {
  LevelTotals t;
  for (const RankPlan& k : p.per_rank) {
    t.intra_bytes += k.intra_bytes, t.inter_bytes += k.inter_bytes;
    t.intra_messages += k.intra_messages, t.inter_messages += k.inter_messages;
    t.intra_s = std::max(t.intra_s, k.intra_s), t.inter_s = std::max(t.inter_s, k.inter_s);
  }
  return t;
}

// "double_ring" for JSON keys.
std::string scheme_key(CommScheme s) {
  std::string k = comm_scheme_name(s);
  std::replace(k.begin(), k.end(), '-', '_');
  return k;
}

void print_schemes(const Plan& p) {
  const Table t({{"scheme", 11, true},
                 {"time_ms", 10},
                 {"inter/node", 12},
                 {"intra/node", 12},
                 {"memory", 10},
                 {"note", 4, true}});
  fmt::print("{}", t.header());
  for (const SchemeEstimate& e : p.schemes) {
    const std::string note = !e.ok                ? "cannot run: " + e.why
                             : e.scheme == p.best ? "fastest"
                             : !e.fits            ? "does not fit"
                                                  : "";
    const std::string mark = e.scheme == p.in.scheme ? " (planned)" : "";
    fmt::print(
        "{}",
        t.row({comm_scheme_name(e.scheme), e.ok ? cell_fixed(e.predicted_s * kMs, 2) : "-",
               e.ok ? format_bytes(e.inter_bytes) : "-", e.ok ? format_bytes(e.intra_bytes) : "-",
               e.ok ? format_bytes(e.memory) : "-", note + mark}));
  }
}

}  // namespace

void print_plan(const PlanReport& r) {
  const Plan& p = *r.plan;
  const HardwareProfile& hw = *r.hw;
  const auto line = [](const std::string& label, const std::string& value) {
    fmt::print("  {:<{}}{}\n", label, kLabelWidth, value);
  };
  fmt::print("ringattn plan: {} | mask {} | layout {} | P={} ({}, {} node{} x {}) | {}\n", r.shape,
             r.mask, layout_name(p.in.layout), p.in.ranks, backend_name(p), p.nodes,
             p.nodes == 1 ? "" : "s", p.ranks_per_node, hw.name);
  line("hardware", fmt::format("{} ({}): {}, {} device{} per node{}", hw.name, hw.source,
                               hw.kind == DeviceKind::gpu ? "gpu" : "cpu (a device is a core)",
                               hw.devices_per_node, hw.devices_per_node == 1 ? "" : "s",
                               hw.description.empty() ? "" : "; " + hw.description));
  if (hw.kind == DeviceKind::cpu)
    line("measured on", fmt::format("{}{}; this machine: {}, {} kernel{}",
                                    hw.cpu.empty() ? "a CPU the profile does not name" : hw.cpu,
                                    hw.isa.empty() ? "" : " (" + hw.isa + ")", r.this_cpu,
                                    r.job_isa, r.cpu_warning.empty() ? "" : " (see the warning)"));
  line("rank rate", fmt::format("{} ({} at D={}: {} per device; {} thread{} per "
                                "rank; oversubscription {:.2f}x)",
                                rate_text(p.rate), dtype_name(p.in.dtype), p.in.head_dim,
                                rate_text(hw.kernel_rate(p.in.dtype, p.in.head_dim)), p.threads,
                                p.threads == 1 ? "" : "s", p.oversubscription));
  int64_t tiles = 0, partial = 0;
  for (const RankPlan& k : p.per_rank) tiles += k.tiles_computed, partial += k.tiles_partial;
  if (tiles > 0)
    line("kernel tiles",
         fmt::format("{} computed in the ring, {} partial (each priced at its visible pairs + "
                     "{:.3g} of a whole tile: the profile's partial-tile-cost)",
                     tiles, partial, hw.partial_tile_cost));
  if (p.in.ranks > 1)
    line("link", fmt::format("{}: latency {:.1f} us, {:.2f} GB/s per direction, overlap {:.2f}",
                             p.link_name, p.link.latency_s * kMicro, p.link.bandwidth_bps / kGiga,
                             p.link.overlap));

  const Table ranks({{"rank", 4},
                     {"tokens", 8},
                     {"kv", 8},
                     {"steps", 7},
                     {"GFLOP", 9},
                     {"compute_ms", 10},
                     {"merge_ms", 8},
                     {"xfer_ms", 8},
                     {"wait_ms", 8},
                     {"total_ms", 9},
                     {"memory", 10}});
  fmt::print("{}", ranks.header());
  for (std::size_t i = 0; i < p.per_rank.size(); ++i) {
    skip_rows(p.per_rank.size(), &i);
    const RankPlan& k = p.per_rank[i];
    fmt::print("{}", ranks.row({fmt::format("{}", k.rank), fmt::format("{}", k.q_tokens),
                                fmt::format("{}", k.kv_tokens),
                                fmt::format("{}/{}", k.computed_steps, p.steps),
                                cell_fixed(k.flops / kGiga, 2), cell_fixed(k.compute_s * kMs, 2),
                                cell_fixed(k.merge_s * kMs, 2), cell_fixed(k.transfer_s * kMs, 2),
                                cell_fixed(k.wait_s * kMs, 2), cell_fixed(k.total_s * kMs, 2),
                                format_bytes(k.mem.peak())}));
  }

  const Table steps({{"step", 4}, {"sent", 10}, {"compute_ms", 10}, {"xfer_ms", 8}, {"hidden", 6}});
  fmt::print("{}", steps.header());
  for (std::size_t i = 0; i < p.per_step.size(); ++i) {
    skip_rows(p.per_step.size(), &i);
    const StepPlan& s = p.per_step[i];
    const bool last = i + 1 == p.per_step.size();
    fmt::print("{}", steps.row({fmt::format("{}", s.step), format_bytes(s.bytes),
                                cell_fixed(s.compute_s * kMs, 2), cell_fixed(s.transfer_s * kMs, 2),
                                last ? "-" : (s.hidden ? "yes" : "no")}));
  }

  const RankPlan& big = largest(p);
  const MemoryBreakdown& m = big.mem;
  line("memory (rank " + std::to_string(big.rank) + ")",
       fmt::format(
           "{} = q {} + k {} + v {}{} + O {} + LSE {} + {} receive buffer{} {}{} + "
           "partial state {}{} + kernel workspace {}{}{}{}{}{}",
           format_bytes(m.total()), format_bytes(m.q), format_bytes(m.k), format_bytes(m.v),
           p.in.kv_store ? " (codes)" : "", format_bytes(m.o), format_bytes(m.lse), m.recv_count,
           m.recv_count == 1 ? "" : "s", format_bytes(m.recv_buffers),
           m.wire_copy > 0 ? " + own block (wire) " + format_bytes(m.wire_copy) : std::string(),
           format_bytes(m.partial),
           m.shared > 0 ? " + shared rows " + format_bytes(m.shared) : std::string(),
           format_bytes(m.workspace),
           m.stage > 0 ? " + hierarchy " + format_bytes(m.stage) : std::string(),
           m.moe > 0 ? " + moe " + format_bytes(m.moe) : std::string(),
           m.select > 0 ? " + kv selection " + format_bytes(m.select) : std::string(),
           m.node_share > 0 ? fmt::format(" + a2a-ring node share {} + all-to-all staging {}",
                                          format_bytes(m.node_share), format_bytes(m.a2a_staging))
                            : std::string(),
           m.loading > m.total()
               ? fmt::format("; {} while loading (q, k and v in {} beside their codes)",
                             format_bytes(m.loading), dtype_name(p.in.dtype))
               : std::string()));
  line("memory available", fmt::format("{} per rank: {}", format_bytes(p.memory_available),
                                       p.fits ? "fits" : "DOES NOT FIT"));
  line("ring steps",
       fmt::format("{} of {} ({} transfer: {}); {} per rank per step on average, {} at most",
                   p.steps, p.in.ranks, p.transfer,
                   p.transfer == "direct" ? "owners send a block only to the ranks that need it"
                                          : "neighbours pass blocks on",
                   format_bytes(p.bytes_per_step), format_bytes(max_step_bytes(p))));
  if (p.in.kv_wire.on()) {
    const int64_t plain = p.in.head_dim * int64_t(dtype_size(p.in.dtype));
    line("kv wire",
         fmt::format("{}: {} B per token-head vs {} B {} ({:.2f}x fewer bytes per step); {}",
                     p.in.kv_wire.describe(), p.kv_row_bytes, plain, dtype_name(p.in.dtype),
                     double(plain) / double(p.kv_row_bytes),
                     p.in.kv_store ? "K/V stored as the codes in memory too"
                                   : "own blocks, sinks and global tokens exact"));
  }
  line("work", fmt::format("{:.4g} GFLOP in all; {:.4g} GFLOP on the busiest rank; imbalance "
                           "{:.3f} (max/mean visible pairs)",
                           p.total_flops / kGiga,
                           std::max_element(
                               p.per_rank.begin(), p.per_rank.end(),
                               [](const RankPlan& a, const RankPlan& b) {
                                 return a.flops < b.flops;
                               })->flops /
                               kGiga,
                           p.imbalance));
  line("per step", fmt::format("compute {:.3f} ms, transfer {:.3f} ms (max over ranks and steps)",
                               max_step(p, &StepPlan::compute_s) * kMs,
                               max_step(p, &StepPlan::transfer_s) * kMs));
  line("transfer hidden", hiding_text(p));
  if (p.in.ranks > 1) {
    const LevelTotals t = level_totals(p);
    line("levels",
         fmt::format("{}{}, {} node{} x {} ranks: inside nodes {} in {} messages ({}), {:.3f} ms; "
                     "across nodes {} in {} messages ({}), {:.3f} ms (all ranks' bytes; time: "
                     "transfers of the busiest rank{})",
                     comm_scheme_name(p.in.scheme), r.auto_scheme ? " (auto)" : "", p.nodes,
                     p.nodes == 1 ? "" : "s", p.ranks_per_node, format_bytes(double(t.intra_bytes)),
                     t.intra_messages, level_link(r, false), t.intra_s * kMs,
                     format_bytes(double(t.inter_bytes)), t.inter_messages, level_link(r, true),
                     t.inter_s * kMs,
                     p.in.scheme == CommScheme::a2a_ring
                         ? fmt::format("; all-to-alls {:.3f} ms", p.a2a_s * kMs)
                         : std::string()));
  }
  if (!p.schemes.empty()) {
    line("schemes", fmt::format("over {} nodes of {} ranks, bytes per node; fastest: {}", p.nodes,
                                p.ranks_per_node, comm_scheme_name(p.best)));
    print_schemes(p);
  }
  if (p.stage.on) {
    const StagePlan& st = p.stage;
    const auto mx = [](const std::vector<double>& v) {
      return *std::max_element(v.begin(), v.end());
    };
    line("hierarchy",
         fmt::format("{}: {} blocks, {} of block means gathered by every rank; stage {:.3f} ms, "
                     "{:.4g} GFLOP on the busiest rank, {} sent{}, {} memory per rank",
                     st.what, st.summaries, format_bytes(st.gathered_bytes), mx(st.seconds) * kMs,
                     4.0 * double(p.in.head_dim) * mx(st.scores) / kGiga, format_bytes(mx(st.sent)),
                     st.fetch_bound ? " at most (the chosen blocks depend on the data)" : "",
                     format_bytes(mx(st.memory))));
  }
  if (p.select.on) {
    const SelectPlan& k = p.select;
    line("kv keep",
         fmt::format("{}: {} more ring passes (importance, final{}): importance {:.3f} ms, "
                     "all-reduce of {} {:.3f} ms, final {:.3f} ms; {} sent in the stage; {} "
                     "memory per rank (importance and kept flags{})",
                     p.in.select.describe(), k.passes,
                     p.in.select.rest == KeepRest::int4 ? ", INT4 rest" : "", k.importance_s * kMs,
                     format_bytes(k.allreduce_bytes), k.allreduce_s * kMs, k.final_s * kMs,
                     format_bytes(k.sent), format_bytes(slowest(p).mem.select),
                     p.in.select.rest == KeepRest::int4 ? ", the INT4 codes and state" : ""));
  }
  if (p.moe.on) line("moe", moe_text(p));
  if (p.backward.on) {
    const BackwardPlan& bw = p.backward;
    const double sent = bw.total_sent(), grad = bw.total_grad_sent();
    const int64_t messages = bw.total_grad_messages();
    line("backward",
         fmt::format("{:.3f} ms (slowest rank) at {} per rank ({:.2f} x the forward kernel's), "
                     "{} steps ({}); sent {} in all, of which dK/dV accumulators {} in {} "
                     "messages; {} more memory per rank (dO, dQ, dK, dV, two accumulators); not "
                     "in the predicted time below",
                     bw.predicted_s * kMs, rate_text(bw.rate), kBackwardRateRatio, bw.steps,
                     bw.transfer, format_bytes(sent), format_bytes(grad), messages,
                     format_bytes(*std::max_element(bw.memory.begin(), bw.memory.end()))));
  }
  line("predicted time", fmt::format("{:.3f} ms (slowest rank {}), {}", p.predicted_s * kMs,
                                     slowest(p).rank, rate_text(p.total_flops / p.predicted_s)));
  line("naive attention",
       fmt::format("score matrix {} per head per layer (float32 Nq x Nk); {} "
                   "for B x Hq heads",
                   bytes2(p.naive_scores_per_head), bytes2(p.naive_scores_total)));
  line("flash buffer",
       fmt::format("{} per head (float32 Nq x {}); this runtime: {} kernel "
                   "workspace per rank",
                   bytes2(p.flash_block_per_head), kFlashBlockKeys, format_bytes(m.workspace)));
  line("KV cache",
       fmt::format("{} for the whole sequence, one layer ({} values = Nk x Hkv x D x 2)",
                   bytes2(p.kv_cache_bytes),
                   kv_cache_values(p.in.nk, p.in.hkv, p.in.head_dim) * p.in.batch));
  line("reproduce", r.command_line);
}

std::vector<JsonObject> plan_records(const PlanReport& r) {
  const Plan& p = *r.plan;
  const RankPlan& big = largest(p);
  const RankPlan& slow = slowest(p);
  double max_flops = 0;
  for (const RankPlan& k : p.per_rank) max_flops = std::max(max_flops, k.flops);
  const MoeRankPlan moe_slow = p.moe.on ? p.moe.slowest() : MoeRankPlan{};
  std::vector<JsonObject> out;
  JsonObject s;
  s.text("command", "plan").text("record", "summary");
  add_shape_keys(s, p.in, r.causal, r.mask);
  s.text("layout", layout_name(p.in.layout))
      .integer("ranks", p.in.ranks)
      .text("backend", backend_name(p))
      .integer("nodes", p.nodes)
      .integer("ranks_per_node", p.ranks_per_node)
      .text("comm_scheme", comm_scheme_name(p.in.scheme))
      .boolean("comm_scheme_auto", r.auto_scheme)
      .integer("threads", p.threads)
      .text("hardware", r.hw->name)
      .text("hardware_cpu", r.hw->cpu)
      .text("hardware_isa", r.hw->isa)
      .text("this_cpu", r.this_cpu)
      .text("job_isa", r.job_isa)
      .number("partial_tile_cost", r.hw->partial_tile_cost)
      .text("cpu_warning", r.cpu_warning)
      .text("link", p.link_name)
      .number("rank_gflops", p.rate / kGiga)
      .number("oversubscription", p.oversubscription)
      .integer("steps", p.steps)
      .text("transfer", p.transfer)
      .number("imbalance_scheduled", p.imbalance)
      .number("total_gflop", p.total_flops / kGiga)
      .number("max_rank_gflop", max_flops / kGiga)
      .number("bytes_per_step", p.bytes_per_step)
      .number("max_bytes_per_step", max_step_bytes(p))
      .text("kv_wire",
            p.in.kv_wire.on() ? p.in.kv_wire.describe() : std::string(dtype_name(p.in.dtype)))
      .boolean("kv_store", p.in.kv_store)
      .integer("kv_wire_row_bytes", p.kv_row_bytes)
      .number("kv_keep", p.in.select.keep)
      .integer("select_passes", p.select.passes)
      .number("select_importance_ms", p.select.importance_s * kMs)
      .number("select_allreduce_ms", p.select.allreduce_s * kMs)
      .number("select_final_ms", p.select.final_s * kMs)
      .number("select_sent", p.select.sent)
      .number("mem_select", big.mem.select)
      .boolean("backward", p.backward.on)
      .number("step_compute_ms", max_step(p, &StepPlan::compute_s) * kMs)
      .number("step_transfer_ms", max_step(p, &StepPlan::transfer_s) * kMs)
      .boolean("hidden", p.all_hidden)
      .integer("exposed_steps", exposed_steps(p))
      .number("visible_fraction", p.visible_fraction)
      .integer("tokens_per_rank", p.tokens_per_rank)
      .integer("min_tokens_hidden", p.min_tokens_hidden)
      .number("time_ms", p.predicted_s * kMs)
      .number("compute_ms", slow.compute_s * kMs)
      .number("merge_ms", slow.merge_s * kMs)
      .number("transfer_ms", slow.transfer_s * kMs)
      .number("wait_ms", slow.wait_s * kMs)
      .number("gflops", p.total_flops / p.predicted_s / kGiga)
      .number("memory_bytes", big.mem.peak())
      .number("mem_q", big.mem.q)
      .number("mem_k", big.mem.k)
      .number("mem_v", big.mem.v)
      .number("mem_o", big.mem.o)
      .number("mem_lse", big.mem.lse)
      .number("mem_recv", big.mem.recv_buffers)
      .number("mem_wire_copy", big.mem.wire_copy)
      .number("mem_loading", big.mem.loading)
      .number("mem_partial", big.mem.partial)
      .number("mem_shared", big.mem.shared)
      .number("mem_workspace", big.mem.workspace)
      .number("mem_stage", big.mem.stage)
      .text("hierarchy", p.stage.what)
      .integer("stage_blocks", p.stage.summaries)
      .number("stage_gathered_bytes", p.stage.gathered_bytes)
      .number("stage_ms",
              p.stage.on ? *std::max_element(p.stage.seconds.begin(), p.stage.seconds.end()) * kMs
                         : 0.0)
      .number("stage_max_bytes_sent",
              p.stage.on ? *std::max_element(p.stage.sent.begin(), p.stage.sent.end()) : 0.0)
      .number("mem_moe", big.mem.moe)
      .text("moe", p.moe.what)
      .integer("moe_experts", p.moe.on ? p.in.moe.experts : 0)
      .integer("moe_topk", p.moe.on ? p.in.moe.topk : 0)
      .integer("moe_d_ff", p.moe.on ? p.in.moe.d_ff : 0)
      .integer("moe_d_model", p.moe.d_model)
      .integer("moe_capacity",
               p.moe.capacity == std::numeric_limits<int64_t>::max() ? -1 : p.moe.capacity)
      .number("moe_accepted_per_expert", p.moe.accepted)
      .number("moe_rows_sent", moe_slow.rows_sent)
      .number("moe_rows_computed", moe_slow.rows_computed)
      .number("moe_bytes_sent", p.moe.max_bytes_sent())
      .number("moe_ffn_gflop", moe_slow.ffn_flops / kGiga)
      .number("moe_gemm_gflops", p.moe.gemm_rate / kGiga)
      .number("moe_ffn_ms", moe_slow.ffn_s * kMs)
      .number("moe_alltoall_ms", moe_slow.alltoall_s * kMs)
      .number("moe_ms", moe_slow.seconds * kMs)
      .number("moe_memory_bytes", p.moe.max_memory())
      .number("memory_available", p.memory_available)
      .boolean("fits", p.fits)
      .number("naive_score_bytes_per_head", p.naive_scores_per_head)
      .number("naive_score_bytes", p.naive_scores_total)
      .number("flash_block_bytes_per_head", p.flash_block_per_head)
      .integer("kv_cache_values", kv_cache_values(p.in.nk, p.in.hkv, p.in.head_dim) * p.in.batch)
      .number("kv_cache_bytes", p.kv_cache_bytes)
      .text("reproduce", r.command_line);
  if (p.backward.on) {
    const BackwardPlan& bw = p.backward;
    const double sent = bw.total_sent(), grad = bw.total_grad_sent();
    const int64_t messages = bw.total_grad_messages();
    s.number("bwd_ms", bw.predicted_s * kMs)
        .number("bwd_gflops_per_rank", bw.rate / kGiga)
        .integer("bwd_steps", bw.steps)
        .number("bwd_bytes", sent)
        .number("bwd_grad_bytes", grad)
        .integer("bwd_grad_messages", messages)
        .number("bwd_memory_bytes", *std::max_element(bw.memory.begin(), bw.memory.end()));
  }
  const LevelTotals lt = level_totals(p);
  s.integer("intra_bytes", lt.intra_bytes)
      .integer("inter_bytes", lt.inter_bytes)
      .integer("intra_messages", lt.intra_messages)
      .integer("inter_messages", lt.inter_messages)
      .number("intra_ms", lt.intra_s * kMs)
      .number("inter_ms", lt.inter_s * kMs)
      .number("a2a_ms", p.a2a_s * kMs)
      .text("intra_link", level_link(r, false))
      .text("inter_link", level_link(r, true));
  if (!p.schemes.empty()) {
    s.text("best_scheme", comm_scheme_name(p.best));
    for (const SchemeEstimate& e : p.schemes) {
      const std::string k = "scheme_" + scheme_key(e.scheme) + "_";
      s.boolean(k + "ok", e.ok)
          .number(k + "time_ms", e.predicted_s * kMs)
          .number(k + "inter_bytes_per_node", e.inter_bytes)
          .number(k + "intra_bytes_per_node", e.intra_bytes)
          .number(k + "memory_bytes", e.memory)
          .text(k + "why", e.why);
    }
  }
  out.push_back(s);
  for (const RankPlan& k : p.per_rank)
    out.push_back(JsonObject()
                      .text("command", "plan")
                      .text("record", "rank")
                      .integer("rank", k.rank)
                      .integer("tokens", k.q_tokens)
                      .integer("kv_tokens", k.kv_tokens)
                      .integer("computed_steps", k.computed_steps)
                      .integer("pairs", k.ring_pairs)
                      .integer("all_pairs", k.pairs)
                      .integer("tiles_computed", k.tiles_computed)
                      .integer("tiles_partial", k.tiles_partial)
                      .number("gflop", k.flops / kGiga)
                      .number("total_ms", k.total_s * kMs)
                      .number("compute_ms", k.compute_s * kMs)
                      .number("merge_ms", k.merge_s * kMs)
                      .number("transfer_ms", k.transfer_s * kMs)
                      .number("wait_ms", k.wait_s * kMs)
                      .number("memory_bytes", k.mem.peak())
                      .integer("intra_bytes", k.intra_bytes)
                      .integer("inter_bytes", k.inter_bytes)
                      .integer("intra_messages", k.intra_messages)
                      .integer("inter_messages", k.inter_messages)
                      .number("intra_ms", k.intra_s * kMs)
                      .number("inter_ms", k.inter_s * kMs));
  for (const StepPlan& st : p.per_step)
    out.push_back(JsonObject()
                      .text("command", "plan")
                      .text("record", "step")
                      .integer("step", st.step)
                      .number("bytes", st.bytes)
                      .number("compute_ms", st.compute_s * kMs)
                      .number("transfer_ms", st.transfer_s * kMs)
                      .boolean("hidden", st.hidden));
  return out;
}

}  // namespace ringattn::cli
