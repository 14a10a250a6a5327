// The job driver (ringattn/job.hpp): one rank's whole run.
#include "ringattn/job.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <optional>
#include <vector>

#include "job/backward_parts.hpp"
#include "job/inputs.hpp"
#include "job/moe_parts.hpp"
#include "job/outputs.hpp"
#include "job/rank_guard.hpp"
#include "job/sample_check.hpp"
#include "job/verify.hpp"
#include "ringattn/comm_mpi.hpp"
#include "ringattn/cpu_info.hpp"
#include "ringattn/error.hpp"
#include "ringattn/hierarchy_stage.hpp"
#include "ringattn/kv_select_stage.hpp"
#include "ringattn/memory.hpp"
#include "ringattn/plan.hpp"
#include "ringattn/ring.hpp"
#include "ringattn/tempfiles.hpp"

namespace ringattn {
namespace {

constexpr const char* kInjectedFailure = "injected failure (fail_rank)";
// Tokens whose MoE output --verify checks against the float64 reference (routing: all).
constexpr int64_t kMoeVerifyRows = 64;

// --hierarchy auto: the scheme make_plan predicts fastest for np ranks in nodes
// of w on spec.hardware (planned as MPI/NCCL ranks), and each scheme's figures
// for the report. Every rank computes the same choice.
CommScheme auto_scheme(const JobSpec& spec, int np, int w, std::string* text) {
  PlanInput in(static_cast<const AttentionProblem&>(spec));
  in.layout = spec.layout;
  in.ranks = np, in.ranks_per_node = w;
  in.links = PlanLinks::network;
  in.threads = spec.threads;
  in.moe = spec.moe;
  in.kv_wire = spec.kv_wire, in.kv_store = spec.kv_store;
  in.select = spec.select;
  const CommScheme best = best_scheme(in, *spec.hardware);
  std::vector<std::string> parts;
  for (const SchemeEstimate& e : compare_schemes(in, *spec.hardware))
    parts.push_back(
        e.ok ? fmt::format("{} {:.3f} ms", comm_scheme_name(e.scheme), e.predicted_s * 1e3)
             : fmt::format("{} cannot run", comm_scheme_name(e.scheme)));
  *text = fmt::format("auto on {}: {}", spec.hardware->name, fmt::join(parts, ", "));
  return best;
}

// One warning line when some rank holds no query or no key/value tokens.
void warn_empty_ranks(const JobSpec& spec, const Layout& ql, const Layout& kvl) {
  int no_q = 0, no_kv = 0;
  for (int r = 0; r < ql.ranks(); ++r) {
    no_q += ql.tokens(r) == 0;
    no_kv += kvl.tokens(r) == 0;
  }
  if (no_q == 0 && no_kv == 0) return;
  std::fflush(stdout);
  fmt::print(stderr,
             "ringattn: warning: N={} Nk={} over P={} ranks ({} layout): {} rank(s) hold no "
             "query tokens and {} no key/value tokens; they still take part in the ring\n",
             spec.nq, spec.nk, ql.ranks(), layout_name(spec.layout), no_q, no_kv);
}

// Bytes `rank` would send in a full ring: the blocks it holds at steps 0..P-2.
int64_t full_ring_bytes(const JobSpec& spec, const Layout& kvl, int rank) {
  const int np = kvl.ranks();
  int64_t tokens = 0;
  for (int s = 0; s + 1 < np; ++s) tokens += kvl.tokens(((rank - s) % np + np) % np);
  return 2 * spec.batch * tokens * spec.hkv * spec.head_dim *
         static_cast<int64_t>(dtype_size(spec.dtype));
}

RankStats rank_stats(const RingMetrics& m, const StageMetrics& st, int rank, int64_t q_tokens,
                     int64_t kv_tokens, int threads, std::size_t peak_bytes, int64_t full_ring) {
  RankStats s;
  s.rank = rank, s.q_tokens = q_tokens, s.kv_tokens = kv_tokens, s.threads = threads;
  s.steps = m.steps, s.computed_steps = m.computed_steps, s.bytes_sent = m.bytes_sent;
  s.shared_bytes = m.shared_bytes;
  s.peak_bytes = static_cast<int64_t>(peak_bytes), s.pairs = m.pairs;
  s.tiles_total = m.tiles.tiles_total, s.tiles_computed = m.tiles.tiles_computed;
  s.tiles_partial = m.tiles.tiles_partial;
  s.full_ring_bytes = full_ring;
  s.total_s = m.total_s, s.compute_s = m.compute_s, s.merge_s = m.merge_s, s.wait_s = m.wait_s;
  s.step_mean_s = m.steps > 0 ? m.total_s / m.steps : 0.0;
  // The stage runs after the ring pass: its time, traffic and tiles join the pass's.
  s.stage_s = st.total_s, s.stage_comm_s = st.comm_s, s.stage_pair_evals = st.pair_evals;
  s.stage_bytes = st.bytes_sent, s.summaries = st.summaries, s.fetched_tokens = st.fetched_tokens;
  s.total_s += st.total_s, s.compute_s += st.compute_s, s.wait_s += st.comm_s;
  s.bytes_sent += st.bytes_sent;
  s.tiles_total += st.tiles.tiles_total, s.tiles_computed += st.tiles.tiles_computed;
  s.tiles_partial += st.tiles.tiles_partial;
  return s;
}

void add_backward_stats(RankStats* s, const RingMetrics& m) {
  s->bwd_total_s = m.total_s, s->bwd_compute_s = m.compute_s, s->bwd_wait_s = m.wait_s;
  s->bwd_bytes = m.bytes_sent, s->bwd_grad_bytes = m.grad_bytes;
  s->bwd_grad_messages = m.grad_messages, s->bwd_steps = m.steps;
}

CheckResult check_result(const JobSpec& spec, const ErrorStats& err, int64_t rows) {
  CheckResult v;
  v.rows = rows;
  v.err = err;
  v.tol = spec.tolerance();
  v.ok = within(v.err, v.tol);
  return v;
}

using WallClock = std::chrono::steady_clock;
double seconds_since(WallClock::time_point t0) {
  return std::chrono::duration<double>(WallClock::now() - t0).count();
}

JobReport run_rank(Communicator& comm, const JobSpec& spec) {
  const WallClock::time_point t_job = WallClock::now();
  WallTimes wall;
  double phase_mark = 0;  // seconds since t_job where the current phase began
  const auto end_phase = [&](double* into) {
    const double now = seconds_since(t_job);
    *into += now - phase_mark;
    phase_mark = now;
  };
  spec.validate();
  job::check_same_config(comm, spec.config_text());
  const int np = comm.size(), rank = comm.rank();
  if (spec.fail_rank >= np)
    throw FieldError("fail_rank",
                     fmt::format("rank {} does not exist (P = {})", spec.fail_rank, np));
  const ThreadChoice thread_choice = choose_threads(spec, comm);
  const int threads = thread_choice.threads;
  omp_set_num_threads(threads);  // every OpenMP region of this rank (thread or process)
  KernelOptions kopt;
  kopt.threads = threads;
  kopt.isa = spec.isa;
  memory_reset_peak_thread();

  // Nodes of w ranks: a2a-ring splits tokens over nodes, then within each node.
  const int w = spec.ranks_per_node > 0   ? spec.ranks_per_node
                : comm.backend() == "mpi" ? mpi_local_size()
                                          : np;
  std::string auto_text;
  const CommScheme scheme = spec.scheme_auto ? auto_scheme(spec, np, w, &auto_text) : spec.scheme;
  check_two_level(scheme, np, w, spec.hq, spec.hkv);
  const bool a2a = scheme == CommScheme::a2a_ring;
  const Layout ql = a2a ? Layout::nested_of(spec.layout, spec, np / w, w, false)
                        : Layout::of(spec.layout, spec, np, false);
  const Layout kvl = a2a ? Layout::nested_of(spec.layout, spec, np / w, w, true)
                         : Layout::of(spec.layout, spec, np, true);
  // With a hierarchy the ring runs its exact part; the stage adds the rest.
  const Mask ring_mask = hierarchy_ring_mask(spec);
  // a2a-ring's ring runs over the nodes (the schedule it reports).
  const RingSchedule schedule =
      a2a ? make_ring_schedule(Layout::of(spec.layout, spec, np / w, false),
                               Layout::of(spec.layout, spec, np / w, true), ring_mask)
          : make_ring_schedule(ql, kvl, ring_mask, scheme_options(scheme, w));
  if (spec.moe.on()) validate_moe(spec.moe, np);
  const job::MoeOutputPaths moe_paths{spec.moe_out_path, spec.moe_routing_path, spec.moe_gates_path,
                                      spec.batched_output()
                                          ? std::vector<int64_t>{spec.batch, spec.nq}
                                          : std::vector<int64_t>{spec.nq}};
  if (rank == 0) {
    warn_empty_ranks(spec, ql, kvl);
    job::RunOutputs::check_writable(spec);  // before any compute: an unwritable path fails fast
    job::GradOutputs::check_writable(spec);
    job::MoeCollector::check_writable(moe_paths);
  }

  end_phase(&wall.setup_s);
  job::RankInputs in = job::load_rank_inputs(spec, ql, kvl, rank);
  RingProblem p(spec);
  p.q_layout = &ql, p.kv_layout = &kvl;
  p.q = in.q.data.data(), p.k = in.k.data.data(), p.v = in.v.data.data();
  p.kv_wire = spec.kv_wire;
  // --kv-store: keep only the codes of this rank's K/V (K then V, the wire's layout).
  Buffer kv_stored;
  if (spec.kv_store) {
    kv_stored = Buffer(std::max<std::size_t>(kv_block_bytes(p, rank), 1), "K/V codes");
    quantize_kv_block(p, rank, kv_stored.data());
    in.k = Tensor(), in.v = Tensor();
    p.k = p.v = nullptr, p.kv_stored = kv_stored.data();
  }
  end_phase(&wall.inputs_s);
  RingProblem ring_p = p;
  ring_p.mask = ring_mask, ring_p.hier = {};
  const int64_t nq = ql.tokens(rank);
  std::vector<int32_t> route(
      spec.hier.routing()
          ? static_cast<std::size_t>(spec.batch * nq * spec.hq * spec.hier.route_topk)
          : 0);
  Buffer o(static_cast<std::size_t>(spec.batch * nq * spec.hq * spec.head_dim) * sizeof(float),
           "local O");
  Buffer lse(static_cast<std::size_t>(spec.batch * spec.hq * nq) * sizeof(float), "local LSE");

  // The MoE stage on the pass's output: X = O rows with heads concatenated.
  std::optional<job::MoeRank> moe;
  job::MoeSetup moe_setup;
  if (spec.moe.on()) {
    moe_setup.config = spec.moe, moe_setup.weights_dir = spec.moe_weights;
    moe_setup.seed = spec.seed, moe_setup.d_model = spec.hq * spec.head_dim;
    moe_setup.tokens = spec.batch * spec.nq, moe_setup.seq_len = spec.nq;
    moe.emplace(comm, moe_setup, job::moe_row_index(ql, rank, spec.batch));
  }
  const int blas_threads = comm.backend() == "local" ? 0 : threads;  // per process: MPI only

  // The backward pass: dO, dQ, and dK, dV of this rank's keys (one buffer: dK then
  // dV, gathered together); sinks and global tokens ride its ring.
  Tensor d_o;
  Buffer dq, dkv;
  std::optional<RingSchedule> bwd_schedule;
  const int64_t kv_local = spec.batch * kvl.tokens(rank) * spec.hkv * spec.head_dim;
  if (spec.backward) {
    end_phase(&wall.setup_s);
    d_o = job::load_rank_grad_output(spec, ql, rank);
    end_phase(&wall.inputs_s);
    dq = Buffer(
        std::max<std::size_t>(
            static_cast<std::size_t>(spec.batch * nq * spec.hq * spec.head_dim) * sizeof(float), 1),
        "local dQ");
    dkv = Buffer(std::max<std::size_t>(static_cast<std::size_t>(2 * kv_local) * sizeof(float), 1),
                 "local dK, dV");
    ScheduleOptions bo = scheme_options(scheme, w);
    bo.share = false;
    bwd_schedule = make_ring_schedule(ql, kvl, ring_mask, bo);
  }
  RingMetrics best_bwd;
  MoeMetrics best_moe, last_moe;

  // Every point-to-point message of the passes, counted by level.
  LevelTraffic traffic, best_traffic;
  LevelCounter counter(comm, w, &traffic);
  RankDevice device(counter, spec.device, kopt);
  // Ring passes; the best timed one is the one whose slowest rank was fastest.
  RingMetrics best;
  StageMetrics best_stage;
  SelectMetrics best_select;
  std::vector<uint8_t> keep;  // the selection's kept set [B, Hsel, Nk], the same on every rank
  double best_slowest = std::numeric_limits<double>::infinity();
  end_phase(&wall.setup_s);
  for (int pass = 0; pass < spec.warmup + spec.repeats; ++pass) {
    comm.barrier();
    traffic = {};
    RingMetrics m =
        a2a ? a2a_ring_attention(counter, w, ring_p, o.as<float>(), lse.as<float>(), kopt, &traffic)
            : device.pass(schedule, ring_p, o.as<float>(), lse.as<float>());
    SelectMetrics sel;
    const StageMetrics st =
        spec.select.on()
            ? (sel = kv_select_stage(counter, schedule, ring_p, spec.select, o.as<float>(),
                                     lse.as<float>(), kopt, &keep))
            : hierarchy_stage(counter, p, o.as<float>(), lse.as<float>(), kopt, route.data());
    if (moe) last_moe = moe->pass(o.as<float>(), blas_threads);
    RingMetrics bm;
    if (spec.backward)
      bm = ring_attention_backward(counter, *bwd_schedule, ring_p, o.as<float>(), lse.as<float>(),
                                   d_o.as<float>(), dq.as<float>(), dkv.as<float>(),
                                   dkv.as<float>() + kv_local, kopt);
    if (pass == 0 && rank == spec.fail_rank) throw Error(kInjectedFailure);
    if (pass < spec.warmup) continue;
    const double slowest = comm.allreduce_one(m.total_s + st.total_s + bm.total_s, ReduceOp::max);
    if (slowest < best_slowest) {
      best_slowest = slowest;
      best = std::move(m);
      best_stage = st;
      best_select = sel;
      best_traffic = traffic;
      best_moe = last_moe;
      best_bwd = std::move(bm);
    }
  }
  device.finish(o.as<float>(), lse.as<float>());
  end_phase(&wall.passes_s);
  // Never write or report a result that is not a number (each rank checks its own rows).
  const int64_t bad =
      nonfinite_rows(o.as<float>(), lse.as<float>(), spec.batch, nq, spec.hq, spec.head_dim);
  if (bad > 0) throw Error(nonfinite_message(bad, spec.batch * spec.hq * nq));
  if (spec.arrays.local) {  // each rank's own rows into its caller's arrays
    const int64_t oe = spec.batch * nq * spec.hq * spec.head_dim;
    if (spec.arrays.o != nullptr)
      for (int64_t i = 0; i < oe; ++i)
        store_from_f32(spec.arrays.o, spec.dtype, static_cast<std::size_t>(i), o.as<float>()[i]);
    if (spec.arrays.lse != nullptr)
      std::copy(lse.as<float>(), lse.as<float>() + spec.batch * spec.hq * nq, spec.arrays.lse);
  }
  if (spec.backward) {
    const auto finite = [](const float* x, int64_t n) {
      for (int64_t i = 0; i < n; ++i)
        if (!std::isfinite(x[i])) return false;
      return true;
    };
    if (!finite(dq.as<float>(), spec.batch * nq * spec.hq * spec.head_dim) ||
        !finite(dkv.as<float>(), 2 * kv_local))
      throw Error("the backward pass gave a non-finite gradient; no output written");
  }
  RankStats mine = rank_stats(best, best_stage, rank, nq, kvl.tokens(rank), threads,
                              memory_peak_thread(), full_ring_bytes(spec, kvl, rank));
  if (moe) mine.moe = moe_rank_stats(best_moe, rank, moe->rows(), threads);
  if (spec.backward) add_backward_stats(&mine, best_bwd);
  mine.intra_bytes = best_traffic.intra_bytes, mine.inter_bytes = best_traffic.inter_bytes;
  mine.intra_messages = best_traffic.intra_messages;
  mine.inter_messages = best_traffic.inter_messages, mine.a2a_s = best_traffic.a2a_s;
  for (std::size_t s = 0; s < best.step_wait_s.size(); ++s) {
    const double waited = best.step_wait_s[s];
    if (a2a) {
      mine.inter_wait_s += waited;
      continue;
    }
    if (s + 1 >= static_cast<std::size_t>(schedule.steps)) break;
    const RingStep& next = schedule.step(rank, static_cast<int>(s + 1));
    const auto across = [&](int other) { return other >= 0 && other / w != rank / w; };
    (across(next.recv_from) || across(next.send_to) ? mine.inter_wait_s : mine.intra_wait_s) +=
        waited;
  }

  JobReport report;
  report.ranks = np, report.rank = rank;
  report.threads_from = thread_choice.why;
  report.ranks_per_node = w, report.scheme = scheme, report.scheme_auto = auto_text;
  report.backend = comm.backend();
  report.isa = spec.device == Device::cuda
                   ? device.name()
                   : isa_name(spec.isa == Isa::automatic ? best_isa() : spec.isa);
  report.flops = spec.flops();
  if (spec.backward) report.bwd_flops = 2.5 * spec.flops();
  report.sched_imbalance = schedule.imbalance();
  report.transfer = transfer_name(schedule.transfer);
  report.shared_keys = schedule.shared.key_tokens;
  report.shared_queries = schedule.shared.query_tokens;
  if (moe) report.moe = best_moe;
  if (spec.select.on()) {
    // The work done: the exact pass, the importance (Q K^T only: half the FLOPs of a
    // pair) and the final pass over the mask's pairs (with the INT4 rest, a second one).
    report.flops *= spec.select.rest == KeepRest::int4 ? 3.5 : 2.5;
    SelectSummary& s = report.select.emplace();
    s.kept = best_select.kept, s.keys = best_select.keys;
    s.importance_s = best_select.importance_s, s.final_s = best_select.final_s;
    double sums[2] = {best_select.diff2, best_select.exact2};
    comm.allreduce(sums, 2, ReduceOp::sum);
    s.o_rel_vs_exact = sums[1] > 0 ? std::sqrt(sums[0] / sums[1]) : std::sqrt(sums[0]);
  }
  report.stats.resize(static_cast<std::size_t>(np));
  comm.allgather(&mine, sizeof(mine), report.stats.data());
  if (spec.hier.on()) {  // what was computed: the ring's pairs and the stage's scores
    double pairs = 0, evals = 0;
    for (const RankStats& s : report.stats) pairs += double(s.pairs), evals += s.stage_pair_evals;
    report.flops = 4.0 * double(spec.head_dim) * (double(spec.batch * spec.hq) * pairs + evals);
  }

  // Collect every rank's rows on rank 0, one rank at a time. The output files
  // exist only from here on: a job ended during compute leaves none behind.
  end_phase(&wall.passes_s);
  // What rank 0 spends writing and checking, inside the collection (the rest of
  // it is gathering: the rows' transfers and waits).
  const auto timed = [](double* into, auto&& f) {
    const WallClock::time_point t0 = WallClock::now();
    f();
    *into += seconds_since(t0);
  };
  memory_reset_peak_thread();
  std::optional<job::RunOutputs> outputs;
  if (rank == 0) timed(&wall.outputs_s, [&] { outputs.emplace(spec); });
  std::optional<job::SingleRankCheck> check;
  if (rank == 0 && spec.verify) timed(&wall.checks_s, [&] { check.emplace(spec, kopt, kvl); });
  std::optional<job::SampledReferenceCheck> sampled;
  if (rank == 0 && spec.check_rows > 0)
    timed(&wall.checks_s, [&] {
      sampled.emplace(spec, spec.check_rows, job::WireView{&ql, &kvl, &schedule.shared},
                      keep.empty() ? nullptr : keep.data());
    });
  if (outputs && !keep.empty()) timed(&wall.outputs_s, [&] { outputs->write_keep(keep.data()); });
  std::optional<job::GradCollector> grads;
  if (spec.backward) grads.emplace(spec, kopt, rank);
  if (spec.gathers())
    job::gather_rows(comm, ql, spec.batch, spec.hq, spec.head_dim, o.as<float>(), lse.as<float>(),
                     [&](int src, const float* ro, const float* rl) {
                       if (outputs)
                         timed(&wall.outputs_s, [&] { outputs->write_rank(ql, src, ro, rl); });
                       timed(&wall.checks_s, [&] {
                         if (check) check->compare(ql, src, ro, rl);
                         if (sampled) sampled->compare(ql, src, ro, rl);
                       });
                     });
  if (!spec.route_path.empty())
    job::gather_bytes(
        comm,
        [&](int r) {
          return static_cast<std::size_t>(spec.batch * ql.tokens(r) * spec.hq *
                                          spec.hier.route_topk) *
                 sizeof(int32_t);
        },
        route.data(),
        [&](int src, const void* rows) {
          if (outputs) outputs->write_route(ql, src, static_cast<const int32_t*>(rows));
        });
  if (grads)
    grads->gather(comm, ql, kvl, o.as<float>(), lse.as<float>(), d_o.as<float>(), dq.as<float>(),
                  dkv.as<float>());
  // The MoE stage's rows (and with a check its inputs, the ring's output) to rank 0.
  const int64_t moe_check_rows =
      spec.check_rows > 0 ? spec.check_rows : (spec.verify ? kMoeVerifyRows : 0);
  std::optional<job::MoeCollector> moe_rows;
  if (moe && (moe_paths.any() || moe_check_rows > 0)) {
    moe_rows.emplace(comm, moe_setup, moe_paths, moe_check_rows);
    moe_rows->gather(*moe, o.as<float>());
  }
  {
    const double now = seconds_since(t_job);
    wall.gather_s = std::max(0.0, now - phase_mark - wall.checks_s - wall.outputs_s);
    wall.total_s = now;
    report.wall = wall;
  }
  if (rank != 0) return report;

  report.rank0_output_peak = memory_peak_thread();
  if (check) {
    if (report.select) report.select->keep_diff = check->keep_differences(keep);
    report.verify = check_result(spec, check->errors(), spec.nq);
    report.verify->t1_s = check->seconds();
    if (!report.verify->ok) {
      report.failure_field = "verify";
      report.failure = fmt::format(
          "the ring result differs from the single-rank kernel beyond the {} tolerance ({}); no "
          "output written",
          dtype_name(spec.dtype), error_text(report.verify->err, report.verify->tol));
    }
  }
  if (sampled) {
    report.sampled = check_result(spec, sampled->errors(), sampled->rows());
    if (!report.sampled->ok && report.failure.empty()) {
      report.failure_field = "check_rows";
      report.failure = fmt::format(
          "the ring result differs from the float64 reference beyond the {} tolerance ({}); no "
          "output written",
          dtype_name(spec.dtype), error_text(report.sampled->err, report.sampled->tol));
    }
  }
  if (grads && grads->verify) {
    report.grad_verify = grads->verify->result();
    if (!report.grad_verify->ok && report.failure.empty()) {
      report.failure_field = "verify";
      report.failure = fmt::format(
          "the ring's gradients differ from the single-rank kernel's beyond the tolerance {:.0e} "
          "(dQ {:.2e}, dK {:.2e}, dV {:.2e} relative Frobenius); no output written",
          report.grad_verify->tol, report.grad_verify->dq, report.grad_verify->dk,
          report.grad_verify->dv);
    }
  }
  if (grads && grads->sampled) {
    report.grad_sampled = grads->sampled->result();
    if (!report.grad_sampled->ok && report.failure.empty()) {
      report.failure_field = "check_rows";
      report.failure = fmt::format(
          "the ring's gradients differ from the float64 reference beyond the tolerance {:.0e} "
          "(dQ {:.2e}, dK {:.2e}, dV {:.2e} relative Frobenius on sampled rows); no output "
          "written",
          report.grad_sampled->tol, report.grad_sampled->dq, report.grad_sampled->dk,
          report.grad_sampled->dv);
    }
  }
  if (moe_rows && moe_check_rows > 0) {
    report.moe_check = moe_rows->check(last_moe, moe->last_bias());
    if (!report.moe_check->ok && report.failure.empty()) {
      report.failure_field = spec.check_rows > 0 ? "check_rows" : "verify";
      report.failure = "the MoE stage: " + report.moe_check->failure + "; no output written";
    }
  }
  if (!report.failure.empty()) return report;  // the outputs' temporaries are removed
  outputs->commit();
  if (grads && grads->outputs) grads->outputs->commit();
  if (moe_rows) moe_rows->commit();
  mark_job_completed();  // a signal from here on ends a job whose outputs are complete
  for (const std::string* path :
       {&spec.out_path, &spec.lse_path, &spec.route_path, &spec.keep_path, &spec.moe_out_path,
        &spec.moe_routing_path, &spec.moe_gates_path, &spec.dq_path, &spec.dk_path, &spec.dv_path})
    if (!path->empty()) report.outputs.push_back(*path);
  report.wall.total_s = seconds_since(t_job);
  return report;
}

}  // namespace

double JobReport::slowest_s() const {
  double m = 0;
  for (const RankStats& s : stats) m = std::max(m, s.total_s);
  return m;
}

double JobReport::efficiency() const {
  if (!verify) return std::numeric_limits<double>::quiet_NaN();
  return verify->t1_s / (double(ranks) * slowest_s());
}

ThreadChoice choose_threads(const JobSpec& spec, Communicator& comm) {
  if (spec.threads > 0) return {spec.threads, "--threads"};
  if (comm.backend() == "local") {
    const int cores = omp_get_num_procs();
    return {std::max(1, cores / comm.size()), fmt::format("{} core{} / {} in-process ranks", cores,
                                                          cores == 1 ? "" : "s", comm.size())};
  }
  if (std::getenv("OMP_NUM_THREADS") != nullptr) return {omp_get_max_threads(), "OMP_NUM_THREADS"};
  // The cores this rank may run on, shared with the ranks of this machine bound to any of them.
  struct Binding {
    uint64_t host = 0;
    CpuSet cpus;
  };
  Binding mine;
  char name[256] = {};
  gethostname(name, sizeof(name) - 1);
  mine.host = config_hash(name);
  mine.cpus = bound_cpus();
  const int cores = mine.cpus.count();
  std::vector<Binding> all(static_cast<std::size_t>(comm.size()));
  comm.allgather(&mine, sizeof(mine), all.data());
  if (cores == 0) return {omp_get_max_threads(), "the OpenMP default"};
  int sharing = 0;
  for (const Binding& b : all) sharing += b.host == mine.host && b.cpus.overlaps(mine.cpus);
  sharing = std::max(sharing, 1);
  return {std::max(1, cores / sharing),
          fmt::format("{} core{} bound to rank {}, shared by {} rank{}", cores,
                      cores == 1 ? "" : "s", comm.rank(), sharing, sharing == 1 ? "" : "s")};
}

int rank_threads(const JobSpec& spec, Communicator& comm) {
  return choose_threads(spec, comm).threads;
}

JobReport run_job(Communicator& comm, const JobSpec& spec) {
  return job::run_guarded(
      comm, [&] { return run_rank(comm, spec); }, spec.describe_error);
}

JobReport run_job_local(int ranks, const JobSpec& spec) {
  spec.validate();  // before any rank starts: the caller gets the FieldError itself
  if (spec.arrays.local && ranks > 1)
    throw FieldError("arrays",
                     "per-rank arrays need one process per rank (MPI); in-process "
                     "ranks share global arrays");
  JobReport report;
  run_local(
      ranks,
      [&](Communicator& comm) {
        JobReport mine = run_job(comm, spec);
        if (comm.rank() == 0) report = std::move(mine);
      },
      local_memory_for(spec.device));
  return report;
}

}  // namespace ringattn
