// The inputs of one rank of `ringattn run`: q [B, n_q, Hq, D] and k, v
// [B, n_kv, Hkv, D] in the run's dtype, holding the rank's tokens in its
// layout's local order (n_q = q_layout.tokens(rank), likewise for K/V).
//
// Generated inputs come from ringattn/synth.hpp, indexed by GLOBAL position,
// so they are the same for every rank count and layout. File inputs are read
// with read_npy_slice, each rank reading only its own tokens in windows of at
// most kReadWindowRows rows (a striped segment reads the rows its tokens span
// and keeps every P-th), so memory stays O(N / P). Non-finite values are
// reported with their index in the global file.
#pragma once

#include "ringattn/job.hpp"
#include "ringattn/layout.hpp"
#include "ringattn/synth.hpp"
#include "ringattn/tensor.hpp"

namespace ringattn::job {

// Rows read from a file per read_npy_slice call (bounds the transient buffer).
inline constexpr int64_t kReadWindowRows = 1024;

struct RankInputs {
  Tensor q, k, v;
};

// This rank's tokens of the run's q, k and v.
RankInputs load_rank_inputs(const JobSpec& cfg, const Layout& q_layout, const Layout& kv_layout,
                            int rank);

// The whole problem in token order (for --verify on rank 0): O(N) memory.
RankInputs load_full_inputs(const JobSpec& cfg);

// This rank's dO [B, n_q, Hq, D] float32 (JobSpec::backward): read from
// cfg.do_file (converted from its dtype) or generated; and the whole of it.
Tensor load_rank_grad_output(const JobSpec& cfg, const Layout& q_layout, int rank);
Tensor load_full_grad_output(const JobSpec& cfg);

// Tokens [first, first + n) of batch entry b of the global q, k, v or dO
// (which), as stored, in double: [n, H, D].
std::vector<double> load_global_rows(const JobSpec& cfg, SynthStream which, int64_t b,
                                     int64_t first, int64_t n);

}  // namespace ringattn::job
