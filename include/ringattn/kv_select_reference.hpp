// The float64 reference of K/V selection (ringattn/kv_select.hpp), written from
// the semantics text at the top of that header alone: it shares no code with
// keep_count / select_keys, only Mask::allows, the storage-dtype loader
// (load_as_f32) and the INT4 quantizer reference (quantize_reference_row).
//
// For each batch b and K/V head g (query heads h of g's group, in order):
//   1. LSE_i of every query row of h under the mask (exact attention, double).
//   2. imp_h[j] = sum over i (ascending) of exp(s_ij - LSE_i) over the visible
//      pairs, recomputing the scores a tile of keys at a time; the importance of
//      selection head g (per kv-head) is sum over h (ascending) of imp_h[j], of
//      selection head h (per head) imp_h[j]. Every column is summed in a fixed
//      order, whatever the thread count: identical keys get bitwise equal
//      importance, and the ranking does not depend on the machine.
//   3. Kept set: the n = ceil(p Nk) keys of largest importance (a product within
//      1e-9 relative of an integer counts as that integer; at most Nk), ties the
//      lower index first, plus the sinks (keys 0 .. mask.sinks - 1) and the
//      recent window (keys Nk - R .. Nk - 1, R = keep_recent clamped to Nk).
//   4. Attention of every query row with the kept set of its selection head:
//      drop: only kept visible keys (a row with none: O = 0, LSE = -inf);
//      int4: every visible key, non-kept ones with K and V replaced by the
//      quantize-dequantize (quantize_reference_row, format `int4`) of that key's
//      K/V head row read as float32.
// It holds one row (or one tile) of scores per thread, never Nq x Nk, plus the
// K, V (and INT4 K, V) of one K/V head and the Q of its group in double.
//
// Conventions as reference_attention: scale = args.scale in double, or
// 1 / sqrt(D) computed in double when 0 (so p = 1 gives reference_attention's
// result exactly); query head h uses K/V head h / (Hq / Hkv).
//
// Assumes the keys are the whole sequence at positions 0 .. Nk - 1 (kpos =
// {0, 1}): a key's index is its position for the sinks and recent rules. Throws
// Error for other key positions, quantized K/V arguments (args.quantized()), a
// hierarchy (args.hier.on()), p not in (0, 1], R < 0, and for rest int4 a format
// that is not INT4 or whose group does not divide D.
#pragma once

#include <cstdint>
#include <vector>

#include "ringattn/attention.hpp"
#include "ringattn/kv_select.hpp"
#include "ringattn/quant.hpp"

namespace ringattn {

struct SelectReference {
  std::vector<double> importance;  // [B, Hsel, Nk]
  std::vector<uint8_t> keep;       // [B, Hsel, Nk]: 1 = kept
  std::vector<double> o;           // [B, Nq, Hq, D]
  std::vector<double> lse;         // [B, Hq, Nq]; -inf for rows that see nothing
  // [B, Hsel, Nk]: |imp[j] - t| / max(t, DBL_MIN), t = the importance of the n-th
  // ranked key (the last one kept by rank; n = 0: margin 0). A float32
  // implementation may rank keys differently only where this is small: tests
  // skip keys with margin < 1e-4 when comparing kept sets. Sinks and recent keys
  // are kept whatever their margin.
  std::vector<double> margin;
};

// `int4` is the format of the non-kept keys when sel.rest == KeepRest::int4;
// unused for drop.
SelectReference kv_select_reference(const AttentionArgs& args, const KvSelect& sel,
                                    const QuantFormat& int4);
// The same with the selection's own INT4 format (sel.rest_format()).
inline SelectReference kv_select_reference(const AttentionArgs& args, const KvSelect& sel) {
  return kv_select_reference(args, sel, sel.rest_format());
}

}  // namespace ringattn
