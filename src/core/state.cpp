#include "ringattn/state.hpp"

#include <fmt/format.h>

#include <cmath>

#include "ringattn/error.hpp"

namespace ringattn {

void merge_states(const StateView& a, const StateView& b) {
  if (a.batch != b.batch || a.tokens != b.tokens || a.heads != b.heads || a.head_dim != b.head_dim)
    throw Error(fmt::format("merge_states: shape mismatch [{}, {}, {}, {}] vs [{}, {}, {}, {}]",
                            a.batch, a.tokens, a.heads, a.head_dim, b.batch, b.tokens, b.heads,
                            b.head_dim));
  for (int64_t bi = 0; bi < a.batch; ++bi)
    for (int64_t h = 0; h < a.heads; ++h)
      for (int64_t n = 0; n < a.tokens; ++n) {
        const int64_t row = ((bi * a.tokens + n) * a.heads + h) * a.head_dim;
        const int64_t li = (bi * a.heads + h) * a.tokens + n;
        merge_row(a.o + row, a.lse + li, b.o + row, b.lse[li], a.head_dim);
      }
}

void clear_state(const StateView& s) {
  const int64_t rows = s.batch * s.tokens * s.heads;
  for (int64_t i = 0; i < rows * s.head_dim; ++i) s.o[i] = 0.0f;
  for (int64_t i = 0; i < rows; ++i) s.lse[i] = -INFINITY;
}

}  // namespace ringattn
