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
  return fmt::format("int{} g{}{}{}", int(bits), group, asymmetric ? " asym" : "",
                     kivi ? " kivi" : "");
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

std::vector<int32_t> kivi_groups(int64_t n, const std::function<int64_t(int64_t)>& pos,
                                 int64_t group, int64_t* count) {
  std::vector<int32_t> g(static_cast<std::size_t>(n));
  int64_t m = 0, range = -1;
  for (int64_t j = 0; j < n; ++j) {
    const int64_t r = pos(j) / group;
    if (j == 0 || r != range) ++m, range = r;
    g[static_cast<std::size_t>(j)] = static_cast<int32_t>(m - 1);
  }
  if (count != nullptr) *count = m;
  return g;
}

namespace {
// Calls f(position) for the tokens of `rank`'s block in local order.
template <class F>
void for_each_position(const Layout& l, int rank, F f) {
  std::vector<const Segment*> segs;
  for (const Segment& s : l.segments(rank)) segs.push_back(&s);
  std::sort(segs.begin(), segs.end(),
            [](const Segment* a, const Segment* b) { return a->local_offset < b->local_offset; });
  for (const Segment* s : segs)
    for (int64_t i = 0; i < s->count; ++i) f(s->start + i * s->stride);
}
}  // namespace

std::vector<int32_t> kivi_groups(const Layout& l, int rank, int64_t group, int64_t* count) {
  std::vector<int64_t> pos;
  pos.reserve(static_cast<std::size_t>(l.tokens(rank)));
  for_each_position(l, rank, [&](int64_t p) { pos.push_back(p); });
  return kivi_groups(
      static_cast<int64_t>(pos.size()), [&](int64_t j) { return pos[static_cast<std::size_t>(j)]; },
      group, count);
}

int64_t kivi_group_count(const Layout& l, int rank, int64_t group) {
  int64_t m = 0, range = -1;
  bool first = true;
  for_each_position(l, rank, [&](int64_t p) {
    if (first || p / group != range) ++m, range = p / group;
    first = false;
  });
  return m;
}

std::vector<int32_t> kivi_groups_by_rank(const Layout& l, int64_t group, int64_t* count) {
  const int np = l.ranks();
  std::vector<int32_t> g(static_cast<std::size_t>(l.length()), 0);
  for (int r = 0; r < np; ++r)
    for_each_position(l, r, [&](int64_t p) {
      g[static_cast<std::size_t>(p)] = static_cast<int32_t>((p / group) * np + r);
    });
  if (count != nullptr) *count = (l.length() + group - 1) / group * np;
  return g;
}

QuantRows QuantRows::keys_in_buffer(const QuantFormat& f, int64_t batch, int64_t n, int64_t heads,
                                    int64_t d, const int32_t* group_of, int64_t m, void* buffer) {
  if (!f.kivi) return in_buffer(f, batch * n * heads, d, buffer);
  QuantRows q;
  q.fmt = f, q.rows = batch * n * heads, q.d = d;
  q.group_of = group_of, q.tokens = n, q.heads = heads, q.groups_m = m;
  auto* p = static_cast<uint8_t*>(buffer);
  q.codes = p;
  p += q.rows * f.code_bytes(d);
  q.scales = reinterpret_cast<float*>(p);
  p += batch * m * heads * d * int64_t(sizeof(float));
  q.lo = f.asymmetric ? reinterpret_cast<float*>(p) : nullptr;
  return q;
}

QuantRows QuantRows::from(int64_t r0) const {
  QuantRows q = *this;
  q.rows = rows - r0;
  if (per_channel()) {
    q.first = first + r0;
    return q;
  }
  q.codes = codes + r0 * fmt.code_bytes(d);
  q.scales = scales + r0 * fmt.groups(d);
  if (lo != nullptr) q.lo = lo + r0 * fmt.groups(d);
  return q;
}

namespace {

// One KIVI group: n rows (x[i * stride + c], i < n) of one channel c each.
// Writes the channel's scale (and lo) and the rows' codes of it.
void quantize_channel_group(const QuantRows& q, const float* const* x, int64_t n, int64_t c,
                            const int64_t* rows, float* scale_out, float* lo_out) {
  const QuantFormat& f = q.fmt;
  const int64_t cb = f.code_bytes(q.d);
  float scale = 0, lo = 0;
  if (!f.asymmetric) {
    float amax = 0;
    for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::abs(x[i][c]));
    scale = amax / float(f.qmax());
  } else {
    float mn = x[0][c], mx = x[0][c];
    for (int64_t i = 1; i < n; ++i) mn = std::min(mn, x[i][c]), mx = std::max(mx, x[i][c]);
    lo = mn;
    scale = (mx - lo) / float(f.levels());
    *lo_out = lo;
  }
  *scale_out = scale;
  for (int64_t i = 0; i < n; ++i) {
    const int code = scale <= 0     ? 0
                     : f.asymmetric ? std::clamp(round_even((x[i][c] - lo) / scale), 0, f.levels())
                                    : std::clamp(round_even(x[i][c] / scale), -f.qmax(), f.qmax());
    put_code(q.codes + rows[i] * cb, f.bits, c, code);
  }
}

// A whole KIVI block: row(r) gives row r's float32 values (valid until the next call
// for another group: the rows of one group are asked for together).
void quantize_per_channel(
    const QuantRows& q,
    const std::function<void(const int64_t* rows, int64_t n, float* out)>& load) {
  if (q.first != 0 || q.rows != (q.rows / (q.tokens * q.heads)) * q.tokens * q.heads)
    throw Error("quantize: a KIVI key block is quantized whole");
  const int64_t d = q.d, n = q.tokens, h = q.heads, m = q.groups_m, cb = q.fmt.code_bytes(d);
  const int64_t batch = q.rows / (n * h);
  std::fill(q.codes, q.codes + q.rows * cb, uint8_t{0});
  // The tokens of each group (a group need not be a run of consecutive tokens).
  std::vector<std::vector<int64_t>> members(static_cast<std::size_t>(m));
  for (int64_t j = 0; j < n; ++j) {
    const int64_t g = q.group_of[j];
    if (g < 0 || g >= m) throw Error(fmt::format("quantize: token {} in group {} of {}", j, g, m));
    members[static_cast<std::size_t>(g)].push_back(j);
  }
  std::vector<int64_t> rows;
  std::vector<float> vals;
  std::vector<const float*> ptr;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t g = 0; g < m; ++g) {
      const std::vector<int64_t>& tok = members[static_cast<std::size_t>(g)];
      const auto len = static_cast<int64_t>(tok.size());
      if (len == 0) continue;
      for (int64_t hh = 0; hh < h; ++hh) {
        rows.resize(static_cast<std::size_t>(len));
        for (int64_t i = 0; i < len; ++i)
          rows[static_cast<std::size_t>(i)] = (b * n + tok[static_cast<std::size_t>(i)]) * h + hh;
        vals.resize(static_cast<std::size_t>(len * d));
        load(rows.data(), len, vals.data());
        ptr.resize(static_cast<std::size_t>(len));
        for (int64_t i = 0; i < len; ++i) ptr[static_cast<std::size_t>(i)] = vals.data() + i * d;
        const int64_t s0 = ((b * m + g) * h + hh) * d;
        for (int64_t c = 0; c < d; ++c)
          quantize_channel_group(q, ptr.data(), len, c, rows.data(), q.scales + s0 + c,
                                 q.lo != nullptr ? q.lo + s0 + c : nullptr);
      }
    }
}

}  // namespace

void quantize_rows(const float* x, int64_t rows, const QuantRows& q) {
  if (q.per_channel()) {
    quantize_per_channel(q, [&](const int64_t* r, int64_t n, float* out) {
      for (int64_t i = 0; i < n; ++i)
        std::copy(x + r[i] * q.d, x + (r[i] + 1) * q.d, out + i * q.d);
    });
    return;
  }
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
  if (q.per_channel()) {
    quantize_per_channel(q, [&](const int64_t* r, int64_t n, float* out) {
      for (int64_t i = 0; i < n; ++i)
        for (int64_t c = 0; c < q.d; ++c)
          out[i * q.d + c] = load_as_f32(x, dtype, static_cast<std::size_t>(r[i] * q.d + c));
    });
    return;
  }
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
  if (q.per_channel()) {
    for (int64_t r = 0; r < n; ++r) {
      const int64_t a = q.first + r0 + r;
      const int64_t b = a / (q.tokens * q.heads), j = (a / q.heads) % q.tokens, h = a % q.heads;
      const int64_t s0 = ((b * q.groups_m + q.group_of[j]) * q.heads + h) * d;
      const uint8_t* codes = q.codes + a * cb;
      float* xr = x + r * d;
      for (int64_t c = 0; c < d; ++c) {
        const int code = get_code(codes, f.bits, f.asymmetric, c);
        xr[c] = f.asymmetric ? q.lo[s0 + c] + q.scales[s0 + c] * float(code)
                             : q.scales[s0 + c] * float(code);
      }
    }
    return;
  }
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
