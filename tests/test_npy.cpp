// .npy reading and writing: round trips, files written by NumPy, every malformed input, slices,
// check_finite, and AtomicFile's no-partial-output guarantee.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "ringattn/error.hpp"
#include "ringattn/npy.hpp"

namespace ringattn {
namespace {

namespace fs = std::filesystem;

class Npy : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::path(::testing::TempDir()) /
           (std::string("ringattn_npy_") + info->name() + "_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string file(const std::string& name) const { return (dir_ / name).string(); }
  std::vector<std::string> listing() const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir_))
      names.push_back(e.path().filename().string());
    return names;
  }
  fs::path dir_;
};

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary)
      .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// A .npy file from a header dict and raw data, version `major`.0, padded like NumPy does.
std::string npy_bytes(const std::string& dict, const std::string& data = "", int major = 1) {
  const std::size_t pre = major == 1 ? 10 : 12;
  std::string h = dict;
  while ((pre + h.size() + 1) % 64 != 0) h += ' ';
  h += '\n';
  std::string out("\x93NUMPY", 6);
  out += static_cast<char>(major);
  out += '\0';
  for (std::size_t k = 0; k < pre - 8; ++k) out += static_cast<char>((h.size() >> (8 * k)) & 0xff);
  return out + h + data;
}

std::string f32_data(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4);
}

// Expects fn() to throw an Error whose single-line message names `path` and contains `part`.
template <class Fn>
void expect_error(Fn fn, const std::string& path, const std::string& part) {
  try {
    fn();
    ADD_FAILURE() << "no Error for " << path << " (wanted '" << part << "')";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find(path), std::string::npos) << m;
    EXPECT_NE(m.find(part), std::string::npos) << m;
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
  }
}

Tensor random_tensor(DType t, const std::vector<int64_t>& shape, unsigned seed) {
  Tensor x(t, shape);
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  for (int64_t i = 0; i < x.numel(); ++i) x.set(i, nd(rng));
  return x;
}

void expect_same(const Tensor& a, const Tensor& b) {
  ASSERT_EQ(a.dtype, b.dtype);
  ASSERT_EQ(a.shape, b.shape);
  ASSERT_EQ(a.bytes(), b.bytes());
  if (a.bytes() != 0) {
    EXPECT_EQ(std::memcmp(a.data.data(), b.data.data(), a.bytes()), 0);
  }
}

TEST_F(Npy, RoundTripEveryDtypeAndRank) {
  const std::vector<std::vector<int64_t>> shapes = {{}, {7}, {2, 3, 5}, {2, 5, 3, 4}, {0, 3}};
  unsigned seed = 1;
  for (const DType t : {DType::f32, DType::f16, DType::bf16}) {
    for (const auto& shape : shapes) {
      const Tensor x = random_tensor(t, shape, seed++);
      const std::string p = file("x.npy");
      save_npy(p, x);
      SCOPED_TRACE(std::string(dtype_name(t)) + " " + shape_str(shape));
      expect_same(read_npy(p), x);
      const NpyHeader h = read_npy_header(p);
      EXPECT_EQ(h.dtype, t);
      EXPECT_EQ(h.shape, shape);
      EXPECT_EQ(h.data_offset % 64, 0u);
      const std::string raw = read_bytes(p);
      EXPECT_EQ(raw.size(), h.data_offset + x.bytes());
      EXPECT_EQ(raw.substr(0, 8), std::string("\x93NUMPY\x01\x00", 8));
      EXPECT_EQ(raw[h.data_offset - 1], '\n');
      const char* descr = t == DType::f32 ? "'<f4'" : t == DType::f16 ? "'<f2'" : "'<u2'";
      EXPECT_NE(raw.find(descr), std::string::npos);
      EXPECT_EQ(listing(), std::vector<std::string>{"x.npy"});  // no temporaries left
    }
  }
}

TEST_F(Npy, WrittenHeaderIsNumPyStyle) {
  save_npy(file("a.npy"), Tensor(DType::f32, {3}));
  save_npy(file("s.npy"), Tensor(DType::f32, {}));
  save_npy(file("m.npy"), Tensor(DType::f16, {2, 3}));
  EXPECT_NE(
      read_bytes(file("a.npy")).find("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }"),
      std::string::npos);
  EXPECT_NE(read_bytes(file("s.npy")).find("'shape': (), }"), std::string::npos);
  EXPECT_NE(read_bytes(file("m.npy")).find("'shape': (2, 3), }"), std::string::npos);
}

TEST_F(Npy, HeaderSyntaxVariants) {
  const std::string data = f32_data({1, 2, 3, 4, 5, 6});
  const std::vector<std::string> dicts = {
      "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
      "{'shape': (2, 3), 'fortran_order': False, 'descr': '<f4'}",
      "{ 'fortran_order' :False,'shape':(2,3,),'descr':'<f4' , }",
      "{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": (2L, 3L)}",
      "{'descr': '=f4', 'fortran_order': False, 'shape': (2, 3)}",
  };
  for (int major : {1, 2, 3}) {
    for (const auto& d : dicts) {
      write_bytes(file("h.npy"), npy_bytes(d, data, major));
      const Tensor t = read_npy(file("h.npy"));
      ASSERT_EQ(t.shape, (std::vector<int64_t>{2, 3})) << d;
      EXPECT_EQ(t.get(5), 6.0f) << d;
    }
  }
  write_bytes(file("s.npy"),
              npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': ()}", f32_data({42})));
  const Tensor s = read_npy(file("s.npy"));
  EXPECT_TRUE(s.shape.empty());
  EXPECT_EQ(s.get(0), 42.0f);
  write_bytes(file("v.npy"), npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2,)}",
                                       f32_data({7, 8})));
  EXPECT_EQ(read_npy(file("v.npy")).shape, std::vector<int64_t>{2});
  // bfloat16 spellings.
  for (const char* descr : {"'<u2'", "'<V2'", "'|V2'"}) {
    write_bytes(file("b.npy"), npy_bytes(std::string("{'descr': ") + descr +
                                             ", 'fortran_order': False, 'shape': (1,)}",
                                         std::string("\x80\x3f", 2)));
    const Tensor b = read_npy(file("b.npy"));
    EXPECT_EQ(b.dtype, DType::bf16) << descr;
    EXPECT_EQ(b.get(0), 1.0f) << descr;
  }
  // Trailing bytes after the promised data are ignored, as NumPy does.
  write_bytes(file("t.npy"), npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (1,)}",
                                       f32_data({3, 9})));
  EXPECT_EQ(read_npy(file("t.npy")).numel(), 1);
}

TEST_F(Npy, EveryBadInputNamesTheFile) {
  const std::string ok_dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2)}";
  const std::string data = f32_data({1, 2, 3, 4});
  struct Case {
    const char* name;
    std::string bytes;
    const char* part;
  };
  const std::string good = npy_bytes(ok_dict, data);
  const std::vector<Case> cases = {
      {"empty.npy", "", "not a .npy file"},
      {"magic.npy", "PK\x03\x04 this is a zip file", "not a .npy file"},
      {"csv.npy", "1,2,3\n4,5,6\n", "not a .npy file"},
      {"preamble.npy", std::string("\x93NUMPY\x01", 7), "truncated"},
      {"hlen.npy", good.substr(0, 9), "truncated"},
      {"header.npy", good.substr(0, 40), "truncated: header promises"},
      {"data.npy", good.substr(0, good.size() - 3),
       "truncated: header promises 16 bytes of data, file has 13"},
      {"nodata.npy", good.substr(0, good.size() - data.size()), "bytes of data, file has 0"},
      {"version.npy", npy_bytes(ok_dict, data, 4), "unsupported .npy format version 4.0"},
      {"f8.npy", npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (2,)}", data),
       "unsupported dtype '<f8'; expected float32 ('<f4'), float16 ('<f2') or bfloat16"},
      {"i4.npy", npy_bytes("{'descr': '<i4', 'fortran_order': False, 'shape': (4,)}", data),
       "unsupported dtype '<i4'"},
      {"pipef4.npy", npy_bytes("{'descr': '|f4', 'fortran_order': False, 'shape': (4,)}", data),
       "unsupported dtype '|f4'"},
      {"object.npy", npy_bytes("{'descr': '|O', 'fortran_order': False, 'shape': (4,)}", data),
       "unsupported dtype '|O'"},
      {"struct.npy",
       npy_bytes("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (4,)}", data),
       "unsupported dtype [('a', '<f4')]"},
      {"be.npy", npy_bytes("{'descr': '>f4', 'fortran_order': False, 'shape': (4,)}", data),
       "big-endian dtype '>f4'"},
      {"fortran.npy", npy_bytes("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2)}", data),
       "Fortran-order"},
      {"garbage.npy", npy_bytes("this is not a dict", data), "malformed .npy header"},
      {"unclosed.npy", npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2)", data),
       "malformed .npy header"},
      {"binary.npy", npy_bytes(std::string("{'descr\0\x01': 1}", 14), data),
       "malformed .npy header"},
      {"missing.npy", npy_bytes("{'descr': '<f4', 'shape': (2, 2)}", data),
       "missing key 'fortran_order'"},
      {"extra.npy", npy_bytes(ok_dict.substr(0, ok_dict.size() - 1) + ", 'x': 1}", data),
       "unexpected key 'x'"},
      {"dup.npy",
       npy_bytes("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (4,)}", data),
       "duplicate key 'descr'"},
      {"negdim.npy", npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2, -2)}", data),
       "invalid dimension -2"},
      {"list.npy", npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': [2, 2]}", data),
       "is not a tuple"},
      {"int.npy", npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': 4}", data),
       "is not a tuple"},
      {"fbool.npy", npy_bytes("{'descr': '<f4', 'fortran_order': 0, 'shape': (4,)}", data),
       "fortran_order is 0"},
      {"huge.npy",
       npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,)}",
                 data),
       "integer out of range"},
      {"overflow.npy",
       npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296)}",
                 data),
       "too large"},
  };
  for (const Case& c : cases) {
    const std::string p = file(c.name);
    write_bytes(p, c.bytes);
    SCOPED_TRACE(c.name);
    expect_error([&] { read_npy(p); }, p, c.part);
    expect_error([&] { read_npy_header(p); }, p, c.part);
    expect_error([&] { read_npy_slice(p, 0, 0, 1); }, p, c.part);
  }
  expect_error([&] { read_npy(file("absent.npy")); }, file("absent.npy"),
               "cannot open: No such file or directory");
  expect_error([&] { read_npy(dir_.string()); }, dir_.string(), "not a regular file");
}

TEST_F(Npy, SliceMatchesFullRead) {
  for (const DType t : {DType::f32, DType::bf16}) {
    const std::vector<int64_t> shape = {3, 10, 4, 6};
    const Tensor full = random_tensor(t, shape, 99);
    save_npy(file("x.npy"), full);
    for (int axis = 0; axis < 4; ++axis) {
      const int64_t n = shape[static_cast<std::size_t>(axis)];
      for (const auto& [row0, rows] : std::vector<std::pair<int64_t, int64_t>>{
               {0, n}, {0, 1}, {1, n - 1}, {n - 1, 1}, {n / 2, 0}, {1, n / 2}}) {
        SCOPED_TRACE(fmt::format("axis {} rows [{}, {})", axis, row0, row0 + rows));
        const Tensor s = read_npy_slice(file("x.npy"), axis, row0, rows);
        std::vector<int64_t> want_shape = shape;
        want_shape[static_cast<std::size_t>(axis)] = rows;
        ASSERT_EQ(s.shape, want_shape);
        ASSERT_EQ(s.dtype, t);
        // Compare every element with the full array at the same multi-index.
        for (int64_t i = 0; i < s.numel(); ++i) {
          int64_t rem = i, src = 0, mult = 1;
          std::vector<int64_t> idx(4);
          for (int k = 3; k >= 0; --k) {
            idx[k] = rem % want_shape[k];
            rem /= want_shape[k];
          }
          idx[static_cast<std::size_t>(axis)] += row0;
          for (int k = 3; k >= 0; --k) {
            src += idx[k] * mult;
            mult *= shape[k];
          }
          ASSERT_EQ(s.get(i), full.get(src)) << i;
        }
      }
    }
  }
}

TEST_F(Npy, SliceValidatesAxisAndRange) {
  const std::string p = file("x.npy");
  save_npy(p, Tensor(DType::f32, {2, 8, 3}));
  expect_error([&] { read_npy_slice(p, 3, 0, 1); }, p, "cannot slice axis 3");
  expect_error([&] { read_npy_slice(p, -1, 0, 1); }, p, "cannot slice axis -1");
  expect_error([&] { read_npy_slice(p, 1, 6, 3); }, p, "rows [6, 9) along axis 1 are out of range");
  expect_error([&] { read_npy_slice(p, 1, -1, 2); }, p, "out of range");
  expect_error([&] { read_npy_slice(p, 0, 0, -1); }, p, "out of range");
  expect_error([&] { read_npy_slice(p, 0, 3, 0); }, p, "out of range");
  // Found by fuzz_npy: the message's last row (row0 + rows) overflowed int64.
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  expect_error([&] { read_npy_slice(p, 1, 1, kMax); }, p,
               "rows [1, 1 + 9223372036854775807) along axis 1 are out of range");
  expect_error([&] { read_npy_slice(p, 1, kMax, 1); }, p, "out of range");
  EXPECT_EQ(read_npy_slice(p, 1, 8, 0).numel(), 0);
  save_npy(file("s.npy"), Tensor(DType::f32, {}));
  expect_error([&] { read_npy_slice(file("s.npy"), 0, 0, 1); }, file("s.npy"),
               "cannot slice axis 0");
}

TEST_F(Npy, CheckFiniteReportsFirstIndex) {
  for (const DType t : {DType::f32, DType::f16, DType::bf16}) {
    Tensor x(t, {2, 3, 4});
    for (int64_t i = 0; i < x.numel(); ++i) x.set(i, static_cast<float>(i) - 10.0f);
    EXPECT_NO_THROW(check_finite(x, "q.npy"));
    const float inf = std::numeric_limits<float>::infinity();
    const struct {
      float v;
      const char* kind;
    } bad[] = {{std::nanf(""), "(nan)"}, {inf, "(inf)"}, {-inf, "(-inf)"}};
    for (const auto& b : bad) {
      Tensor y(t, {2, 3, 4});
      y.set(1 * 12 + 2 * 4 + 3, b.v);  // [1, 2, 3]
      y.set(23, b.v);                  // a later one is not the one reported
      expect_error([&] { check_finite(y, "q.npy"); }, "q.npy",
                   std::string("non-finite value ") + b.kind + " at index [1, 2, 3]");
    }
  }
  Tensor s(DType::f32, {});
  s.set(0, std::nanf(""));
  expect_error([&] { check_finite(s, "lse"); }, "lse: non-finite value (nan) at index []", "");
  EXPECT_NO_THROW(check_finite(Tensor(DType::f32, {0, 4}), "empty"));
}

TEST_F(Npy, AtomicFileCommitAndAbandon) {
  const std::string p = file("out.npy");
  {
    AtomicFile f(p);
    EXPECT_EQ(fs::path(f.temp_path()).parent_path(), fs::path(p).parent_path());
    EXPECT_EQ(f.temp_path().rfind(p + ".tmp." + std::to_string(::getpid()) + ".", 0), 0u)
        << f.temp_path();
    EXPECT_TRUE(fs::exists(f.temp_path()));  // opened at construction
    f.write("abc", 3);
    EXPECT_FALSE(fs::exists(p));
  }  // not committed
  EXPECT_TRUE(listing().empty());
  {
    AtomicFile f(p);
    f.write("hello ", 6);
    f.write("world", 5);
    f.commit();
    EXPECT_THROW(f.write("x", 1), Error);
  }
  EXPECT_EQ(read_bytes(p), "hello world");
  EXPECT_EQ(listing(), std::vector<std::string>{"out.npy"});
  {  // replacing an existing file: the old content survives until commit
    AtomicFile f(p);
    f.write("new", 3);
    EXPECT_EQ(read_bytes(p), "hello world");
    f.commit();
  }
  EXPECT_EQ(read_bytes(p), "new");
  // Two live AtomicFiles for one path get distinct temporaries.
  AtomicFile a(p), b(p);
  EXPECT_NE(a.temp_path(), b.temp_path());
}

TEST_F(Npy, AtomicFileFailsEarlyOnUnwritableTarget) {
  const std::string p = file("no/such/dir/out.npy");
  expect_error([&] { AtomicFile f(p); }, "cannot write output file '" + p + "'",
               "No such file or directory");
  expect_error([&] { save_npy(p, Tensor(DType::f32, {2})); }, p, "cannot write output file");
  expect_error([&] { AtomicFile f(dir_.string()); }, dir_.string(), "Is a directory");
  if (::geteuid() != 0) {  // root ignores directory permissions
    fs::create_directory(file("ro"));
    fs::permissions(file("ro"), fs::perms::owner_read | fs::perms::owner_exec);
    expect_error([&] { AtomicFile f(file("ro/out.npy")); }, file("ro/out.npy"),
                 "Permission denied");
    fs::permissions(file("ro"), fs::perms::owner_all);
  }
  EXPECT_TRUE(listing().empty() || listing() == std::vector<std::string>{"ro"});
  if (fs::exists(file("ro"))) {
    EXPECT_TRUE(fs::is_empty(file("ro")));
  }
}

// ---- Interoperability with NumPy itself ----

bool have_numpy() {
  static const bool ok = ::access("/usr/bin/python3", X_OK) == 0 &&
                         std::system("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") == 0;
  return ok;
}

// Runs a Python snippet with numpy imported as np and D bound to the test directory.
void python(const fs::path& dir, const std::string& code) {
  const std::string cmd =
      "cd '" + dir.string() + "' && /usr/bin/python3 -c \"import numpy as np\n" + code + "\"";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
}

TEST_F(Npy, ReadsFilesWrittenByNumPy) {
  if (!have_numpy()) GTEST_SKIP() << "/usr/bin/python3 with numpy not available";
  python(dir_,
         "x = (np.arange(2*3*4*5, dtype=np.float32).reshape(2, 3, 4, 5) * 0.25 - 7)\n"
         "np.save('f32.npy', x)\n"
         "np.save('f16.npy', x.astype(np.float16))\n"
         "np.save('bf16.npy', (x.view(np.uint32) >> 16).astype(np.uint16))\n"
         "np.save('v2.npy', np.frombuffer((x.view(np.uint32) >> 16).astype(np.uint16).tobytes(), "
         "dtype='V2').reshape(x.shape))\n"
         "np.save('scalar.npy', np.float32(3.5))\n"
         "np.save('vec.npy', np.arange(5, dtype=np.float32))\n"
         "np.save('f8.npy', x.astype(np.float64))\n"
         "np.save('be.npy', x.astype('>f4'))\n"
         "np.save('fortran.npy', np.asfortranarray(x))\n"
         "np.lib.format.write_array(open('ver2.npy', 'wb'), x, version=(2, 0))\n"
         "np.lib.format.write_array(open('ver3.npy', 'wb'), x, version=(3, 0))\n");
  const std::vector<int64_t> shape = {2, 3, 4, 5};
  auto value = [](int64_t i) { return static_cast<float>(i) * 0.25f - 7.0f; };
  for (const char* name : {"f32.npy", "ver2.npy", "ver3.npy"}) {
    const Tensor t = read_npy(file(name));
    ASSERT_EQ(t.dtype, DType::f32) << name;
    ASSERT_EQ(t.shape, shape) << name;
    for (int64_t i = 0; i < t.numel(); ++i) ASSERT_EQ(t.get(i), value(i)) << name << " " << i;
  }
  const Tensor h = read_npy(file("f16.npy"));
  ASSERT_EQ(h.dtype, DType::f16);
  ASSERT_EQ(h.shape, shape);
  for (int64_t i = 0; i < h.numel(); ++i) ASSERT_EQ(h.get(i), round_to(DType::f16, value(i))) << i;
  for (const char* name : {"bf16.npy", "v2.npy"}) {
    const Tensor b = read_npy(file(name));
    ASSERT_EQ(b.dtype, DType::bf16) << name;
    ASSERT_EQ(b.shape, shape) << name;
    for (int64_t i = 0; i < b.numel(); ++i) {  // truncation: exact for these short values
      ASSERT_EQ(b.get(i), value(i)) << name << " " << i;
    }
  }
  const Tensor s = read_npy(file("scalar.npy"));
  EXPECT_TRUE(s.shape.empty());
  EXPECT_EQ(s.get(0), 3.5f);
  EXPECT_EQ(read_npy(file("vec.npy")).shape, std::vector<int64_t>{5});
  const Tensor slice = read_npy_slice(file("ver2.npy"), 1, 1, 2);
  EXPECT_EQ(slice.shape, (std::vector<int64_t>{2, 2, 4, 5}));
  EXPECT_EQ(slice.get(0), value(20));
  expect_error([&] { read_npy(file("f8.npy")); }, file("f8.npy"), "unsupported dtype '<f8'");
  expect_error([&] { read_npy(file("be.npy")); }, file("be.npy"), "big-endian dtype '>f4'");
  expect_error([&] { read_npy(file("fortran.npy")); }, file("fortran.npy"), "Fortran-order");
}

TEST_F(Npy, NumPyReadsOurFiles) {
  if (!have_numpy()) GTEST_SKIP() << "/usr/bin/python3 with numpy not available";
  Tensor a(DType::f32, {2, 3, 4}), b(DType::f16, {5}), c(DType::bf16, {3, 2}), s(DType::f32, {});
  for (int64_t i = 0; i < a.numel(); ++i) a.set(i, static_cast<float>(i) * 0.5f - 3.0f);
  for (int64_t i = 0; i < b.numel(); ++i) b.set(i, static_cast<float>(i) / 4.0f);
  for (int64_t i = 0; i < c.numel(); ++i) c.set(i, static_cast<float>(i) - 2.0f);
  s.set(0, -1.25f);
  save_npy(file("a.npy"), a);
  save_npy(file("b.npy"), b);
  save_npy(file("c.npy"), c);
  save_npy(file("s.npy"), s);
  python(dir_,
         "a = np.load('a.npy'); assert a.dtype == np.float32 and a.shape == (2, 3, 4)\n"
         "assert (a == np.arange(24, dtype=np.float32).reshape(2, 3, 4) * 0.5 - 3).all()\n"
         "b = np.load('b.npy'); assert b.dtype == np.float16 and (b == np.arange(5) / 4).all()\n"
         "c = np.load('c.npy'); assert c.dtype == np.uint16 and c.shape == (3, 2)\n"
         "assert ((c.astype(np.uint32) << 16).view(np.float32) == np.arange(6).reshape(3, 2) - "
         "2).all()\n"
         "s = np.load('s.npy'); assert s.shape == () and s == -1.25\n");
}

// A process killed outright leaves <path>.tmp.<pid>.<n>: the next writer of the same
// output removes those of dead processes, and nothing else.
TEST_F(Npy, StaleTemporariesOfDeadProcessesAreRemoved) {
  const pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  ASSERT_GT(child, 0);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);  // now a pid of no process
  const std::string out = file("o.npy");
  const std::string dead = fmt::format("{}.tmp.{}.3", out, child);
  const std::string live = fmt::format("{}.tmp.{}.7", out, ::getppid());  // a running process
  const std::string other = out + ".tmp.notapid";
  for (const std::string& f : {dead, live, other}) std::ofstream(f) << "x";
  save_npy(out, Tensor(DType::f32, {2}, "t"));
  EXPECT_FALSE(std::filesystem::exists(dead));
  EXPECT_TRUE(std::filesystem::exists(live));
  EXPECT_TRUE(std::filesystem::exists(other));
  EXPECT_TRUE(std::filesystem::exists(out));
}

// A zombie (a killed rank its parent has not reaped) will never write again, and a
// process that started after the temporary was last written is not its writer (the
// pid was reused): both temporaries are stale; a live writer's is kept.
TEST_F(Npy, TemporariesOfZombiesAndReusedPidsAreStale) {
  const pid_t zombie = ::fork();
  if (zombie == 0) ::_exit(0);
  ASSERT_GT(zombie, 0);
  int pipefd[2];
  ASSERT_EQ(::pipe(pipefd), 0);
  const pid_t sleeper = ::fork();  // lives until the pipe closes
  if (sleeper == 0) {
    ::close(pipefd[1]);
    char c;
    while (::read(pipefd[0], &c, 1) > 0) {
    }
    ::_exit(0);
  }
  ASSERT_GT(sleeper, 0);
  ::close(pipefd[0]);
  // Wait until the first child is a zombie (it exited; not reaped yet).
  for (int i = 0; i < 500; ++i) {
    std::ifstream st(fmt::format("/proc/{}/stat", zombie));
    std::string pid, comm, state;
    st >> pid >> comm >> state;
    if (state == "Z") break;
    ::usleep(10000);
  }
  const std::string out = file("o.npy");
  const std::string of_zombie = fmt::format("{}.tmp.{}.1", out, zombie);
  const std::string reused = fmt::format("{}.tmp.{}.2", out, sleeper);
  const std::string live = fmt::format("{}.tmp.{}.3", out, sleeper);
  for (const std::string& f : {of_zombie, reused, live}) std::ofstream(f) << "x";
  // `reused` was last written an hour before its pid's process started.
  const auto hour_ago = std::filesystem::file_time_type::clock::now() - std::chrono::hours(1);
  std::filesystem::last_write_time(reused, hour_ago);
  save_npy(out, Tensor(DType::f32, {2}, "t"));
  EXPECT_FALSE(std::filesystem::exists(of_zombie));
  EXPECT_FALSE(std::filesystem::exists(reused));
  EXPECT_TRUE(std::filesystem::exists(live));
  ::close(pipefd[1]);
  int status = 0;
  EXPECT_EQ(::waitpid(sleeper, &status, 0), sleeper);
  EXPECT_EQ(::waitpid(zombie, &status, 0), zombie);
}

TEST_F(Npy, SameFileComparesFilesNotStrings) {
  save_npy(file("a.npy"), Tensor(DType::f32, {2}, "t"));
  std::filesystem::create_directory(file("d"));
  EXPECT_TRUE(same_file(file("a.npy"), file("d") + "/../a.npy"));
  std::filesystem::create_symlink(file("a.npy"), file("l.npy"));
  EXPECT_TRUE(same_file(file("l.npy"), file("a.npy")));
  EXPECT_TRUE(same_file(file("new.npy"), file("d") + "/../new.npy"));  // neither exists yet
  EXPECT_FALSE(same_file(file("a.npy"), file("d/a.npy")));
}

}  // namespace
}  // namespace ringattn
