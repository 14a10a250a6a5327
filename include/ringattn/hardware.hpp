// Hardware profiles: what the planner (ringattn/plan.hpp) needs to know about
// a machine, read from an .ini file (configs/hardware/*.ini, or written by
// `ringattn calibrate`).
//
//   [device]
//   name = h100-sxm                 # required: short name
//   kind = gpu                      # gpu: one rank per device; cpu: a device is a core
//   description = ...               # optional, one line
//   devices-per-node = 8            # GPUs per node (cpu: cores per node)
//   memory-gib = 80                 # memory of one device (cpu: of the node, shared by its ranks)
//   memory-bandwidth-gb-s = 3350    # what the state merge streams at (cpu: one core)
//   parallel-efficiency = 0.95      # optional (cpu): rate of t threads = t x per-core rate x this
//   cpu = AMD EPYC (family 25, model 17)  # optional (cpu): the CPU it was measured on
//                                   # (cpu_info.hpp's cpu_identity); plan warns on another
//   isa = avx512                    # optional (cpu): the kernel ISA the rates are for
//   partial-tile-cost = 0.2         # optional (cpu): a partial tile (a diagonal's, a window
//                                   # edge's) costs its visible pairs plus this fraction of
//                                   # a whole tile's (kBlockQ x kBlockK pairs) time
//
//   [kernel-gflops]                 # attention forward rate of one device (cpu: one core)
//   float16.d128 = 350000           # <dtype>.d<head dim> = GFLOP/s; other head dims interpolate
//
//   [link.intra-node]               # the ring link between ranks of one node (MPI/NCCL)
//   latency-us = 5                  # per message
//   bandwidth-gb-s = 370            # per direction, while every rank sends and receives
//   overlap = 1                     # optional: fraction of a transfer that runs during compute
//   [link.inter-node]               # the link between nodes (needed when the ring spans nodes)
//   [link.in-process]               # threads of one process (`run --ranks-local`; cpu profiles)
//
//   [probe-spread]                  # optional, written by calibrate: how much each probe's
//   float32.d128 = 0.03             # repeats varied, (slowest - fastest) / fastest
//
// Units in the key names: GiB = 2^30 bytes, GB/s = 1e9 bytes/s, GFLOP/s =
// 1e9 FLOP/s (FLOPs as in kernel.hpp: 4 D per visible query-key pair per query
// head), us = microseconds. '#' or ';' start a comment. Every value is checked:
// a malformed line, an unknown section or key, a missing key or a nonsense
// value throws Error naming the file, line and key and the expected form.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "ringattn/dtype.hpp"

namespace ringattn {

enum class DeviceKind : uint8_t { gpu, cpu };

struct LinkSpec {
  bool present = false;
  double latency_s = 0;      // per message
  double bandwidth_bps = 0;  // bytes per second, per direction
  double overlap = 1;        // 0: transfers run after compute (serial), 1: fully concurrent
  // Seconds to move `bytes` as `messages` messages.
  double seconds(double bytes, int messages) const {
    return messages * latency_s + bytes / bandwidth_bps;
  }
};

struct HardwareProfile {
  std::string name, description;
  std::string source;  // the file it was read from
  DeviceKind kind = DeviceKind::gpu;
  int devices_per_node = 1;
  double memory_bytes = 0;               // per device (cpu: per node)
  double memory_bw_bps = 0;              // bytes per second (cpu: one core)
  double parallel_eff = 1.0;             // cpu: multi-thread rate factor
  std::string cpu;                       // cpu: the CPU it was measured on ("" when not named)
  std::string isa;                       // cpu: the kernel ISA of the rates ("" when not named)
  double partial_tile_cost = 0;          // cpu: extra time of a partial tile, in whole tiles
  std::map<std::string, double> spread;  // probe name -> (slowest - fastest) / fastest
  // (dtype, head dim) -> FLOP/s of one device (cpu: one core).
  std::map<std::pair<DType, int64_t>, double> kernel_flops;
  LinkSpec intra, inter, in_process;

  // FLOP/s for this dtype and head dim: the listed value, linear interpolation
  // between the nearest listed head dims, the nearest one outside them. Throws
  // Error naming the profile when the dtype has no entry.
  double kernel_rate(DType dtype, int64_t head_dim) const;
};

// Parses profile text; `source` names it in errors. Throws Error.
HardwareProfile parse_hardware_profile(const std::string& text, const std::string& source);
// Reads and parses a file. Throws Error naming the path when unreadable.
HardwareProfile load_hardware_profile(const std::string& path);

// Resolves --hardware VALUE: a path when it contains '/' or ends in ".ini",
// otherwise NAME.ini in the first of `dirs` that has it. Throws Error listing
// the profiles found in `dirs` when there is none.
std::string resolve_hardware_profile(const std::string& value,
                                     const std::vector<std::string>& dirs);

// Inter-node link presets for `plan --inter-node`, written from datasheets and
// derated to what NCCL point-to-point reaches in published benchmarks -- not
// measured here (replace with `ringattn calibrate` or nccl-tests figures):
//   ndr     InfiniBand NDR 400 Gb/s: 50 GB/s per direction on the datasheet,
//           ~46 GB/s reached; latency a few us (5 us); overlap 1.
//   eth400  400G Ethernet (RoCE v2): 50 GB/s line rate, ~44 GB/s reached;
//           higher latency (9 us, datasheet-class switches 8-10 us); overlap 1.
// Or a number: that bandwidth in GB/s, keeping `base`'s latency and overlap
// (the ndr preset's when `base` is absent). Throws Error on anything else.
LinkSpec inter_node_link(const std::string& value, const LinkSpec& base);
// "ndr", "eth400": the preset's one-line description ("" otherwise).
std::string inter_node_preset_text(const std::string& value);

// The profile as .ini text (what calibrate writes); parse(write(p)) == p.
std::string hardware_profile_text(const HardwareProfile& p, const std::string& header_comment);

}  // namespace ringattn
