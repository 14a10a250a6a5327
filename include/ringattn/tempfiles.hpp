// Temporary output files that must not outlive a killed process.
//
// Under MPI a failing rank calls MPI_Abort, and the launcher then ends every
// other process with SIGTERM (later SIGKILL): no destructor runs, so an
// AtomicFile's temporary would stay behind. Each process therefore keeps the
// paths of its live temporaries in a small fixed table that a signal handler
// can read without locks or allocation, and the SIGTERM/SIGINT/SIGHUP handler
// unlinks them, writes one line to stderr saying why the process ends and what
// that means for the outputs ("ringattn: rank 0: ended by SIGTERM (signal 15);
// temporary outputs removed", or "...; the job had completed and written its
// outputs" when the signal came after that) and _exits with 128 + signal. The table is
// async-signal-safe: registering is a copy into a free slot published by an atomic store; the lines
// are formatted beforehand, so the handler calls only write(2), unlink(2), _exit.
#pragma once

#include <string>

namespace ringattn {

// Installs the handlers (once per process; later calls do nothing).
void install_temp_cleanup_handlers();
// A host program that handles SIGINT, SIGTERM and SIGHUP itself (the Python
// interpreter: Ctrl-C is its KeyboardInterrupt) calls this first: the handlers
// are then never installed. A job's temporaries are still removed when it ends
// by an error, which is how an interrupt ends it there.
void leave_signals_to_host();

// Names `rank` in the handler's stderr line from now on (call once the process
// is known to be one MPI rank; in-process ranks share a process and leave it
// unset). The first call wins; async-signal-safe to race with a signal.
void set_signal_context(int rank);

// Says in the handler's line from now on that the job completed and wrote its
// outputs (called by the process that committed them).
void mark_job_completed();

// Unlinks every registered temporary now (async-signal-safe) and returns how
// many it removed. Called by the handler, and before a rank aborts the job.
int remove_registered_temps();

// Registers `path` for the lifetime of the guard. Throws Error when the table
// is full or the path too long.
class TempFileGuard {
 public:
  explicit TempFileGuard(const std::string& path);
  ~TempFileGuard();
  TempFileGuard(const TempFileGuard&) = delete;
  TempFileGuard& operator=(const TempFileGuard&) = delete;

  // Forget the path (after the file was renamed into place or removed).
  void release();

 private:
  int slot_ = -1;
};

}  // namespace ringattn
