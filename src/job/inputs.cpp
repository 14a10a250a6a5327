#include "job/inputs.hpp"

#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "ringattn/error.hpp"
#include "ringattn/npy.hpp"
#include "ringattn/synth.hpp"

namespace ringattn {
namespace {

// The [B, N, H, D] view of one input file's header.
struct FileDims {
  int64_t batch = 1, n = 0, heads = 0, d = 0;
  DType dtype = DType::f32;
  int ndim = kNdimBatch;
  std::vector<int64_t> shape;
};

FileDims file_dims(const std::string& path) {
  const NpyHeader h = read_npy_header(path);
  const auto& s = h.shape;
  const int ndim = static_cast<int>(s.size());
  if (ndim != kNdimBatch && ndim != kNdimNoBatch)
    throw Error(fmt::format("{}: expected a 4-d [B, N, H, D] or 3-d [N, H, D] array, got shape {}",
                            path, shape_str(s)));
  FileDims d;
  d.ndim = ndim;
  d.dtype = h.dtype;
  d.shape = s;
  if (ndim == kNdimBatch) {
    d.batch = s[0], d.n = s[1], d.heads = s[2], d.d = s[3];
  } else {
    d.n = s[0], d.heads = s[1], d.d = s[2];
  }
  if (d.n < 1)
    throw Error(
        fmt::format("{}: the sequence axis (N) is empty in shape {}; need at least one token", path,
                    shape_str(s)));
  if (d.batch < 1 || d.heads < 1 || d.d < 1)
    throw Error(
        fmt::format("{}: shape {} has an empty axis; batch, heads and head_dim must be >= 1", path,
                    shape_str(s)));
  return d;
}

// Reads the three headers and fills the problem sizes from them.
void configure_from_files(JobSpec* c) {
  const FileDims q = file_dims(c->q.path), k = file_dims(c->k.path), v = file_dims(c->v.path);
  const std::string &qp = c->q.path, &kp = c->k.path, &vp = c->v.path;
  for (const auto* f : {&k, &v})
    if (f->dtype != q.dtype)
      throw Error(fmt::format("{}: dtype {} differs from {}'s {}; q, k and v must share a dtype",
                              f == &k ? kp : vp, dtype_name(f->dtype), qp, dtype_name(q.dtype)));
  if (!head_dim_supported(q.d))
    throw Error(fmt::format("{}: head_dim (last axis) must be a multiple of {} in [{}, {}], got {}",
                            qp, kHeadDimMultiple, kMinHeadDim, kMaxHeadDim, q.d));
  if (k.d != q.d)
    throw Error(fmt::format("{}: head_dim (last axis) {} differs from {}'s {}", kp, k.d, qp, q.d));
  if (k.batch != q.batch)
    throw Error(fmt::format("{}: batch {} differs from {}'s {}", kp, k.batch, qp, q.batch));
  if (v.batch != k.batch || v.n != k.n || v.heads != k.heads || v.d != k.d)
    throw Error(fmt::format("{}: shape {} differs from {}'s {}; k and v must have the same shape",
                            vp, shape_str(v.shape), kp, shape_str(k.shape)));
  if (q.heads % k.heads != 0)
    throw Error(fmt::format(
        "{}: {} query heads are not a multiple of the {} key/value heads of {} (need Hq % Hkv "
        "== 0)",
        qp, q.heads, k.heads, kp));
  c->batch = q.batch, c->nq = q.n, c->nk = k.n, c->hq = q.heads, c->hkv = k.heads;
  c->head_dim = q.d, c->dtype = q.dtype;
  c->q.ndim = q.ndim, c->k.ndim = k.ndim, c->v.ndim = v.ndim;
}

}  // namespace

void JobSpec::use_input_files(const std::string& q_path, const std::string& k_path,
                              const std::string& v_path) {
  from_files = true;
  q.path = q_path, k.path = k_path, v.path = v_path;
  configure_from_files(this);
}

void JobSpec::use_grad_output_file(const std::string& path) {
  const FileDims g = file_dims(path);
  const std::vector<int64_t> want = batched_output() ? std::vector<int64_t>{batch, nq, hq, head_dim}
                                                     : std::vector<int64_t>{nq, hq, head_dim};
  if (g.shape != want)
    throw FieldError("do_file",
                     fmt::format("{}: shape {} differs from the queries' {}; dO is "
                                 "shaped like q",
                                 path, ringattn::shape_str(g.shape), ringattn::shape_str(want)));
  if (g.dtype != dtype && g.dtype != DType::f32)
    throw FieldError("do_file", fmt::format("{}: dtype {}; expected the run's {} or float32", path,
                                            dtype_name(g.dtype), dtype_name(dtype)));
  do_file.path = path;
  do_file.ndim = g.ndim;
}

}  // namespace ringattn

namespace ringattn::job {
namespace {

// Global token of each local index of `rank`.
std::vector<int64_t> global_tokens(const Layout& l, int rank) {
  std::vector<int64_t> g(static_cast<std::size_t>(l.tokens(rank)));
  for (const Segment& s : l.segments(rank))
    for (int64_t i = 0; i < s.count; ++i)
      g[static_cast<std::size_t>(s.local_offset + i)] = s.start + i * s.stride;
  return g;
}

Tensor generate(const JobSpec& cfg, SynthStream stream, const Layout& l, int rank, int64_t heads,
                const char* what, DType dtype) {
  const int64_t n = l.length(), local = l.tokens(rank), row = heads * cfg.head_dim;
  // Every element written below: first touched by the thread that fills it.
  Tensor t = Tensor::uninitialized(dtype, {cfg.batch, local, heads, cfg.head_dim}, what);
  const uint64_t key = synth_key(cfg.seed, stream);
  const std::size_t row_bytes = static_cast<std::size_t>(row) * dtype_size(dtype);
  char* dst = t.as<char>();
  // Runs of kRunTokens tokens of one segment: consecutive positions are
  // consecutive values of the stream when the stride is 1 (else one token each).
  constexpr int64_t kRunTokens = 256;
  struct Run {
    int64_t b, local, pos, stride, count;
  };
  std::vector<Run> runs;
  for (int64_t b = 0; b < cfg.batch; ++b)
    for (const Segment& s : l.segments(rank))
      for (int64_t i = 0; i < s.count; i += kRunTokens)
        runs.push_back({b, s.local_offset + i, s.start + i * s.stride, s.stride,
                        std::min(kRunTokens, s.count - i)});
#pragma omp parallel for schedule(dynamic, 16)
  for (std::size_t r = 0; r < runs.size(); ++r) {
    const Run& x = runs[r];
    char* out = dst + static_cast<std::size_t>(x.b * local + x.local) * row_bytes;
    if (x.stride == 1) {
      synth_fill(out, dtype, key, static_cast<uint64_t>((x.b * n + x.pos) * row), x.count * row);
      continue;
    }
    for (int64_t j = 0; j < x.count; ++j)
      synth_fill(out + static_cast<std::size_t>(j) * row_bytes, dtype, key,
                 static_cast<uint64_t>((x.b * n + x.pos + j * x.stride) * row), row);
  }
  return t;
}

// Throws "<file>: non-finite value (nan) at index [b, t, h, d]" (global index) for the first
// non-finite element of the local tensor t [B, local, H, D].
void check_finite_rows(const Tensor& t, const InputFile& f, const std::vector<int64_t>& global) {
  const int64_t local = t.shape[1], heads = t.shape[2], d = t.shape[3];
  const int64_t n = t.numel();
  for (int64_t i = 0; i < n; ++i) {
    const float x = t.get(i);
    if (std::isfinite(x)) continue;
    const int64_t b = i / (local * heads * d), li = i / (heads * d) % local;
    const int64_t h = i / d % heads, e = i % d;
    const int64_t tok = global[static_cast<std::size_t>(li)];
    const std::string index = f.ndim == kNdimBatch ? fmt::format("[{}, {}, {}, {}]", b, tok, h, e)
                                                   : fmt::format("[{}, {}, {}]", tok, h, e);
    throw Error(fmt::format("{}: non-finite value ({}) at index {}", f.path,
                            std::isnan(x) ? "nan"
                            : x > 0       ? "inf"
                                          : "-inf",
                            index));
  }
}

Tensor read_rows(const JobSpec& cfg, const InputFile& f, const Layout& l, int rank, int64_t heads,
                 DType dtype) {
  const int64_t local = l.tokens(rank), row = heads * cfg.head_dim;
  Tensor t(dtype, {cfg.batch, local, heads, cfg.head_dim}, f.path.c_str());
  const std::size_t row_bytes = static_cast<std::size_t>(row) * dtype_size(dtype);
  char* dst = t.as<char>();
  for (const Segment& s : l.segments(rank)) {
    const int64_t per_window = std::max<int64_t>(1, kReadWindowRows / s.stride);
    for (int64_t i0 = 0; i0 < s.count; i0 += per_window) {
      const int64_t m = std::min(per_window, s.count - i0);
      const int64_t first = s.start + i0 * s.stride, rows = (m - 1) * s.stride + 1;
      const Tensor w = read_npy_slice(f.path, f.axis(), first, rows);  // [B, rows, H, D]
      if (w.dtype != dtype || w.numel() != cfg.batch * rows * row)
        throw Error(fmt::format("{}: the file changed while it was read (now {} {})", f.path,
                                dtype_name(w.dtype), shape_str(w.shape)));
      const char* src = w.as<char>();
      for (int64_t b = 0; b < cfg.batch; ++b)
        for (int64_t j = 0; j < m; ++j)
          std::memcpy(
              dst + static_cast<std::size_t>(b * local + s.local_offset + i0 + j) * row_bytes,
              src + static_cast<std::size_t>(b * rows + j * s.stride) * row_bytes, row_bytes);
    }
  }
  check_finite_rows(t, f, global_tokens(l, rank));
  return t;
}

// This rank's rows of a caller's global array [B, n, H, D] (JobArrays).
Tensor copy_rows(const JobSpec& cfg, const void* base, const char* name, const Layout& l, int rank,
                 int64_t heads, DType dtype) {
  const int64_t n = l.length(), local = l.tokens(rank), row = heads * cfg.head_dim;
  Tensor t = Tensor::uninitialized(dtype, {cfg.batch, local, heads, cfg.head_dim}, name);
  const std::size_t row_bytes = static_cast<std::size_t>(row) * dtype_size(dtype);
  const char* src = static_cast<const char*>(base);
  char* dst = t.as<char>();
  for (int64_t b = 0; b < cfg.batch; ++b)
    for (const Segment& s : l.segments(rank))
      for (int64_t i = 0; i < s.count; ++i)
        std::memcpy(dst + static_cast<std::size_t>(b * local + s.local_offset + i) * row_bytes,
                    src + static_cast<std::size_t>(b * n + s.start + i * s.stride) * row_bytes,
                    row_bytes);
  check_finite_rows(t, InputFile{name, kNdimBatch}, global_tokens(l, rank));
  return t;
}

}  // namespace

RankInputs load_rank_inputs(const JobSpec& cfg, const Layout& ql, const Layout& kvl, int rank) {
  RankInputs in;
  if (cfg.from_arrays() && cfg.arrays.local) {
    const Layout all_q(LayoutKind::contiguous, ql.tokens(rank), 1);
    const Layout all_kv(LayoutKind::contiguous, kvl.tokens(rank), 1);
    in.q = copy_rows(cfg, cfg.arrays.q, "q", all_q, 0, cfg.hq, cfg.dtype);
    in.k = copy_rows(cfg, cfg.arrays.k, "k", all_kv, 0, cfg.hkv, cfg.dtype);
    in.v = copy_rows(cfg, cfg.arrays.v, "v", all_kv, 0, cfg.hkv, cfg.dtype);
  } else if (cfg.from_arrays()) {
    in.q = copy_rows(cfg, cfg.arrays.q, "q", ql, rank, cfg.hq, cfg.dtype);
    in.k = copy_rows(cfg, cfg.arrays.k, "k", kvl, rank, cfg.hkv, cfg.dtype);
    in.v = copy_rows(cfg, cfg.arrays.v, "v", kvl, rank, cfg.hkv, cfg.dtype);
  } else if (cfg.from_files) {
    in.q = read_rows(cfg, cfg.q, ql, rank, cfg.hq, cfg.dtype);
    in.k = read_rows(cfg, cfg.k, kvl, rank, cfg.hkv, cfg.dtype);
    in.v = read_rows(cfg, cfg.v, kvl, rank, cfg.hkv, cfg.dtype);
  } else {
    in.q = generate(cfg, SynthStream::q, ql, rank, cfg.hq, "generated q", cfg.dtype);
    in.k = generate(cfg, SynthStream::k, kvl, rank, cfg.hkv, "generated k", cfg.dtype);
    in.v = generate(cfg, SynthStream::v, kvl, rank, cfg.hkv, "generated v", cfg.dtype);
  }
  return in;
}

Tensor load_rank_grad_output(const JobSpec& cfg, const Layout& ql, int rank) {
  if (cfg.arrays.d_o != nullptr)
    return copy_rows(cfg, cfg.arrays.d_o, "do", ql, rank, cfg.hq, DType::f32);
  if (cfg.do_file.path.empty())
    return generate(cfg, SynthStream::d_o, ql, rank, cfg.hq, "generated dO", DType::f32);
  const DType file_dtype = read_npy_header(cfg.do_file.path).dtype;
  Tensor t = read_rows(cfg, cfg.do_file, ql, rank, cfg.hq, file_dtype);
  if (file_dtype == DType::f32) return t;
  Tensor f(DType::f32, t.shape, "dO (float32)");
  for (int64_t i = 0; i < t.numel(); ++i) f.as<float>()[i] = t.get(i);
  return f;
}

std::vector<double> load_global_rows(const JobSpec& cfg, SynthStream which, int64_t b,
                                     int64_t first, int64_t n) {
  const bool queries = which == SynthStream::q || which == SynthStream::d_o;
  const int64_t row = (queries ? cfg.hq : cfg.hkv) * cfg.head_dim;
  std::vector<double> out(static_cast<std::size_t>(n * row));
  const InputFile* f = which == SynthStream::q   ? &cfg.q
                       : which == SynthStream::k ? &cfg.k
                       : which == SynthStream::v ? &cfg.v
                                                 : &cfg.do_file;
  const bool from_file = which == SynthStream::d_o ? !cfg.do_file.path.empty() : cfg.from_files;
  const void* array = which == SynthStream::q   ? cfg.arrays.q
                      : which == SynthStream::k ? cfg.arrays.k
                      : which == SynthStream::v ? cfg.arrays.v
                                                : cfg.arrays.d_o;
  if (array != nullptr) {
    const std::size_t first_elem =
        static_cast<std::size_t>((b * (queries ? cfg.nq : cfg.nk) + first) * row);
    const DType dt = which == SynthStream::d_o ? DType::f32 : cfg.dtype;
    for (int64_t e = 0; e < n * row; ++e)
      out[static_cast<std::size_t>(e)] =
          load_as_f32(array, dt, first_elem + static_cast<std::size_t>(e));
  } else if (from_file) {
    const Tensor w = read_npy_slice(f->path, f->axis(), first, n);
    const int64_t off = f->ndim == kNdimBatch ? b * n * row : 0;
    for (int64_t e = 0; e < n * row; ++e) out[static_cast<std::size_t>(e)] = w.get(off + e);
  } else {
    const DType dt = which == SynthStream::d_o ? DType::f32 : cfg.dtype;
    Tensor t(dt, {n * row}, "generated rows");
    synth_fill(t.data.data(), dt, synth_key(cfg.seed, which),
               static_cast<uint64_t>((b * (queries ? cfg.nq : cfg.nk) + first) * row), n * row);
    for (int64_t e = 0; e < n * row; ++e) out[static_cast<std::size_t>(e)] = t.get(e);
  }
  return out;
}

Tensor load_full_grad_output(const JobSpec& cfg) {
  return load_rank_grad_output(cfg, Layout(LayoutKind::contiguous, cfg.nq, 1), 0);
}

RankInputs load_full_inputs(const JobSpec& cfg) {
  const Layout ql(LayoutKind::contiguous, cfg.nq, 1), kvl(LayoutKind::contiguous, cfg.nk, 1);
  return load_rank_inputs(cfg, ql, kvl, 0);
}

}  // namespace ringattn::job
