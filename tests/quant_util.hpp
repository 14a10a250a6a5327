// What the quantizer tests share (test_quant.cpp, test_quant_format.cpp):
// formats, and a row buffer with guard bytes after it.
#pragma once

#include <cstdint>
#include <vector>

#include "ringattn/quant.hpp"

namespace ringattn::test {

inline constexpr uint8_t kFill = 0xA5;  // what a buffer holds before quantize_rows writes it
inline constexpr int64_t kGuard = 64;   // bytes after a buffer that nothing may write

inline QuantFormat format(QuantBits bits, int group, bool asymmetric) {
  QuantFormat f;
  f.bits = bits, f.group = group, f.asymmetric = asymmetric;
  return f;
}

inline std::vector<QuantFormat> every_format(int64_t d) {
  std::vector<QuantFormat> v;
  for (QuantBits bits : {QuantBits::int8, QuantBits::int4})
    for (bool asym : {false, true})
      for (int g : {32, 64, 128})
        if (d % g == 0) v.push_back(format(bits, g, asym));
  return v;
}

// One buffer of rows x row_bytes(d) filled with kFill, kGuard guard bytes after.
struct Block {
  std::vector<uint8_t> buf;
  QuantRows q;
  Block(const QuantFormat& f, int64_t rows, int64_t d)
      : buf(static_cast<std::size_t>(rows * f.row_bytes(d) + kGuard), kFill),
        q(QuantRows::in_buffer(f, rows, d, buf.data())) {}
  bool guard_intact() const {
    for (std::size_t i = q.bytes(); i < buf.size(); ++i)
      if (buf[i] != kFill) return false;
    return true;
  }
};

}  // namespace ringattn::test
