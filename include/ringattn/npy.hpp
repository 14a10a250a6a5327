// NumPy .npy files (format versions 1.0, 2.0 and 3.0, C order, little endian).
//
// dtypes read and written:  '<f4' float32,  '<f2' float16,  and bfloat16 as
// its raw 16-bit patterns: '<u2' (the `x.view(np.uint16)` convention) or
// '<V2'/'|V2' (what ml_dtypes' bfloat16 arrays save as). bfloat16 is written
// as '<u2'. Anything else (Fortran order, big endian, other dtypes, object
// arrays) is rejected with an Error naming the file and the expected form.
//
// Writes are atomic: data goes to a temporary file in the same directory,
// which is renamed over the destination only once complete, so a failed run
// never leaves a partial output file.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ringattn/atomic_file.hpp"
#include "ringattn/tensor.hpp"

namespace ringattn {

struct NpyHeader {
  DType dtype = DType::f32;
  std::vector<int64_t> shape;
  std::size_t data_offset = 0;  // bytes from the start of the file to element 0
};

// Parses and validates the header, and checks that the file holds all the data
// the header promises (a truncated file is an Error).
NpyHeader read_npy_header(const std::string& path);

// The whole array.
Tensor read_npy(const std::string& path);

// Rows [row0, row0 + rows) along `axis` (every other axis whole), e.g. one
// rank's token slice of a [B, N, H, D] array with axis = 1. Reads only those
// bytes from disk.
Tensor read_npy_slice(const std::string& path, int axis, int64_t row0, int64_t rows);

// A 1-d integer array ('<i4' int32 or '<i8' int64), as int64: index files such
// as document offsets. Other dtypes or shapes: Error naming the file.
std::vector<int64_t> read_npy_ints(const std::string& path);
// Throws Error "<what>: non-finite value (nan|inf|-inf) at index [i, j, ...]"
// for the first non-finite element.
void check_finite(const Tensor& t, const std::string& what);

// The header of an array of this dtype and shape (format 1.0, data aligned to
// 64 bytes): for writers that place the data themselves.
std::string npy_header_bytes(DType dtype, const std::vector<int64_t>& shape);
// The same for a NumPy type string ("<i4").
std::string npy_header_bytes(const char* descr, const std::vector<int64_t>& shape);

// Serialises t into f (header + data). Does not commit.
void write_npy(AtomicFile& f, const Tensor& t);
// Convenience: open, write, commit.
void save_npy(const std::string& path, const Tensor& t);

}  // namespace ringattn
