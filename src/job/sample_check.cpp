#include "job/sample_check.hpp"

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "job/inputs.hpp"
#include "ringattn/error.hpp"
#include "ringattn/hier_reference.hpp"
#include "ringattn/npy.hpp"
#include "ringattn/quant.hpp"
#include "ringattn/synth.hpp"

namespace ringattn::job {
namespace {

constexpr int64_t kWindowRows = 4096;  // key rows read or generated at a time
constexpr int kMaxRanges = 4 + 2 * kMaxGlobalRanges + kMaxRandomBlocks;

}  // namespace

// The first and last rows plus an even spread between: mask edges sit there.
std::vector<int64_t> sample_rows(int64_t n, int64_t k) {
  std::vector<int64_t> r;
  if (k >= n) {
    for (int64_t i = 0; i < n; ++i) r.push_back(i);
    return r;
  }
  for (int64_t i = 0; i < k; ++i) r.push_back(k == 1 ? 0 : i * (n - 1) / (k - 1));
  r.erase(std::unique(r.begin(), r.end()), r.end());
  return r;
}

namespace {

// The rank whose layout holds position t.
int rank_of(const Layout& l, int64_t t) {
  for (int r = 0; r < l.ranks(); ++r)
    if (l.local_index(r, t) >= 0) return r;
  return -1;
}

bool in_ranges(const std::vector<PosRange>& ranges, int64_t j) {
  for (const PosRange& r : ranges)
    if (j >= r.begin && j < r.end) return true;
  return false;
}

// rows x d values (storage-dtype values held as double) through the wire format and back.
void round_trip(const QuantFormat& f, double* x, int64_t rows, int64_t d) {
  std::vector<float> row(static_cast<std::size_t>(d));
  std::vector<uint8_t> buf(static_cast<std::size_t>(f.row_bytes(d)));
  const QuantRows q = QuantRows::in_buffer(f, 1, d, buf.data());
  for (int64_t r = 0; r < rows; ++r) {
    double* xr = x + r * d;
    for (int64_t e = 0; e < d; ++e) row[static_cast<std::size_t>(e)] = static_cast<float>(xr[e]);
    quantize_rows(row.data(), 1, q);
    dequantize_rows(q, 0, 1, row.data());
    for (int64_t e = 0; e < d; ++e) xr[e] = row[static_cast<std::size_t>(e)];
  }
}

}  // namespace

std::vector<double> SampledReferenceCheck::load_q(int64_t b, int64_t t) const {
  return load_global_rows(cfg_, SynthStream::q, b, t, 1);
}

void SampledReferenceCheck::load_kv(int64_t b, int64_t j0, int64_t n, std::vector<double>* k,
                                    std::vector<double>* v) const {
  *k = load_global_rows(cfg_, SynthStream::k, b, j0, n);
  *v = load_global_rows(cfg_, SynthStream::v, b, j0, n);
}

SampledReferenceCheck::SampledReferenceCheck(const JobSpec& cfg, int64_t rows, const WireView& wire,
                                             const uint8_t* keep)
    : cfg_(cfg), rows_(sample_rows(cfg.nq, rows)) {
  const int64_t hq = cfg.hq, d = cfg.head_dim, group = cfg.hq / cfg.hkv, nr = this->rows();
  const double scale = cfg.scale > 0 ? double(cfg.scale) : 1.0 / std::sqrt(double(d));
  const Mask mask = cfg.mask;
  ref_o_.assign(static_cast<std::size_t>(cfg.batch * nr * hq * d), 0.0);
  ref_lse_.assign(static_cast<std::size_t>(cfg.batch * nr * hq), -INFINITY);
  if (cfg.hier.on()) {  // the hierarchy's own float64 reference, keys streamed the same way
    const HierarchyReference ref(cfg,
                                 [this](int64_t b, int64_t j0, int64_t n, std::vector<double>* k,
                                        std::vector<double>* v) { load_kv(b, j0, n, k, v); });
    for (int64_t b = 0; b < cfg.batch; ++b)
      for (int64_t ri = 0; ri < nr; ++ri) {
        const int64_t t = rows_[static_cast<std::size_t>(ri)];
        const std::vector<double> q = load_q(b, t);
        ref.row(b, t, q.data(), ref_o_.data() + (b * nr + ri) * hq * d,
                ref_lse_.data() + (b * nr + ri) * hq);
      }
    return;
  }
  if (cfg.select.on() && keep == nullptr)
    throw Error("sampled check: K/V selection without its kept set");
  const int64_t hsel = cfg.select.heads(cfg.hq, cfg.hkv);
  const bool rest4 = cfg.select.on() && cfg.select.rest == KeepRest::int4;
  std::vector<double> k, v, k4, v4;
  for (int64_t b = 0; b < cfg.batch; ++b)
    for (int64_t ri = 0; ri < nr; ++ri) {
      const int64_t t = rows_[static_cast<std::size_t>(ri)];
      const std::vector<double> q = load_q(b, t);
      int64_t rb[kMaxRanges], re[kMaxRanges];
      bool elementwise = false;
      const int n = mask.key_ranges(t, Positions{0, 1}, cfg.nk, rb, re, kMaxRanges, &elementwise);
      // Visit every visible key once: the union of the ranges, a window at a time.
      std::vector<PosRange> spans;
      for (int i = 0; i < n; ++i)
        if (rb[i] < re[i]) spans.push_back({rb[i], re[i]});
      std::sort(spans.begin(), spans.end(),
                [](const PosRange& x, const PosRange& y) { return x.begin < y.begin; });
      std::vector<std::pair<int64_t, int64_t>> windows;  // [w0, w0 + wn) over the union
      for (std::size_t i = 0; i < spans.size();) {
        int64_t end = spans[i].end;
        const int64_t begin = spans[i].begin;
        for (++i; i < spans.size() && spans[i].begin <= end; ++i) end = std::max(end, spans[i].end);
        for (int64_t w0 = begin; w0 < end; w0 += kWindowRows)
          windows.emplace_back(w0, std::min(kWindowRows, end - w0));
      }
      std::vector<double> m(static_cast<std::size_t>(hq), -INFINITY),
          l(static_cast<std::size_t>(hq), 0.0);
      double* o = ref_o_.data() + (b * nr + ri) * hq * d;
      // Stored quantized: every key is its codes. A quantized wire: keys from other ranks.
      const int owner = cfg.kv_wire.on() && !cfg.kv_store ? rank_of(*wire.ql, t) : -1;
      const bool wired = cfg.kv_store || (owner >= 0 && !in_ranges(wire.shared->queries, t));
      for (const auto& [w0, wn] : windows) {
        load_kv(b, w0, wn, &k, &v);
        if (wired) {  // keys from other ranks arrived quantized
          const std::vector<double> kk =
              cfg.kv_wire.kivi ? kivi_keys(b, w0, wn, *wire.kvl) : std::vector<double>();
          for (int64_t j = w0; j < w0 + wn; ++j)
            if (cfg.kv_store ||
                (wire.kvl->local_index(owner, j) < 0 && !in_ranges(wire.shared->keys, j))) {
              const int64_t at = (j - w0) * cfg.hkv * d;
              if (cfg.kv_wire.kivi)
                std::copy(kk.begin() + at, kk.begin() + at + cfg.hkv * d, k.begin() + at);
              else
                round_trip(cfg.kv_wire, k.data() + at, cfg.hkv, d);
              round_trip(cfg.kv_wire, v.data() + at, cfg.hkv, d);
            }
        }
        if (rest4) {  // the keys not kept, as their INT4 round trip
          k4 = k, v4 = v;
          for (std::vector<double>* x : {&k4, &v4})
            round_trip(cfg.select.rest_format(), x->data(), wn * cfg.hkv, d);
        }
        for (int64_t j = w0; j < w0 + wn; ++j) {
          if (!mask.allows(t, j)) continue;
          for (int64_t h = 0; h < hq; ++h) {  // online softmax in double, per head
            const bool kept =
                keep == nullptr || keep[(b * hsel + h / (hq / hsel)) * cfg.nk + j] != 0;
            if (!kept && !rest4) continue;
            const std::vector<double>& ks = kept ? k : k4;
            const std::vector<double>& vs = kept ? v : v4;
            const double* kr = ks.data() + ((j - w0) * cfg.hkv + h / group) * d;
            const double* vr = vs.data() + ((j - w0) * cfg.hkv + h / group) * d;
            double s = 0;
            for (int64_t e = 0; e < d; ++e) s += q[static_cast<std::size_t>(h * d + e)] * kr[e];
            s *= scale;
            double& mh = m[static_cast<std::size_t>(h)];
            double& lh = l[static_cast<std::size_t>(h)];
            const double mnew = std::max(mh, s);
            const double alpha = std::exp(mh - mnew), p = std::exp(s - mnew);
            for (int64_t e = 0; e < d; ++e) o[h * d + e] = o[h * d + e] * alpha + p * vr[e];
            lh = lh * alpha + p;
            mh = mnew;
          }
        }
      }
      for (int64_t h = 0; h < hq; ++h) {
        const double lh = l[static_cast<std::size_t>(h)];
        if (lh == 0) continue;  // no visible key: O = 0, LSE = -inf
        for (int64_t e = 0; e < d; ++e) o[h * d + e] /= lh;
        ref_lse_[static_cast<std::size_t>((b * nr + ri) * hq + h)] =
            m[static_cast<std::size_t>(h)] + std::log(lh);
      }
    }
}

std::vector<double> SampledReferenceCheck::kivi_keys(int64_t b, int64_t w0, int64_t wn,
                                                     const Layout& kvl) const {
  const QuantFormat& f = cfg_.kv_wire;
  const int64_t g = f.group, d = cfg_.head_dim, h = cfg_.hkv;
  const int64_t e0 = w0 / g * g, e1 = std::min((w0 + wn + g - 1) / g * g, cfg_.nk), en = e1 - e0;
  std::vector<double> kx, vx;
  load_kv(b, e0, en, &kx, &vx);
  // The owners' groups within these whole ranges, numbered from 0.
  std::vector<int32_t> gid(static_cast<std::size_t>(en));
  std::vector<int64_t> seen;
  for (int64_t i = 0; i < en; ++i) {
    const int64_t key = ((e0 + i) / g) * kvl.ranks() + rank_of(kvl, e0 + i);
    auto it = std::find(seen.begin(), seen.end(), key);
    if (it == seen.end()) it = seen.insert(seen.end(), key);
    gid[static_cast<std::size_t>(i)] = static_cast<int32_t>(it - seen.begin());
  }
  const auto m = static_cast<int64_t>(seen.size());
  std::vector<float> x(kx.begin(), kx.end());
  std::vector<uint8_t> buf(static_cast<std::size_t>(f.k_bytes(1, en, m, h, d)));
  const QuantRows q = QuantRows::keys_in_buffer(f, 1, en, h, d, gid.data(), m, buf.data());
  quantize_rows(x.data(), en * h, q);
  std::vector<float> y(static_cast<std::size_t>(wn * h * d));
  dequantize_rows(q, (w0 - e0) * h, wn * h, y.data());
  return std::vector<double>(y.begin(), y.end());
}

void SampledReferenceCheck::compare(const Layout& ql, int rank, const float* o, const float* lse) {
  const int64_t n = ql.tokens(rank), hq = cfg_.hq, d = cfg_.head_dim, nr = rows();
  for (int64_t ri = 0; ri < nr; ++ri) {
    const int64_t li = ql.local_index(rank, rows_[static_cast<std::size_t>(ri)]);
    if (li < 0) continue;
    for (int64_t b = 0; b < cfg_.batch; ++b)
      for (int64_t h = 0; h < hq; ++h)
        acc_.add_row(o + ((b * n + li) * hq + h) * d, ref_o_.data() + ((b * nr + ri) * hq + h) * d,
                     d, lse[(b * hq + h) * n + li],
                     ref_lse_[static_cast<std::size_t>((b * nr + ri) * hq + h)]);
  }
}

}  // namespace ringattn::job
