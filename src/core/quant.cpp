// K/V quantization (ringattn/quant.hpp).
#include "ringattn/quant.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "ringattn/error.hpp"

namespace ringattn {
namespace {

// round_half_even of a float32 value: nearbyint under the default rounding mode.
inline int round_even(float v) {
  return static_cast<int>(std::nearbyint(v));
}

inline void put_code(uint8_t* codes, QuantBits bits, int64_t c, int code) {
  if (bits == QuantBits::int8) {
    codes[c] = static_cast<uint8_t>(static_cast<int8_t>(code));
    return;
  }
  uint8_t& byte = codes[c / 2];
  const auto nib = static_cast<uint8_t>(code & 0xF);
  byte = (c % 2 == 0) ? static_cast<uint8_t>((byte & 0xF0) | nib)
                      : static_cast<uint8_t>((byte & 0x0F) | (nib << 4));
}

// The code of channel c: signed (symmetric) or unsigned (asymmetric).
inline int get_code(const uint8_t* codes, QuantBits bits, bool asym, int64_t c) {
  if (bits == QuantBits::int8) return asym ? int(codes[c]) : int(static_cast<int8_t>(codes[c]));
  const int nib = (c % 2 == 0) ? (codes[c / 2] & 0xF) : (codes[c / 2] >> 4);
  return asym ? nib : (nib >= 8 ? nib - 16 : nib);
}

}  // namespace

std::string QuantFormat::describe() const {
  if (!on()) return "none";
  return fmt::format("int{} g{}{}", int(bits), group, asymmetric ? " asym" : "");
}

QuantBits parse_quant_bits(const std::string& s, const std::string& field) {
  if (s == "int8") return QuantBits::int8;
  if (s == "int4") return QuantBits::int4;
  if (s == "float32" || s == "float16" || s == "bfloat16" || s == "none") return QuantBits::none;
  throw FieldError(field, fmt::format("'{}' is not one of int8, int4 or a storage dtype (float32, "
                                      "float16, bfloat16)",
                                      s));
}

void validate_quant(const QuantFormat& f, int64_t d) {
  if (!f.on()) return;
  if (f.group != 32 && f.group != 64 && f.group != 128)
    throw FieldError("kv_group", fmt::format("{} must be 32, 64 or 128 channels", f.group));
  if (d % f.group != 0)
    throw FieldError("kv_group", fmt::format("{} does not divide the head dim {}", f.group, d));
}

QuantRows QuantRows::in_buffer(const QuantFormat& f, int64_t rows, int64_t d, void* buffer) {
  QuantRows q;
  q.fmt = f, q.rows = rows, q.d = d;
  auto* p = static_cast<uint8_t*>(buffer);
  q.codes = p;
  p += rows * f.code_bytes(d);
  q.scales = reinterpret_cast<float*>(p);
  p += rows * f.groups(d) * int64_t(sizeof(float));
  q.lo = f.asymmetric ? reinterpret_cast<float*>(p) : nullptr;
  return q;
}

QuantRows QuantRows::from(int64_t r0) const {
  QuantRows q = *this;
  q.rows = rows - r0;
  q.codes = codes + r0 * fmt.code_bytes(d);
  q.scales = scales + r0 * fmt.groups(d);
  if (lo != nullptr) q.lo = lo + r0 * fmt.groups(d);
  return q;
}

void quantize_rows(const float* x, int64_t rows, const QuantRows& q) {
  const QuantFormat& f = q.fmt;
  const int64_t d = q.d, g = f.group, ng = f.groups(d), cb = f.code_bytes(d);
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * d;
    uint8_t* codes = q.codes + r * cb;
    std::fill(codes, codes + cb, uint8_t{0});
    for (int64_t k = 0; k < ng; ++k) {
      const float* xs = xr + k * g;
      float& scale = q.scales[r * ng + k];
      if (!f.asymmetric) {
        float amax = 0;
        for (int64_t c = 0; c < g; ++c) amax = std::max(amax, std::abs(xs[c]));
        scale = amax / float(f.qmax());
        for (int64_t c = 0; c < g; ++c) {
          const int code =
              scale > 0 ? std::clamp(round_even(xs[c] / scale), -f.qmax(), f.qmax()) : 0;
          put_code(codes, f.bits, k * g + c, code);
        }
      } else {
        const auto [mn, mx] = std::minmax_element(xs, xs + g);
        const float lo = *mn;
        scale = (*mx - lo) / float(f.levels());
        q.lo[r * ng + k] = lo;
        for (int64_t c = 0; c < g; ++c) {
          const int code =
              scale > 0 ? std::clamp(round_even((xs[c] - lo) / scale), 0, f.levels()) : 0;
          put_code(codes, f.bits, k * g + c, code);
        }
      }
    }
  }
}

void quantize_values(const void* x, DType dtype, int64_t rows, const QuantRows& q) {
  constexpr int64_t kChunkRows = 256;
  const int64_t d = q.d;
  std::vector<float> tmp(static_cast<std::size_t>(std::min(rows, kChunkRows) * d));
  for (int64_t r0 = 0; r0 < rows; r0 += kChunkRows) {
    const int64_t n = std::min(kChunkRows, rows - r0);
    for (int64_t i = 0; i < n * d; ++i)
      tmp[static_cast<std::size_t>(i)] =
          load_as_f32(x, dtype, static_cast<std::size_t>(r0 * d + i));
    quantize_rows(tmp.data(), n, q.from(r0));
  }
}

void dequantize_rows(const QuantRows& q, int64_t r0, int64_t n, float* x) {
  const QuantFormat& f = q.fmt;
  const int64_t d = q.d, g = f.group, ng = f.groups(d), cb = f.code_bytes(d);
  for (int64_t r = 0; r < n; ++r) {
    const int64_t row = r0 + r;
    const uint8_t* codes = q.codes + row * cb;
    float* xr = x + r * d;
    for (int64_t c = 0; c < d; ++c) {
      const int64_t k = c / g;
      const float scale = q.scales[row * ng + k];
      const int code = get_code(codes, f.bits, f.asymmetric, c);
      xr[c] = f.asymmetric ? q.lo[row * ng + k] + scale * float(code) : scale * float(code);
    }
  }
}

}  // namespace ringattn
