// Rank 0's outputs of a job (ringattn/npy_out.hpp files), and the streaming
// of every rank's rows to rank 0.
//
// gather_rows() moves the rows one rank at a time: rank 0 asks rank r for its
// rows (a small "go" message), receives its O and LSE, hands them to a sink,
// and only then asks rank r + 1. Rank 0 so holds at most its own rows and one
// other rank's: memory O(N / P). The other ranks wait for their turn asleep
// (polling), not spinning in MPI, so they leave the cores to rank 0.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "ringattn/comm.hpp"
#include "ringattn/job.hpp"
#include "ringattn/layout.hpp"
#include "ringattn/npy_out.hpp"

namespace ringattn::job {

// The O and LSE files of a run (either may be absent), opened after the ring
// pass; check_writable() tells before compute whether they can be.
class RunOutputs {
 public:
  explicit RunOutputs(const JobSpec& cfg);
  // Creates and removes a temporary beside each output: throws the Error the
  // constructor would (naming the field) if a file cannot be written there.
  static void check_writable(const JobSpec& cfg);
  // Writes rank `rank`'s rows: o float32 [B, n_r, Hq, D] (rounded to the
  // output dtype), lse [B, Hq, n_r], n_r = ql.tokens(rank), in ql's local order;
  // to the files and to the caller's arrays (JobArrays::o, lse).
  void write_rank(const Layout& ql, int rank, const float* o, const float* lse);
  // Writes rank `rank`'s routing choices [B, n_r, Hq, topk] (route file only).
  void write_route(const Layout& ql, int rank, const int32_t* route);
  // Writes the K/V selection's kept set [B, Hsel, Nk] (the keep file only).
  void write_keep(const uint8_t* keep);
  void commit();

 private:
  void write_arrays(const Layout& ql, int rank, const float* o, const float* lse);
  const JobSpec& cfg_;
  std::optional<NpyOutFile> o_, lse_, route_, keep_;
};

// Rank `rank`'s float32 rows [batch, l.tokens(rank), row] written at their
// global token positions of a [batch, n_global, row] file (rounded to its dtype).
void write_token_rows(NpyOutFile& file, const Layout& l, int rank, int64_t batch, int64_t n_global,
                      int64_t row, const float* rows);

// Called on rank 0 once per rank, in rank order, with that rank's rows.
using RowSink = std::function<void(int rank, const float* o, const float* lse)>;

// Every rank calls it after the ring with its own O [B, n, Hq, D] and LSE
// [B, Hq, n] (float32, n = ql.tokens(rank)); rank 0 calls `sink` for each rank.
void gather_rows(Communicator& comm, const Layout& ql, int64_t batch, int64_t hq, int64_t head_dim,
                 const float* o, const float* lse, const RowSink& sink);

// The same for `bytes_of(rank)` bytes of any rows (routing choices), one rank at a time.
void gather_bytes(Communicator& comm, const std::function<std::size_t(int)>& bytes_of,
                  const void* mine, const std::function<void(int rank, const void*)>& sink);

}  // namespace ringattn::job
