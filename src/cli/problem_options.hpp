// The attention problem's options, declared once for every command:
//
//   --batch B          batch size                                   (default 1)
//   --seq-len N        query sequence length Nq [tokens]            (default 4096)
//   --kv-seq-len N     key/value length Nk [tokens], 0 = --seq-len  (default 0)
//   --heads H          query heads Hq                               (default 8)
//   --kv-heads H       key/value heads Hkv, 0 = --heads            (default 0)
//   --head-dim D       head dimension, a multiple of 8 in [8, 256]  (default 128)
//   --dtype T          storage dtype of q, k, v                     (default float32)
//   --scale S          softmax scale                                (default 1/sqrt(D))
//   --causal           causal mask, bottom-right aligned            (default false)
//
// A command takes the ones it needs (a ProblemOptionSet) and may take some as
// comma-separated lists (a sweep: bench-kernel's --seq-len 4096,16384,
// --causal both); a list keeps the name, default, unit and help. The parse
// functions return ProblemShapes: an AttentionProblem (mask built from the
// mask options and --causal) validated by AttentionProblem::validate(), its
// errors naming the option ("option '--kv-heads': ..."). Options a command
// does not take keep the shared default.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "cli/mask_options.hpp"
#include "cli/metrics.hpp"
#include "cli/options.hpp"
#include "ringattn/attention.hpp"

namespace ringattn::cli {

// The problem options, as bits of a set.
enum ProblemOption : unsigned {
  kOptBatch = 1u << 0,
  kOptSeqLen = 1u << 1,
  kOptKvSeqLen = 1u << 2,
  kOptHeads = 1u << 3,
  kOptKvHeads = 1u << 4,
  kOptHeadDim = 1u << 5,
  kOptDType = 1u << 6,
  kOptScale = 1u << 7,
  kOptCausal = 1u << 8,
};
// Sizes and dtype (what input files give instead).
inline constexpr unsigned kShapeOptions =
    kOptBatch | kOptSeqLen | kOptKvSeqLen | kOptHeads | kOptKvHeads | kOptHeadDim | kOptDType;
inline constexpr unsigned kAllProblemOptions = kShapeOptions | kOptScale | kOptCausal;

// Which problem options a command takes, and which of those as lists
// (seq-len, head-dim, dtype and causal may be lists; causal also takes "both").
struct ProblemOptionSet {
  unsigned take = kAllProblemOptions;
  unsigned lists = 0;
  bool masks = true;  // the command also declares mask_option_specs()
};

// One problem: the library's description plus the mask options it was built
// from (with causal), which commands print and record.
struct ProblemShape {
  AttentionProblem problem;  // problem.mask == masks.build(problem.nq, problem.nk)
  MaskOptions masks;         // sparse parts and causal

  bool causal() const { return masks.causal; }
  // Rebuilds problem.mask after nq, nk or masks changed.
  void rebuild_mask() {
    problem.mask = masks.build(problem.nq, problem.nk);
    problem.hier = masks.hier;
    masks.attach_documents(&problem);
  }
  // "causal", "full", or the sparse description ("causal + window 4095/0 + 4 sinks").
  std::string mask_str() const;
  // "B=1 Nq=4096 Nk=4096 Hq=8 Hkv=8 D=128 float32 causal"
  std::string str() const;
};

// "causal", "full", or MaskOptions::describe() when the mask is sparse.
std::string mask_label(const MaskOptions& m);

// The specs of the options in `set`, in the order batch, seq-len, kv-seq-len,
// heads, kv-heads, head-dim, dtype, scale, causal.
std::vector<OptionSpec> problem_option_specs(ProblemOptionSet set = {});
// Inserts `specs` into `options` right after the option named `after` ("": at
// the front), so a command's --help lists them where they belong.
void insert_options(std::vector<OptionSpec>* options, const std::string& after,
                    std::vector<OptionSpec> specs);

// Every problem of the sweep (one unless `set.lists` has options), in the order
// dtype, causal, head-dim, seq-len (the last varies fastest), each validated
// (HeadDims::kernel). Reads the mask options when set.masks; throws UsageError
// naming the option.
std::vector<ProblemShape> parse_problem_sweep(const ParsedOptions& opt, ProblemOptionSet set = {});
// The one problem of a command without list options.
ProblemShape parse_problem_options(const ParsedOptions& opt, ProblemOptionSet set = {});

// The values of --seq-len and --kv-seq-len where the documents gave them (for
// ParsedOptions::command_line).
std::map<std::string, std::string> derived_sizes(const ParsedOptions& opt,
                                                 const AttentionProblem& p);

// The problem's keys of a metrics record, the same in every command's records
// (docs/METRICS.md): b, nq, nk, hq, hkv, d, dtype, causal, mask.
JsonObject& add_shape_keys(JsonObject& r, const AttentionProblem& p, bool causal,
                           const std::string& mask);
// {"command": command, <shape keys>}.
JsonObject shape_record(const std::string& command, const ProblemShape& shape);

}  // namespace ringattn::cli
