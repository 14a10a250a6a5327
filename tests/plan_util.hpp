// What the planner tests share (test_plan.cpp, test_plan_stages.cpp): a test
// hardware profile, a small problem, and a fast device behind a slow link.
#pragma once

#include <cstdint>

#include "ringattn/hardware.hpp"
#include "ringattn/layout.hpp"
#include "ringattn/plan.hpp"

namespace ringattn::test {

constexpr int64_t kMillion = 1000000;
constexpr int64_t kMi = int64_t{1} << 20;
constexpr double kTB = 1e12, kGB = 1e9;
constexpr double kTiB = 1024.0 * 1024 * 1024 * 1024, kGiB = 1024.0 * 1024 * 1024;

inline const char* const kProfile = R"(# a test profile
[device]
name = test-gpu
kind = gpu
description = made up
devices-per-node = 4
memory-gib = 16
memory-bandwidth-gb-s = 1000   ; trailing comment

[kernel-gflops]
float16.d64 = 100000
float16.d128 = 200000
float32.d128 = 50000

[link.intra-node]
latency-us = 10
bandwidth-gb-s = 100

[link.inter-node]
latency-us = 20
bandwidth-gb-s = 10
overlap = 1
)";

inline PlanInput problem(int64_t n, int ranks, bool causal, LayoutKind layout) {
  PlanInput in;
  in.batch = 1, in.nq = n, in.nk = n, in.hq = 8, in.hkv = 2, in.head_dim = 128;
  in.dtype = DType::f16;
  in.mask = causal ? Mask::causal(0) : Mask::none();
  in.layout = layout;
  in.ranks = ranks;
  return in;
}

// A fast device behind a slow link: transfers cannot hide at small c.
inline HardwareProfile slow_link_profile(double gbps, double overlap = 1.0) {
  HardwareProfile hw = parse_hardware_profile(kProfile, "t.ini");
  hw.memory_bw_bps = 1e30;  // merge time ~0: compute alone decides hiding
  hw.intra.bandwidth_bps = gbps * kGB;
  hw.intra.overlap = overlap;
  return hw;
}

}  // namespace ringattn::test
