// Helpers shared by the kernel and merge tests: random inputs in a storage
// dtype, and running the kernel into freshly allocated float32 outputs.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "ringattn/kernel.hpp"
#include "ringattn/layout.hpp"
#include "ringattn/tensor.hpp"

namespace ringattn::test {

#ifndef RINGATTN_TEST_SANITIZED
#define RINGATTN_TEST_SANITIZED 0
#endif
// True in the ASan/UBSan build, where the largest cases are scaled down.
inline constexpr bool kSanitized = RINGATTN_TEST_SANITIZED != 0;

// Standard-normal values rounded to `dt`.
inline Tensor random_tensor(DType dt, std::vector<int64_t> shape, uint64_t seed, float sd = 1.0f) {
  Tensor t(dt, std::move(shape));
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, sd);
  for (int64_t i = 0; i < t.numel(); ++i) t.set(i, nd(rng));
  return t;
}

struct Problem {
  Tensor q, k, v;
  AttentionArgs args;
};

inline Problem make_problem(int64_t b, int64_t nq, int64_t nk, int64_t hq, int64_t hkv, int64_t d,
                            DType dt, uint64_t seed) {
  Problem p;
  p.q = random_tensor(dt, {b, nq, hq, d}, seed);
  p.k = random_tensor(dt, {b, nk, hkv, d}, seed + 1);
  p.v = random_tensor(dt, {b, nk, hkv, d}, seed + 2);
  AttentionArgs& a = p.args;
  a.batch = b, a.nq = nq, a.nk = nk, a.hq = hq, a.hkv = hkv, a.head_dim = d, a.dtype = dt;
  a.q = p.q.data.data(), a.k = p.k.data.data(), a.v = p.v.data.data();
  return p;
}

struct Output {
  std::vector<float> o, lse;
  KernelStats stats;
};

inline Output run_kernel(const AttentionArgs& a, Isa isa = Isa::automatic, int threads = 0) {
  Output r;
  r.o.assign(static_cast<std::size_t>(a.batch * a.nq * a.hq * a.head_dim), 0.0f);
  r.lse.assign(static_cast<std::size_t>(a.batch * a.hq * a.nq), 0.0f);
  KernelOptions opt;
  opt.isa = isa;
  opt.threads = threads;
  r.stats = attention_forward(a, r.o.data(), r.lse.data(), opt);
  return r;
}

// The sparse patterns users know, alone and combined, for a self-attention
// sequence of n tokens (positions 0..n-1).
struct NamedMask {
  std::string name;
  Mask mask;
};
inline std::vector<NamedMask> sparse_patterns(int64_t n) {
  std::vector<NamedMask> v;
  Mask m = Mask::causal(0);
  m.lo = -63;  // Mistral: causal + left window W - 1
  v.push_back({"causal window 64", m});
  v.push_back({"window -40..+25", Mask::band(-40, 25)});
  m.sinks = 4;
  v.push_back({"causal window 64 + 4 sinks", m});
  Mask d = Mask::band(-96, 96);
  d.dilation = 3;
  v.push_back({"dilated window 96 step 3", d});
  Mask g = Mask::band(-32, 32);
  g.n_global = 2;
  g.global[0] = {0, 1};              // [CLS]
  g.global[1] = {n / 2, n / 2 + 5};  // a marked phrase
  v.push_back({"window 32 + global tokens", g});
  Mask lf = g;
  lf.dilation = 2;
  lf.sinks = 3;
  lf.limit = 0;
  v.push_back({"longformer causal: window + global + dilated + sinks", lf});
  Mask bb = Mask::band(1, 0);  // no band: blocks only
  bb.blocks.size = 32, bb.blocks.window = 1, bb.blocks.global = 1, bb.blocks.random = 2;
  bb.blocks.seed = 9, bb.blocks.key_blocks = (n + 31) / 32;
  v.push_back({"bigbird blocks 32: window 1, global 1, random 2", bb});
  Mask al = Mask::causal(0);  // hierarchical level 1: the window down to a 16-block boundary
  al.lo = -40, al.align_lo = 16;
  v.push_back({"causal window 41 aligned to 16-blocks", al});
  Mask a2 = Mask::band(-30, 20);  // two-sided, both ends aligned, with sinks
  a2.align_lo = 16, a2.align_hi = 8, a2.sinks = 2;
  v.push_back({"window -30..+20 aligned 16/8 + 2 sinks", a2});
  Mask empty = Mask::band(5, 4);
  empty.limit = -1;
  v.push_back({"nothing visible", empty});
  return v;
}

// Rows to check: all when few, else the first and last few plus a spread.
inline std::vector<int64_t> check_rows(int64_t n, int64_t max_rows = 96) {
  std::vector<int64_t> rows;
  if (n <= max_rows) {
    for (int64_t i = 0; i < n; ++i) rows.push_back(i);
    return rows;
  }
  for (int64_t i = 0; i < 8; ++i) rows.push_back(i);
  const int64_t mid = max_rows - 16;
  for (int64_t i = 1; i <= mid; ++i) rows.push_back(8 + (n - 16) * i / (mid + 1));
  for (int64_t i = n - 8; i < n; ++i) rows.push_back(i);
  return rows;
}

// BigBird's block pattern written out from its documented definition, sharing
// no code with BlockSparse: query block bq sees key block bk when |bq - bk| <=
// window, when either is one of the first `global` blocks, or when bk is one of
// bq's `random` blocks: splitmix64(seed + 0x9e3779b97f4a7c15 * (bq * 8 + r + 1))
// mod key_blocks, r < random (8 = the most random blocks a mask takes).
inline bool bigbird_reference(int64_t bq, int64_t bk, int64_t window, int64_t global, int random,
                              uint64_t seed, int64_t key_blocks) {
  if (bq < 0 || bk < 0) return false;
  if ((bq > bk ? bq - bk : bk - bq) <= window) return true;
  if (bq < global || bk < global) return true;
  for (int r = 0; r < random; ++r) {
    uint64_t x = seed + 0x9e3779b97f4a7c15ull * static_cast<uint64_t>(bq * 8 + r + 1);
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    x ^= x >> 31;
    if (static_cast<int64_t>(x % static_cast<uint64_t>(key_blocks)) == bk) return true;
  }
  return false;
}

// An int32 .npy as ringattn writes them (version 1.0; routing outputs, which
// read_npy does not take): its header text, shape and values. Empty when the
// file cannot be read.
struct IntArray {
  std::string header;
  std::vector<int64_t> shape;
  std::vector<int32_t> v;
};
inline IntArray read_npy_i32(const std::string& path) {
  IntArray a;
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return a;
  unsigned char pre[10];
  if (std::fread(pre, 1, sizeof(pre), f) == sizeof(pre)) {
    a.header.assign(static_cast<std::size_t>(pre[8] | pre[9] << 8), ' ');
    if (std::fread(a.header.data(), 1, a.header.size(), f) != a.header.size()) a.header.clear();
  }
  const std::size_t open = a.header.find("'shape': (");
  for (std::size_t i = open == std::string::npos ? std::string::npos : open + 10;
       i < a.header.size() && a.header[i] != ')';) {
    a.shape.push_back(std::stoll(a.header.substr(i)));
    i = a.header.find_first_of(",)", i);
    if (i < a.header.size() && a.header[i] == ',') ++i;
    while (i < a.header.size() && a.header[i] == ' ') ++i;
  }
  int32_t x = 0;
  while (std::fread(&x, sizeof(x), 1, f) == 1) a.v.push_back(x);
  std::fclose(f);
  return a;
}

// ||x - ref||_F / ||ref||_F of float32 results against float64 ones (absolute
// where ref is 0); NaN if x holds one.
inline double rel_fro(const std::vector<float>& x, const std::vector<double>& ref) {
  double e2 = 0.0, r2 = 0.0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double diff = double(x[i]) - ref[i];
    e2 += diff * diff;
    r2 += ref[i] * ref[i];
  }
  return r2 > 0.0 ? std::sqrt(e2 / r2) : std::sqrt(e2);
}

// Local rows [B, local, row] of rank r placed at their global positions of
// [B, n, row] (a ring test gathering each rank's outputs).
inline void scatter_rows(const Layout& l, int r, int64_t b, int64_t n, int64_t row,
                         const float* local, std::vector<float>& global) {
  const int64_t nl = l.tokens(r);
  for (int64_t bi = 0; bi < b; ++bi)
    for (const Segment& s : l.segments(r))
      for (int64_t i = 0; i < s.count; ++i)
        for (int64_t x = 0; x < row; ++x)
          global[static_cast<std::size_t>((bi * n + s.start + i * s.stride) * row + x)] =
              local[static_cast<std::size_t>((bi * nl + s.local_offset + i) * row + x)];
}

}  // namespace ringattn::test
