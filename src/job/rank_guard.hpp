// What every kind of job does around one rank's work (internal to the job
// library): the same configuration on every rank, and an error on any rank
// ending the whole job without leftovers.
#pragma once

#include <cstdint>
#include <cstdio>
#include <exception>
#include <functional>
#include <string>

#include "ringattn/comm.hpp"
#include "ringattn/tempfiles.hpp"

namespace ringattn::job {

// What a failed job's processes exit with under MPI.
inline constexpr int kExitFailure = 1;

// Throws FieldError("repeats" | "warmup" | "check_rows" | "fail_rank") on values no job runs.
void check_execution(int repeats, int warmup, int64_t check_rows, int fail_rank);

// Throws Error when the ranks' hashes of `config_text` differ (config_mismatch).
void check_same_config(Communicator& comm, const std::string& config_text);

// Runs `body` as this rank's part of a job: temporaries are removed by the
// signal handlers (MPI: a signal's stderr line names the rank; in-process
// ranks share the process, whose line names none). An exception removes
// this process's temporaries and ends the job with comm.abort(describe(e));
// in-process ranks rethrow it.
template <class F>
auto run_guarded(Communicator& comm, F&& body,
                 const std::function<std::string(const std::exception&)>& describe)
    -> decltype(body()) {
  install_temp_cleanup_handlers();
  if (comm.backend() != "local") set_signal_context(comm.rank());
  try {
    return body();
  } catch (const std::exception& e) {
    // Locals are gone (uncommitted outputs removed); make sure before the job ends by abort.
    remove_registered_temps();
    std::fflush(stdout);
    comm.abort(describe ? describe(e) : std::string(e.what()), kExitFailure);
    throw;  // not reached under MPI; in-process ranks end with the first error
  }
}

}  // namespace ringattn::job
