// Synthetic inputs that do not depend on how the sequence is split.
//
// A counter-based generator: value `index` of stream `stream` under `seed` is
// a pure function of those three numbers (a splitmix64 hash of them, turned
// into a standard normal by Box-Muller). Any rank can therefore generate
// exactly its own tokens, in any order and with any number of threads, and
// the global tensor is the same for every rank count and layout.
//
// Convention for a global tensor [B, N, H, D] (row-major): element
// ((b N + t) H + h) D + d is value ((b N + t) H + h) D + d of its stream, so
// token t of batch b is the contiguous run of H D values starting there.
#pragma once

#include <cstdint>

#include "ringattn/dtype.hpp"

namespace ringattn {

// One stream per generated tensor of a problem.
enum class SynthStream : uint64_t { q = 0, k = 1, v = 2, d_o = 3 };  // d_o: the backward's dO

// splitmix64's output function (Steele, Lea, Flood 2014): a bijective 64-bit mix.
inline uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// The key of one (seed, stream): hash once, then synth_normal_at per element.
uint64_t synth_key(uint64_t seed, SynthStream stream);

// Standard normal value number `index` of the stream keyed by `key`, in float32.
float synth_normal_at(uint64_t key, uint64_t index);

// dst[i] = synth_normal_at(key, first + i) rounded to `dtype`, for i in [0, count).
void synth_fill(void* dst, DType dtype, uint64_t key, uint64_t first, int64_t count);

}  // namespace ringattn
