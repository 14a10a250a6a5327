// The NCCL backend of the communicator: one rank per GPU, K/V blocks moved
// between device buffers by ncclSend/ncclRecv on a communication stream of its
// own (separate from the engine's compute stream, so a transfer overlaps the
// kernel), completion tracked by CUDA events.
//
// Semantics on top of comm.hpp:
//   * isend/irecv take device pointers. They are queued and launched together
//     in one ncclGroupStart/End when a request is first waited for or tested
//     (or before any collective): the ring posts its receive and send before
//     waiting, so each step's pair runs as one group and cannot deadlock.
//   * Messages between two ranks are matched in posting order (NCCL has no
//     tags): the tags of a pair's messages must be posted in the same order on
//     both sides, which the ring does.
//   * allgather(v) / alltoallv take device buffers (the ring gathers shared
//     rows in engine buffers) or host buffers (staged through a device
//     buffer); allreduce works on host values. All complete on return.
//   * abort() aborts the NCCL communicator, then the bootstrap communicator's
//     job (MPI_Abort under MPI).
//   * Errors: every NCCL group is closed on every path; after an error on
//     this rank (a failed NCCL or CUDA call of the communicator, abort(), or
//     the communicator destroyed while an exception unwinds the stack) the
//     destructor calls ncclCommAbort, which never waits, instead of
//     ncclCommDestroy, which waits for transfers a failed peer may never match.
// The NCCL unique id is created on rank 0 and shared over the bootstrap
// communicator (MPI under mpirun; the in-process backend also works, one
// thread per GPU).
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ringattn/comm.hpp"

namespace ringattn {

// Whether this binary has the NCCL backend.
bool nccl_built();

// Creates the NCCL communicator over the ranks of `bootstrap` (every rank
// calls it), on CUDA device `device`. Throws Error where NCCL is not built in.
std::unique_ptr<Communicator> make_nccl(Communicator& bootstrap, int device);

// The device a rank uses: the environment override (RINGATTN_DEVICE, given as
// `env_override`, unset: nullopt) when set, else node-local rank modulo the
// number of devices (one rank per GPU when the launcher starts as many ranks
// per node as GPUs). Throws Error on a malformed or out-of-range override or
// no device at all.
int select_device(int local_rank, int device_count, const std::optional<std::string>& env_override);
// select_device with RINGATTN_DEVICE read from the environment.
int select_device_from_env(int local_rank, int device_count);

// How an NCCL communicator ends: destroyed after a clean run, aborted after
// an error. `failed`: an NCCL or CUDA call of the communicator failed, or
// abort() was called; the uncaught-exception counts (std::uncaught_exceptions)
// at construction and at destruction tell whether the destructor runs during
// stack unwinding, i.e. an error elsewhere on this rank ended the run while
// transfers may still be queued.
enum class NcclTeardown { destroy, abort };
NcclTeardown nccl_teardown(bool failed, int uncaught_at_construction, int uncaught_now);

// Rank 0's `bytes` bytes on every rank (returned), through allgather: how
// the NCCL unique id travels. `root_bytes` is read on rank 0 only.
std::vector<char> share_from_root(Communicator& comm, const void* root_bytes, std::size_t bytes);

}  // namespace ringattn
