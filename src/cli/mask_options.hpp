// The sparse-mask options every command shares, and the Mask they build.
//
//   --window-left W    keys up to W positions before the query's diagonal (-1: unbounded);
//                      causal + --window-left 4095 is Mistral's 4096-token window
//   --window-right W   keys up to W positions after it (-1: unbounded; causal caps it at 0)
//   --dilation K       within the window, only keys at a distance divisible by K
//   --sinks S          the first S tokens are seen by every query (StreamingLLM)
//   --global RANGES    positions that see and are seen by every token (Longformer):
//                      "0,100-115" (inclusive ranges), at most 8
//   --block-size B     BigBird block sparsity over blocks of B tokens (0: off), with
//   --block-window W   neighbouring blocks on each side, --block-global G leading global
//   --block-random R   blocks, R random blocks per query block from --block-seed
// Hierarchical aggregation (ringattn/hierarchy.hpp):
//   --regional-block s1 --regional-window W2   level 2: keys beyond the window, up to
//                      about W2 back, through means of aligned blocks of s1 tokens
//   --global-block s2  level 3: everything older through blocks of s2 (a multiple of s1)
//   --route-block B --route-topk k   block routing (MoBA) instead of level 2: each
//                      query attends its own block and its k - 1 best earlier blocks
// Packed documents (ringattn/documents.hpp): block-diagonal attention, the rest
// of the mask inside each document:
//   --doc-lens L0,L1,...   document lengths in order (their sum is --seq-len)
//   --cu-seqlens FILE      or cumulative offsets [0, L0, L0 + L1, ..., N] in a 1-d
//                          int32/int64 .npy (flash-attn's cu_seqlens)
//   --kv-doc-lens, --kv-cu-seqlens   the keys' documents for cross-attention
//   --global-across-docs   global tokens see and are seen across documents
// The diagonal is bottom-right aligned (key position = query position + Nk - Nq),
// as for --causal. The parts combine: visible = causal bound AND (window OR
// sinks OR global OR blocks); with --block-size and no window, blocks only.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "cli/options.hpp"
#include "ringattn/attention.hpp"
#include "ringattn/hierarchy.hpp"
#include "ringattn/mask.hpp"

namespace ringattn::cli {

struct MaskOptions {
  bool causal = false;
  int64_t window_left = -1, window_right = -1, dilation = 1, sinks = 0;
  std::vector<PosRange> global;
  BlockSparse blocks;                       // key_blocks is filled in by build()
  Hierarchy hier;                           // levels or block routing on top of the mask
  std::shared_ptr<const DocOffsets> docs;   // packed documents (null: off)
  std::string docs_option, kv_docs_option;  // the options that gave them ("--cu-seqlens x.npy")

  bool sparse() const;  // anything beyond none/causal
  // The mask for queries of length nq against keys of length nk (with block
  // routing and no window: no band, the routed blocks replace it).
  Mask build(int64_t nq, int64_t nk) const;
  // Points p's mask (built by build()) at the documents, checking them against
  // p's lengths; throws UsageError naming the option that gave them.
  void attach_documents(AttentionProblem* p) const;
  // "causal window 4095/0 + 4 sinks", "full", ...
  std::string describe() const;
};

// The option specs (without --causal, which each command declares itself).
std::vector<OptionSpec> mask_option_specs();
// Reads and checks them; throws UsageError. `causal` is left false: each
// command sets it from its own --causal (a flag, or a list in bench-kernel).
MaskOptions parse_mask_options(const ParsedOptions& opt);

}  // namespace ringattn::cli
