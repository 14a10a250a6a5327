// The minimal build has no BLAS: the MoE stage's GEMMs say so (stages/moe_ffn.hpp).
#include "ringattn/error.hpp"
#include "stages/moe_ffn.hpp"

namespace ringattn::moe {
namespace {
[[noreturn]] void no_blas() {
  throw Error("moe: this build has no BLAS (RINGATTN_MINIMAL); the MoE stage needs the full build");
}
}  // namespace

void set_blas_threads(int /*threads*/) {}
void gemm(const float*, const float*, float*, int64_t, int64_t, int64_t) {
  no_blas();
}
void expert_ffn(const MoeWeights&, int, const float*, int64_t, float*) {
  no_blas();
}

}  // namespace ringattn::moe
