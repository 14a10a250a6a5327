#include "cli/moe_report.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "cli/table.hpp"
#include "ringattn/memory.hpp"

namespace ringattn::cli {
namespace {

constexpr int kLabelWidth = 20;  // label column of the totals
constexpr double kMs = 1e3;
constexpr double kGiga = 1e9;
constexpr double kPercent = 100.0;
constexpr int kExpertsPerLine = 8;  // of the per-expert load

std::string ms(double s) {
  return cell_fixed(s * kMs, 2);
}

double ratio(double num, double den) {
  return den > 0 ? num / den : std::numeric_limits<double>::quiet_NaN();
}

double ffn_gflops(const MoeRankStats& s) {
  return ratio(s.ffn_flops, s.ffn_s) / kGiga;
}

double comm_ratio(const MoeRankStats& s) {
  return ratio(s.dispatch_s + s.combine_s, s.ffn_s);
}

double sgemm_of(const MoeRunReport& r, std::size_t rank) {
  return rank < r.sgemm_gflops.size() ? r.sgemm_gflops[rank]
                                      : std::numeric_limits<double>::quiet_NaN();
}

double pct_sgemm(const MoeRunReport& r, const MoeRankStats& s) {
  return kPercent * ratio(ffn_gflops(s), sgemm_of(r, static_cast<std::size_t>(s.rank)));
}

double total_flops(const MoeRunReport& r) {
  double f = 0;
  for (const MoeRankStats& s : r.job.stats) f += s.ffn_flops;
  return f;
}

bool dropless(const MoeMetrics& m) {
  return m.capacity == std::numeric_limits<int64_t>::max();
}

std::string experts_text(int experts, int ranks, int rank) {
  const ExpertRange e = moe_experts_of(experts, ranks, rank);
  return e.count == 1 ? fmt::format("{}", e.first)
                      : fmt::format("{}-{}", e.first, e.first + e.count - 1);
}

std::vector<std::string> load_lines(const MoeMetrics& m) {
  std::vector<std::string> lines;
  std::string cur;
  for (std::size_t e = 0; e < m.load.size(); ++e) {
    const int64_t req = e < m.requested.size() ? m.requested[e] : 0;
    cur += fmt::format("{}e{} {}/{}", cur.empty() ? "" : "  ", e, req, m.load[e]);
    if ((e + 1) % kExpertsPerLine == 0 || e + 1 == m.load.size()) {
      lines.push_back(cur);
      cur.clear();
    }
  }
  return lines;
}

}  // namespace

std::string MoeRunReport::reproduce() const {
  return job.backend == "mpi" ? fmt::format("mpirun -np {} {}", job.ranks, cfg->command_line)
                              : cfg->command_line;
}

void print_moe_report(const MoeRunReport& r) {
  const MoeJobSpec& c = r.cfg->spec;
  const MoeMetrics& m = r.job.metrics;
  const int64_t threads0 = r.job.stats.empty() ? 0 : r.job.stats[0].threads;
  fmt::print("ringattn moe: T={} d_model={} | {} | P={} ({}) | {} thread{} per rank\n", c.tokens,
             c.d_model, c.moe.describe(), r.job.ranks, r.job.backend, threads0,
             threads0 == 1 ? "" : "s");
  fmt::print("  inputs: X {}, weights {}\n",
             c.x_path.empty() ? fmt::format("generated (seed {})", c.seed) : c.x_path,
             c.weights_dir.empty() ? fmt::format("generated (seed {})", c.seed) : c.weights_dir);
  const Table table({{"rank", 4},
                     {"experts", 7},
                     {"rows", 7},
                     {"sent", 7},
                     {"computed", 8},
                     {"thr", 3},
                     {"route_ms", 8},
                     {"disp_ms", 8},
                     {"ffn_ms", 8},
                     {"comb_ms", 8},
                     {"total_ms", 8},
                     {"ffn_GF/s", 8},
                     {"sgemm_GF/s", 10},
                     {"%sgemm", 6},
                     {"comm/ffn", 8},
                     {"bytes_sent", 10}});
  fmt::print("{}", table.header());
  for (const MoeRankStats& s : r.job.stats)
    fmt::print("{}", table.row({fmt::format("{}", s.rank),
                                experts_text(c.moe.experts, r.job.ranks, static_cast<int>(s.rank)),
                                fmt::format("{}", s.rows), fmt::format("{}", s.rows_sent),
                                fmt::format("{}", s.rows_computed), fmt::format("{}", s.threads),
                                ms(s.route_s), ms(s.dispatch_s), ms(s.ffn_s), ms(s.combine_s),
                                ms(s.total_s), cell_fixed(ffn_gflops(s), 1),
                                cell_fixed(sgemm_of(r, static_cast<std::size_t>(s.rank)), 1),
                                cell_fixed(pct_sgemm(r, s), 1), cell_fixed(comm_ratio(s), 3),
                                format_bytes(double(s.bytes_sent))}));

  const auto line = [](const std::string& label, const std::string& value) {
    fmt::print("  {:<{}}{}\n", label, kLabelWidth, value);
  };
  const double t = r.job.slowest_s();
  line("total time", fmt::format("{:.3f} ms (slowest rank, best of {} pass{}{})", t * kMs,
                                 c.repeats, c.repeats == 1 ? "" : "es",
                                 c.warmup > 0 ? fmt::format(" after {} warmup", c.warmup) : ""));
  line("FFN throughput", fmt::format("{:.1f} GFLOP/s ({:.3g} GFLOP of expert FFNs / total time)",
                                     ratio(total_flops(r), t) / kGiga, total_flops(r) / kGiga));
  if (r.sgemm_gflops.empty()) line("sgemm baseline", "not measured (--no-baseline)");
  print_moe_summary(m, c.tokens, line);
  if (r.job.check) print_moe_check(*r.job.check, line);
  std::string outputs;
  for (const std::string& o : r.job.outputs) outputs += (outputs.empty() ? "" : ", ") + o;
  if (!outputs.empty()) line("outputs", outputs);
  fmt::print("# reproduce: {}\n", r.reproduce());
}

void write_moe_metrics(MetricsFile& file, const MoeRunReport& r) {
  const MoeJobSpec& c = r.cfg->spec;
  const MoeMetrics& m = r.job.metrics;
  for (const MoeRankStats& s : r.job.stats) {
    const ExpertRange held = moe_experts_of(c.moe.experts, r.job.ranks, static_cast<int>(s.rank));
    JsonObject row;
    row.text("command", "moe")
        .text("record", "rank")
        .integer("rank", s.rank)
        .integer("moe_experts_first", held.first)
        .integer("moe_experts_held", held.count)
        .integer("tokens", s.rows)
        .integer("threads", s.threads)
        .number("total_ms", s.total_s * kMs)
        .number("moe_ffn_gflops", ffn_gflops(s))
        .number("sgemm_gflops", sgemm_of(r, static_cast<std::size_t>(s.rank)))
        .number("pct_sgemm", pct_sgemm(r, s))
        .number("moe_comm_ratio", comm_ratio(s))
        .integer("bytes_sent", s.bytes_sent)
        .integer("peak_bytes", s.peak_bytes);
    add_moe_rank_keys(row, s);
    file.write(row);
  }
  JsonObject sum;
  sum.text("command", "moe")
      .text("record", "summary")
      .integer("tokens", c.tokens)
      .integer("d_model", c.d_model)
      .integer("seq_len", c.sequence_length());
  add_moe_summary_keys(sum, c.moe, m);
  sum.integer("ranks", r.job.ranks)
      .text("backend", r.job.backend)
      .integer("threads", r.job.stats.empty() ? 0 : r.job.stats[0].threads)
      .number("time_ms", r.job.slowest_s() * kMs)
      .number("gflops", ratio(total_flops(r), r.job.slowest_s()) / kGiga);
  if (r.job.check) add_moe_check_keys(sum, *r.job.check);
  sum.text("reproduce", r.reproduce());
  file.write(sum);
}

void print_moe_summary(const MoeMetrics& m, int64_t tokens, const LineFn& line) {
  line("capacity", dropless(m) ? std::string("unlimited (dropless)")
                               : fmt::format("C = {} tokens per expert", m.capacity));
  const std::vector<std::string> loads = load_lines(m);
  for (std::size_t i = 0; i < loads.size(); ++i)
    line(i == 0 ? "load (req/accepted)" : "", loads[i]);
  line("dropped", fmt::format("{} of {} assignments ({:.2f}%); a dropped assignment contributes 0",
                              m.dropped, m.assignments, kPercent * m.drop_rate()));
  line("unrouted tokens",
       fmt::format("{} of {} (every assignment dropped: y = 0)", m.unrouted, tokens));
  line("aux loss", fmt::format("{:.6f} (1 = uniform routing)", m.aux_loss));
  line("z loss", fmt::format("{:.6f}", m.z_loss));
}

void print_moe_check(const MoeCheck& k, const LineFn& line) {
  line("moe check",
       fmt::format("routing {} mismatches on {} tokens; gate err {:.2e}, Y rel err {:.2e} on {} "
                   "sampled rows (tol {:.1e}); aux err {:.1e}, z err {:.1e}; margin {:.2e}: {}",
                   k.routing_mismatches, k.tokens, k.gate_err, k.y_err, k.rows, k.tol, k.aux_err,
                   k.z_err, k.margin, k.ok ? "ok" : "FAIL"));
}

void add_moe_rank_keys(JsonObject& o, const MoeRankStats& s) {
  o.integer("moe_rows_sent", s.rows_sent)
      .integer("moe_rows_computed", s.rows_computed)
      .number("moe_ms", s.total_s * kMs)
      .number("moe_route_ms", s.route_s * kMs)
      .number("moe_dispatch_ms", s.dispatch_s * kMs)
      .number("moe_ffn_ms", s.ffn_s * kMs)
      .number("moe_combine_ms", s.combine_s * kMs)
      .number("moe_comm_ms", s.comm_s * kMs)
      .number("moe_ffn_flops", s.ffn_flops)
      .integer("moe_bytes_sent", s.bytes_sent);
}

void add_moe_summary_keys(JsonObject& sum, const MoeConfig& c, const MoeMetrics& m) {
  sum.integer("moe_experts", c.experts)
      .integer("moe_topk", c.topk)
      .integer("moe_ffn", c.d_ff)
      .text("moe_policy", moe_policy_name(c.policy))
      .text("moe_priority", moe_priority_name(c.priority))
      .number("moe_capacity_factor", c.capacity_factor)
      .integer("moe_chunk", c.chunk)
      .number("moe_bias_rate", c.bias_rate);
  if (dropless(m))
    sum.null("moe_capacity");
  else
    sum.integer("moe_capacity", m.capacity);
  sum.integers("moe_requested", m.requested)
      .integers("moe_load", m.load)
      .integer("moe_assignments", m.assignments)
      .integer("moe_dropped", m.dropped)
      .number("moe_drop_rate", m.drop_rate())
      .integer("moe_unrouted", m.unrouted)
      .number("moe_aux_loss", m.aux_loss)
      .number("moe_z_loss", m.z_loss);
}

void add_moe_check_keys(JsonObject& sum, const MoeCheck& k) {
  sum.integer("moe_check_rows", k.rows)
      .integer("moe_routing_mismatches", k.routing_mismatches)
      .number("moe_gate_err", k.gate_err)
      .number("moe_y_rel_err", k.y_err)
      .number("moe_aux_err", k.aux_err)
      .number("moe_z_err", k.z_err)
      .number("moe_margin", k.margin)
      .number("moe_tol", k.tol)
      .boolean("moe_ref_pass", k.ok);
}

}  // namespace ringattn::cli
