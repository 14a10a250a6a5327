// The configuration check of `ringattn run`: every rank hashes the canonical
// text of its configuration (every value that affects the computation or the
// message protocol), the ranks allgather the hashes, and any difference stops
// the job before it can deadlock or compute garbage. Kept free of MPI and of
// the options layer so that the comparison is unit-tested directly.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ringattn::cli {

// 64-bit FNV-1a of the bytes of `text`.
uint64_t config_hash(const std::string& text);

// "" when every hash equals hashes[0]; otherwise the error message naming
// rank 0 and the first rank that differs:
//   ranks disagree on the configuration (rank 0 hash 1a2b..., rank 2 hash 3c4d...)
std::string config_mismatch(const std::vector<uint64_t>& hashes);

}  // namespace ringattn::cli
