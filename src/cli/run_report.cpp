#include "cli/run_report.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "cli/moe_report.hpp"
#include "cli/problem_options.hpp"
#include "cli/table.hpp"
#include "ringattn/memory.hpp"

namespace ringattn::cli {
namespace {

constexpr int kLabelWidth = 20;  // label column of the totals
constexpr double kMs = 1e3;
constexpr double kGiga = 1e9;
constexpr double kPercent = 100.0;

std::string ms(double s) {
  return cell_fixed(s * kMs, 1);
}

double max_of(const std::vector<RankStats>& v, double RankStats::*f) {
  double m = 0;
  for (const RankStats& s : v) m = std::max(m, s.*f);
  return m;
}

double mean_of(const std::vector<RankStats>& v, double RankStats::*f) {
  double sum = 0;
  for (const RankStats& s : v) sum += s.*f;
  return v.empty() ? 0.0 : sum / double(v.size());
}

double measured_imbalance(const RunReport& r) {
  const double mean = mean_of(r.stats, &RankStats::compute_s);
  return mean > 0 ? max_of(r.stats, &RankStats::compute_s) / mean : 1.0;
}

// K/V bytes each rank sends per rotation, mean over ranks.
double bytes_per_step(const RunReport& r) {
  double sum = 0, rotations = 0;
  for (const RankStats& s : r.stats) {
    sum += double(s.bytes_sent);
    rotations += double(std::max<int64_t>(s.steps - 1, 0));
  }
  return rotations > 0 ? sum / rotations : 0.0;
}

// The backward pass over the ranks: the slowest rank's time, bytes and accumulators sent.
struct BackwardTotals {
  double slowest_s = 0;
  int64_t sent = 0, grad = 0, messages = 0;
};
BackwardTotals backward_totals(const RunReport& r) {
  BackwardTotals t;
  for (const RankStats& s : r.stats) {
    t.slowest_s = std::max(t.slowest_s, s.bwd_total_s);
    t.sent += s.bwd_bytes, t.grad += s.bwd_grad_bytes, t.messages += s.bwd_grad_messages;
  }
  return t;
}

std::string join(const std::vector<std::string>& v, const char* sep) {
  std::string s;
  for (const std::string& x : v) s += (s.empty() ? "" : sep) + x;
  return s;
}

std::string mask_text(const RunConfig& c) {
  const std::string m = c.masks.describe();
  return c.causal && c.nq != c.nk ? m + " (bottom-right)" : m;
}

}  // namespace

std::string RunReport::reproduce() const {
  return backend == "mpi" ? fmt::format("mpirun -np {} {}", ranks, cfg->command_line)
                          : cfg->command_line;
}

void print_report(const RunReport& r) {
  const RunConfig& c = *r.cfg;
  const int64_t threads0 = r.stats.empty() ? 0 : r.stats[0].threads;
  fmt::print(
      "ringattn run: {} | mask {} | P={} ({}) | layout {} | {} thread{} per rank ({}) | {}\n",
      c.shape_text(), mask_text(c), r.ranks, r.backend, layout_name(c.layout), threads0,
      threads0 == 1 ? "" : "s", r.threads_from, r.isa);
  fmt::print("  inputs: {}\n", c.from_files
                                   ? fmt::format("q {}, k {}, v {}", c.q.path, c.k.path, c.v.path)
                                   : fmt::format("generated (seed {})", c.seed));
  const Table table({{"rank", 4},
                     {"tokens", 7},
                     {"kv", 7},
                     {"thr", 3},
                     {"steps", 7},
                     {"pairs", 9},
                     {"total_ms", 9},
                     {"compute_ms", 10},
                     {"wait_ms", 8},
                     {"step_ms", 8},
                     {"sent", 10},
                     {"peak_mem", 10}});
  fmt::print("{}", table.header());
  for (const RankStats& s : r.stats)
    fmt::print("{}",
               table.row({fmt::format("{}", s.rank), fmt::format("{}", s.q_tokens),
                          fmt::format("{}", s.kv_tokens), fmt::format("{}", s.threads),
                          fmt::format("{}/{}", s.computed_steps, s.steps),
                          fmt::format("{:.3g}", double(s.pairs)), ms(s.total_s), ms(s.compute_s),
                          ms(s.wait_s), ms(s.step_mean_s), format_bytes(double(s.bytes_sent)),
                          format_bytes(double(s.peak_bytes))}));

  const auto line = [](const std::string& label, const std::string& value) {
    fmt::print("  {:<{}}{}\n", label, kLabelWidth, value);
  };
  const double t = r.slowest_s();
  line("total time", fmt::format("{:.3f} ms (slowest rank, best of {} repeat{})", t * kMs,
                                 c.repeats, c.repeats == 1 ? "" : "s"));
  {  // where rank 0's wall time went
    const WallTimes& w = r.wall;
    const double other = std::max(0.0, r.command_s - w.setup_s - w.inputs_s - w.passes_s -
                                           w.checks_s - w.outputs_s - w.gather_s);
    line("wall time",
         fmt::format("{:.3f} s for the command (rank 0) = set-up {:.3f} + inputs {:.3f} + passes "
                     "{:.3f} ({} pass{}) + checks {:.3f} + outputs {:.3f} + gathering {:.3f} + "
                     "other {:.3f} (start-up, report); {:.2f}x the ring time",
                     r.command_s, w.setup_s, w.inputs_s, w.passes_s, c.warmup + c.repeats,
                     c.warmup + c.repeats == 1 ? "" : "es", w.checks_s, w.outputs_s, w.gather_s,
                     other, t > 0 ? r.command_s / t : 0.0));
  }
  line("throughput", fmt::format("{:.1f} GFLOP/s ({:.3g} GFLOP of visible pairs)",
                                 r.flops / t / kGiga, r.flops / kGiga));
  line("work imbalance",
       fmt::format("{:.3f} scheduled (max/mean pairs), {:.3f} measured (max/mean compute time)",
                   r.sched_imbalance, measured_imbalance(r)));
  line("bytes per step", fmt::format("{} per rank per rotation", format_bytes(bytes_per_step(r))));
  {  // what the mask saved: steps, pairs, tiles, bytes
    const RankStats& s0 = r.stats.front();
    int64_t tiles = 0, computed = 0, partial = 0, sent = 0, full_sent = 0;
    for (const RankStats& s : r.stats) {
      tiles += s.tiles_total, computed += s.tiles_computed, partial += s.tiles_partial;
      sent += s.bytes_sent, full_sent += s.full_ring_bytes;
    }
    const double dense = double(c.batch) * double(c.hq) * double(c.nq) * double(c.nk);
    if (r.transfer == "direct")
      line("ring steps", fmt::format("{} of {} run (direct: each block sent by its owner only to "
                                     "the ranks that need it; a full ring rotates {} times)",
                                     s0.steps, r.ranks, r.ranks - 1));
    else if (r.transfer == "double-ring")
      line("ring steps",
           fmt::format("{} of {} run (double ring: rounds of {} steps inside nodes, each round's "
                       "blocks crossing to the next node while it runs; a full ring has {} "
                       "rotations)",
                       s0.steps, r.ranks, r.ranks_per_node, r.ranks - 1));
    else
      line("ring steps", fmt::format("{} of {} run ({} rotations; a full ring has {})", s0.steps,
                                     r.ranks, std::max<int64_t>(s0.steps - 1, 0), r.ranks - 1));
    if (r.shared_keys > 0 || r.shared_queries > 0) {
      int64_t shared = 0;
      for (const RankStats& s : r.stats) shared += s.shared_bytes;
      line("shared rows",
           fmt::format("{} sink/global key tokens gathered once, {} global query "
                       "rows merged by LSE ({} of the bytes sent)",
                       r.shared_keys, r.shared_queries, format_bytes(double(shared))));
    }
    if (c.hier.on()) {
      int64_t stage_bytes = 0, fetched = 0;
      double stage_s = 0, stage_comm_s = 0;
      for (const RankStats& s : r.stats) {
        stage_bytes += s.stage_bytes, fetched += s.fetched_tokens;
        stage_s = std::max(stage_s, s.stage_s),
        stage_comm_s = std::max(stage_comm_s, s.stage_comm_s);
      }
      line("hierarchy",
           c.hier.levels()
               ? fmt::format("{}: {} block summaries gathered once ({} of the bytes sent); stage "
                             "{:.3f} ms of the slowest rank's time, {:.3f} ms in collectives",
                             c.hier.describe(), s0.summaries, format_bytes(double(stage_bytes)),
                             stage_s * kMs, stage_comm_s * kMs)
               : fmt::format("{}: {} block means gathered, {} key tokens of the chosen blocks "
                             "fetched ({} of the bytes sent); stage {:.3f} ms, {:.3f} ms in "
                             "collectives",
                             c.hier.describe(), s0.summaries, fetched,
                             format_bytes(double(stage_bytes)), stage_s * kMs, stage_comm_s * kMs));
    }
    line(c.hier.levels() ? "attended pairs" : "visible pairs",
         fmt::format("{:.4g} of {:.4g} ({:.2f}%{})", r.flops / (4.0 * double(c.head_dim)), dense,
                     kPercent * r.flops / (4.0 * double(c.head_dim)) / dense,
                     c.hier.levels() ? "; (query, key) and (query, summary) pairs" : ""));
    line("tiles", fmt::format("{} computed of {} in the kernel calls ({} partial)", computed, tiles,
                              partial));
    if (c.kv_wire.on()) {
      const int64_t fp = c.head_dim * int64_t(dtype_size(c.dtype)),
                    q = c.kv_wire.row_bytes(c.head_dim);
      // KIVI keys: codes per row, scales per channel and group of G token positions.
      const double kq = c.kv_wire.kivi
                            ? double(c.kv_wire.code_bytes(c.head_dim)) +
                                  double(c.head_dim * 4 * (c.kv_wire.asymmetric ? 2 : 1)) /
                                      double(c.kv_wire.group)
                            : double(q);
      line("kv wire",
           fmt::format("{}: {}{} B per token and K/V head instead of {} B {} ({:.2f}x fewer); {}",
                       c.kv_wire.describe(),
                       c.kv_wire.kivi
                           ? fmt::format("K about {:.1f} B (per channel over {} tokens), V ", kq,
                                         c.kv_wire.group)
                           : std::string(),
                       q, fp, dtype_name(c.dtype), 2.0 * double(fp) / (kq + double(q)),
                       c.kv_store ? "stored so in memory too (all attention uses the dequantized "
                                    "values)"
                                  : "own blocks, sinks and global tokens exact"));
    }
    if (r.select) {
      const SelectSummary& k = *r.select;
      line("kv keep", fmt::format("{}: kept {} of {} keys over (batch, {}) ({:.2f}%); sinks {}",
                                  c.select.describe(), k.kept, k.keys,
                                  c.select.per == KeepPer::head ? "query head" : "K/V head",
                                  k.keys > 0 ? kPercent * double(k.kept) / double(k.keys) : 0.0,
                                  c.mask.sinks));
      line("kv keep error",
           fmt::format("O rel. Frobenius {:.3e} against exact attention (all rows; the exact "
                       "pass's float32 result)",
                       k.o_rel_vs_exact));
      line("kv keep time",
           fmt::format("importance pass {:.3f} ms, final pass{} {:.3f} ms (rank 0, in the times "
                       "above: the exact pass, then these)",
                       k.importance_s * kMs,
                       c.select.rest == KeepRest::int4 ? "es (kept + INT4 rest)" : "",
                       k.final_s * kMs));
    }
    if (r.ranks_per_node < r.ranks || r.scheme != CommScheme::flat) {
      int64_t ib = 0, xb = 0, im = 0, xm = 0;
      double a2a = 0, iw = 0, xw = 0;
      for (const RankStats& s : r.stats) {
        ib += s.intra_bytes, xb += s.inter_bytes, im += s.intra_messages, xm += s.inter_messages;
        a2a = std::max(a2a, s.a2a_s);
        iw = std::max(iw, s.intra_wait_s), xw = std::max(xw, s.inter_wait_s);
      }
      line("levels",
           fmt::format("{}, {} node{} x {} ranks: inside nodes {} in {} messages, across nodes "
                       "{} in {} messages (all ranks){}",
                       comm_scheme_name(r.scheme), r.ranks / r.ranks_per_node,
                       r.ranks / r.ranks_per_node == 1 ? "" : "s", r.ranks_per_node,
                       format_bytes(double(ib)), im, format_bytes(double(xb)), xm,
                       r.scheme == CommScheme::a2a_ring
                           ? fmt::format("; all-to-alls {:.3f} ms (slowest rank)", a2a * kMs)
                           : std::string()));
      line("level waits", fmt::format("waiting for K/V blocks: inside nodes {:.3f} ms, across "
                                      "nodes {:.3f} ms (the slowest rank of each)",
                                      iw * kMs, xw * kMs));
    }
    if (!r.scheme_auto.empty())
      line("comm scheme",
           fmt::format("{} chosen by {} (predicted)", comm_scheme_name(r.scheme), r.scheme_auto));
    line("bytes sent",
         fmt::format("{} in all vs {} for a full ring ({:.1f}%)", format_bytes(double(sent)),
                     format_bytes(double(full_sent)),
                     full_sent > 0 ? kPercent * double(sent) / double(full_sent) : 100.0));
  }
  if (r.verify) {
    const CheckResult& v = *r.verify;
    line("efficiency",
         fmt::format("{:.1f}% = T1 / (P T_ring), T1 = {:.3f} ms single-rank kernel ({} thread{})",
                     r.efficiency() * kPercent, v.t1_s * kMs, threads0, threads0 == 1 ? "" : "s"));
    line("max error", fmt::format("{} vs the single-rank kernel: {}", error_text(v.err, v.tol),
                                  v.ok ? "ok" : "FAIL"));
    if (r.select && r.select->keep_diff >= 0)
      line("kept set",
           fmt::format("{} of {} flags differ from the single-rank run's (only near-ties "
                       "of importance can)",
                       r.select->keep_diff, r.select->keys));
  }
  if (r.sampled) {
    const CheckResult& v = *r.sampled;
    line("reference check",
         fmt::format("{} vs float64 on {} sampled query rows x {} heads: {}",
                     error_text(v.err, v.tol), r.sampled->rows, c.hq, v.ok ? "ok" : "FAIL"));
  }
  if (c.backward) {
    const BackwardTotals bt = backward_totals(r);
    const double slow = bt.slowest_s;
    const int64_t sent = bt.sent, grad = bt.grad, messages = bt.messages;
    line("backward",
         fmt::format("{:.3f} ms (slowest rank), {:.1f} GFLOP/s (FLOPs 2.5x the forward's), {} "
                     "steps; sent {} in all, of which dK/dV accumulators {} in {} messages; not "
                     "in the times above",
                     slow * kMs, slow > 0 ? r.bwd_flops / slow / kGiga : 0.0,
                     r.stats.empty() ? 0 : r.stats[0].bwd_steps, format_bytes(double(sent)),
                     format_bytes(double(grad)), messages));
    if (r.grad_verify) {
      const GradCheck& g = *r.grad_verify;
      line("grad error",
           fmt::format("dQ {:.2e}, dK {:.2e}, dV {:.2e} rel. Frobenius vs the single-rank kernel's "
                       "backward (tolerance {:.0e}): {}",
                       g.dq, g.dk, g.dv, g.tol, g.ok ? "ok" : "FAIL"));
      line(
          "bwd efficiency",
          fmt::format("{:.1f}% = T1 / (P T_backward), T1 = {:.3f} ms single-rank kernel backward",
                      slow > 0 ? kPercent * g.t1_s / (double(r.ranks) * slow) : 0.0, g.t1_s * kMs));
    }
    if (r.grad_sampled) {
      const GradCheck& g = *r.grad_sampled;
      line("grad check",
           fmt::format("dQ {:.2e} on {} sampled query rows, dK {:.2e}, dV {:.2e} on {} sampled "
                       "keys (x batch x heads), rel. Frobenius vs float64 (tolerance {:.0e}; dK, "
                       "dV with the run's LSE and Delta): {}",
                       g.dq, g.q_rows, g.dk, g.dv, g.k_rows, g.tol, g.ok ? "ok" : "FAIL"));
    }
  }
  if (r.moe) {
    const MoeMetrics& m = *r.moe;
    MoeRankStats slow;  // the slowest rank's parts
    int64_t sent = 0;
    for (const RankStats& s : r.stats) {
      if (s.moe.total_s >= slow.total_s) slow = s.moe;
      sent += s.moe.bytes_sent;
    }
    line("moe", fmt::format("{} after attention: X = O [{} tokens, d_model {}]", c.moe.describe(),
                            c.batch * c.nq, c.hq * c.head_dim));
    line("moe time",
         fmt::format("{:.3f} ms (slowest rank {}: route {:.3f}, dispatch {:.3f}, FFN {:.3f} at "
                     "{:.1f} GFLOP/s, combine {:.3f}); {} sent in all; not in the times above",
                     slow.total_s * kMs, slow.rank, slow.route_s * kMs, slow.dispatch_s * kMs,
                     slow.ffn_s * kMs, slow.ffn_s > 0 ? slow.ffn_flops / slow.ffn_s / kGiga : 0.0,
                     slow.combine_s * kMs, format_bytes(double(sent))));
    print_moe_summary(m, c.batch * c.nq, line);
    if (r.moe_check) print_moe_check(*r.moe_check, line);
  }
  line("rank 0 gather peak", fmt::format("{}{}", format_bytes(double(r.rank0_output_peak)),
                                         r.verify ? " (with --verify's whole problem)" : ""));
  if (!r.outputs.empty()) line("outputs", join(r.outputs, ", "));
  line("reproduce", r.reproduce());
}

std::vector<JsonObject> run_records(const RunReport& r) {
  std::vector<JsonObject> out;
  const RunConfig& c = *r.cfg;
  for (const RankStats& s : r.stats) {
    JsonObject row;
    row.text("command", "run")
        .text("record", "rank")
        .integer("rank", s.rank)
        .integer("tokens", s.q_tokens)
        .integer("kv_tokens", s.kv_tokens)
        .integer("threads", s.threads)
        .integer("steps", s.steps)
        .integer("computed_steps", s.computed_steps)
        .number("total_ms", s.total_s * kMs)
        .number("compute_ms", s.compute_s * kMs)
        .number("merge_ms", s.merge_s * kMs)
        .number("wait_ms", s.wait_s * kMs)
        .number("step_ms", s.step_mean_s * kMs)
        .integer("pairs", s.pairs)
        .integer("bytes_sent", s.bytes_sent)
        .integer("shared_bytes", s.shared_bytes)
        .integer("full_ring_bytes", s.full_ring_bytes)
        .integer("tiles_total", s.tiles_total)
        .integer("tiles_computed", s.tiles_computed)
        .integer("tiles_partial", s.tiles_partial)
        .integer("peak_bytes", s.peak_bytes)
        .number("stage_ms", s.stage_s * kMs)
        .number("stage_comm_ms", s.stage_comm_s * kMs)
        .integer("stage_bytes", s.stage_bytes)
        .number("stage_scores", s.stage_pair_evals)
        .integer("summaries", s.summaries)
        .integer("fetched_tokens", s.fetched_tokens)
        .integer("intra_bytes", s.intra_bytes)
        .integer("inter_bytes", s.inter_bytes)
        .integer("intra_messages", s.intra_messages)
        .integer("inter_messages", s.inter_messages)
        .number("a2a_ms", s.a2a_s * kMs)
        .number("intra_wait_ms", s.intra_wait_s * kMs)
        .number("inter_wait_ms", s.inter_wait_s * kMs);
    if (r.moe) add_moe_rank_keys(row, s.moe);
    out.push_back(row);
  }
  JsonObject sum;
  sum.text("command", "run").text("record", "summary");
  add_shape_keys(sum, c, c.causal, mask_label(c.masks));
  sum.text("layout", layout_name(c.layout))
      .integer("ranks", r.ranks)
      .text("backend", r.backend)
      .text("isa", r.isa)
      .integer("threads", r.stats.empty() ? 0 : r.stats[0].threads)
      .number("time_ms", r.slowest_s() * kMs)
      .number("command_ms", r.command_s * kMs)
      .number("setup_ms", r.wall.setup_s * kMs)
      .number("inputs_ms", r.wall.inputs_s * kMs)
      .number("passes_ms", r.wall.passes_s * kMs)
      .number("checks_ms", r.wall.checks_s * kMs)
      .number("outputs_ms", r.wall.outputs_s * kMs)
      .number("gather_ms", r.wall.gather_s * kMs)
      .number("gflops", r.flops / r.slowest_s() / kGiga)
      .number("imbalance_scheduled", r.sched_imbalance)
      .number("imbalance_measured", measured_imbalance(r))
      .number("bytes_per_step", bytes_per_step(r))
      .integer("steps", r.stats.empty() ? 0 : r.stats[0].steps)
      .text("transfer", r.transfer)
      .integer("shared_keys", r.shared_keys)
      .integer("shared_queries", r.shared_queries)
      .text("hierarchy", c.hier.describe())
      .text("comm_scheme", comm_scheme_name(r.scheme))
      .text("comm_scheme_auto", r.scheme_auto)
      .integer("ranks_per_node", r.ranks_per_node)
      .text("kv_wire", c.kv_wire.on() ? c.kv_wire.describe() : std::string(dtype_name(c.dtype)))
      .boolean("kv_store", c.kv_store)
      .integer("kv_wire_row_bytes", c.kv_wire.on() ? c.kv_wire.row_bytes(c.head_dim)
                                                   : c.head_dim * int64_t(dtype_size(c.dtype)));
  if (r.moe) add_moe_summary_keys(sum, c.moe, *r.moe);
  if (r.select) {
    const SelectSummary& k = *r.select;
    sum.number("kv_keep", c.select.keep)
        .integer("kv_keep_recent", c.select.keep_recent)
        .text("kv_rest", keep_rest_name(c.select.rest))
        .text("kv_keep_per", keep_per_name(c.select.per))
        .integer("kept_keys", k.kept)
        .integer("select_keys", k.keys)
        .number("importance_ms", k.importance_s * kMs)
        .number("select_final_ms", k.final_s * kMs)
        .number("select_o_rel_vs_exact", k.o_rel_vs_exact);
    if (k.keep_diff >= 0) sum.integer("keep_diff", k.keep_diff);
  }
  if (r.moe_check) add_moe_check_keys(sum, *r.moe_check);
  sum.boolean("backward", c.backward);
  if (c.backward) {
    const BackwardTotals bt = backward_totals(r);
    const double slow = bt.slowest_s;
    const int64_t sent = bt.sent, grad = bt.grad, messages = bt.messages;
    sum.number("bwd_ms", slow * kMs)
        .number("bwd_gflops", slow > 0 ? r.bwd_flops / slow / kGiga : 0.0)
        .integer("bwd_bytes", sent)
        .integer("bwd_grad_bytes", grad)
        .integer("bwd_grad_messages", messages);
    if (r.grad_verify)
      sum.number("grad_dq_rel_err", r.grad_verify->dq)
          .number("grad_dk_rel_err", r.grad_verify->dk)
          .number("grad_dv_rel_err", r.grad_verify->dv)
          .number("bwd_t1_ms", r.grad_verify->t1_s * kMs)
          .number("bwd_efficiency", slow > 0 ? r.grad_verify->t1_s / (double(r.ranks) * slow) : 0.0)
          .boolean("grad_pass", r.grad_verify->ok);
    if (r.grad_sampled)
      sum.number("ref_dq_rel_err", r.grad_sampled->dq)
          .number("ref_dk_rel_err", r.grad_sampled->dk)
          .number("ref_dv_rel_err", r.grad_sampled->dv)
          .boolean("ref_grad_pass", r.grad_sampled->ok);
  }
  if (r.sampled) {
    sum.integer("check_rows", r.sampled->rows)
        .number("ref_o_rel_err", r.sampled->err.o_rel_fro)
        .number("ref_lse_max_err", r.sampled->err.lse_max_abs)
        .boolean("ref_pass", r.sampled->ok);
  }
  if (r.verify) {
    sum.number("t1_ms", r.verify->t1_s * kMs)
        .number("efficiency", r.efficiency())
        .number("o_rel_err", r.verify->err.o_rel_fro)
        .number("lse_max_err", r.verify->err.lse_max_abs)
        .boolean("pass", r.verify->ok);
  }
  sum.text("reproduce", r.reproduce());
  out.push_back(sum);
  return out;
}

void write_metrics(MetricsFile& file, const RunReport& r) {
  for (const JsonObject& j : run_records(r)) file.write(j);
}

}  // namespace ringattn::cli
