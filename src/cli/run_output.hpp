// Rank 0's outputs of `ringattn run`, and the streaming of every rank's rows
// to rank 0.
//
// NpyOutFile is a .npy file written at arbitrary offsets: an AtomicFile
// (temporary in the same directory, renamed into place by commit(), removed
// otherwise) pre-sized to header + data, so each rank's rows are written where
// they belong in the ORIGINAL token order whatever the layout. Its temporary
// is registered for the signal handler of cli/run_tempfiles.hpp.
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

#include "cli/run_config.hpp"
#include "cli/run_tempfiles.hpp"
#include "ringattn/comm.hpp"
#include "ringattn/layout.hpp"
#include "ringattn/npy.hpp"

namespace ringattn::cli {

class NpyOutFile {
 public:
  // Creates the temporary with the header and `shape`'s data size (zeros).
  // `option` names the option in errors ("out" -> "option '--out': ...").
  NpyOutFile(const std::string& path, DType dtype, std::vector<int64_t> shape,
             const std::string& option);
  ~NpyOutFile();
  NpyOutFile(const NpyOutFile&) = delete;
  NpyOutFile& operator=(const NpyOutFile&) = delete;

  DType dtype() const { return dtype_; }
  // Writes `count` elements of `elem` bytes from `data` (packed), element i at
  // data byte offset `first + i * stride`. Small strided elements are written
  // by read-modify-write of bounded windows instead of one syscall each.
  void write_strided(std::size_t first, std::size_t stride, std::size_t elem, int64_t count,
                     const void* data);
  void commit();

 private:
  void pwrite_at(std::size_t offset, const void* data, std::size_t bytes);
  void pread_at(std::size_t offset, void* data, std::size_t bytes);

  std::string option_;
  DType dtype_;
  AtomicFile file_;
  TempFileGuard guard_;
  int fd_ = -1;  // a second descriptor on the temporary, for positioned I/O
  std::size_t data_offset_ = 0, data_bytes_ = 0;
};

// The O and LSE files of a run (either may be absent), opened after the ring
// pass; check_writable() tells before compute whether they can be.
class RunOutputs {
 public:
  explicit RunOutputs(const RunConfig& cfg);
  // Creates and removes a temporary beside each output: throws the Error the
  // constructor would (naming the option) if a file cannot be written there.
  static void check_writable(const RunConfig& cfg);
  // Writes rank `rank`'s rows: o float32 [B, n_r, Hq, D] (rounded to the
  // output dtype), lse [B, Hq, n_r], n_r = ql.tokens(rank), in ql's local order.
  void write_rank(const Layout& ql, int rank, const float* o, const float* lse);
  void commit();

 private:
  const RunConfig& cfg_;
  std::optional<NpyOutFile> o_, lse_;
};

// Called on rank 0 once per rank, in rank order, with that rank's rows.
using RowSink = std::function<void(int rank, const float* o, const float* lse)>;

// Every rank calls it after the ring with its own O [B, n, Hq, D] and LSE
// [B, Hq, n] (float32, n = ql.tokens(rank)); rank 0 calls `sink` for each rank.
void gather_rows(Communicator& comm, const Layout& ql, int64_t batch, int64_t hq, int64_t head_dim,
                 const float* o, const float* lse, const RowSink& sink);

}  // namespace ringattn::cli
