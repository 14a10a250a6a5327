// Packed variable-length sequences: documents of any length in one sequence,
// described by cumulative offsets (flash-attn's cu_seqlens convention).
//
//   q = [0, l_0, l_0 + l_1, ..., Nq]     count + 1 offsets, non-decreasing
//   k = the same for the keys (cross-attention), or empty: k = q
//
// Document i holds queries [q[i], q[i + 1]) and keys [k[i], k[i + 1]); the
// mask is block-diagonal over them (ringattn/mask.hpp, Documents), with
// causal, window, dilation and sinks applied inside each document. An empty
// document (two equal offsets) holds no tokens: allowed, as flash-attn allows
// it, and it changes nothing. Global ranges stay inside their document unless
// global_across is set.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ringattn {

struct DocOffsets {
  std::vector<int64_t> q;
  std::vector<int64_t> k;  // empty: the same as q
  bool global_across = false;

  int64_t count() const { return q.empty() ? 0 : static_cast<int64_t>(q.size()) - 1; }
  const std::vector<int64_t>& keys() const { return k.empty() ? q : k; }
  bool cross() const { return !k.empty(); }
};

// [0, l_0, l_0 + l_1, ...]; throws FieldError(field) for a negative length.
std::vector<int64_t> offsets_from_lengths(const std::vector<int64_t>& lengths,
                                          const std::string& field);
// Checks the offsets of a sequence of n tokens: at least 2 entries, starting at
// 0, non-decreasing, ending at n. Throws FieldError(field, ...) naming the
// first offending entry and the expected form.
void check_offsets(const std::vector<int64_t>& off, int64_t n, const std::string& field);
// "1200 documents of 1 to 262144 tokens (mean 873)"
std::string describe_documents(const DocOffsets& d);
// A 64-bit hash of the offsets (and global_across), for the job's config check.
uint64_t documents_hash(const DocOffsets& d);

}  // namespace ringattn
