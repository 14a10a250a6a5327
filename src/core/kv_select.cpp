#include "ringattn/kv_select.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "ringattn/error.hpp"

namespace ringattn {

std::string KvSelect::describe() const {
  if (!on()) return "off";
  return fmt::format("keep {:g}{}, rest {}, per {}", keep,
                     keep_recent > 0 ? fmt::format(" + recent {}", keep_recent) : std::string(),
                     keep_rest_name(rest), keep_per_name(per));
}

int64_t keep_count(double p, int64_t nk) {
  if (nk <= 0 || !(p > 0)) return 0;
  const double x = p * double(nk);
  const double r = std::round(x);
  const double n = std::fabs(x - r) <= 1e-9 * std::max(1.0, x) ? r : std::ceil(x);
  return std::clamp<int64_t>(static_cast<int64_t>(n), 0, nk);
}

void validate_select(const KvSelect& s, int64_t head_dim) {
  if (!(s.keep >= 0) || s.keep > 1)
    throw FieldError("kv_keep",
                     fmt::format("expected a fraction p in (0, 1] (0: off), got {}", s.keep));
  if (s.keep_recent < 0)
    throw FieldError("kv_keep_recent",
                     fmt::format("expected a number of keys >= 0, got {}", s.keep_recent));
  if (s.on() && s.rest == KeepRest::int4) validate_quant(s.rest_format(), head_dim);
}

const char* keep_rest_name(KeepRest r) {
  return r == KeepRest::int4 ? "int4" : "drop";
}
const char* keep_per_name(KeepPer p) {
  return p == KeepPer::head ? "head" : "kv-head";
}

KeepRest parse_keep_rest(const std::string& s, const std::string& field) {
  if (s == "drop") return KeepRest::drop;
  if (s == "int4") return KeepRest::int4;
  throw FieldError(field, fmt::format("expected drop or int4, got '{}'", s));
}

KeepPer parse_keep_per(const std::string& s, const std::string& field) {
  if (s == "kv-head") return KeepPer::kv_head;
  if (s == "head") return KeepPer::head;
  throw FieldError(field, fmt::format("expected kv-head or head, got '{}'", s));
}

void select_keys(const double* imp, int64_t nk, int64_t count, int64_t sinks, int64_t recent,
                 uint8_t* keep) {
  std::fill(keep, keep + nk, uint8_t{0});
  count = std::clamp<int64_t>(count, 0, nk);
  if (count > 0) {
    std::vector<int64_t> idx(static_cast<std::size_t>(nk));
    std::iota(idx.begin(), idx.end(), int64_t{0});
    // Larger importance first, then the lower index: a strict total order.
    // (A NaN counts as -inf, so the order stays total.)
    const auto key = [imp](int64_t j) { return std::isnan(imp[j]) ? -INFINITY : imp[j]; };
    const auto before = [&key](int64_t a, int64_t b) {
      const double x = key(a), y = key(b);
      return x > y || (x == y && a < b);
    };
    std::nth_element(idx.begin(), idx.begin() + (count - 1), idx.end(), before);
    for (int64_t i = 0; i < count; ++i) keep[idx[static_cast<std::size_t>(i)]] = 1;
  }
  for (int64_t j = 0; j < std::min(sinks, nk); ++j) keep[j] = 1;
  for (int64_t j = std::max<int64_t>(nk - recent, 0); j < nk; ++j) keep[j] = 1;
}

}  // namespace ringattn
