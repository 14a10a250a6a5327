// The CPU flash-attention algorithm, written once over a vector type V and
// instantiated by each ISA file (kernel_avx512.cpp, kernel_avx2.cpp,
// kernel_generic.cpp) after it has switched its target on. Everything here has
// internal linkage, so the instantiations never meet at link time.
//
// For one block (batch b, query head h, up to kBlockQ query rows); a task runs
// up to kMaxBlocksPerTask blocks of one head, each key tile for all of them in
// turn (run_blocks), so that the tile comes from memory once and from L2 after:
//
//   Qs   = Q[rows, :] * scale * log2(e)        packed (pack_q), zero padded
//   m    = -inf, l = 0, Oacc = 0               per row running max, sum, output
//   for each tile of kBlockK keys:
//       class = mask.classify(tile)            closed form; empty tiles are skipped
//       S    = Qs . Ktile^T                    GEMM micro-kernel: kRowsS x (2 vectors)
//       S   := -inf outside each row's visible key range (partial tiles, tail)
//       mnew = max(m, rowmax S);  alpha = 2^(m - mnew)
//       P    = 2^(S - mnew);      l = l * alpha + rowsum P
//       Oacc = Oacc * alpha + P . Vtile        GEMM micro-kernel: kRowsPV x kColsPV vectors
//   O = Oacc / l;  LSE = ln(2) * (m + log2 l)  rows with l == 0: O = 0, LSE = -inf;
//                                            rows whose max overflowed (m = +inf): NaN
//
// Working in base 2 (scores pre-multiplied by log2 e) turns every exp into an
// exp2, which the vector code computes with a polynomial and an exponent add.
//
// V provides: reg, lanes, kRowsS, kRowsPV, kColsPV, zero(), load(p), store(p, x),
// set1(s), fma(a, b, c) = a*b+c, mul, max, hmax(x), hsum(x), exp2(x) (x <= 0:
// to kExp2Poly's error for x >= -126, at most 2^-126 below, exactly 0 for -inf).

namespace ringattn::cpu {
namespace {

template <class V>
struct Impl {
  using reg = typename V::reg;
  static constexpr int L = V::lanes;
  static constexpr int PW = 2 * L;  // keys per K panel = S micro-kernel columns
  static_assert(kBlockQ % V::kRowsS == 0 && kBlockQ % V::kRowsPV == 0);
  static_assert(kBlockK % PW == 0);
  static_assert(V::kRowsS % V::kRowsPV == 0);
  // The longest K row pack_kv converts: kMaxHeadDim padded to a whole vector.
  static constexpr int kMaxPackDim = static_cast<int>(kMaxHeadDim) + L;

  // ---- packing ---------------------------------------------------------------

  // n values of a row of dtype dt, times sc, as float32 into dst: whole
  // vectors converted in registers, then the tail (n % L) one by one.
  static inline void row_f32(const void* src, DType dt, int n, float sc, float* dst) {
    const reg scale = V::set1(sc);
    int c = 0;
    switch (dt) {
      case DType::f32: {
        const float* x = static_cast<const float*>(src);
        for (; c + L <= n; c += L) V::store(dst + c, V::mul(V::load(x + c), scale));
        break;
      }
      case DType::f16: {
        const uint16_t* x = static_cast<const uint16_t*>(src);
        for (; c + L <= n; c += L) V::store(dst + c, V::mul(V::load_f16(x + c), scale));
        break;
      }
      case DType::bf16: {
        const uint16_t* x = static_cast<const uint16_t*>(src);
        for (; c + L <= n; c += L) V::store(dst + c, V::mul(V::load_bf16(x + c), scale));
        break;
      }
    }
    for (; c < n; ++c) dst[c] = load_as_f32(src, dt, static_cast<std::size_t>(c)) * sc;
  }

  // V as the P.V micro-kernel reads it: each tile of kBlockK keys (the last
  // one ends at nk_pad) is stored at key0 dp as column blocks of VW floats, each
  // [tile keys][VW] contiguous, then the tail columns (dp % VW) as [tile keys][dp % VW].
  // A block's rows are consecutive, so the micro-kernel streams it.
  static constexpr int VW = V::kColsPV * L;
  // Where column c0 (a multiple of L) of key j lies; the row stride there is
  // VW, or dp % VW in the tail.
  static inline int64_t v_offset(int64_t j, int c0, int dp, int64_t nk_pad) {
    const int64_t key0 = j / kBlockK * kBlockK, jj = j - key0;
    const int64_t th = std::min<int64_t>(kBlockK, nk_pad - key0);  // the tile's keys
    const int full = dp / VW * VW;
    return key0 * dp + (c0 < full ? c0 * th + jj * VW : full * th + jj * (dp - full) + (c0 - full));
  }

  // Packs keys [j0, j1): k and v point at key j0's row, rows `stride` elements
  // apart, and the first n of the keys exist (the rest, and the columns past d,
  // are zero). K goes to panels at kp + (j / PW) dp PW; V to rows at vp + j dp
  // (v_rows) or to the tiles above (nk_pad: the packed keys, a multiple of PW).
  static void pack_keys(const void* k, const void* v, DType dtype, int64_t stride, int64_t n, int d,
                        int64_t j0, int64_t j1, float* kp, float* vp, int dp, bool v_rows,
                        int64_t nk_pad) {
    const std::size_t esize = dtype_size(dtype);
    float krow[kMaxPackDim], vrow[kMaxPackDim];
    for (int c = 0; c < dp; ++c) krow[c] = vrow[c] = 0.0f;
    const int full = dp / VW * VW;
    for (int64_t j = j0; j < j1; ++j) {
      if (j - j0 < n) {
        const std::size_t off = static_cast<std::size_t>((j - j0) * stride) * esize;
        if constexpr (!V::kBf16Dot)
          row_f32(static_cast<const char*>(k) + off, dtype, d, 1.0f, krow);
        row_f32(static_cast<const char*>(v) + off, dtype, d, 1.0f, vrow);
      } else {
        for (int c = 0; c < d; ++c) krow[c] = vrow[c] = 0.0f;
      }
      if constexpr (V::kBf16Dot) {
        // bfloat16 K as it is, each panel [dp / 2][PW][2]: s_micro_dot's pairs.
        uint16_t* kpair = reinterpret_cast<uint16_t*>(kp) + (j / PW) * dp * PW + (j % PW) * 2;
        const uint16_t* x =
            j - j0 < n ? static_cast<const uint16_t*>(k) + (j - j0) * stride : nullptr;
        for (int c = 0; c < dp; ++c)
          kpair[(c / 2) * 2 * PW + c % 2] = x != nullptr && c < d ? x[c] : uint16_t{0};
      } else {
        float* kcol = kp + (j / PW) * dp * PW + (j % PW);
        for (int c = 0; c < dp; ++c) kcol[c * PW] = krow[c];
      }
      if (v_rows) {
        std::copy(vrow, vrow + dp, vp + j * dp);
        continue;
      }
      for (int c0 = 0; c0 < full; c0 += VW)
        std::copy(vrow + c0, vrow + c0 + VW, vp + v_offset(j, c0, dp, nk_pad));
      if (full < dp) std::copy(vrow + full, vrow + dp, vp + v_offset(j, full, dp, nk_pad));
    }
  }
  // The forward's packing (IsaKernels::pack_kv): V in tiles.
  static void pack_kv(const void* k, const void* v, DType dtype, int64_t stride, int64_t n, int d,
                      int64_t j0, int64_t j1, float* kp, float* vp, int dp, int64_t nk_pad) {
    pack_keys(k, v, dtype, stride, n, d, j0, j1, kp, vp, dp, false, nk_pad);
  }
  // The backward's (BackwardKernels::pack_kv): V in rows.
  static void pack_kv_rows(const void* k, const void* v, DType dtype, int64_t stride, int64_t n,
                           int d, int64_t j0, int64_t j1, float* kp, float* vp, int dp) {
    pack_keys(k, v, dtype, stride, n, d, j0, j1, kp, vp, dp, true, 0);
  }

  // The block's query rows times scale log2(e), in groups of kRowsS rows, each
  // group [dp][kRowsS] (s_micro<true>'s layout): row i, column c at
  // (i / kRowsS) kRowsS dp + c kRowsS + i % kRowsS. Zero padded.
  // With kBf16Dot (bfloat16 Q) the rows stay bfloat16 and unscaled, in pairs of
  // columns: group [dp / 2][kRowsS] of uint32 (s_micro_dot's layout).
  static void pack_q(const QBlockJob& job, float* qs, int dp, int rows_pad) {
    constexpr int R = V::kRowsS;
    if constexpr (V::kBf16Dot) {
      uint32_t* qp = reinterpret_cast<uint32_t*>(qs);
      const uint16_t* q = static_cast<const uint16_t*>(job.q);
      for (int i = 0; i < rows_pad; ++i) {
        const uint16_t* x = q + static_cast<std::size_t>(i * job.q_stride);
        uint32_t* dst = qp + (i / R) * R * (dp / 2) + i % R;
        for (int c2 = 0; c2 < dp / 2; ++c2) {
          const uint32_t lo = i < job.rows && 2 * c2 < job.d ? x[2 * c2] : 0u;
          const uint32_t hi = i < job.rows && 2 * c2 + 1 < job.d ? x[2 * c2 + 1] : 0u;
          dst[c2 * R] = lo | hi << 16;
        }
      }
      return;
    }
    const std::size_t esize = dtype_size(job.dtype);
    // The rows are far apart in the caller's Q (a row of every head between
    // them): ask for all their cache lines first, so that the misses overlap.
    const std::size_t row_bytes = static_cast<std::size_t>(job.d) * esize;
    for (int i = 0; i < job.rows; ++i) {
      const char* r =
          static_cast<const char*>(job.q) + static_cast<std::size_t>(i * job.q_stride) * esize;
      for (std::size_t b = 0; b < row_bytes; b += 64) __builtin_prefetch(r + b);
    }
    float row[kMaxPackDim];
    for (int c = 0; c < dp; ++c) row[c] = 0.0f;
    for (int i = 0; i < rows_pad; ++i) {
      if (i < job.rows) {
        const std::size_t base = static_cast<std::size_t>(i * job.q_stride) * esize;
        row_f32(static_cast<const char*>(job.q) + base, job.dtype, job.d, job.scale_log2, row);
      } else {
        for (int c = 0; c < job.d; ++c) row[c] = 0.0f;
      }
      float* dst = qs + (i / R) * R * dp + i % R;
      for (int c = 0; c < dp; ++c) dst[c * R] = row[c];
    }
  }

  // ---- micro-kernels ---------------------------------------------------------

  // S[r][0..PW) = sum_c qs[r][c] * panel[c][0..PW) for kRowsS rows: qs holds the
  // rows [kRowsS][dp] (kGroup false), or one group of pack_q's, [dp][kRowsS] (true:
  // the broadcasts of one step read consecutive floats).
  template <bool kGroup = false>
  static inline void s_micro(const float* qs, int dp, const float* panel, float* s) {
    constexpr int R = V::kRowsS;
    reg acc[R][2];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = V::zero();
#pragma GCC unroll 4
    for (int c = 0; c < dp; ++c) {
      const reg b0 = V::load(panel + c * PW);
      const reg b1 = V::load(panel + c * PW + L);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        const reg a = V::set1(kGroup ? qs[c * R + r] : qs[r * dp + c]);
        acc[r][0] = V::fma(a, b0, acc[r][0]);
        acc[r][1] = V::fma(a, b1, acc[r][1]);
      }
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      V::store(s + r * kBlockK, acc[r][0]);
      V::store(s + r * kBlockK + L, acc[r][1]);
    }
  }

  // s_micro on bfloat16 pairs (kBf16Dot): qp one group of pack_q's
  // [dp / 2][kRowsS] pairs, panel [dp / 2][PW][2]; S is stored times scale.
  template <class W = V>
  static inline void s_micro_dot(const uint32_t* qp, int dp, const uint16_t* panel, float* s,
                                 float scale) {
    constexpr int R = V::kRowsS;
    reg acc[R][2];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = V::zero();
    for (int c2 = 0; c2 < dp / 2; ++c2) {
      const auto b0 = W::load_pairs(panel + c2 * 2 * PW);
      const auto b1 = W::load_pairs(panel + c2 * 2 * PW + 2 * L);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        const auto a = W::set1_pair(qp[c2 * R + r]);
        acc[r][0] = W::dot_bf16(acc[r][0], a, b0);
        acc[r][1] = W::dot_bf16(acc[r][1], a, b1);
      }
    }
    const reg sc = V::set1(scale);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      V::store(s + r * kBlockK, V::mul(acc[r][0], sc));
      V::store(s + r * kBlockK + L, V::mul(acc[r][1], sc));
    }
  }

  // o[r][cols] = o[r][cols] * alpha[r] + sum_{j < kc} p[r][j] * v[j][cols], for
  // kRowsPV rows and C vectors of columns starting at `o` / `v`; v's rows are vs
  // floats apart, o's dp.
  template <int C>
  static inline void pv_micro(const float* p, const float* v, int vs, int dp, int kc,
                              const float* alpha, float* o) {
    constexpr int R = V::kRowsPV;
    reg acc[R][C];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const reg a = V::set1(alpha[r]);
#pragma GCC unroll 16
      for (int c = 0; c < C; ++c) acc[r][c] = V::mul(a, V::load(o + r * dp + c * L));
    }
    // Unrolled: the loop's own instructions otherwise cost the FMAs a tenth of their rate.
#pragma GCC unroll 4
    for (int j = 0; j < kc; ++j) {
      reg b[C];
#pragma GCC unroll 16
      for (int c = 0; c < C; ++c) b[c] = V::load(v + j * vs + c * L);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        const reg a = V::set1(p[r * kBlockK + j]);
#pragma GCC unroll 16
        for (int c = 0; c < C; ++c) acc[r][c] = V::fma(a, b[c], acc[r][c]);
      }
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
      for (int c = 0; c < C; ++c) V::store(o + r * dp + c * L, acc[r][c]);
  }

  // ---- one tile --------------------------------------------------------------

  // The panels [*h0, *h1) (multiples of PW, within [0, kc)) holding every key
  // that one of n rows sees (row i: [vis0[i], vis1[i]), empty when equal);
  // empty when no row sees a key.
  static inline void row_hull(const int* vis0, const int* vis1, int n, int kc, int* h0, int* h1) {
    int lo = kc, hi = 0;
    for (int i = 0; i < n; ++i)
      if (vis0[i] < vis1[i]) lo = std::min(lo, vis0[i]), hi = std::max(hi, vis1[i]);
    if (lo >= hi) {
      *h0 = *h1 = 0;
      return;
    }
    *h0 = lo / PW * PW;
    *h1 = static_cast<int>(std::min<int64_t>(round_up(hi, PW), kc));
  }

  // Online-softmax update of the kRowsPV rows of one P.V group (in place: S
  // becomes P). s: the group's first row at the hull's first column (rows
  // kBlockK apart); kc (a multiple of PW) columns are live; row r sees columns
  // [j0[r], j1[r]) (none when equal: its state stays, its P is 0). The rows run
  // side by side, so their max and sum chains and their exp2s overlap.
  static inline void softmax_rows(float* s, const int* j0, const int* j1, int kc, float* m,
                                  float* l, float* alpha) {
    constexpr int R = V::kRowsPV;
    for (int r = 0; r < R; ++r) {
      float* sr = s + r * kBlockK;
      const int a = std::min(j0[r], j1[r]);
      for (int j = 0; j < a; ++j) sr[j] = -INFINITY;
      for (int j = j1[r]; j < kc; ++j) sr[j] = -INFINITY;
    }
    reg mx[R];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) mx[r] = V::set1(-INFINITY);
    for (int j = 0; j < kc; j += L)
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) mx[r] = V::max(mx[r], V::load(s + r * kBlockK + j));
    float m_new[R];
    reg mv[R], sum[R];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      m_new[r] = std::max(m[r], V::hmax(mx[r]));
      // A row that has seen nothing yet (max -inf) subtracts 0: its P is 2^-inf = 0.
      mv[r] = V::set1(m_new[r] == -INFINITY ? 0.0f : m_new[r]);
      sum[r] = V::zero();
    }
    for (int j = 0; j < kc; j += L)
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        float* x = s + r * kBlockK + j;
        const reg p = V::exp2(V::sub(V::load(x), mv[r]));
        V::store(x, p);
        sum[r] = V::add(sum[r], p);
      }
    for (int r = 0; r < R; ++r) {
      const float m_old = m[r];
      alpha[r] = m_old == -INFINITY ? 0.0f : m_old == m_new[r] ? 1.0f : std::exp2(m_old - m_new[r]);
      // std::fma: one rounding, however the compiler inlines and contracts this.
      l[r] = std::fma(l[r], alpha[r], V::hsum(sum[r]));
      m[r] = m_new[r];
    }
  }

  // Hides the keys of a row that are not kept (keep[j] == 0) and narrows the
  // visible range [*j0, *j1) to the first and last key still visible (empty if none).
  static void keep_row(const uint8_t* keep, float* s, int* j0, int* j1) {
    for (int j = *j0; j < *j1; ++j)
      if (keep[j] == 0) s[j] = -INFINITY;
    while (*j0 < *j1 && s[*j0] == -INFINITY) ++*j0;
    while (*j1 > *j0 && s[*j1 - 1] == -INFINITY) --*j1;
  }

  // One block's workspace: qs, oacc kBlockQ x dp; m, l, alpha kBlockQ.
  static int64_t block_floats(int dp) {
    return 2 * int64_t{kBlockQ} * dp + 3 * int64_t{kBlockQ};
  }
  static int64_t workspace_floats(int dp) {
    // s: kBlockQ x kBlockK, shared by the blocks of a task; each block's own state.
    return int64_t{kBlockQ} * kBlockK + kMaxBlocksPerTask * block_floats(dp);
  }

  // The running state of one query block of a task.
  struct Block {
    const QBlockJob* job = nullptr;
    float *qs = nullptr, *oacc = nullptr, *m = nullptr, *l = nullptr, *alpha = nullptr;
    int rows = 0, rows_s = 0, rows_pv = 0;
    int64_t q_first = 0, q_last = 0;
    int64_t t_begin = 0, t_end = 0;  // its key tiles (documents: only those of its own)
  };

  static void start_block(const QBlockJob& job, float* ws, Block* b) {
    const int dp = job.kv->dp;
    b->job = &job;
    b->qs = ws;
    b->oacc = b->qs + int64_t{kBlockQ} * dp;
    b->m = b->oacc + int64_t{kBlockQ} * dp;
    b->l = b->m + kBlockQ;
    b->alpha = b->l + kBlockQ;
    b->rows = job.rows;
    b->rows_s = static_cast<int>(round_up(job.rows, V::kRowsS));
    b->rows_pv = static_cast<int>(round_up(job.rows, V::kRowsPV));
    pack_q(job, b->qs, dp, b->rows_s);
    std::fill(b->oacc, b->oacc + int64_t{b->rows_pv} * dp, 0.0f);
    std::fill(b->m, b->m + kBlockQ, -INFINITY);
    std::fill(b->l, b->l + kBlockQ, 0.0f);
    b->q_first = job.qpos.at(0), b->q_last = job.qpos.at(job.rows - 1);
    const PackedKV& kv = *job.kv;
    b->t_begin = 0, b->t_end = (kv.nk + kBlockK - 1) / kBlockK;
    key_tile_range(job.mask, b->q_first, b->q_last, kv.pos, kv.nk, kBlockK, &b->t_begin, &b->t_end);
  }

  // Key tile t of block b (s: the task's score buffer).
  static void tile_step(const Block& b, int64_t t, float* s, KernelStats& st) {
    const QBlockJob& job = *b.job;
    const PackedKV& kv = *job.kv;
    const int dp = kv.dp;
    const int rows = b.rows, rows_s = b.rows_s, rows_pv = b.rows_pv;
    float *qs = b.qs, *oacc = b.oacc, *m = b.m, *l = b.l, *alpha = b.alpha;
    uint8_t tile_keep[kBlockK];
    int vis0[kBlockQ], vis1[kBlockQ];
    bool gaps[kBlockQ];
    const int64_t key0 = t * kBlockK;
    const int kvalid = static_cast<int>(std::min<int64_t>(kBlockK, kv.nk - key0));
    const Positions kpos = kv.pos.from(key0);
    const TileClass cls = job.mask.classify(b.q_first, b.q_last, kpos.at(0), kpos.at(kvalid - 1));
    if (cls == TileClass::empty) return;
    // Kept keys: a tile with none is skipped, one with some kept is masked per key.
    bool keep_mask = false;
    if (job.keep != nullptr) {
      int kept = 0;
      for (int j = 0; j < kvalid; ++j) {
        tile_keep[j] = static_cast<uint8_t>((job.keep[kpos.at(j)] != 0) != job.keep_invert);
        kept += tile_keep[j];
      }
      if (kept == 0) return;
      keep_mask = kept < kvalid;
    }
    ++st.tiles_computed;
    if (cls == TileClass::partial || keep_mask) ++st.tiles_partial;
    const int kc = static_cast<int>(round_up(kvalid, PW));

    // Each row's visible keys [vis0, vis1): a partial tile asks the mask (gaps:
    // keys inside the range are hidden too); padding rows see nothing.
    for (int r = 0; r < rows; ++r) vis0[r] = 0, vis1[r] = kvalid, gaps[r] = false;
    for (int r = rows; r < rows_s; ++r) vis0[r] = vis1[r] = 0, gaps[r] = false;
    if (cls == TileClass::partial)
      for (int r = 0; r < rows; ++r)
        gaps[r] = row_range(job.mask, job.qpos.at(r), kpos, kvalid, vis0 + r, vis1 + r);

    // S = Qs . K^T, each group of rows over the panels its rows may see (a
    // diagonal or a window's edge leaves the rest of the tile out).
    for (int r0 = 0; r0 < rows_s; r0 += V::kRowsS) {
      int h0 = 0, h1 = 0;
      row_hull(vis0 + r0, vis1 + r0, V::kRowsS, kc, &h0, &h1);
      for (int p0 = h0; p0 < h1; p0 += PW) {
        if constexpr (V::kBf16Dot)
          s_micro_dot(reinterpret_cast<const uint32_t*>(qs) + r0 * dp / 2, dp,
                      reinterpret_cast<const uint16_t*>(kv.k) + (key0 + p0) * dp,
                      s + r0 * kBlockK + p0, job.scale_log2);
        else
          s_micro<true>(qs + r0 * dp, dp, kv.k + (key0 + p0) * dp, s + r0 * kBlockK + p0);
      }
    }

    // Mask, online softmax, Oacc = Oacc * alpha + P . V over each group's panels.
    // A group's panels lie inside its S group's (kRowsS is a multiple of kRowsPV).
    constexpr int C = V::kColsPV;
    for (int r0 = 0; r0 < rows_pv; r0 += V::kRowsPV) {
      int h0 = 0, h1 = 0;
      row_hull(vis0 + r0, vis1 + r0, V::kRowsPV, kc, &h0, &h1);
      if (h0 >= h1) continue;              // no row of the group sees this tile: its state stays
      int g0[V::kRowsPV], g1[V::kRowsPV];  // visible columns, from h0
      for (int r = r0; r < r0 + V::kRowsPV; ++r) {
        float* sr = s + r * kBlockK;
        int j0 = vis0[r], j1 = vis1[r];
        if (gaps[r]) mask_row(job.mask, job.qpos.at(r), kpos, kvalid, sr, &j0, &j1);
        if (keep_mask && r < rows) keep_row(tile_keep, sr, &j0, &j1);
        if (j0 >= j1) j0 = j1 = h0;
        g0[r - r0] = j0 - h0, g1[r - r0] = j1 - h0;
      }
      softmax_rows(s + r0 * kBlockK + h0, g0, g1, h1 - h0, m + r0, l + r0, alpha + r0);
      const float* p = s + r0 * kBlockK + h0;
      float* o = oacc + r0 * dp;
      int c0 = 0;
      for (; c0 + VW <= dp; c0 += VW)
        pv_micro<C>(p, kv.v + v_offset(key0 + h0, c0, dp, kv.nk_pad), VW, dp, h1 - h0, alpha + r0,
                    o + c0);
      for (; c0 < dp; c0 += L)
        pv_micro<1>(p, kv.v + v_offset(key0 + h0, c0, dp, kv.nk_pad), dp % VW, dp, h1 - h0,
                    alpha + r0, o + c0);
    }
  }

  // Normalises block b's output and writes it with its LSE.
  static void finish_block(const Block& b) {
    const QBlockJob& job = *b.job;
    const int dp = job.kv->dp;
    const float *oacc = b.oacc, *m = b.m, *l = b.l;
    for (int r = 0; r < b.rows; ++r) {
      float* out = job.o + r * job.o_stride;
      if (m[r] == INFINITY || std::isnan(m[r])) {  // a score overflowed float32: not a number
        std::fill(out, out + job.d, std::numeric_limits<float>::quiet_NaN());
        job.lse[r] = std::numeric_limits<float>::quiet_NaN();
        continue;
      }
      if (l[r] == 0.0f) {
        std::fill(out, out + job.d, 0.0f);
        job.lse[r] = -INFINITY;
        continue;
      }
      const float inv = 1.0f / l[r];
      const float* src = oacc + r * dp;
      for (int c = 0; c < job.d; ++c) out[c] = src[c] * inv;
      job.lse[r] = static_cast<float>(kLn2 * (double(m[r]) + std::log2(double(l[r]))));
    }
  }

  // One task: the n (1..kMaxBlocksPerTask) query blocks of jobs, each key tile
  // for all of them in turn, so that a tile of K and V is read from memory
  // once per task rather than once per block and the blocks find it in L2.
  static KernelStats run_blocks(const QBlockJob* jobs, int n, float* ws) {
    const int dp = jobs[0].kv->dp;
    float* s = ws;
    Block blocks[kMaxBlocksPerTask];
    int64_t t0 = INT64_MAX, t1 = 0;
    KernelStats st;
    for (int i = 0; i < n; ++i) {
      start_block(jobs[i], s + int64_t{kBlockQ} * kBlockK + i * block_floats(dp), blocks + i);
      t0 = std::min(t0, blocks[i].t_begin), t1 = std::max(t1, blocks[i].t_end);
      st.tiles_total += (jobs[i].kv->nk + kBlockK - 1) / kBlockK;
    }
    for (int64_t t = t0; t < t1; ++t)
      for (int i = 0; i < n; ++i)
        if (blocks[i].t_begin <= t && t < blocks[i].t_end) tile_step(blocks[i], t, s, st);
    for (int i = 0; i < n; ++i) finish_block(blocks[i]);
    return st;
  }

  // ---- importance (column sums of the softmax) --------------------------------

  static KernelStats run_importance(const ImportanceJob& job, float* ws) {
    const PackedKV& kv = *job.kv;
    const int dp = kv.dp;
    float* s = ws;
    float* col = s + int64_t{kBlockQ} * kBlockK;  // kBlockK float sums of one query block

    KernelStats st;
    const int64_t key0 = job.tile * kBlockK;
    const int kvalid = static_cast<int>(std::min<int64_t>(kBlockK, kv.nk - key0));
    if (kvalid <= 0) return st;
    const int kc = static_cast<int>(round_up(kvalid, PW));
    const Positions kpos = kv.pos.from(key0);
    const reg zero = V::zero();

    for (int64_t i0 = 0; i0 < job.nq; i0 += kBlockQ) {
      const int rows = static_cast<int>(std::min<int64_t>(kBlockQ, job.nq - i0));
      const Positions qpos = job.qpos.from(i0);
      ++st.tiles_total;
      const TileClass cls =
          job.mask.classify(qpos.at(0), qpos.at(rows - 1), kpos.at(0), kpos.at(kvalid - 1));
      if (cls == TileClass::empty) continue;
      ++st.tiles_computed;
      if (cls == TileClass::partial) ++st.tiles_partial;

      const int rows_s = static_cast<int>(round_up(rows, V::kRowsS));
      const float* qs = job.qs + i0 * dp;
      for (int r0 = 0; r0 < rows_s; r0 += V::kRowsS)
        for (int p0 = 0; p0 < kc; p0 += PW)
          s_micro(qs + r0 * dp, dp, kv.k + (key0 + p0) * dp, s + r0 * kBlockK + p0);

      for (int j = 0; j < kc; j += L) V::store(col + j, zero);
      for (int r = 0; r < rows; ++r) {
        const float l = job.lse[i0 + r];
        if (!(l > -INFINITY) || !(l < INFINITY)) continue;  // sees nothing (or not a number)
        float* sr = s + r * kBlockK;
        int j0 = 0, j1 = kvalid;
        if (cls == TileClass::partial) mask_row(job.mask, qpos.at(r), kpos, kvalid, sr, &j0, &j1);
        if (j0 >= j1) continue;
        for (int j = 0; j < j0; ++j) sr[j] = -INFINITY;
        for (int j = j1; j < kc; ++j) sr[j] = -INFINITY;
        // p = 2^min(s - lse log2 e, 0): the softmax of a visible pair is at most 1.
        const reg lv = V::set1(static_cast<float>(double(l) * kLog2e));
        for (int j = 0; j < kc; j += L) {
          const reg x = V::sub(V::load(sr + j), lv);
          const reg neg = V::sub(zero, V::max(V::sub(zero, x), zero));  // min(x, 0)
          V::store(col + j, V::add(V::load(col + j), V::exp2(neg)));
        }
      }
      for (int j = 0; j < kvalid; ++j) job.imp[key0 + j] += double(col[j]);
    }
    return st;
  }

  // The FMA peak: kFmaChains independent multiply-add chains in registers,
  // `iters` rounds; returns the float32 FLOPs done (2 per lane per FMA). The
  // chains' sum goes to *sink so the compiler keeps them.
  static constexpr int kFmaChains = 12;
  static double fma_loop(int64_t iters, float* sink) {
    reg acc[kFmaChains];
    const reg a = V::set1(0.999999f), b = V::set1(1e-7f);
#pragma GCC unroll 16
    for (int i = 0; i < kFmaChains; ++i) acc[i] = V::set1(float(i));
    for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 16
      for (int i = 0; i < kFmaChains; ++i) acc[i] = V::fma(acc[i], a, b);
    }
    reg t = acc[0];
    for (int i = 1; i < kFmaChains; ++i) t = V::add(t, acc[i]);
    float lanes[L];
    V::store(lanes, t);
    *sink = lanes[0] + lanes[L - 1];
    return 2.0 * double(L) * kFmaChains * double(iters);
  }

  static const IsaKernels& table(Isa isa) {
    // kBf16Dot: the forward only (its K panels are bfloat16 pairs; the
    // importance pass takes the plain table).
    static const IsaKernels k{isa,
                              L,
                              PW,
                              &pack_kv,
                              &workspace_floats,
                              &run_blocks,
                              V::kBf16Dot ? nullptr : &run_importance,
                              &fma_loop};
    return k;
  }
};

}  // namespace
}  // namespace ringattn::cpu
