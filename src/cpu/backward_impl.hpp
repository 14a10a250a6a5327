// One backward tile (BackwardTileJob, kernel_isa.hpp), written once over the
// vector type V of kernel_impl.hpp and instantiated by each ISA file right
// after it, so it reuses that ISA's forward micro-kernels:
//
//   S   = Qs Kt^T                 Impl<V>::s_micro  (kRowsS rows x one panel of keys)
//   P   = 2^(S - lse2)            V::exp2, one row at a time; partial tiles masked
//                                 by cpu::mask_row, the forward's visibility rule
//   dP  = dO Vt^T                 Impl<V>::s_micro on V's panels
//   dS  = P (dP - delta)
//   dv_part = P^T dO              t_micro: kRowsPV keys x kColsPV vectors, summed
//   dk_part = dS^T Qs             over the block's query rows
//   dq     += dS K                Impl<V>::pv_micro (alpha = 1)
//
// Everything here has internal linkage (like kernel_impl.hpp), so the
// instantiations never meet at link time.

namespace ringattn::cpu {
namespace {

template <class V>
struct BwdImpl {
  using F = Impl<V>;
  using reg = typename V::reg;
  static constexpr int L = V::lanes;
  static constexpr int PW = F::PW;

  // out[r][0..C L) = sum_{i < n} w[i][r] x[i][0..C L) for R rows r: the rows of
  // w (stride kBlockK) are query rows, its columns the tile's keys.
  template <int R, int C>
  static inline void t_micro(const float* w, const float* x, int dp, int n, float* out) {
    reg acc[R][C];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
      for (int c = 0; c < C; ++c) acc[r][c] = V::zero();
    for (int i = 0; i < n; ++i) {
      reg b[C];
#pragma GCC unroll 16
      for (int c = 0; c < C; ++c) b[c] = V::load(x + i * dp + c * L);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        const reg a = V::set1(w[i * kBlockK + r]);
#pragma GCC unroll 16
        for (int c = 0; c < C; ++c) acc[r][c] = V::fma(a, b[c], acc[r][c]);
      }
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
      for (int c = 0; c < C; ++c) V::store(out + r * dp + c * L, acc[r][c]);
  }

  template <int R>
  static inline void t_cols(const float* w, const float* x, int dp, int n, float* out) {
    constexpr int C = V::kColsPV;
    int c0 = 0;
    for (; c0 + C * L <= dp; c0 += C * L) t_micro<R, C>(w, x + c0, dp, n, out + c0);
    for (; c0 < dp; c0 += L) t_micro<R, 1>(w, x + c0, dp, n, out + c0);
  }

  // out [kvalid][dp] = w^T x for w [n][kBlockK], x [n][dp].
  static void wt_x(const float* w, const float* x, int dp, int n, int kvalid, float* out) {
    constexpr int R = V::kRowsPV;
    int r0 = 0;
    for (; r0 + R <= kvalid; r0 += R) t_cols<R>(w + r0, x, dp, n, out + r0 * dp);
    for (; r0 + 2 <= kvalid; r0 += 2) t_cols<2>(w + r0, x, dp, n, out + r0 * dp);
    for (; r0 < kvalid; ++r0) t_cols<1>(w + r0, x, dp, n, out + r0 * dp);
  }

  // s [rows_s][kc] = a [rows_s][dp] . panels^T.
  static void a_bt(const float* a, const float* panels, int dp, int rows_s, int kc, float* s) {
    for (int r0 = 0; r0 < rows_s; r0 += V::kRowsS)
      for (int p0 = 0; p0 < kc; p0 += PW)
        F::s_micro(a + r0 * dp, dp, panels + p0 * dp, s + r0 * kBlockK + p0);
  }

  static int64_t workspace_floats(int /*dp*/) {
    return 2 * int64_t{kBlockQ} * kBlockK;  // P, dS
  }

  static void run_tile(const BackwardTileJob& t, float* ws) {
    const int dp = t.dp, rows = t.rows;
    const int rows_s = static_cast<int>(round_up(rows, V::kRowsS));
    const int rows_pv = static_cast<int>(round_up(rows, V::kRowsPV));
    const int kc = static_cast<int>(round_up(t.kvalid, PW));
    float* p = ws;                               // [kBlockQ][kBlockK]: S, then P
    float* ds = p + int64_t{kBlockQ} * kBlockK;  // [kBlockQ][kBlockK]: dP, then dS
    const reg zero = V::zero();

    // P = 2^(Qs Kt^T - lse2) on the visible pairs, 0 elsewhere and on padding rows.
    a_bt(t.qs, t.kt, dp, rows_s, kc, p);
    for (int r = 0; r < std::max(rows_s, rows_pv); ++r) {
      float* pr = p + r * kBlockK;
      int j0 = 0, j1 = 0;
      if (r < rows && t.lse2[r] != -INFINITY) {
        j1 = t.kvalid;
        if (t.cls == TileClass::partial)
          mask_row(t.mask, t.qpos.at(r), t.kpos, t.kvalid, pr, &j0, &j1);
      }
      if (j0 >= j1) {
        for (int j = 0; j < kc; j += L) V::store(pr + j, zero);
        continue;
      }
      for (int j = 0; j < j0; ++j) pr[j] = -INFINITY;
      for (int j = j1; j < kc; ++j) pr[j] = -INFINITY;
      const reg l = V::set1(t.lse2[r]);
      for (int j = 0; j < kc; j += L) V::store(pr + j, V::exp2(V::sub(V::load(pr + j), l)));
    }

    // dS = P (dO Vt^T - delta).
    a_bt(t.g, t.vt, dp, rows_s, kc, ds);
    for (int r = 0; r < std::max(rows_s, rows_pv); ++r) {
      float* dr = ds + r * kBlockK;
      const float* pr = p + r * kBlockK;
      if (r >= rows) {  // padding rows: dP is not computed past rows_s
        for (int j = 0; j < kc; j += L) V::store(dr + j, zero);
        continue;
      }
      const reg dl = V::set1(t.delta[r]);
      for (int j = 0; j < kc; j += L)
        V::store(dr + j, V::mul(V::load(pr + j), V::sub(V::load(dr + j), dl)));
    }

    wt_x(p, t.g, dp, rows, t.kvalid, t.dv_part);    // dV part = P^T dO
    wt_x(ds, t.qs, dp, rows, t.kvalid, t.dk_part);  // dK part = dS^T Qs

    // dQ += dS K.
    constexpr int C = V::kColsPV;
    float ones[V::kRowsPV];
    std::fill(ones, ones + V::kRowsPV, 1.0f);
    for (int r0 = 0; r0 < rows_pv; r0 += V::kRowsPV) {
      const float* a = ds + r0 * kBlockK;
      float* o = t.dq + r0 * dp;
      int c0 = 0;
      for (; c0 + C * L <= dp; c0 += C * L)
        F::template pv_micro<C>(a, t.krows + c0, dp, dp, kc, ones, o + c0);
      for (; c0 < dp; c0 += L) F::template pv_micro<1>(a, t.krows + c0, dp, dp, kc, ones, o + c0);
    }
  }

  static const BackwardKernels& table(Isa isa) {
    static const BackwardKernels k{isa, L, PW, &F::pack_kv_rows, &workspace_floats, &run_tile};
    return k;
  }
};

}  // namespace
}  // namespace ringattn::cpu
