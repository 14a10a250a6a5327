// K/V selection (heavy hitters): keep the keys that receive the most attention
// in full precision, drop the rest or keep them as INT4. The semantics every
// implementation and the float64 reference (ringattn/kv_select_reference.hpp)
// follow.
//
// For one problem (q, k, v, mask; batch b, Nk keys at positions 0 .. Nk - 1):
//
// 1. Importance. Exact attention under the mask gives every query row i of
//    query head h its LSE_i. The importance of key j for query head h is the
//    attention it receives, summed over the queries:
//        imp_h[j] = sum over queries i that see j of exp(scale q_i.k_j - LSE_i)
//    (the column sums of the softmax; rows with no visible key add nothing).
//    Per K/V head (--kv-keep-per kv-head, the default) the importance of key j
//    for K/V head g is the sum of imp_h[j] over the query heads h of g's group
//    (h / (Hq / Hkv) = g); per head (--kv-keep-per head) each query head has
//    its own. Call the selection heads Hsel = Hkv or Hq.
// 2. Kept set, per (batch, selection head):
//        the n = keep_count(p, Nk) keys of largest importance (ties: the lower
//        key index first), plus the sinks (keys 0 .. sinks - 1 of the mask's
//        --sinks), plus the recent window (keys Nk - R .. Nk - 1, R =
//        --kv-keep-recent, clamped to Nk). With p = 1 every key is kept.
//    "Recent" is the end of the key sequence (what a decoder's cache keeps),
//    not a band around each query.
// 3. Attention over what is kept: query head h uses the kept set of its
//    selection head (its K/V head's, or its own). Keys outside it are
//        drop (default): invisible, as if the mask hid them; a row that sees no
//                        kept key gives O = 0, LSE = -inf;
//        int4:           visible, with their K and V replaced by the INT4
//                        quantize-dequantize of that key's K/V head row
//                        (ringattn/quant.hpp: group --kv-group, symmetric or
//                        --kv-asymmetric).
//    The result (O, LSE) replaces exact attention's.
//
// Over the ring (the job, ringattn/job.hpp): pass 1 is the exact ring; the
// importance is a second pass of the same ring in which each rank adds the
// column sums of its queries against every block it sees (the kernel's
// attention_importance) into a [B, Hsel, Nk] float64 array, all-reduced, so
// the selection is the same on every rank; the final pass is the ring again
// with the kept set as a per-key mask (and, for int4, a second ring over the
// INT4 K/V with the complementary set, merged by LSE). Per rank this adds
// O(B Hsel Nk) memory: 8 bytes of importance and one byte of kept flag per
// key and selection head.
#pragma once

#include <cstdint>
#include <string>

#include "ringattn/quant.hpp"

namespace ringattn {

enum class KeepRest : uint8_t { drop, int4 };
enum class KeepPer : uint8_t { kv_head, head };

struct KvSelect {
  double keep = 0;          // p in (0, 1]; 0: off
  int64_t keep_recent = 0;  // R >= 0
  KeepRest rest = KeepRest::drop;
  KeepPer per = KeepPer::kv_head;
  int group = 64;           // the INT4 rest's group (--kv-group)
  bool asymmetric = false;  // the INT4 rest's form (--kv-asymmetric)

  bool on() const { return keep > 0; }
  // Selection heads of a problem of hq query heads and hkv K/V heads.
  int64_t heads(int64_t hq, int64_t hkv) const { return per == KeepPer::head ? hq : hkv; }
  // The INT4 rest's format.
  QuantFormat rest_format() const { return {QuantBits::int4, group, asymmetric}; }
  // "keep 0.1 + recent 64, rest drop, per kv-head"
  std::string describe() const;
};

// n = ceil(p Nk), where a product within 1e-9 (relative) of an integer counts as
// that integer (so p = 0.1 of 1000 keys keeps 100, not 101), at most Nk.
int64_t keep_count(double p, int64_t nk);

// Throws FieldError("kv_keep": p not in (0, 1] or not a number; "kv_keep_recent":
// negative; "kv_group": the INT4 rest's group does not fit head_dim).
void validate_select(const KvSelect& s, int64_t head_dim);

const char* keep_rest_name(KeepRest r);  // "drop", "int4"
const char* keep_per_name(KeepPer p);    // "kv-head", "head"
// Throw FieldError(field) naming the accepted values.
KeepRest parse_keep_rest(const std::string& s, const std::string& field);
KeepPer parse_keep_per(const std::string& s, const std::string& field);

// The kept set of one (batch, selection head): keep[j] = 1 for kept keys, from
// the importance imp[0 .. nk) (step 2 above).
void select_keys(const double* imp, int64_t nk, int64_t count, int64_t sinks, int64_t recent,
                 uint8_t* keep);

}  // namespace ringattn
