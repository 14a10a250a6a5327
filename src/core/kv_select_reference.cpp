// The float64 reference of K/V selection (see ringattn/kv_select_reference.hpp).
//
// Per (batch b, K/V head g), with the Q of g's query heads and g's K, V in double:
//   A. lse[h][i]  = log sum_j exp(s_ij) over the visible keys (one row of scores)
//   B. imp_h[j]   = sum_i exp(s_ij - lse[h][i]), i ascending: key tiles spread over
//                   threads, each recomputing one tile of scores per row
//      selection importance: imp_h (per head) or sum_h imp_h, h ascending (per kv-head)
//   C. kept set of each selection head (rank, sinks, recent) and its margins
//   D. attention of every row over the kept keys (drop) or over every visible
//      key with the INT4 K, V for the others (int4)
#include "ringattn/kv_select_reference.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <numeric>
#include <vector>

#include "ringattn/error.hpp"
#include "ringattn/quant_reference.hpp"

namespace ringattn {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();
constexpr int64_t kTile = 64;  // keys per task of step B

std::size_t at(int64_t i) {
  return static_cast<std::size_t>(i);
}

double dot(const double* a, const double* b, int64_t d) {
  double s = 0.0;
  for (int64_t e = 0; e < d; ++e) s += a[e] * b[e];
  return s;
}

// n = ceil(p nk), a product within 1e-9 (relative) of an integer counting as that integer.
int64_t rank_count(double p, int64_t nk) {
  const double x = p * static_cast<double>(nk);
  const double r = std::round(x);
  const double n = std::abs(x - r) <= 1e-9 * x ? r : std::ceil(x);
  return std::min(nk, static_cast<int64_t>(n));
}

void check(const AttentionArgs& a, const KvSelect& sel, const QuantFormat& int4) {
  a.validate_args(HeadDims::any);
  if (a.quantized()) throw Error("kv_select_reference: quantized K/V arguments are not supported");
  if (a.hier.on()) throw Error("kv_select_reference: a hierarchy is not supported");
  if (a.kpos.start != 0 || a.kpos.stride != 1)
    throw Error(fmt::format(
        "kv_select_reference: the keys must be the whole sequence at positions 0, 1, ... "
        "(got start {}, stride {})",
        a.kpos.start, a.kpos.stride));
  if (!(sel.keep > 0.0 && sel.keep <= 1.0))
    throw FieldError("kv_keep", fmt::format("must be in (0, 1], got {}", sel.keep));
  if (sel.keep_recent < 0)
    throw FieldError("kv_keep_recent", fmt::format("must be >= 0, got {}", sel.keep_recent));
  if (sel.rest == KeepRest::int4) {
    if (int4.bits != QuantBits::int4)
      throw Error(fmt::format("kv_select_reference: rest int4 needs an INT4 format, got {}",
                              int4.describe()));
    validate_quant(int4, a.head_dim);
  }
}

// Kept set and margins of one selection head from its importance imp[0 .. nk).
void select(const double* imp, int64_t nk, int64_t n, int64_t sinks, int64_t recent, uint8_t* keep,
            double* margin) {
  std::vector<int64_t> order(at(nk));
  std::iota(order.begin(), order.end(), int64_t{0});
  std::sort(order.begin(), order.end(),
            [imp](int64_t x, int64_t y) { return imp[x] > imp[y] || (imp[x] == imp[y] && x < y); });
  for (int64_t j = 0; j < nk; ++j) keep[j] = 0;
  for (int64_t r = 0; r < n; ++r) keep[order[at(r)]] = 1;
  for (int64_t j = 0; j < std::min(sinks, nk); ++j) keep[j] = 1;
  for (int64_t j = nk - std::min(recent, nk); j < nk; ++j) keep[j] = 1;
  const double t = n > 0 ? imp[order[at(n - 1)]] : 0.0;
  const double denom = std::max(t, std::numeric_limits<double>::min());
  for (int64_t j = 0; j < nk; ++j) margin[j] = n > 0 ? std::abs(imp[j] - t) / denom : 0.0;
}

}  // namespace

SelectReference kv_select_reference(const AttentionArgs& a, const KvSelect& sel,
                                    const QuantFormat& int4) {
  check(a, sel, int4);
  const int64_t B = a.batch, Nq = a.nq, Nk = a.nk, Hq = a.hq, Hkv = a.hkv, D = a.head_dim;
  const int64_t G = Hq / Hkv;
  const bool per_head = sel.per == KeepPer::head;
  const int64_t Hsel = sel.heads(Hq, Hkv);
  const bool int4_rest = sel.rest == KeepRest::int4;
  const double scale =
      a.scale != 0.0f ? static_cast<double>(a.scale) : 1.0 / std::sqrt(static_cast<double>(D));
  const int64_t n = rank_count(sel.keep, Nk);

  SelectReference res;
  res.importance.assign(at(B * Hsel * Nk), 0.0);
  res.keep.assign(at(B * Hsel * Nk), 0);
  res.margin.assign(at(B * Hsel * Nk), 0.0);
  res.o.assign(at(B * Nq * Hq * D), 0.0);
  res.lse.assign(at(B * Hq * Nq), kNegInf);

  std::vector<double> kd(at(Nk * D)), vd(at(Nk * D));  // K, V of one K/V head, [Nk, D]
  std::vector<double> kq, vq;                          // their INT4 quantize-dequantize
  if (int4_rest) kq.resize(at(Nk * D)), vq.resize(at(Nk * D));
  std::vector<double> qd(at(G * Nq * D));  // Q of the group's heads, [G, Nq, D]
  std::vector<double> lse(at(G * Nq));     // step A, [G, Nq]
  std::vector<double> imp(at(G * Nk));     // step B, [G, Nk]
  const int64_t tiles = (Nk + kTile - 1) / kTile;

  for (int64_t b = 0; b < B; ++b) {
    for (int64_t g = 0; g < Hkv; ++g) {
#pragma omp parallel
      {
        std::vector<float> row(at(D));
#pragma omp for schedule(static)
        for (int64_t j = 0; j < Nk; ++j) {
          const std::size_t src = at(((b * Nk + j) * Hkv + g) * D);
          for (int pass = 0; pass < 2; ++pass) {
            const void* x = pass == 0 ? a.k : a.v;
            double* dst = (pass == 0 ? kd : vd).data() + j * D;
            for (int64_t d = 0; d < D; ++d) row[at(d)] = load_as_f32(x, a.dtype, src + at(d));
            for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<double>(row[at(d)]);
            if (!int4_rest) continue;
            const QuantReferenceRow qr = quantize_reference_row(int4, row.data(), D);
            double* qdst = (pass == 0 ? kq : vq).data() + j * D;
            for (int64_t d = 0; d < D; ++d) qdst[d] = static_cast<double>(qr.dequant[at(d)]);
          }
        }
#pragma omp for schedule(static)
        for (int64_t t = 0; t < G * Nq; ++t) {
          const int64_t h = g * G + t / Nq, i = t % Nq;
          const std::size_t src = at(((b * Nq + i) * Hq + h) * D);
          for (int64_t d = 0; d < D; ++d)
            qd[at(t * D + d)] = static_cast<double>(load_as_f32(a.q, a.dtype, src + at(d)));
        }
      }

      // A: the LSE of every row under the mask.
#pragma omp parallel
      {
        std::vector<double> s(at(Nk));
#pragma omp for schedule(dynamic, 4)
        for (int64_t t = 0; t < G * Nq; ++t) {
          const int64_t qp = a.qpos.at(t % Nq);
          const double* q = qd.data() + t * D;
          double m = kNegInf;
          for (int64_t j = 0; j < Nk; ++j) {
            s[at(j)] = a.mask.allows(qp, j) ? scale * dot(q, kd.data() + j * D, D) : kNegInf;
            m = std::max(m, s[at(j)]);
          }
          double out = kNegInf;
          if (m != kNegInf) {
            double sum = 0.0;
            for (int64_t j = 0; j < Nk; ++j)
              if (s[at(j)] != kNegInf) sum += std::exp(s[at(j)] - m);
            out = m + std::log(sum);
          }
          lse[at(t)] = out;
        }
      }

      // B: column sums of the softmax, rows in ascending order for every column.
#pragma omp parallel for schedule(dynamic, 1)
      for (int64_t task = 0; task < G * tiles; ++task) {
        const int64_t hh = task / tiles;
        const int64_t j0 = (task % tiles) * kTile, j1 = std::min(Nk, j0 + kTile);
        double* col = imp.data() + hh * Nk;
        for (int64_t j = j0; j < j1; ++j) col[j] = 0.0;
        for (int64_t i = 0; i < Nq; ++i) {
          const double l = lse[at(hh * Nq + i)];
          if (l == kNegInf) continue;  // a row that sees nothing adds nothing
          const int64_t qp = a.qpos.at(i);
          const double* q = qd.data() + (hh * Nq + i) * D;
          for (int64_t j = j0; j < j1; ++j)
            if (a.mask.allows(qp, j)) col[j] += std::exp(scale * dot(q, kd.data() + j * D, D) - l);
        }
      }

      // C: importance and kept set of the selection heads of this group.
      const int64_t s0 = per_head ? g * G : g, ns = per_head ? G : 1;
      for (int64_t s = s0; s < s0 + ns; ++s) {
        double* dst = res.importance.data() + (b * Hsel + s) * Nk;
        if (per_head) {
          std::copy_n(imp.data() + (s - s0) * Nk, Nk, dst);
        } else {
          for (int64_t j = 0; j < Nk; ++j) {
            double sum = 0.0;
            for (int64_t hh = 0; hh < G; ++hh) sum += imp[at(hh * Nk + j)];
            dst[j] = sum;
          }
        }
        select(dst, Nk, n, a.mask.sinks, sel.keep_recent, res.keep.data() + (b * Hsel + s) * Nk,
               res.margin.data() + (b * Hsel + s) * Nk);
      }

      // D: attention over the kept set (drop) or with INT4 K, V for the others (int4).
#pragma omp parallel
      {
        std::vector<double> s(at(Nk));
        std::vector<double> acc(at(D));
#pragma omp for schedule(dynamic, 4)
        for (int64_t t = 0; t < G * Nq; ++t) {
          const int64_t h = g * G + t / Nq, i = t % Nq;
          const int64_t qp = a.qpos.at(i);
          const uint8_t* keep = res.keep.data() + (b * Hsel + (per_head ? h : g)) * Nk;
          const double* q = qd.data() + t * D;
          double m = kNegInf;
          for (int64_t j = 0; j < Nk; ++j) {
            s[at(j)] = kNegInf;
            if (!a.mask.allows(qp, j)) continue;
            if (keep[j])
              s[at(j)] = scale * dot(q, kd.data() + j * D, D);
            else if (int4_rest)
              s[at(j)] = scale * dot(q, kq.data() + j * D, D);
            m = std::max(m, s[at(j)]);
          }
          std::fill(acc.begin(), acc.end(), 0.0);
          double out = kNegInf;
          if (m != kNegInf) {
            double sum = 0.0;
            for (int64_t j = 0; j < Nk; ++j) {
              if (s[at(j)] == kNegInf) continue;
              const double p = std::exp(s[at(j)] - m);
              sum += p;
              const double* vj = (keep[j] ? vd : vq).data() + j * D;
              for (int64_t d = 0; d < D; ++d) acc[at(d)] += p * vj[d];
            }
            for (int64_t d = 0; d < D; ++d) acc[at(d)] /= sum;
            out = m + std::log(sum);
          }
          std::copy(acc.begin(), acc.end(), res.o.begin() + ((b * Nq + i) * Hq + h) * D);
          res.lse[at((b * Hq + h) * Nq + i)] = out;
        }
      }
    }
  }
  return res;
}

}  // namespace ringattn
