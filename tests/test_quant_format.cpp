// The K/V formats' stored layout by hand (INT4 nibbles, two's complement or
// unsigned; INT8 bytes), the buffer views, sizes and names, and the format
// errors, each naming its field.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "quant_util.hpp"
#include "ringattn/error.hpp"
#include "ringattn/quant.hpp"
#include "ringattn/quant_reference.hpp"  // unpack_codes

namespace ringattn {
namespace {

using test::Block;
using test::format;

// The stored bytes of hand-built rows: INT4 channel 2c in the low nibble of
// byte c, 2c + 1 in the high nibble, 4-bit two's complement (symmetric) or
// unsigned (asymmetric); INT8 two's complement or unsigned bytes. Scale 1
// everywhere (max|x| = qmax, or max - lo = levels), so x is the code (+ lo).
TEST(Quant, StoredLayoutByHand) {
  struct Case {
    QuantFormat f;
    std::vector<float> x;        // group 0; group 1 (32 channels) are zeros
    std::vector<uint8_t> bytes;  // the first code bytes of row 1 (row 0: all zeros)
    std::vector<int> codes;      // unpack_codes of those channels
  };
  const Case cases[] = {
      {format(QuantBits::int4, 32, false),
       {7, -7, 1, -1, 0, 3, -4, 5},
       {0x97, 0xF1, 0x30, 0x5C},
       {7, -7, 1, -1, 0, 3, -4, 5}},
      {format(QuantBits::int4, 32, true),  // lo -8: codes x + 8
       {7, -8, 0, -1, -7, 6, -8, -8},
       {0x0F, 0x78, 0xE1, 0x00},
       {15, 0, 8, 7, 1, 14, 0, 0}},
      {format(QuantBits::int8, 32, false),
       {127, -127, -1, 0, 64, -64},
       {0x7F, 0x81, 0xFF, 0x00, 0x40, 0xC0},
       {127, -127, -1, 0, 64, -64}},
      {format(QuantBits::int8, 32, true),  // lo -100: codes x + 100
       {155, -100, 28, 27, -99},
       {0xFF, 0x00, 0x80, 0x7F, 0x01},
       {255, 0, 128, 127, 1}},
  };
  for (const Case& cs : cases) {
    const QuantFormat& f = cs.f;
    const int64_t d = 64, rows = 2, cb = f.code_bytes(d);
    const std::string what = f.describe();
    std::vector<float> x(static_cast<std::size_t>(rows * d), 0.0f);
    // Row 1, group 0: the case's values, the rest of the group its lo (code 0).
    const float fill = f.asymmetric ? *std::min_element(cs.x.begin(), cs.x.end()) : 0.0f;
    for (int64_t c = 0; c < 32; ++c)
      x[static_cast<std::size_t>(d + c)] =
          c < int64_t(cs.x.size()) ? cs.x[static_cast<std::size_t>(c)] : fill;
    Block blk(f, rows, d);
    quantize_rows(x.data(), rows, blk.q);
    EXPECT_EQ(blk.q.scales[f.groups(d)], 1.0f) << what;
    const uint8_t* row1 = blk.buf.data() + cb;
    for (std::size_t i = 0; i < cs.bytes.size(); ++i)
      EXPECT_EQ(int(row1[i]), int(cs.bytes[i])) << what << " byte " << i;
    for (int64_t i = int64_t(cs.bytes.size()); i < cb; ++i)  // codes 0 after
      EXPECT_EQ(int(row1[i]), 0) << what << " byte " << i;
    for (int64_t i = 0; i < cb; ++i) EXPECT_EQ(int(blk.buf[i]), 0) << what << " row 0 byte " << i;
    const std::vector<int> codes = unpack_codes(blk.q, 1);
    for (std::size_t c = 0; c < cs.codes.size(); ++c)
      EXPECT_EQ(codes[c], cs.codes[c]) << what << " channel " << c;
    std::vector<float> xq(static_cast<std::size_t>(d));
    dequantize_rows(blk.q, 1, 1, xq.data());
    for (int64_t c = 0; c < d; ++c)
      EXPECT_EQ(xq[static_cast<std::size_t>(c)], x[static_cast<std::size_t>(d + c)])
          << what << " channel " << c;
  }
  // Every 4-bit pattern decodes as the text says, in both nibbles.
  const QuantFormat s4 = format(QuantBits::int4, 32, false), a4 = format(QuantBits::int4, 32, true);
  std::vector<uint8_t> raw(64 * 2 * 4 + 16);
  for (int v = 0; v < 256; ++v) {
    raw[static_cast<std::size_t>(v % 32)] = static_cast<uint8_t>(v);
    QuantRows qs = QuantRows::in_buffer(s4, 1, 64, raw.data());
    QuantRows qa = QuantRows::in_buffer(a4, 1, 64, raw.data());
    const auto c = static_cast<std::size_t>(2 * (v % 32));
    const int lo_nib = v % 16, hi_nib = v / 16;
    EXPECT_EQ(unpack_codes(qa, 0)[c], lo_nib);
    EXPECT_EQ(unpack_codes(qa, 0)[c + 1], hi_nib);
    EXPECT_EQ(unpack_codes(qs, 0)[c], lo_nib < 8 ? lo_nib : lo_nib - 16);
    EXPECT_EQ(unpack_codes(qs, 0)[c + 1], hi_nib < 8 ? hi_nib : hi_nib - 16);
  }
}

// QuantRows::in_buffer: codes at the buffer, scales after rows x code_bytes,
// lo after rows x groups scales (asymmetric only); bytes() = rows x row_bytes;
// from(r0) advances every pointer by r0 rows.
TEST(Quant, BufferViews) {
  struct Case {
    QuantFormat f;
    int64_t d, row_bytes;
  };
  const Case cases[] = {
      {format(QuantBits::int8, 64, false), 128, 128 + 2 * 4},
      {format(QuantBits::int8, 32, true), 128, 128 + 4 * 4 * 2},
      {format(QuantBits::int4, 64, false), 128, 64 + 2 * 4},
      {format(QuantBits::int4, 32, true), 256, 128 + 8 * 4 * 2},
      {format(QuantBits::int4, 128, true), 128, 64 + 1 * 4 * 2},
  };
  for (const Case& cs : cases) {
    const QuantFormat& f = cs.f;
    const int64_t rows = 5, d = cs.d, cb = f.code_bytes(d), ng = f.groups(d);
    const std::string what = fmt::format("{} d {}", f.describe(), d);
    EXPECT_EQ(f.row_bytes(d), cs.row_bytes) << what;
    std::vector<uint8_t> buf(static_cast<std::size_t>(rows * cs.row_bytes));
    uint8_t* b = buf.data();
    const QuantRows q = QuantRows::in_buffer(f, rows, d, b);
    EXPECT_EQ(q.rows, rows);
    EXPECT_EQ(q.d, d);
    EXPECT_EQ(q.bytes(), buf.size()) << what;
    EXPECT_EQ(q.codes, b) << what;
    EXPECT_EQ(reinterpret_cast<uint8_t*>(q.scales), b + rows * cb) << what;
    if (f.asymmetric) {
      EXPECT_EQ(reinterpret_cast<uint8_t*>(q.lo), b + rows * cb + rows * ng * 4) << what;
      EXPECT_EQ(reinterpret_cast<uint8_t*>(q.lo + rows * ng), b + buf.size()) << what;
    } else {
      EXPECT_EQ(q.lo, nullptr) << what;
      EXPECT_EQ(reinterpret_cast<uint8_t*>(q.scales + rows * ng), b + buf.size()) << what;
    }
    const QuantRows v = q.from(2);
    EXPECT_EQ(v.rows, 3) << what;
    EXPECT_EQ(v.d, d) << what;
    EXPECT_EQ(v.codes, b + 2 * cb) << what;
    EXPECT_EQ(v.scales, q.scales + 2 * ng) << what;
    EXPECT_EQ(v.lo, f.asymmetric ? q.lo + 2 * ng : nullptr) << what;
    EXPECT_EQ(q.from(0).codes, q.codes) << what;
    EXPECT_EQ(q.from(rows).rows, 0) << what;
  }
}

TEST(Quant, FormatSizesAndNames) {
  EXPECT_EQ(QuantFormat{}.describe(), "none");
  EXPECT_FALSE(QuantFormat{}.on());
  EXPECT_EQ(format(QuantBits::int8, 64, false).describe(), "int8 g64");
  EXPECT_EQ(format(QuantBits::int4, 32, true).describe(), "int4 g32 asym");
  const QuantFormat f4 = format(QuantBits::int4, 32, false);
  EXPECT_EQ(f4.code_bytes(128), 64);
  EXPECT_EQ(f4.groups(128), 4);
  EXPECT_EQ(f4.qmax(), 7);
  EXPECT_EQ(f4.levels(), 15);
  const QuantFormat f8 = format(QuantBits::int8, 128, true);
  EXPECT_EQ(f8.code_bytes(128), 128);
  EXPECT_EQ(f8.qmax(), 127);
  EXPECT_EQ(f8.levels(), 255);
}

// The field a FieldError names ("" when none was thrown), its message in *what.
template <class F>
std::string field_error(F&& f, std::string* what = nullptr) {
  try {
    f();
  } catch (const FieldError& e) {
    if (what != nullptr) *what = e.what();
    return e.field();
  }
  return "";
}

TEST(Quant, ParseQuantBits) {
  EXPECT_EQ(parse_quant_bits("int8", "kv_store"), QuantBits::int8);
  EXPECT_EQ(parse_quant_bits("int4", "kv_wire"), QuantBits::int4);
  for (const char* s : {"float32", "float16", "bfloat16"})
    EXPECT_EQ(parse_quant_bits(s, "kv_store"), QuantBits::none) << s;
  for (const char* s : {"int16", "INT8", "int", "", "fp8", " int8"}) {
    std::string what;
    EXPECT_EQ(field_error([&] { parse_quant_bits(s, "kv_wire"); }, &what), "kv_wire")
        << "'" << s << "'";
    EXPECT_NE(what.find(fmt::format("'{}'", s)), std::string::npos) << what;
  }
  EXPECT_EQ(field_error([] { parse_quant_bits("int2", "kv_store"); }), "kv_store");
}

TEST(Quant, ValidateQuant) {
  for (QuantBits bits : {QuantBits::int8, QuantBits::int4})
    for (bool asym : {false, true}) {
      EXPECT_EQ(field_error([&] { validate_quant(format(bits, 32, asym), 64); }), "");
      EXPECT_EQ(field_error([&] { validate_quant(format(bits, 64, asym), 192); }), "");
      EXPECT_EQ(field_error([&] { validate_quant(format(bits, 128, asym), 256); }), "");
      EXPECT_EQ(field_error([&] { validate_quant(format(bits, 32, asym), 96); }), "");
      std::string what;
      // G = 16 and other sizes: not 32, 64 or 128.
      for (int g : {16, 0, -32, 48, 256}) {
        EXPECT_EQ(field_error([&] { validate_quant(format(bits, g, asym), 256); }, &what),
                  "kv_group")
            << g;
        EXPECT_NE(what.find("32, 64 or 128"), std::string::npos) << what;
      }
      // G not dividing D.
      EXPECT_EQ(field_error([&] { validate_quant(format(bits, 128, asym), 64); }, &what),
                "kv_group");
      EXPECT_NE(what.find("does not divide the head dim 64"), std::string::npos) << what;
      EXPECT_EQ(field_error([&] { validate_quant(format(bits, 64, asym), 96); }), "kv_group");
      EXPECT_EQ(field_error([&] { validate_quant(format(bits, 32, asym), 80); }), "kv_group");
    }
  // Quantization off: nothing to check.
  EXPECT_EQ(field_error([] { validate_quant(format(QuantBits::none, 16, false), 60); }), "");
}

}  // namespace
}  // namespace ringattn
