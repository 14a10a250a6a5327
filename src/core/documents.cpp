#include "ringattn/documents.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "ringattn/error.hpp"

namespace ringattn {

std::vector<int64_t> offsets_from_lengths(const std::vector<int64_t>& lengths,
                                          const std::string& field) {
  std::vector<int64_t> off(lengths.size() + 1, 0);
  for (std::size_t i = 0; i < lengths.size(); ++i) {
    if (lengths[i] < 0)
      throw FieldError(
          field, fmt::format("document {} has length {}; expected lengths >= 0", i, lengths[i]));
    off[i + 1] = off[i] + lengths[i];
  }
  return off;
}

void check_offsets(const std::vector<int64_t>& off, int64_t n, const std::string& field) {
  const std::string form = "cumulative offsets [0, l0, l0 + l1, ..., N], non-decreasing";
  if (off.size() < 2)
    throw FieldError(field, fmt::format("{} offsets; expected at least 2 ({})", off.size(), form));
  if (off.front() != 0)
    throw FieldError(field,
                     fmt::format("starts at {}; expected {} starting at 0", off.front(), form));
  for (std::size_t i = 1; i < off.size(); ++i)
    if (off[i] < off[i - 1])
      throw FieldError(field, fmt::format("offset {} ({}) is below offset {} ({}); expected {}", i,
                                          off[i], i - 1, off[i - 1], form));
  if (off.back() != n)
    throw FieldError(field, fmt::format("ends at {} but the sequence has {} tokens; expected {} "
                                        "ending at {}",
                                        off.back(), n, form, n));
}

std::string describe_documents(const DocOffsets& d) {
  if (d.count() == 0) return "no documents";
  int64_t lo = d.q[1] - d.q[0], hi = lo;
  for (int64_t i = 0; i < d.count(); ++i) {
    const int64_t l = d.q[i + 1] - d.q[i];
    lo = std::min(lo, l), hi = std::max(hi, l);
  }
  return fmt::format("{} document{} of {} to {} tokens (mean {:.0f}){}", d.count(),
                     d.count() == 1 ? "" : "s", lo, hi, double(d.q.back()) / double(d.count()),
                     d.global_across ? ", global tokens across documents" : "");
}

uint64_t documents_hash(const DocOffsets& d) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a over the offsets
  auto mix = [&](uint64_t x) {
    for (int b = 0; b < 8; ++b) h = (h ^ ((x >> (8 * b)) & 0xff)) * 1099511628211ull;
  };
  for (const int64_t x : d.q) mix(static_cast<uint64_t>(x));
  mix(0x5eed);
  for (const int64_t x : d.k) mix(static_cast<uint64_t>(x));
  mix(d.global_across ? 1 : 0);
  return h;
}

}  // namespace ringattn
