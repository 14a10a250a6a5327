// The backend choice of the multi-rank commands (cli/backend.hpp).
#include "cli/backend.hpp"

#include <fmt/format.h>

#include <cstdio>

#include "ringattn/comm_mpi.hpp"

namespace ringattn::cli {

OptionSpec backend_option_spec() {
  return OptionSpec::choice("backend", "auto", {"auto", "local", "mpi"},
                            "ranks: local = threads of this process, mpi = one per MPI process "
                            "(auto: mpi when started by an MPI launcher, else local)");
}

OptionSpec ranks_local_option_spec() {
  return OptionSpec::integer("ranks-local", "", "in-process ranks P (the local backend)")
      .positive()
      .shown_default("1");
}

Backend choose_backend(const ParsedOptions& opt) {
  const std::string& name = opt.text("backend");
  const bool ranks_given = opt.has("ranks-local");
  if (name == "mpi") {
    if (ranks_given)
      throw UsageError(
          "option '--ranks-local': applies to the local backend; with --backend mpi the "
          "launcher sets the ranks (mpirun -np P)");
    if (!mpi_built())
      throw UsageError(
          "option '--backend mpi': this ringattn was built without MPI (-DRINGATTN_MPI=OFF); "
          "rebuild with MPI, or use --ranks-local P for in-process ranks");
    return {true, 0};
  }
  const int local = ranks_given ? opt.integer_int("ranks-local") : 1;
  if (name == "local" || ranks_given || !launched_by_mpi()) return {false, local};
  if (!mpi_built()) {
    fmt::print(stderr,
               "ringattn: warning: started by an MPI launcher, but this ringattn was built "
               "without MPI: each process runs its own in-process job\n");
    return {false, local};
  }
  return {true, 0};
}

}  // namespace ringattn::cli
