// The configuration check of a job: every rank hashes JobSpec::config_text()
// and the ranks allgather the hashes (ringattn/job.hpp).
#include <fmt/format.h>

#include "job/rank_guard.hpp"
#include "ringattn/error.hpp"
#include "ringattn/job.hpp"

namespace ringattn {
namespace {

constexpr uint64_t kFnvOffset = 0xcbf29ce484222325ull;
constexpr uint64_t kFnvPrime = 0x100000001b3ull;

}  // namespace

uint64_t config_hash(const std::string& text) {
  uint64_t h = kFnvOffset;
  for (const char c : text) {
    h ^= static_cast<unsigned char>(c);
    h *= kFnvPrime;
  }
  return h;
}

std::string config_mismatch(const std::vector<uint64_t>& hashes) {
  for (std::size_t r = 1; r < hashes.size(); ++r)
    if (hashes[r] != hashes[0])
      return fmt::format(
          "ranks disagree on the configuration (rank 0 hash {:016x}, rank {} hash {:016x}); "
          "give every rank the same options and input files",
          hashes[0], r, hashes[r]);
  return "";
}

namespace job {

void check_same_config(Communicator& comm, const std::string& config_text) {
  const uint64_t mine = config_hash(config_text);
  std::vector<uint64_t> all(static_cast<std::size_t>(comm.size()));
  comm.allgather(&mine, sizeof(mine), all.data());
  const std::string mismatch = config_mismatch(all);
  if (!mismatch.empty()) throw Error(mismatch);
}

}  // namespace job
}  // namespace ringattn
