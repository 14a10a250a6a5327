// NumPy .npy reading and atomic writing. Format reference:
// https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html
//
//   bytes 0-5   "\x93NUMPY"
//   bytes 6-7   major, minor version (1.0, 2.0 or 3.0)
//   then        header length HLEN: uint16 LE (v1) or uint32 LE (v2, v3)
//   then        HLEN bytes: a Python dict literal
//               {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
//               padded with spaces and ended by '\n'
//   then        the data, C order
#include "ringattn/npy.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "ringattn/error.hpp"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "npy.cpp reads and writes little-endian data in place");

namespace ringattn {
namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr std::size_t kMagicLen = 6;
constexpr std::size_t kNpyAlign = 64;  // NumPy's ARRAY_ALIGN: data starts on a 64-byte boundary
constexpr const char* kExpectedDtypes =
    "expected float32 ('<f4'), float16 ('<f2') or bfloat16 ('<u2'/'<V2')";
constexpr const char* kExpectedDict =
    "expected a dict like {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";

[[noreturn]] void fail(const std::string& path, const std::string& msg) {
  throw Error(fmt::format("{}: {}", path, msg));
}

// An owned file descriptor.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

// Reads exactly n bytes at offset off (loops over short reads and EINTR).
void pread_all(int fd, void* buf, std::size_t n, std::size_t off, const std::string& path) {
  auto* p = static_cast<char*>(buf);
  while (n > 0) {
    const ssize_t r = ::pread(fd, p, n, static_cast<off_t>(off));
    if (r < 0) {
      if (errno == EINTR) continue;
      fail(path, fmt::format("read failed at byte {}: {}; expected a readable .npy file", off,
                             std::strerror(errno)));
    }
    if (r == 0)
      fail(path, fmt::format("truncated: file ended at byte {} while reading data; expected the "
                             "file not to change while it is read",
                             off));
    p += r;
    n -= static_cast<std::size_t>(r);
    off += static_cast<std::size_t>(r);
  }
}

// Printable, single-line rendering of header text for error messages.
std::string printable(std::string_view s, std::size_t max_len = 120) {
  std::string out;
  for (const char c : s.substr(0, max_len)) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '\n') {
      out += "\\n";
    } else if (u < 0x20 || u >= 0x7f) {
      out += fmt::format("\\x{:02x}", u);
    } else {
      out += c;
    }
  }
  if (s.size() > max_len) out += "...";
  return out;
}

// ---- A parser for the small subset of Python literals that .npy headers use ----

struct PyValue {
  enum Kind { kStr, kBool, kInt, kTuple, kNone } kind = kNone;
  std::string str;
  bool boolean = false;
  int64_t integer = 0;
  std::vector<PyValue> items;
  std::string_view src;  // the literal's source text
};

class HeaderParser {
 public:
  HeaderParser(std::string_view text, const std::string& path) : s_(text), path_(path) {}

  // Parses the whole header: a dict of string keys, then only whitespace.
  std::vector<std::pair<std::string, PyValue>> dict() {
    std::vector<std::pair<std::string, PyValue>> out;
    skip_ws();
    expect('{');
    skip_ws();
    while (peek() != '}') {
      PyValue key = value();
      if (key.kind != PyValue::kStr) error("dict key is not a string");
      skip_ws();
      expect(':');
      skip_ws();
      PyValue v = value();
      out.emplace_back(key.str, std::move(v));
      skip_ws();
      if (peek() == ',') {
        ++i_;
        skip_ws();
      } else if (peek() != '}') {
        error("expected ',' or '}'");
      }
    }
    ++i_;
    skip_ws();
    if (i_ != s_.size()) error("unexpected text after the dict");
    return out;
  }

  [[noreturn]] void error(std::string_view what) const {
    fail(path_, fmt::format("malformed .npy header ({} at offset {} in \"{}\"); {}", what, i_,
                            printable(s_), kExpectedDict));
  }

 private:
  char peek() const { return i_ < s_.size() ? s_[i_] : '\0'; }
  void skip_ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r'))
      ++i_;
  }
  void expect(char c) {
    if (peek() != c) error(fmt::format("expected '{}'", c));
    ++i_;
  }
  bool word(std::string_view w) {
    if (s_.substr(i_, w.size()) != w) return false;
    i_ += w.size();
    return true;
  }

  PyValue value() {
    if (++depth_ > kMaxDepth) error("literal nested too deeply");
    const std::size_t start = i_;
    PyValue v;
    const char c = peek();
    if (c == '\'' || c == '"') {
      v.kind = PyValue::kStr;
      ++i_;
      while (peek() != c) {
        if (i_ >= s_.size()) error("unterminated string");
        if (s_[i_] == '\\') error("escape sequences are not supported in strings");
        v.str += s_[i_++];
      }
      ++i_;
    } else if (c == '(' || c == '[') {
      const char close = c == '(' ? ')' : ']';
      v.kind = PyValue::kTuple;
      ++i_;
      skip_ws();
      while (peek() != close) {
        v.items.push_back(value());
        skip_ws();
        if (peek() == ',') {
          ++i_;
          skip_ws();
        } else if (peek() != close) {
          error(c == '(' ? "expected ',' or ')'" : "expected ',' or ']'");
        }
      }
      ++i_;
    } else if (c == '-' || (c >= '0' && c <= '9')) {
      v.kind = PyValue::kInt;
      const bool neg = c == '-';
      if (neg) ++i_;
      if (!(peek() >= '0' && peek() <= '9')) error("expected a digit");
      uint64_t mag = 0;
      while (peek() >= '0' && peek() <= '9') {
        const auto digit = static_cast<uint64_t>(peek() - '0');
        if (mag > (uint64_t{1} << 63) / 10 || mag * 10 + digit > (uint64_t{1} << 63))
          error("integer out of range");
        mag = mag * 10 + digit;
        ++i_;
      }
      if (peek() == 'L') ++i_;  // Python 2 long suffix, found in old files
      if (!neg && mag > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        error("integer out of range");
      v.integer = neg ? static_cast<int64_t>(0 - mag) : static_cast<int64_t>(mag);
    } else if (word("True")) {
      v.kind = PyValue::kBool;
      v.boolean = true;
    } else if (word("False")) {
      v.kind = PyValue::kBool;
    } else if (word("None")) {
      v.kind = PyValue::kNone;
    } else {
      error("unexpected character");
    }
    v.src = s_.substr(start, i_ - start);
    --depth_;
    return v;
  }

  static constexpr int kMaxDepth = 16;
  std::string_view s_;
  const std::string& path_;
  std::size_t i_ = 0;
  int depth_ = 0;
};

DType parse_descr(const PyValue& v, const std::string& path) {
  if (v.kind != PyValue::kStr)
    fail(path, fmt::format("unsupported dtype {} (structured or non-string descr); {}",
                           printable(v.src), kExpectedDtypes));
  const std::string& d = v.str;
  if (!d.empty() && d[0] == '>')
    fail(path, fmt::format("big-endian dtype '{}' is not supported; expected little-endian "
                           "float32 ('<f4'), float16 ('<f2') or bfloat16 ('<u2'/'<V2') "
                           "(convert with x.astype(x.dtype.newbyteorder('<')))",
                           printable(d)));
  // '=' is native order, which is little endian here. '|' (byte order not applicable) makes
  // sense only for raw bytes: the '|V2' that ml_dtypes' bfloat16 arrays save as.
  if (d == "<f4" || d == "=f4") return DType::f32;
  if (d == "<f2" || d == "=f2") return DType::f16;
  if (d == "<u2" || d == "=u2" || d == "<V2" || d == "|V2") return DType::bf16;
  fail(path, fmt::format("unsupported dtype '{}'; {}", printable(d), kExpectedDtypes));
}

// Integer descr of an index file: '<i4' or '<i8'; returns the item size.
std::size_t parse_int_descr(const PyValue& v, const std::string& path) {
  const std::string d(v.kind == PyValue::kStr ? std::string_view(v.str) : v.src);
  if (d == "<i4" || d == "=i4") return 4;
  if (d == "<i8" || d == "=i8") return 8;
  fail(path, fmt::format("unsupported dtype '{}'; expected int32 ('<i4') or int64 ('<i8')",
                         printable(d)));
}

std::vector<int64_t> parse_shape(const PyValue& v, const std::string& path) {
  if (v.kind != PyValue::kTuple || v.src.empty() || v.src[0] != '(')
    fail(path, fmt::format("malformed .npy header: shape {} is not a tuple; expected a tuple of "
                           "sizes such as (2, 3), (5,) or ()",
                           printable(v.src)));
  std::vector<int64_t> shape;
  for (const PyValue& d : v.items) {
    if (d.kind != PyValue::kInt || d.integer < 0)
      fail(path, fmt::format("malformed .npy header: shape {} has an invalid dimension {}; "
                             "expected sizes >= 0",
                             printable(v.src), printable(d.src)));
    shape.push_back(d.integer);
  }
  return shape;
}

struct OpenNpy {
  NpyHeader header;
  std::size_t data_bytes = 0;
};

// Validates the whole header of the open file and that the data it promises is present.
// int_item: an integer file (parse_int_descr; *int_item set to its item size).
OpenNpy parse_header(int fd, const std::string& path, std::size_t* int_item = nullptr) {
  struct stat st {};
  if (::fstat(fd, &st) != 0)
    fail(path, fmt::format("cannot stat: {}; expected a readable .npy file", std::strerror(errno)));
  if (!S_ISREG(st.st_mode)) fail(path, "not a regular file; expected a .npy file");
  const auto file_size = static_cast<std::size_t>(st.st_size);

  unsigned char pre[12] = {};
  const std::size_t have_pre = file_size < sizeof pre ? file_size : sizeof pre;
  pread_all(fd, pre, have_pre, 0, path);
  if (have_pre < kMagicLen || std::memcmp(pre, kMagic, kMagicLen) != 0)
    fail(path, fmt::format("not a .npy file (starts with \"{}\"); expected a NumPy .npy file "
                           "starting with \"\\x93NUMPY\"",
                           printable(std::string_view(reinterpret_cast<const char*>(pre),
                                                      have_pre < 8 ? have_pre : 8))));
  if (have_pre < 8)
    fail(path, fmt::format("truncated: file has {} bytes, too short for a .npy preamble; expected "
                           "a complete .npy file",
                           file_size));
  const unsigned major = pre[6], minor = pre[7];
  if ((major != 1 && major != 2 && major != 3) || minor != 0)
    fail(path, fmt::format("unsupported .npy format version {}.{}; expected 1.0, 2.0 or 3.0", major,
                           minor));
  const std::size_t len_bytes = major == 1 ? 2 : 4;
  const std::size_t preamble = 8 + len_bytes;
  if (file_size < preamble)
    fail(path, fmt::format("truncated: file has {} bytes, too short for a version {}.0 preamble "
                           "({} bytes); expected a complete .npy file",
                           file_size, major, preamble));
  std::size_t hlen = 0;
  for (std::size_t k = 0; k < len_bytes; ++k) hlen |= std::size_t{pre[8 + k]} << (8 * k);
  const std::size_t data_offset = preamble + hlen;
  if (file_size < data_offset)
    fail(path, fmt::format("truncated: header promises {} bytes of header, file has {}; expected "
                           "a complete .npy file",
                           hlen, file_size - preamble));

  std::string text(hlen, '\0');
  pread_all(fd, text.data(), hlen, preamble, path);
  HeaderParser parser(text, path);
  const auto dict = parser.dict();

  const PyValue* descr = nullptr;
  const PyValue* fortran = nullptr;
  const PyValue* shape = nullptr;
  for (const auto& [key, val] : dict) {
    const PyValue** slot = key == "descr"           ? &descr
                           : key == "fortran_order" ? &fortran
                           : key == "shape"         ? &shape
                                                    : nullptr;
    if (slot == nullptr)
      fail(path, fmt::format("malformed .npy header: unexpected key '{}'; expected exactly the "
                             "keys 'descr', 'fortran_order' and 'shape'",
                             printable(key)));
    if (*slot != nullptr)
      fail(path, fmt::format("malformed .npy header: duplicate key '{}'; expected each of "
                             "'descr', 'fortran_order' and 'shape' once",
                             printable(key)));
    *slot = &val;
  }
  if (descr == nullptr || fortran == nullptr || shape == nullptr)
    fail(path, fmt::format("malformed .npy header: missing key '{}' in \"{}\"; {}",
                           descr == nullptr     ? "descr"
                           : fortran == nullptr ? "fortran_order"
                                                : "shape",
                           printable(text), kExpectedDict));

  OpenNpy out;
  if (int_item != nullptr)
    *int_item = parse_int_descr(*descr, path);
  else
    out.header.dtype = parse_descr(*descr, path);
  if (fortran->kind != PyValue::kBool)
    fail(path, fmt::format("malformed .npy header: fortran_order is {}; expected True or False",
                           printable(fortran->src)));
  out.header.shape = parse_shape(*shape, path);
  if (fortran->boolean)
    fail(path, fmt::format("Fortran-order (column-major) array of shape {} is not supported; "
                           "expected C order (save np.ascontiguousarray(x))",
                           shape_str(out.header.shape)));
  out.header.data_offset = data_offset;

  // Byte size, guarding against overflow of absurd shapes (an empty array is 0 bytes whatever
  // its other dims).
  const std::size_t item = int_item != nullptr ? *int_item : dtype_size(out.header.dtype);
  constexpr auto kMaxBytes = static_cast<std::size_t>(std::numeric_limits<int64_t>::max());
  bool empty = false;
  for (const int64_t d : out.header.shape) empty = empty || d == 0;
  std::size_t bytes = 0;
  if (!empty) {
    bytes = item;
    for (const int64_t d : out.header.shape) {
      if (bytes > kMaxBytes / static_cast<std::size_t>(d))
        fail(path, fmt::format("shape {} is too large to address; expected a shape whose size "
                               "fits in memory",
                               shape_str(out.header.shape)));
      bytes *= static_cast<std::size_t>(d);
    }
  }
  if (file_size - data_offset < bytes)
    fail(path, fmt::format("truncated: header promises {} bytes of data, file has {} ({} {})",
                           bytes, file_size - data_offset,
                           int_item != nullptr ? (item == 4 ? "int32" : "int64")
                                               : dtype_name(out.header.dtype),
                           shape_str(out.header.shape)));
  out.data_bytes = bytes;
  return out;
}

int open_read(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    fail(path, fmt::format("cannot open: {}; expected a readable .npy file", std::strerror(errno)));
  return fd;
}

// A tensor of the given dtype and shape whose contents are about to be overwritten (no zero fill).
Tensor uninitialised(DType t, std::vector<int64_t> shape, std::size_t bytes, const char* what) {
  Tensor out;
  out.dtype = t;
  out.shape = std::move(shape);
  out.data = Buffer(bytes, what);
  return out;
}

std::string shape_repr(const std::vector<int64_t>& shape) {
  if (shape.empty()) return "()";
  if (shape.size() == 1) return fmt::format("({},)", shape[0]);
  std::string s = "(";
  for (std::size_t k = 0; k < shape.size(); ++k) s += fmt::format("{}{}", k ? ", " : "", shape[k]);
  return s + ")";
}

}  // namespace

NpyHeader read_npy_header(const std::string& path) {
  const Fd fd(open_read(path));
  return parse_header(fd.get(), path).header;
}

Tensor read_npy(const std::string& path) {
  const Fd fd(open_read(path));
  OpenNpy f = parse_header(fd.get(), path);
  Tensor t = uninitialised(f.header.dtype, std::move(f.header.shape), f.data_bytes, path.c_str());
  pread_all(fd.get(), t.data.data(), f.data_bytes, f.header.data_offset, path);
  return t;
}

std::vector<int64_t> read_npy_ints(const std::string& path) {
  const Fd fd(open_read(path));
  std::size_t item = 0;
  const OpenNpy f = parse_header(fd.get(), path, &item);
  if (f.header.shape.size() != 1)
    fail(path, fmt::format("shape {} has {} dimensions; expected a 1-d array",
                           shape_repr(f.header.shape), f.header.shape.size()));
  const auto n = static_cast<std::size_t>(f.header.shape[0]);
  std::vector<int64_t> out(n);
  if (item == 8) {
    pread_all(fd.get(), out.data(), f.data_bytes, f.header.data_offset, path);
  } else {
    std::vector<int32_t> tmp(n);
    pread_all(fd.get(), tmp.data(), f.data_bytes, f.header.data_offset, path);
    std::copy(tmp.begin(), tmp.end(), out.begin());
  }
  return out;
}

Tensor read_npy_slice(const std::string& path, int axis, int64_t row0, int64_t rows) {
  const Fd fd(open_read(path));
  OpenNpy f = parse_header(fd.get(), path);
  const std::vector<int64_t>& shape = f.header.shape;
  const int ndim = static_cast<int>(shape.size());
  if (axis < 0 || axis >= ndim)
    fail(path, fmt::format("cannot slice axis {} of an array of shape {}; expected an axis in "
                           "[0, {})",
                           axis, shape_str(shape), ndim));
  const int64_t n = shape[static_cast<std::size_t>(axis)];
  if (row0 < 0 || rows < 0 || row0 > n || rows > n - row0) {
    int64_t last = 0;  // row0 + rows, spelled as a sum where it overflows
    const std::string last_str = __builtin_add_overflow(row0, rows, &last)
                                     ? fmt::format("{} + {}", row0, rows)
                                     : std::to_string(last);
    fail(path, fmt::format("rows [{}, {}) along axis {} are out of range for shape {}; expected "
                           "0 <= first <= last <= {}",
                           row0, last_str, axis, shape_str(shape), n));
  }

  // The slice is `outer` contiguous runs of rows * inner bytes each, one run per index of the
  // axes before `axis`.
  std::size_t outer = 1, inner = dtype_size(f.header.dtype);
  for (int k = 0; k < axis; ++k) outer *= static_cast<std::size_t>(shape[k]);
  for (int k = axis + 1; k < ndim; ++k) inner *= static_cast<std::size_t>(shape[k]);
  std::vector<int64_t> out_shape = shape;
  out_shape[static_cast<std::size_t>(axis)] = rows;
  const std::size_t run = static_cast<std::size_t>(rows) * inner;
  Tensor t = uninitialised(f.header.dtype, std::move(out_shape), outer * run, path.c_str());
  if (run == 0) return t;
  auto* dst = static_cast<char*>(t.data.data());
  if (rows == n) {  // the runs are adjacent: one read
    pread_all(fd.get(), dst, outer * run, f.header.data_offset, path);
    return t;
  }
  const std::size_t stride = static_cast<std::size_t>(n) * inner;
  const std::size_t first = f.header.data_offset + static_cast<std::size_t>(row0) * inner;
  for (std::size_t o = 0; o < outer; ++o)
    pread_all(fd.get(), dst + o * run, run, first + o * stride, path);
  return t;
}

void check_finite(const Tensor& t, const std::string& what) {
  const int64_t n = t.numel();
  const void* p = t.data.data();
  for (int64_t i = 0; i < n; ++i) {
    bool finite = true;
    // Bit tests: immune to -ffast-math assuming finite values.
    switch (t.dtype) {
      case DType::f32: {
        uint32_t u;
        std::memcpy(&u, static_cast<const char*>(p) + 4 * i, 4);
        finite = (u & 0x7f800000u) != 0x7f800000u;
        break;
      }
      case DType::f16:
        finite = (static_cast<const uint16_t*>(p)[i] & 0x7c00u) != 0x7c00u;
        break;
      case DType::bf16:
        finite = (static_cast<const uint16_t*>(p)[i] & 0x7f80u) != 0x7f80u;
        break;
    }
    if (finite) continue;
    const float v = t.get(i);
    const char* kind = std::isnan(v) ? "nan" : v > 0 ? "inf" : "-inf";
    throw Error(
        fmt::format("{}: non-finite value ({}) at index {}", what, kind, index_str(t.shape, i)));
  }
}

std::string npy_header_bytes(DType dtype, const std::vector<int64_t>& shape) {
  return npy_header_bytes(dtype == DType::f32 ? "<f4" : dtype == DType::f16 ? "<f2" : "<u2", shape);
}

std::string npy_header_bytes(const char* descr, const std::vector<int64_t>& shape) {
  std::string dict = fmt::format("{{'descr': '{}', 'fortran_order': False, 'shape': {}, }}", descr,
                                 shape_repr(shape));
  // Version 1.0 holds a header of up to 65535 bytes; beyond that (absurdly many dims) use 2.0.
  const bool v1 = kMagicLen + 2 + 2 + dict.size() + 1 + kNpyAlign <= 65535;
  const std::size_t preamble = kMagicLen + 2 + (v1 ? 2 : 4);
  const std::size_t total = (preamble + dict.size() + 1 + kNpyAlign - 1) / kNpyAlign * kNpyAlign;
  const std::size_t hlen = total - preamble;
  dict.resize(hlen - 1, ' ');
  dict += '\n';
  std::string head(kMagic, kMagicLen);
  head += static_cast<char>(v1 ? 1 : 2);
  head += '\0';
  for (std::size_t k = 0; k < (v1 ? 2u : 4u); ++k)
    head += static_cast<char>((hlen >> (8 * k)) & 0xff);
  return head + dict;
}

void write_npy(AtomicFile& f, const Tensor& t) {
  const std::string head = npy_header_bytes(t.dtype, t.shape);
  f.write(head.data(), head.size());
  if (t.bytes() != 0) f.write(t.data.data(), t.bytes());
}

void save_npy(const std::string& path, const Tensor& t) {
  AtomicFile f(path);
  write_npy(f, t);
  f.commit();
}

}  // namespace ringattn
