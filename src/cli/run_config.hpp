// The options of `ringattn run` and the configuration they resolve to.
//
// RunConfig is everything a rank needs to take part in the job: the global
// problem (sizes, dtype, mask, layout), where the inputs come from (a seed, or
// global .npy files of which each rank reads only its own tokens), the
// outputs, and how to run (repeats, threads, ISA). Every process builds it
// from its own command line; the ranks then compare config_text() hashes
// (cli/run_hash.hpp) before any work.
#pragma once

#include <cstdint>
#include <string>

#include "cli/mask_options.hpp"
#include "cli/options.hpp"
#include "ringattn/kernel.hpp"
#include "ringattn/layout.hpp"
#include "ringattn/mask.hpp"

namespace ringattn::cli {

// Array ranks the input files may have: [B, N, H, D], or [N, H, D] with B = 1.
inline constexpr int kNdimBatch = 4;
inline constexpr int kNdimNoBatch = 3;

// A global input file: q [B, Nq, Hq, D] or k/v [B, Nk, Hkv, D] (or 3-d).
struct InputFile {
  std::string path;
  int ndim = kNdimBatch;
  int axis() const { return ndim == kNdimBatch ? 1 : 0; }  // the token axis
};

struct RunConfig {
  // The global problem.
  int64_t batch = 1, nq = 0, nk = 0, hq = 1, hkv = 1, head_dim = 0;
  DType dtype = DType::f32;
  bool causal = false;
  MaskOptions masks;                           // sparse parts (and causal again)
  LayoutKind layout = LayoutKind::contiguous;  // resolved (never "auto")
  float scale = 0.0f;                          // 0: 1/sqrt(head_dim)

  // Inputs: generated from `seed`, or read from files.
  bool from_files = false;
  InputFile q, k, v;
  uint64_t seed = 0;

  // Outputs (empty: not written). O [B, Nq, Hq, D] in `dtype`, LSE [B, Hq, Nq] float32,
  // without the batch axis when q is a 3-d file.
  std::string out_path, lse_path, metrics_path;

  // Execution.
  int repeats = 1, warmup = 0;
  bool verify = false;
  int64_t check_rows = 0;  // float64 reference on this many sampled query rows (0: off)
  int fail_rank = -1;      // testing: this rank throws after its first ring pass
  int threads = 0;         // kernel threads per rank; 0: automatic (see rank_threads)
  Isa isa = Isa::automatic;
  bool cuda = false;         // --device cuda
  std::string command_line;  // `ringattn run ...` with every effective option

  Mask mask() const { return masks.build(nq, nk); }
  bool batched_output() const { return !from_files || q.ndim == kNdimBatch; }
  // Whether rank 0 collects every rank's rows after the ring (outputs or --verify).
  bool gathers() const {
    return !out_path.empty() || !lse_path.empty() || verify || check_rows > 0;
  }
  // "N=16384 Nk=16384 B=1 H=8/2 D=128 float32"
  std::string shape_text() const;
  // Canonical text of every value that affects the computation or the message
  // protocol between ranks (not threads, ISA or file names of the outputs).
  std::string config_text() const;
};

// The `run` command's options (without the common ones).
CommandSpec run_spec();

// Resolves and validates the options; with --q/--k/--v reads the three .npy
// headers (not the data) and checks their shapes against each other. Throws
// UsageError or Error with one line naming the option or file.
RunConfig make_run_config(const ParsedOptions& opt);

// Only the problem: sizes (options or file headers), dtype, causal, mask and
// layout; reads none of the execution options (for `ringattn plan`, whose spec
// keeps run's problem options: batch, seq-len, kv-seq-len, heads, kv-heads,
// head-dim, dtype, q, k, v, causal, layout and the mask options).
RunConfig make_problem_config(const ParsedOptions& opt);

}  // namespace ringattn::cli
