// The float64 reference of the MoE stage (semantics: ringattn/moe.hpp), written
// straight from the text and independently of the stage: one process, every
// token and every expert, float64 throughout (inputs are float32 values).
// For tests and checks on small problems: it holds the whole [T, d_model] input.
#pragma once

#include <cstdint>
#include <vector>

#include "ringattn/moe.hpp"

namespace ringattn {

struct MoeReferenceResult {
  int width = 0;                         // columns of routing / gates
  std::vector<int32_t> routing;          // [T, width], as the stage's routing output
  std::vector<double> gates;             // [T, width], 0 where routing is -1
  std::vector<int64_t> requested, load;  // [E]
  int64_t dropped = 0, unrouted = 0;
  int64_t capacity = 0;  // C (INT64_MAX when dropless)
  double aux_loss = 0, z_loss = 0;
  // The smallest gap, over every decision routing made, between the last
  // score taken and the first one passed over (token/chunk: p + bias of the
  // k-th vs the (k+1)-th expert; expert choice: the C-th vs the (C+1)-th
  // token of each expert), relative to 1; +inf when no decision compared
  // scores. Tests need it above float32 rounding for exact id comparisons.
  double min_margin = 0;
  std::vector<float> next_bias;  // moe_next_bias(w.bias, requested, c.bias_rate)
  // y rows: every token [T, d_model] when `rows` was null, else the listed
  // tokens in that order [rows.size(), d_model].
  std::vector<double> y;
};

// x [T, d_model] float32 in global token order; T = sequences * seq_len
// (seq_len: the chunk policy's sequence length; chunks never cross sequences).
// w holds every expert (first 0, count E). rows: the tokens whose y to compute
// (routing is always global); null: all.
MoeReferenceResult reference_moe(const MoeConfig& c, const float* x, int64_t tokens,
                                 int64_t d_model, int64_t seq_len, const MoeWeights& w,
                                 const std::vector<int64_t>* rows = nullptr);

}  // namespace ringattn
