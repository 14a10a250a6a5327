// JobSpec's checks and canonical texts (ringattn/job.hpp).
#include <fmt/format.h>

#include <utility>

#include "job/rank_guard.hpp"
#include "ringattn/error.hpp"
#include "ringattn/job.hpp"
#include "ringattn/kv_select_stage.hpp"
#include "ringattn/npy.hpp"  // same_file

namespace ringattn {
namespace {

// Every field of the mask, for reports and the configuration hash when the
// caller gave no description.
std::string mask_fields(const Mask& m) {
  if (m.is_none() && !m.has_extras()) return "full";
  std::string s = fmt::format("band [{}, {}] limit {} dilation {} sinks {}", m.lo, m.hi, m.limit,
                              m.dilation, m.sinks);
  for (int i = 0; i < m.n_global; ++i)
    s += fmt::format(" global [{}, {})", m.global[i].begin, m.global[i].end);
  if (m.blocks.on())
    s += fmt::format(" blocks {}/{}/{}/{}/{}", m.blocks.size, m.blocks.window, m.blocks.global,
                     m.blocks.random, m.blocks.seed);
  for (int i = 0; i < m.n_skip_q; ++i)
    s += fmt::format(" skip-q [{}, {})", m.skip_q[i].begin, m.skip_q[i].end);
  for (int i = 0; i < m.n_skip_k; ++i)
    s += fmt::format(" skip-k [{}, {})", m.skip_k[i].begin, m.skip_k[i].end);
  if (m.aligned()) s += fmt::format(" align {}/{}", m.align_lo, m.align_hi);
  return s;
}

// The documents, as a count and a hash of their offsets (the same on every rank).
std::string docs_fields(const AttentionProblem& p) {
  if (!p.docs) return "none";
  return fmt::format("{} hash {:016x}", p.docs->count(), documents_hash(*p.docs));
}

}  // namespace

void JobSpec::validate() const {
  AttentionProblem::validate();
  if (nq < 1) throw FieldError("nq", fmt::format("expected at least one query token, got {}", nq));
  if (nk < 1) throw FieldError("nk", fmt::format("expected at least one key token, got {}", nk));
  job::check_execution(repeats, warmup, check_rows, fail_rank);
  if (from_arrays() && from_files)
    throw FieldError("arrays", "inputs come from the caller's arrays or from files, not both");
  if (from_arrays() && (arrays.k == nullptr || arrays.v == nullptr))
    throw FieldError("arrays", "q is given: k and v must be given too");
  if ((arrays.d_o != nullptr || arrays.dq != nullptr || arrays.dk != nullptr ||
       arrays.dv != nullptr) &&
      !backward)
    throw FieldError("backward",
                     "gradient arrays (dO, dQ, dK, dV) are given: turn the backward on");
  if (arrays.d_o != nullptr && !do_file.path.empty())
    throw FieldError("do_file", "O's gradient comes from the caller's array or a file, not both");
  if (from_arrays() && arrays.local) {
    if (verify || check_rows > 0)
      throw FieldError(verify ? "verify" : "check_rows",
                       "needs every rank's inputs on rank 0; with per-rank arrays compare the "
                       "gathered outputs with a reference instead");
    if (backward || moe.on() || select.on() || hier.on())
      throw FieldError("arrays",
                       "per-rank arrays run plain ring attention under a mask (no backward, MoE, "
                       "K/V selection or hierarchy yet)");
  }
  // Outputs are compared as files (./o.npy, a/../o.npy and symlinks are one file).
  if (!lse_path.empty() && !out_path.empty() && same_file(lse_path, out_path))
    throw FieldError("lse_out", fmt::format("'{}' is the same file as the O output '{}'; give "
                                            "each output its own file",
                                            lse_path, out_path));
  if (from_files)
    for (const auto& [field, path] : {std::pair{"out", &out_path}, std::pair{"lse_out", &lse_path}})
      for (const InputFile* in : {&q, &k, &v})
        if (!path->empty() && same_file(*path, in->path))
          throw FieldError(field, fmt::format("'{}' is the input file '{}', which would be "
                                              "overwritten",
                                              *path, in->path));
  if (!route_path.empty() && !hier.routing())
    throw FieldError("route_out", "needs block routing (route_block > 0)");
  if (kv_wire.on()) {
    validate_quant(kv_wire, head_dim);
    if (device != Device::cpu)
      throw FieldError("kv_wire",
                       "quantized K/V runs on the cpu device (the GPU kernel does not "
                       "dequantize yet)");
    if (verify && !kv_store)
      throw FieldError("verify",
                       "compares with the single-rank kernel on exact K/V; with a quantized "
                       "--kv-wire use --check-rows (the float64 reference of what each rank's "
                       "queries saw)");
  }
  if (kv_store && !kv_wire.on())
    throw FieldError("kv_store", "needs a quantized format (int8 or int4)");
  if (kv_wire.on() && hier.on())
    throw FieldError(kv_store ? "kv_store" : "kv_wire",
                     "the hierarchical stages read and move exact K/V rows; they do not take "
                     "quantized K/V yet");
  if (select.on()) {
    check_select_supported(*this, select, kv_wire.on());
    if (device != Device::cpu)
      throw FieldError("kv_keep",
                       "K/V selection runs on the cpu device (the GPU kernel has no "
                       "kept-key sets)");
  } else {
    validate_select(select, head_dim);
    if (!keep_path.empty()) throw FieldError("kv_keep_out", "needs K/V selection (kv_keep > 0)");
  }
  if (ranks_per_node < 0)
    throw FieldError("ranks_per_node",
                     fmt::format("expected >= 0 (0: from the launcher), got {}", ranks_per_node));
  if (scheme_auto && !hardware)
    throw FieldError("hardware", "--hierarchy auto needs a hardware profile to plan on");
  if (scheme_auto && device != Device::cpu)
    throw FieldError("hierarchy", "auto runs on the cpu device (double-ring and a2a-ring do)");
  if (scheme == CommScheme::double_ring && device != Device::cpu)
    throw FieldError("hierarchy", "double-ring runs on the cpu device (not tested on the GPU yet)");
  if (scheme == CommScheme::a2a_ring) {
    const auto refuse = [](const char* what) {
      throw FieldError("hierarchy", fmt::format("a2a-ring does not run with {} yet", what));
    };
    if (device != Device::cpu) refuse("the cuda device");
    if (kv_wire.on()) refuse("quantized K/V (--kv-wire, --kv-store)");
    if (select.on()) refuse("K/V selection (--kv-keep)");
    if (hier.on()) refuse("the hierarchical stages");
  }
  if (moe.on() && device != Device::cpu)
    throw FieldError("moe_experts", "the MoE stage runs on the cpu device");
  if (!moe.on())
    for (const auto& [field, path] :
         {std::pair{"moe_out", &moe_out_path}, std::pair{"moe_routing_out", &moe_routing_path},
          std::pair{"moe_gates_out", &moe_gates_path}})
      if (!path->empty()) throw FieldError(field, "needs the MoE stage (moe_experts > 0)");
  if (mask.docs.on() && device != Device::cpu)
    throw FieldError("device",
                     "packed documents run on the cpu device (the GPU kernel has no "
                     "document mask yet)");
  check_backward_supported();
  check_device(device, *this);
}

void JobSpec::check_backward_supported() const {
  if (!backward) {
    for (const auto& [field, path] :
         {std::pair{"dq_out", &dq_path}, std::pair{"dk_out", &dk_path},
          std::pair{"dv_out", &dv_path}, std::pair{"do_file", &do_file.path}})
      if (!path->empty()) throw FieldError(field, "needs the backward pass (backward)");
    return;
  }
  const auto refuse = [](const char* what) {
    throw FieldError("backward", fmt::format("the backward pass does not run with {} yet", what));
  };
  if (device != Device::cpu) refuse("the cuda device");
  if (kv_wire.on()) refuse("quantized K/V (--kv-wire, --kv-store)");
  if (select.on()) refuse("K/V selection (--kv-keep)");
  if (hier.on()) refuse("the hierarchical stages");
  if (moe.on()) refuse("the MoE stage");
  if (scheme == CommScheme::a2a_ring || scheme_auto) refuse("--hierarchy a2a-ring or auto");
  const std::vector<std::pair<const char*, const std::string*>> outs = {{"out", &out_path},
                                                                        {"lse_out", &lse_path},
                                                                        {"dq_out", &dq_path},
                                                                        {"dk_out", &dk_path},
                                                                        {"dv_out", &dv_path}};
  for (std::size_t i = 0; i < outs.size(); ++i) {
    for (std::size_t j = 0; j < i; ++j)
      if (!outs[i].second->empty() && !outs[j].second->empty() &&
          same_file(*outs[i].second, *outs[j].second))
        throw FieldError(outs[i].first,
                         fmt::format("'{}' is also the {} output; give each output its own file",
                                     *outs[i].second, outs[j].first));
    for (const InputFile* in : {&q, &k, &v, &do_file})
      if (!outs[i].second->empty() && !in->path.empty() && same_file(*outs[i].second, in->path))
        throw FieldError(outs[i].first, fmt::format("'{}' is the input file '{}', which would be "
                                                    "overwritten",
                                                    *outs[i].second, in->path));
  }
}

namespace job {

void check_execution(int repeats, int warmup, int64_t check_rows, int fail_rank) {
  if (repeats < 1) throw FieldError("repeats", fmt::format("expected >= 1, got {}", repeats));
  if (warmup < 0) throw FieldError("warmup", fmt::format("expected >= 0, got {}", warmup));
  if (check_rows < 0)
    throw FieldError("check_rows", fmt::format("expected >= 0, got {}", check_rows));
  if (fail_rank < -1)
    throw FieldError("fail_rank", fmt::format("expected -1 (none) or a rank, got {}", fail_rank));
}

}  // namespace job

std::string JobSpec::mask_description() const {
  return mask_text.empty() ? mask_fields(mask) : mask_text;
}

std::string JobSpec::shape_text() const {
  return fmt::format("N={} Nk={} B={} H={}/{} D={} {}", nq, nk, batch, hq, hkv, head_dim,
                     dtype_name(dtype));
}

std::string JobSpec::config_text() const {
  const std::string source = from_arrays() ? std::string("arrays")
                             : from_files  ? fmt::format("files:{}|{}|{}", q.path, k.path, v.path)
                                           : fmt::format("seed:{}", seed);
  return fmt::format(
      "shape:{};mask:{};layout:{};scale:{};source:{};repeats:{};warmup:{};verify:{};"
      "check-rows:{};fail-rank:{};out:{};lse-out:{};device:{};hier:{};route-out:{};moe:{};"
      "kv-wire:{};kv-store:{};kv-select:{} g{}{};keep-out:{};comm:{} w{};backward:{};docs:{}",
      shape_text(), mask_fields(mask), layout_name(layout), scale, source, repeats, warmup, verify,
      check_rows > 0, fail_rank, !out_path.empty() || arrays.o != nullptr,
      !lse_path.empty() || arrays.lse != nullptr, device_name(device), hier.describe(),
      !route_path.empty(),
      moe.on() ? fmt::format("{} {} {} min {} weights '{}' outputs {}{}{}", moe.describe(),
                             moe_priority_name(moe.priority), moe.capacity_factor, moe.min_capacity,
                             moe_weights, !moe_out_path.empty(), !moe_routing_path.empty(),
                             !moe_gates_path.empty())
               : std::string("off"),
      kv_wire.describe(), kv_store, select.describe(), select.group,
      select.asymmetric ? " asym" : "", !keep_path.empty(),
      scheme_auto ? std::string("auto on ") + (hardware ? hardware->name : "?")
                  : std::string(comm_scheme_name(scheme)),
      ranks_per_node,
      backward ? fmt::format("on dO '{}'{} seed {} outputs {}{}{}{} f32 {}", do_file.path,
                             arrays.d_o != nullptr ? " array" : "", seed, !dq_path.empty(),
                             !dk_path.empty(), !dv_path.empty(),
                             arrays.dq != nullptr || arrays.dk != nullptr || arrays.dv != nullptr,
                             grad_f32)
               : std::string("off"),
      docs_fields(*this));
}

}  // namespace ringattn
