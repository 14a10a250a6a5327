// Attention over quantized K/V (ringattn/quant.hpp): the kernel dequantizes
// while it packs its tiles, so its result must equal the float64 reference
// run on the dequantized values within float32 tolerance, for every format,
// mask and ISA; the error against exact attention is reported and bounded by
// a ceiling a bug would break.
//
// What quantization must cost on N(0, 1) inputs: a group of 64 has max|x| of
// about 2.5, so the INT8 step is 2.5 / 127 ~ 0.020 and its rounding error has
// rms 0.020 / sqrt(12) ~ 0.0057 of the values' scale. V's error passes to O
// in proportion (O averages V rows and their errors alike), K's perturbs the
// weights by about as much: O's relative error ~ sqrt(2) x 0.0057 ~ 0.8%
// (measured 0.7-0.9%). INT4 (step 2.5 / 7) is 18x coarser: ~14%. The
// ceilings below are about 1.5x those, so a wrong scale or code breaks them.
#include <gtest/gtest.h>

#include <cstdio>
#include <vector>

#include "ring_cases.hpp"
#include "ringattn/comm.hpp"
#include "ringattn/error.hpp"
#include "ringattn/kernel.hpp"
#include "ringattn/quant.hpp"
#include "ringattn/reference.hpp"
#include "ringattn/ring.hpp"
#include "ringattn/schedule.hpp"
#include "util.hpp"

namespace ringattn {
namespace {

constexpr double kInt8Ceiling = 1.2e-2;  // O rel. error vs exact, groups of 64 (see above)
constexpr double kInt4Ceiling = 0.22;

std::size_t at(int64_t i) {
  return static_cast<std::size_t>(i);
}

// K or V [B, n, H, D] float32 quantized row by row (token-heads).
struct Quantized {
  std::vector<uint8_t> buf;
  QuantRows rows;
  std::vector<float> dequant;  // [B, n, H, D]
};
Quantized quantize(const Tensor& t, const QuantFormat& f, int64_t d) {
  Quantized q;
  const int64_t rows = t.numel() / d;
  q.buf.resize(at(rows * f.row_bytes(d)));
  q.rows = QuantRows::in_buffer(f, rows, d, q.buf.data());
  quantize_rows(t.as<float>(), rows, q.rows);
  q.dequant.resize(at(rows * d));
  dequantize_rows(q.rows, 0, rows, q.dequant.data());
  return q;
}

TEST(KvQuant, KernelEqualsTheReferenceOnDequantizedValues) {
  const int64_t b = 2, n = 203, hq = 4, hkv = 2, d = 64;
  test::Problem p = test::make_problem(b, n, n, hq, hkv, d, DType::f32, 7);
  const ReferenceResult exact = reference_attention(p.args);
  for (QuantBits bits : {QuantBits::int8, QuantBits::int4})
    for (bool asym : {false, true})
      for (int g : {32, 64}) {
        QuantFormat f;
        f.bits = bits, f.group = g, f.asymmetric = asym;
        SCOPED_TRACE(f.describe());
        const Quantized kq = quantize(p.k, f, d), vq = quantize(p.v, f, d);
        for (const Mask& m : {Mask::none(), Mask::causal(0)}) {
          AttentionArgs a = p.args;
          a.mask = m;
          a.kq = kq.rows, a.vq = vq.rows, a.k = nullptr, a.v = nullptr;
          AttentionArgs deq = p.args;
          deq.mask = m, deq.k = kq.dequant.data(), deq.v = vq.dequant.data();
          const ReferenceResult ref = reference_attention(deq);
          for (Isa isa : {Isa::automatic, Isa::generic}) {
            const test::Output out = test::run_kernel(a, isa);
            const ErrorStats e = compare_to_reference(a, out.o.data(), out.lse.data(), ref);
            const Tolerance tol = tolerance_for(DType::f32);
            EXPECT_LE(e.o_rel_fro, tol.o_rel_fro);
            EXPECT_LE(e.lse_max_scaled, tol.lse_max_abs);
            EXPECT_EQ(e.lse_mismatch, 0);
          }
          // Against exact attention: what quantization costs (reported, bounded).
          AttentionArgs ex = p.args;
          ex.mask = m;
          const ReferenceResult exact_m = m.is_none() ? exact : reference_attention(ex);
          const test::Output out = test::run_kernel(a);
          const ErrorStats e = compare_to_reference(ex, out.o.data(), out.lse.data(), exact_m);
          std::printf("  %-16s %-7s O rel. error vs exact %.2e\n", f.describe().c_str(),
                      m.is_none() ? "full" : "causal", e.o_rel_fro);
          if (g == 64) {
            EXPECT_LE(e.o_rel_fro, bits == QuantBits::int8 ? kInt8Ceiling : kInt4Ceiling);
          }
        }
      }
}

// Storage dtypes other than float32 quantize through quantize_values (via float32):
// bfloat16 / float16 K and V, GQA and MQA, cross-attention (Nq != Nk).
TEST(KvQuant, HalfPrecisionStorageGqaAndCrossAttention) {
  for (DType dt : {DType::bf16, DType::f16})
    for (int64_t hkv : {1, 2}) {
      test::Problem p = test::make_problem(1, 70, 150, 4, hkv, 64, dt, 5 + uint64_t(hkv));
      QuantFormat f;
      f.bits = QuantBits::int8, f.group = 32;
      const int64_t rows = p.args.nk * hkv;
      std::vector<uint8_t> kb(at(rows * f.row_bytes(64))), vb(kb.size());
      AttentionArgs a = p.args;
      a.mask = Mask::causal(a.nk - a.nq);
      a.kq = QuantRows::in_buffer(f, rows, 64, kb.data());
      a.vq = QuantRows::in_buffer(f, rows, 64, vb.data());
      quantize_values(p.k.data.data(), dt, rows, a.kq);
      quantize_values(p.v.data.data(), dt, rows, a.vq);
      // The reference: float32 K/V holding the dequantized values, q as float32 (exact).
      std::vector<float> kd(at(rows * 64)), vd(kd.size());
      dequantize_rows(a.kq, 0, rows, kd.data());
      dequantize_rows(a.vq, 0, rows, vd.data());
      Tensor qf(DType::f32, p.q.shape);
      for (int64_t i = 0; i < p.q.numel(); ++i) qf.set(i, p.q.get(i));
      AttentionArgs ref_args = a;
      ref_args.dtype = DType::f32, ref_args.kq = {}, ref_args.vq = {};
      ref_args.q = qf.data.data(), ref_args.k = kd.data(), ref_args.v = vd.data();
      const ReferenceResult ref = reference_attention(ref_args);
      const test::Output out = test::run_kernel(a);
      const ErrorStats e = compare_to_reference(ref_args, out.o.data(), out.lse.data(), ref);
      const Tolerance tol = tolerance_for(DType::f32);
      EXPECT_LE(e.o_rel_fro, tol.o_rel_fro) << dtype_name(dt) << " hkv " << hkv;
      EXPECT_LE(e.lse_max_scaled, tol.lse_max_abs) << dtype_name(dt) << " hkv " << hkv;
    }
}

TEST(KvQuant, BadQuantizedArgumentsAreErrors) {
  test::Problem p = test::make_problem(1, 16, 16, 2, 2, 64, DType::f32, 3);
  QuantFormat f;
  f.bits = QuantBits::int8;
  const Quantized kq = quantize(p.k, f, 64), vq = quantize(p.v, f, 64);
  AttentionArgs a = p.args;
  a.kq = kq.rows, a.vq = vq.rows;
  a.vq.rows = 3;  // fewer rows than B nk Hkv
  EXPECT_THROW(test::run_kernel(a), FieldError);
  a.vq = vq.rows;
  a.vq.fmt.bits = QuantBits::int4;  // K and V in different formats
  EXPECT_THROW(test::run_kernel(a), FieldError);
  a.vq = vq.rows;
  a.kq.fmt.group = 48;
  EXPECT_THROW(test::run_kernel(a), FieldError);
}

// Global position of local index `i` of `rank`.
int64_t position_of(const Layout& l, int rank, int64_t i) {
  for (const Segment& s : l.segments(rank))
    if (i >= s.local_offset && i < s.local_offset + s.count)
      return s.start + (i - s.local_offset) * s.stride;
  return -1;
}

// Rank r's rows o/lse of a ring run against the float64 reference of `args` (the
// whole problem) on the positions those rows hold.
void expect_rank_matches(const AttentionArgs& args, const Layout& ql, int r,
                         const std::vector<float>& o, const std::vector<float>& lse) {
  std::vector<int64_t> rows;
  for (int64_t i = 0; i < ql.tokens(r); ++i) rows.push_back(position_of(ql, r, i));
  const ReferenceResult ref = reference_attention_rows(args, rows);
  AttentionArgs mine = args;
  mine.nq = ql.tokens(r);
  const ErrorStats e = compare_to_reference(mine, o.data(), lse.data(), ref);
  const Tolerance tol = tolerance_for(DType::f32);
  EXPECT_LE(e.o_rel_fro, tol.o_rel_fro) << "rank " << r;
  EXPECT_LE(e.lse_max_scaled, tol.lse_max_abs) << "rank " << r;
  EXPECT_EQ(e.lse_mismatch, 0) << "rank " << r;
}

// K/V with a quantized wire, as query rank r sees them: its own keys and the
// shared rows (sinks, global keys gathered once) exact, every other key's rows
// dequantized (quantization is per token-head row, so a round trip of the row
// is what crossing the wire does to it).
Tensor as_seen_by(const Tensor& kv, const QuantFormat& f, const Layout& kvl,
                  const std::vector<uint8_t>& shared, int rank) {
  Tensor t(DType::f32, kv.shape);
  const int64_t b = kv.shape[0], n = kv.shape[1], h = kv.shape[2], d = kv.shape[3];
  std::vector<uint8_t> buf(at(f.row_bytes(d)));
  const QuantRows q = QuantRows::in_buffer(f, 1, d, buf.data());
  for (int64_t bi = 0; bi < b; ++bi)
    for (int64_t j = 0; j < n; ++j)
      for (int64_t hh = 0; hh < h; ++hh) {
        const int64_t off = ((bi * n + j) * h + hh) * d;
        const float* src = kv.as<float>() + off;
        float* dst = t.as<float>() + off;
        if (kvl.local_index(rank, j) >= 0 || shared[at(j)]) {
          std::copy_n(src, d, dst);
        } else {
          quantize_rows(src, 1, q);
          dequantize_rows(q, 0, 1, dst);
        }
      }
  return t;
}

TEST(KvQuant, RingWithAQuantizedWireEqualsTheReferenceOfWhatTravelled) {
  const int64_t b = 2, n = 157, hq = 4, hkv = 2, d = 64;
  test::Problem p = test::make_problem(b, n, n, hq, hkv, d, DType::f32, 21);
  Mask sinks = Mask::causal(0);
  sinks.lo = -40, sinks.sinks = 3;  // a window of 41 keys plus 3 sinks
  const std::vector<std::pair<const char*, Mask>> masks = {
      {"full", Mask::none()}, {"causal", Mask::causal(0)}, {"window+sinks", sinks}};
  QuantFormat i8, i4a;
  i8.bits = QuantBits::int8;
  i4a.bits = QuantBits::int4, i4a.group = 32, i4a.asymmetric = true;
  for (const QuantFormat& f : {i8, i4a})
    for (const auto& [mname, mask] : masks)
      for (int ranks : {1, 2, 3, 4})
        for (LayoutKind kind : {LayoutKind::contiguous, LayoutKind::zigzag, LayoutKind::striped}) {
          if (ranks == 1 && kind != LayoutKind::contiguous) continue;
          // Sanitized builds: the edges (P = 1, 3) on two layouts.
          if (test::kSanitized && (ranks % 2 == 0 || kind == LayoutKind::striped)) continue;
          SCOPED_TRACE(f.describe() + " " + mname + " P=" + std::to_string(ranks) + " " +
                       layout_name(kind));
          const Layout ql(kind, n, ranks), kvl(kind, n, ranks);
          const RingSchedule sch = make_ring_schedule(ql, kvl, mask);
          std::vector<uint8_t> shared(at(n), 0);
          for (int x = 0; x < ranks && sch.shared.on(); ++x)
            for (const Chunk& c : sch.shared.key_chunks[at(x)])
              for (int64_t i = 0; i < c.count; ++i)
                shared[at(position_of(kvl, x, c.local + i))] = 1;
          std::vector<int64_t> sent(at(ranks), 0), full(at(ranks), 0);
          run_local(ranks, [&](Communicator& comm) {
            const int r = comm.rank();
            test::RankShare share = test::rank_share(p, ql, kvl, r);
            RingProblem& rp = share.rp;
            rp.mask = mask;
            rp.kv_wire = f;
            const int64_t nq = ql.tokens(r);
            std::vector<float> o(at(b * nq * hq * d)), lse(at(b * hq * nq));
            const RingMetrics m = ring_attention(comm, sch, rp, o.data(), lse.data());
            sent[at(r)] = m.bytes_sent;
            // The reference of what this rank's queries saw.
            AttentionArgs ref_args = p.args;
            ref_args.mask = mask;
            const Tensor kr = as_seen_by(p.k, f, kvl, shared, r),
                         vr = as_seen_by(p.v, f, kvl, shared, r);
            ref_args.k = kr.data.data(), ref_args.v = vr.data.data();
            expect_rank_matches(ref_args, ql, r, o, lse);
          });
          // What travelled: quantized rows (codes + scales) instead of float32 ones.
          if (ranks > 1 && !mask.is_none() && mname == std::string("causal") &&
              kind == LayoutKind::contiguous) {
            const int64_t row_fp = d * 4, row_q = f.row_bytes(d);
            // contiguous causal: rank r sends its block to every later rank (direct) or on.
            EXPECT_GT(sent[0], 0);
            EXPECT_EQ(sent[0] % (2 * b * hkv * row_q), 0);
            EXPECT_LT(row_q * 3, row_fp);
          }
        }
}

// K/V stored quantized (--kv-store): every attention, the own block's and the
// shared rows' included, sees the dequantized values, so the result is the
// reference over dequantized K/V whatever P and the layout.
TEST(KvQuant, RingWithStoredCodesEqualsTheReferenceOnDequantizedKV) {
  const int64_t b = 1, n = 190, hq = 4, hkv = 2, d = 64;
  test::Problem p = test::make_problem(b, n, n, hq, hkv, d, DType::f32, 33);
  Mask mask = Mask::causal(0);
  mask.lo = -60, mask.sinks = 2;
  QuantFormat f;
  f.bits = QuantBits::int4, f.group = 32;
  const Quantized kq = quantize(p.k, f, d), vq = quantize(p.v, f, d);
  AttentionArgs deq = p.args;
  deq.mask = mask, deq.k = kq.dequant.data(), deq.v = vq.dequant.data();
  for (int ranks : {1, 2, 3, 4})
    for (LayoutKind kind : {LayoutKind::contiguous, LayoutKind::zigzag, LayoutKind::striped}) {
      if (ranks == 1 && kind != LayoutKind::contiguous) continue;
      SCOPED_TRACE("P=" + std::to_string(ranks) + " " + layout_name(kind));
      const Layout ql(kind, n, ranks), kvl(kind, n, ranks);
      const RingSchedule sch = make_ring_schedule(ql, kvl, mask);
      run_local(ranks, [&](Communicator& comm) {
        const int r = comm.rank();
        test::RankShare share = test::rank_share(p, ql, kvl, r);
        RingProblem& rp = share.rp;
        const int64_t rows = b * kvl.tokens(r) * hkv;
        std::vector<uint8_t> codes(at(2 * rows * f.row_bytes(d)) + 1);
        quantize_rows(share.k.as<float>(), rows, QuantRows::in_buffer(f, rows, d, codes.data()));
        quantize_rows(share.v.as<float>(), rows,
                      QuantRows::in_buffer(f, rows, d, codes.data() + rows * f.row_bytes(d)));
        rp.mask = mask;
        rp.k = nullptr, rp.v = nullptr;
        rp.kv_wire = f, rp.kv_stored = codes.data();
        const int64_t nq = ql.tokens(r);
        std::vector<float> o(at(b * nq * hq * d)), lse(at(b * hq * nq));
        ring_attention(comm, sch, rp, o.data(), lse.data());
        expect_rank_matches(deq, ql, r, o, lse);
      });
    }
}

// KIVI keys (K per channel over each rank's tokens of a range [gG, (g + 1) G)):
// stored, every attention sees K and V as their owners quantized them; on the
// wire, every key from another rank does. The reference runs on those values
// (K grouped as the ranks hold it: kivi_groups_by_rank; V per token), P 1-4,
// every layout (striped blocks hold every P-th token of a range).
TEST(KvQuant, RingWithKiviKeysEqualsTheReferenceOfWhatEachRankSaw) {
  const int64_t b = 1, n = 190, hq = 4, hkv = 2, d = 64;
  test::Problem p = test::make_problem(b, n, n, hq, hkv, d, DType::f32, 35);
  Mask mask = Mask::causal(0);
  mask.lo = -70, mask.sinks = 2;
  QuantFormat f;
  f.bits = QuantBits::int4, f.group = 32, f.kivi = true;
  const Quantized vq = quantize(p.v, f, d);  // V per token whatever the layout
  for (bool store : {true, false})
    for (int ranks : {1, 2, 3, 4})
      for (LayoutKind kind : {LayoutKind::contiguous, LayoutKind::zigzag, LayoutKind::striped}) {
        if (ranks == 1 && kind != LayoutKind::contiguous) continue;
        if (test::kSanitized && ranks == 4) continue;
        SCOPED_TRACE(std::string(store ? "stored" : "wire") + " P=" + std::to_string(ranks) + " " +
                     layout_name(kind));
        const Layout ql(kind, n, ranks), kvl(kind, n, ranks);
        // K as the ranks quantize it, whole sequence.
        int64_t m = 0;
        const std::vector<int32_t> groups = kivi_groups_by_rank(kvl, f.group, &m);
        std::vector<uint8_t> kbuf(at(f.k_bytes(b, n, m, hkv, d)));
        const QuantRows kq =
            QuantRows::keys_in_buffer(f, b, n, hkv, d, groups.data(), m, kbuf.data());
        quantize_rows(p.k.as<float>(), b * n * hkv, kq);
        Tensor kdeq(DType::f32, p.k.shape);
        dequantize_rows(kq, 0, b * n * hkv, kdeq.as<float>());
        const RingSchedule sch = make_ring_schedule(ql, kvl, mask);
        std::vector<uint8_t> shared(at(n), 0);
        for (int x = 0; x < ranks && sch.shared.on(); ++x)
          for (const Chunk& c : sch.shared.key_chunks[at(x)])
            for (int64_t i = 0; i < c.count; ++i) shared[at(position_of(kvl, x, c.local + i))] = 1;
        run_local(ranks, [&](Communicator& comm) {
          const int r = comm.rank();
          test::RankShare share = test::rank_share(p, ql, kvl, r);
          RingProblem& rp = share.rp;
          rp.mask = mask;
          rp.kv_wire = f;
          std::vector<uint8_t> codes(kv_block_bytes(rp, r) + 1);
          if (store) {
            quantize_kv_block(rp, r, codes.data());
            rp.k = rp.v = nullptr, rp.kv_stored = codes.data();
          }
          const int64_t nq = ql.tokens(r);
          std::vector<float> o(at(b * nq * hq * d)), lse(at(b * hq * nq));
          ring_attention(comm, sch, rp, o.data(), lse.data());
          // What this rank saw: stored, every key dequantized; on the wire, the keys of
          // other ranks (not the shared rows, gathered exact).
          Tensor ks(DType::f32, p.k.shape), vs(DType::f32, p.v.shape);
          for (int64_t j = 0; j < n; ++j) {
            const bool exact = !store && (kvl.local_index(r, j) >= 0 || shared[at(j)]);
            for (int64_t x = 0; x < hkv * d; ++x) {
              const int64_t e = j * hkv * d + x;
              ks.as<float>()[e] = exact ? p.k.as<float>()[e] : kdeq.as<float>()[e];
              vs.as<float>()[e] = exact ? p.v.as<float>()[e] : vq.dequant[at(e)];
            }
          }
          AttentionArgs ref = p.args;
          ref.mask = mask, ref.k = ks.data.data(), ref.v = vs.data.data();
          expect_rank_matches(ref, ql, r, o, lse);
        });
      }
}

}  // namespace
}  // namespace ringattn
