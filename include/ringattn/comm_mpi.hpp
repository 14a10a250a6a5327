// The MPI backend of the communicator (Open MPI). Present in every build:
// where ringattn was built without MPI, mpi_built() is false and make_mpi()
// throws an Error saying so.
#pragma once

#include <memory>

#include "ringattn/comm.hpp"

namespace ringattn {

// Whether this binary has the MPI backend.
bool mpi_built();

// Whether this process was started by an MPI launcher (mpirun/mpiexec/srun):
// looks at the launchers' environment variables (OMPI_COMM_WORLD_SIZE,
// PMIX_RANK, PMI_SIZE, ...).
bool launched_by_mpi();

// Initialises MPI (MPI_THREAD_FUNNELED) on first use and returns the world
// communicator; MPI is finalised at process exit. Errors on MPI calls abort
// the job (MPI_ERRORS_ARE_FATAL), so no rank waits forever on a failed peer.
// Where the host program initialised MPI already (Python's mpi4py), it is
// used as it is: the host finalises it and keeps its error handler (a job's
// failing rank still ends the others with MPI_Abort).
Communicator& mpi_world();

// The node-local rank (MPI_Comm_split_type SHARED) of this process: which GPU
// it would use. 0 without MPI.
int mpi_local_rank();
// How many processes share this one's node (MPI_Comm_split_type SHARED). 1 without MPI.
int mpi_local_size();

}  // namespace ringattn
