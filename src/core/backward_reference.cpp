// The float64 backward reference (see ringattn/backward_reference.hpp).
//
// For each batch b and query head h (K/V head hk = h / (Hq / Hkv)), on the
// full matrices of that (b, h):
//   S_ij  = scale q_i.k_j                 visible pairs (Mask::allows), else -inf
//   LSE_i = m_i + log sum_j exp(S_ij - m_i)      (-inf: no visible key)
//   P_ij  = exp(S_ij - LSE_i)             (0 where S_ij = -inf or LSE_i = -inf)
//   O_i   = sum_j P_ij v_j;   Delta_i = dO_i . O_i
//   dV_j += sum_i P_ij dO_i;  dP_ij = dO_i . v_j;  dS_ij = P_ij (dP_ij - Delta_i)
//   dQ_i += scale sum_j dS_ij k_j;  dK_j += scale sum_i dS_ij q_i
// Everything double, no tiling, no shared code with the kernel beyond
// Mask::allows. Memory: two Nq x Nk matrices (P, dS) of one (b, h).
#include "ringattn/backward_reference.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

#include "ringattn/error.hpp"

namespace ringattn {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

void check(const AttentionArgs& a) {
  a.validate(HeadDims::any);
  if (a.qpos.stride < 1 || a.kpos.stride < 1) throw FieldError("positions", "strides must be >= 1");
  if (a.hier.on()) throw FieldError("hier", "the backward reference is plain attention");
  if (a.keep.on()) throw FieldError("keep", "the backward reference takes no kept-key sets");
  if (a.quantized()) throw FieldError("kq", "the backward reference takes no quantized K/V");
}

std::size_t idx(int64_t i) {
  return static_cast<std::size_t>(i);
}

// q, dO [B, Nq, Hq, D] and k, v [B, Nk, Hkv, D] as doubles.
BackwardReference compute(const AttentionArgs& a, const double* q, const double* k, const double* v,
                          const double* dO) {
  const int64_t B = a.batch, Nq = a.nq, Nk = a.nk, Hq = a.hq, Hkv = a.hkv, D = a.head_dim;
  const int64_t group = Hq / Hkv;
  const double scale =
      a.scale != 0.0f ? static_cast<double>(a.scale) : 1.0 / std::sqrt(static_cast<double>(D));
  BackwardReference r;
  r.dq.assign(idx(B * Nq * Hq * D), 0.0);
  r.o.assign(idx(B * Nq * Hq * D), 0.0);
  r.lse.assign(idx(B * Hq * Nq), kNegInf);
  r.dk.assign(idx(B * Nk * Hkv * D), 0.0);
  r.dv.assign(idx(B * Nk * Hkv * D), 0.0);

  // Element d of row i of a [B, N, H, D] tensor, head h, batch b.
  auto at = [D](int64_t b, int64_t n, int64_t heads, int64_t h, int64_t i) {
    return idx(((b * n + i) * heads + h) * D);
  };
  std::vector<double> p(idx(Nq * Nk)), ds(idx(Nq * Nk));
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < Hq; ++h) {
      const int64_t hk = h / group;
      // Forward: P and LSE, then O.
      for (int64_t i = 0; i < Nq; ++i) {
        const double* qi = q + at(b, Nq, Hq, h, i);
        double* pi = p.data() + i * Nk;
        double m = kNegInf;
        for (int64_t j = 0; j < Nk; ++j) {
          pi[j] = kNegInf;
          if (!a.mask.allows(a.qpos.at(i), a.kpos.at(j))) continue;
          const double* kj = k + at(b, Nk, Hkv, hk, j);
          double dot = 0.0;
          for (int64_t d = 0; d < D; ++d) dot += qi[d] * kj[d];
          pi[j] = scale * dot;
          m = std::max(m, pi[j]);
        }
        double lse = kNegInf;
        if (m != kNegInf) {
          double sum = 0.0;
          for (int64_t j = 0; j < Nk; ++j) sum += std::exp(pi[j] - m);  // exp(-inf) = 0
          lse = m + std::log(sum);
        }
        r.lse[idx((b * Hq + h) * Nq + i)] = lse;
        double* oi = r.o.data() + at(b, Nq, Hq, h, i);
        for (int64_t j = 0; j < Nk; ++j) {
          pi[j] = lse == kNegInf ? 0.0 : std::exp(pi[j] - lse);
          const double* vj = v + at(b, Nk, Hkv, hk, j);
          for (int64_t d = 0; d < D; ++d) oi[d] += pi[j] * vj[d];
        }
      }
      // Backward: dS, then dV, dQ, dK.
      for (int64_t i = 0; i < Nq; ++i) {
        const double* doi = dO + at(b, Nq, Hq, h, i);
        const double* oi = r.o.data() + at(b, Nq, Hq, h, i);
        double delta = 0.0;
        for (int64_t d = 0; d < D; ++d) delta += doi[d] * oi[d];
        for (int64_t j = 0; j < Nk; ++j) {
          const double* vj = v + at(b, Nk, Hkv, hk, j);
          double dp = 0.0;
          for (int64_t d = 0; d < D; ++d) dp += doi[d] * vj[d];
          ds[idx(i * Nk + j)] = p[idx(i * Nk + j)] * (dp - delta);
        }
      }
      for (int64_t i = 0; i < Nq; ++i) {
        const double* qi = q + at(b, Nq, Hq, h, i);
        const double* doi = dO + at(b, Nq, Hq, h, i);
        double* dqi = r.dq.data() + at(b, Nq, Hq, h, i);
        for (int64_t j = 0; j < Nk; ++j) {
          const double pij = p[idx(i * Nk + j)], dsij = ds[idx(i * Nk + j)];
          const double* kj = k + at(b, Nk, Hkv, hk, j);
          double* dkj = r.dk.data() + at(b, Nk, Hkv, hk, j);
          double* dvj = r.dv.data() + at(b, Nk, Hkv, hk, j);
          for (int64_t d = 0; d < D; ++d) {
            dvj[d] += pij * doi[d];
            dqi[d] += scale * dsij * kj[d];
            dkj[d] += scale * dsij * qi[d];
          }
        }
      }
    }
  }
  return r;
}

std::vector<double> to_double(const void* x, DType dt, int64_t n) {
  std::vector<double> out(idx(n));
  for (int64_t i = 0; i < n; ++i) out[idx(i)] = load_as_f32(x, dt, idx(i));
  return out;
}

}  // namespace

BackwardReference reference_attention_backward(const AttentionArgs& args, const float* dO) {
  check(args);
  args.validate_args(HeadDims::any);
  if (args.nq > 0 && dO == nullptr) throw FieldError("data", "dO is null");
  const std::vector<double> q = to_double(args.q, args.dtype, args.q_elems());
  const std::vector<double> k = to_double(args.k, args.dtype, args.kv_elems());
  const std::vector<double> v = to_double(args.v, args.dtype, args.kv_elems());
  const std::vector<double> g = to_double(dO, DType::f32, args.o_elems());
  return compute(args, q.data(), k.data(), v.data(), g.data());
}

BackwardReference reference_attention_backward_f64(const AttentionArgs& args, const double* q,
                                                   const double* k, const double* v,
                                                   const double* dO) {
  check(args);
  if ((args.nq > 0 && (q == nullptr || dO == nullptr)) ||
      (args.nk > 0 && (k == nullptr || v == nullptr)))
    throw FieldError("data", "q, k, v or dO is null");
  return compute(args, q, k, v, dO);
}

}  // namespace ringattn
