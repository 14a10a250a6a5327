// Host-only parts of the NCCL backend, built in every configuration (their
// tests need no GPU): device selection, sharing rank 0's bytes, and the
// choice between destroying and aborting the communicator.
#include <fmt/format.h>

#include <cstdlib>
#include <cstring>

#include "ringattn/comm_nccl.hpp"
#include "ringattn/error.hpp"

namespace ringattn {

int select_device(int local_rank, int device_count,
                  const std::optional<std::string>& env_override) {
  if (device_count < 1) throw Error("no CUDA device to run on");
  if (env_override && !env_override->empty()) {
    char* end = nullptr;
    const long d = std::strtol(env_override->c_str(), &end, 10);
    if (*end != '\0' || d < 0 || d >= device_count)
      throw Error(fmt::format("RINGATTN_DEVICE='{}': expected a device number 0..{}", *env_override,
                              device_count - 1));
    return static_cast<int>(d);
  }
  if (local_rank < 0) throw Error(fmt::format("node-local rank {} is negative", local_rank));
  return local_rank % device_count;
}

int select_device_from_env(int local_rank, int device_count) {
  const char* e = std::getenv("RINGATTN_DEVICE");
  return select_device(local_rank, device_count,
                       e != nullptr ? std::optional<std::string>(e) : std::nullopt);
}

NcclTeardown nccl_teardown(bool failed, int uncaught_at_construction, int uncaught_now) {
  return failed || uncaught_now > uncaught_at_construction ? NcclTeardown::abort
                                                           : NcclTeardown::destroy;
}

std::vector<char> share_from_root(Communicator& comm, const void* root_bytes, std::size_t bytes) {
  std::vector<char> mine(bytes, 0);
  if (comm.rank() == 0 && bytes > 0) std::memcpy(mine.data(), root_bytes, bytes);
  std::vector<char> all(bytes * static_cast<std::size_t>(comm.size()));
  comm.allgather(mine.data(), bytes, all.data());
  return {all.begin(), all.begin() + static_cast<std::ptrdiff_t>(bytes)};
}

}  // namespace ringattn
