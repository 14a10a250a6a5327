// Mixture-of-experts routing: which experts see which tokens, how many they
// take, and how their outputs come back. The semantics every implementation
// (the stage, ringattn/moe_stage.hpp) and the float64 reference
// (ringattn/moe_reference.hpp) follow.
//
// Tokens: T rows x_t of width d_model (the attention output with heads
// concatenated, d_model = Hq D, or a [T, d_model] array), in global token
// order t = b N + position (batch-major). Router W_g [d_model, E]; expert e is
// a SwiGLU FFN  y_e(x) = (silu(x W1_e) * (x W3_e)) W2_e,  silu(a) = a / (1 + e^-a),
// W1_e, W3_e [d_model, d_ff], W2_e [d_ff, d_model].
//
//   logits  l_t = x_t W_g (E values);  p_t = softmax(l_t)  (router probabilities)
//   C       capacity per expert, in tokens: ceil(k cf T / E), at least
//           min_capacity; cf = 0: unlimited (dropless)
//
// Policies:
//   token   (default) token t chooses the k experts with the largest
//           p_t,e + bias_e (ties: lowest expert index), in that order (choice
//           j = 0 .. k-1); its gates are p_t,e renormalised over the k chosen
//           (bias only selects, it never weights). Capacity: each expert
//           accepts assignments in priority order while it holds fewer than C:
//             order (default, GShard): every first choice before any second
//               choice, each choice in global token order: key (j, t)
//             score: by p_t,e descending, then (j, t)
//   chunk   the same as token, for whole chunks: chunk i of a sequence is its
//           tokens [i c, (i + 1) c) (the last one may be shorter; chunks never
//           cross sequences); its representation is the mean of its rows, its
//           logits, choices and gates are those of that mean, and every token
//           of the chunk takes them. Capacity counts tokens: in priority order
//           ((j, chunk) or p descending then (j, chunk)), an expert accepts a
//           chunk whole if it still fits (held + chunk length <= C), else drops
//           it whole, and goes on (a later, shorter chunk may still fit).
//   expert  (Zhou et al. 2022) each expert takes the C tokens with the largest
//           p_t,e (ties: lowest t); gate = p_t,e (not renormalised). A token
//           may be taken by 0 .. E experts. No bias; cf > 0.
//
// Output: y_t = sum over the token's accepted assignments of gate * y_e(x_t),
// accumulated in choice order (expert choice: in routing-output order). A
// dropped assignment contributes zero (its gate is not redistributed); a token
// with every assignment dropped gets y_t = 0 (a residual connection around
// the layer, outside this stage, keeps it).
// Routing output R [T, width] int32 with width = k (token, chunk) or E
// (expert): token/chunk: the chosen experts in choice order, -1 where that
// assignment was dropped; expert: the experts that took the token, by gate
// descending then expert index, -1 padded. Gates G [T, width] float32: the
// weight each entry got, 0 where R is -1.
//
// Statistics (global): requested_e (assignments before capacity; expert
// choice: those taken), load_e (accepted), dropped = sum requested - sum load
// (expert choice: 0), unrouted = tokens with no accepted assignment.
//   aux loss  E sum_e f_e P_e, f_e = requested_e / sum requested, P_e = mean_t
//             p_t,e (1.0 for uniform routing; Switch / GShard)
//   z loss    mean_t (logsumexp_e l_t,e)^2 (ST-MoE)
//   (chunk: every token counts its chunk's p and logits.)
// Balance bias (DeepSeek-V3, auxiliary-loss free; token and chunk choice):
// after a routing pass, bias_e += rate * sign(mean_e requested - requested_e)
// (sign 0 for 0); the next pass selects with the new bias.
//
// Expert parallelism over P ranks: the experts are split into P contiguous
// groups as evenly as possible: rank r holds [floor(r E / P), floor((r+1) E / P)).
// When P divides E every rank holds E / P; otherwise some hold one more (and do
// more FFN work). E < P is an error: a rank without an expert would idle.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ringattn {

enum class MoePolicy : uint8_t { token, chunk, expert };
enum class MoePriority : uint8_t { order, score };

std::string moe_policy_name(MoePolicy p);              // "token", "chunk", "expert"
MoePolicy parse_moe_policy(const std::string& s);      // throws FieldError("moe_policy")
std::string moe_priority_name(MoePriority p);          // "order", "score"
MoePriority parse_moe_priority(const std::string& s);  // throws FieldError("moe_priority")

struct MoeConfig {
  int experts = 0;   // E; 0: no MoE stage
  int topk = 2;      // k (expert choice: the average experts per token in C)
  int64_t d_ff = 0;  // expert hidden width
  MoePolicy policy = MoePolicy::token;
  MoePriority priority = MoePriority::order;
  double capacity_factor = 1.25;  // cf; 0: dropless
  int64_t min_capacity = 4;
  int64_t chunk = 0;     // chunk policy: tokens per chunk c
  double bias_rate = 0;  // balance bias update per pass (0: off)

  bool on() const { return experts > 0; }
  // Columns of the routing output: k, or E for expert choice.
  int width() const { return policy == MoePolicy::expert ? experts : topk; }
  // "E=8 k=2 token cf=1.25"
  std::string describe() const;
};

// C for T global tokens (INT64_MAX when dropless).
int64_t moe_capacity(const MoeConfig& c, int64_t tokens);

// Throws FieldError("moe_experts" | "moe_topk" | "moe_ffn" | "moe_capacity_factor" |
// "moe_min_capacity" | "moe_chunk" | "moe_bias_rate" | "moe_policy", ...) when the
// configuration cannot run on `ranks` ranks (E >= P, 1 <= k <= E, d_ff >= 1, cf >= 0
// finite, min capacity >= 0, chunk >= 1 exactly with the chunk policy, no bias with
// expert choice, expert choice needs cf > 0).
void validate_moe(const MoeConfig& c, int ranks);

// The experts rank r of P holds: [first, first + count).
struct ExpertRange {
  int first = 0, count = 0;
};
ExpertRange moe_experts_of(int experts, int ranks, int rank);
int moe_owner(int experts, int ranks, int expert);  // the rank that holds `expert`

// Host float32 weights of the router and of the experts [first, first + count).
struct MoeWeights {
  int64_t d_model = 0, d_ff = 0;
  int experts = 0;  // E (the router's width)
  int first = 0, count = 0;
  std::vector<float> router;  // [d_model, E]
  std::vector<float> bias;    // [E] selection bias (zeros unless set)
  std::vector<float> w1, w3;  // [count, d_model, d_ff]
  std::vector<float> w2;      // [count, d_ff, d_model]

  const float* w1_of(int e) const;  // expert e (global index, held here)
  const float* w3_of(int e) const;
  const float* w2_of(int e) const;
};

// Generated from `seed` by global index (ringattn/synth.hpp; the same values for
// every rank count): router N(0, 1) / sqrt(d_model), W1 and W3 N(0, 1) /
// sqrt(d_model), W2 N(0, 1) / sqrt(d_ff); bias zero.
MoeWeights moe_generate_weights(uint64_t seed, int64_t d_model, int64_t d_ff, int experts,
                                ExpertRange held);

// Read from a directory: router.npy [d_model, E], w1.npy and w3.npy
// [E, d_model, d_ff], w2.npy [E, d_ff, d_model], all float32, and optionally
// bias.npy [E] float32; only the held experts' slices are read. d_ff comes from
// w1.npy. Throws Error naming the file and the expected shape.
MoeWeights moe_load_weights(const std::string& dir, int64_t d_model, int experts, ExpertRange held);

// Generated tokens X [T, d_model] rows [row0, row0 + rows): N(0, 1) by global index.
void moe_generate_tokens(uint64_t seed, int64_t d_model, int64_t row0, int64_t rows, float* x);

// The balance bias after a pass (see above).
std::vector<float> moe_next_bias(const std::vector<float>& bias,
                                 const std::vector<int64_t>& requested, double rate);

}  // namespace ringattn
