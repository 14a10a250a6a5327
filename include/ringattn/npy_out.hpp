// A .npy output file written at arbitrary offsets: an AtomicFile (temporary
// in the same directory, renamed into place by commit(), removed otherwise)
// pre-sized to header + data, so rows can be written where they belong in the
// ORIGINAL token order whatever the layout. Its temporary is registered for
// the signal handler of ringattn/tempfiles.hpp. Errors are FieldError naming
// the field the caller gave (the job's "out" or "lse_out").
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "ringattn/dtype.hpp"
#include "ringattn/npy.hpp"
#include "ringattn/tempfiles.hpp"

namespace ringattn {

enum class NpyElem : uint8_t { i32, u8 };

class NpyOutFile {
 public:
  // Creates the temporary with the header and `shape`'s data size (zeros).
  // `field` names the file in errors (FieldError).
  NpyOutFile(const std::string& path, DType dtype, std::vector<int64_t> shape,
             const std::string& field);
  // An integer array: little-endian int32 (indices) or uint8 (flags).
  NpyOutFile(const std::string& path, NpyElem elem, std::vector<int64_t> shape,
             const std::string& field);
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
  void open_data(const std::string& path, const std::string& head, std::size_t data_bytes);
  void pwrite_at(std::size_t offset, const void* data, std::size_t bytes);
  void pread_at(std::size_t offset, void* data, std::size_t bytes);

  std::string field_;
  DType dtype_;
  AtomicFile file_;
  TempFileGuard guard_;
  int fd_ = -1;  // a second descriptor on the temporary, for positioned I/O
  std::size_t data_offset_ = 0, data_bytes_ = 0;
};

// Creates and removes a temporary beside `path`: throws the FieldError(field)
// that NpyOutFile's constructor would if the file cannot be written there.
void check_output_writable(const std::string& path, const std::string& field);

}  // namespace ringattn
