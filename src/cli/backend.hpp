// Where a multi-rank command's ranks run (`run`, `moe`): in-process ranks
// (--ranks-local P, threads of this process) or one rank per MPI process
// (started by mpirun/mpiexec/srun), chosen by --backend auto|local|mpi.
#pragma once

#include <exception>
#include <string>

#include "cli/options.hpp"
#include "ringattn/comm.hpp"
#include "ringattn/error.hpp"

namespace ringattn::cli {

struct Backend {
  bool mpi = false;
  int local_ranks = 1;  // the local backend's P
};

// The --backend and --ranks-local options.
OptionSpec backend_option_spec();
OptionSpec ranks_local_option_spec();

// --backend auto: MPI when started by an MPI launcher (and --ranks-local is not given),
// else in-process ranks. Throws UsageError for --ranks-local with --backend mpi.
Backend choose_backend(const ParsedOptions& opt);

// Under MPI every process resolves its own configuration with `make`; a failure
// there ends the job (comm.abort) with the message and exit status 2 (UsageError)
// or 1 (anything else), reported with the rank like any other.
template <class F>
auto resolve_or_abort(Communicator& comm, F&& make) -> decltype(make()) {
  int code = kExitFailure;
  std::string message;
  try {
    return make();
  } catch (const UsageError& e) {
    code = kExitUsage;
    message = e.what();
  } catch (const std::exception& e) {
    message = e.what();
  }
  comm.abort(message, code);
  throw Error(message);  // not reached; GCC does not apply [[noreturn]] to virtual calls
}

}  // namespace ringattn::cli
