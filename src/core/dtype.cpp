// dtype names and parsing; Tensor's out-of-line members and index formatting.
#include "ringattn/dtype.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cctype>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "ringattn/error.hpp"
#include "ringattn/tensor.hpp"

namespace ringattn {

std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::f32:
      return "float32";
    case DType::f16:
      return "float16";
    case DType::bf16:
      return "bfloat16";
  }
  return "unknown";
}

DType parse_dtype(std::string_view s, std::string_view what) {
  std::string lower(s);
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (lower == "f32" || lower == "float32" || lower == "fp32") return DType::f32;
  if (lower == "f16" || lower == "float16" || lower == "fp16" || lower == "half") return DType::f16;
  if (lower == "bf16" || lower == "bfloat16") return DType::bf16;
  throw Error(fmt::format(
      "{}: unknown dtype '{}'; expected f32 (float32, fp32), f16 (float16, fp16, half) or bf16 "
      "(bfloat16)",
      what, s));
}

namespace {

// Product of the dims of `shape`; Error on a negative dim or int64 overflow.
int64_t checked_numel(const std::vector<int64_t>& shape, const char* what) {
  bool empty = false;
  for (const int64_t d : shape) {
    if (d < 0)
      throw Error(fmt::format("{}: negative dimension in shape {}; expected sizes >= 0", what,
                              shape_str(shape)));
    empty = empty || d == 0;
  }
  if (empty) return 0;
  int64_t n = 1;
  for (const int64_t d : shape) {
    if (n > std::numeric_limits<int64_t>::max() / d)
      throw Error(fmt::format("{}: shape {} has more than 2^63 elements; expected a smaller shape",
                              what, shape_str(shape)));
    n *= d;
  }
  return n;
}

}  // namespace

Tensor::Tensor(DType t, std::vector<int64_t> s, const char* what)
    : Tensor(uninitialized(t, std::move(s), what)) {
  if (bytes() != 0) std::memset(data.data(), 0, bytes());
}

Tensor Tensor::uninitialized(DType t, std::vector<int64_t> s, const char* what) {
  Tensor x;
  x.dtype = t;
  x.shape = std::move(s);
  const int64_t n = checked_numel(x.shape, what);
  if (static_cast<uint64_t>(n) > std::numeric_limits<std::size_t>::max() / dtype_size(t))
    throw Error(fmt::format("{}: shape {} of {} needs more bytes than fit in size_t", what,
                            shape_str(x.shape), dtype_name(t)));
  x.data = Buffer(static_cast<std::size_t>(n) * dtype_size(t), what);
  return x;
}

int64_t Tensor::numel() const {
  return checked_numel(shape, "tensor");
}

std::string shape_str(const std::vector<int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

std::string index_str(const std::vector<int64_t>& shape, int64_t i) {
  const int64_t n = checked_numel(shape, "index_str");
  if (i < 0 || i >= n)
    throw Error(fmt::format("index_str: flat index {} out of range for shape {} ({} elements)", i,
                            shape_str(shape), n));
  std::vector<int64_t> idx(shape.size());
  for (std::size_t k = shape.size(); k-- > 0;) {
    idx[k] = i % shape[k];
    i /= shape[k];
  }
  return shape_str(idx);
}

}  // namespace ringattn
