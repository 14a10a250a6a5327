// Tensor: an owning, dense, row-major host array of a storage dtype.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ringattn/dtype.hpp"
#include "ringattn/memory.hpp"

namespace ringattn {

struct Tensor {
  DType dtype = DType::f32;
  std::vector<int64_t> shape;
  Buffer data;

  Tensor() = default;
  Tensor(DType t, std::vector<int64_t> s, const char* what = "tensor");  // zero-filled
  // Not filled: for a caller that writes every element (generated or read inputs).
  static Tensor uninitialized(DType t, std::vector<int64_t> s, const char* what = "tensor");

  int64_t numel() const;
  std::size_t bytes() const { return static_cast<std::size_t>(numel()) * dtype_size(dtype); }
  template <class T>
  T* as() {
    return data.as<T>();
  }
  template <class T>
  const T* as() const {
    return data.as<T>();
  }
  float get(int64_t i) const {
    return load_as_f32(data.data(), dtype, static_cast<std::size_t>(i));
  }
  void set(int64_t i, float v) {
    store_from_f32(data.data(), dtype, static_cast<std::size_t>(i), v);
  }
};

// "[2, 128, 8, 64]"
std::string shape_str(const std::vector<int64_t>& shape);
// Row-major multi-index of flat element i, as "[0, 5, 2, 17]".
std::string index_str(const std::vector<int64_t>& shape, int64_t i);

}  // namespace ringattn
