// Host-only pieces of the GPU path that need no CUDA runtime, built in every
// configuration (tested on machines without a GPU): the peak-rate table and
// the copy-kind choice.
#include <string>

#include "ringattn/cuda.hpp"

namespace ringattn {

double dense_bf16_peak_tflops(const std::string& device_name) {
  // Dense bf16 tensor-core peaks (FP32 accumulate) from NVIDIA's data sheets.
  // Longer, more specific names first: "H100 PCIe" before "H100".
  struct Peak {
    const char* name;
    double tflops;
  };
  static constexpr Peak kPeaks[] = {
      {"H200", 989.0},    {"H100 PCIe", 756.0}, {"H100 NVL", 835.0}, {"H100", 989.0},
      {"H800", 989.0},    {"GH200", 989.0},     {"B200", 2250.0},    {"B100", 1750.0},
      {"A100", 312.0},    {"A800", 312.0},      {"A10G", 70.0},      {"A10", 125.0},
      {"L40S", 362.0},    {"L40", 181.0},       {"L4", 121.0},       {"RTX 4090", 165.0},
      {"RTX 3090", 71.0}, {"A6000", 155.0},
  };
  for (const Peak& p : kPeaks)
    if (device_name.find(p.name) != std::string::npos) return p.tflops;
  return 0.0;
}

CopyKind copy_kind(bool dst_on_device, bool src_on_device) {
  if (dst_on_device) return src_on_device ? CopyKind::device_to_device : CopyKind::host_to_device;
  return src_on_device ? CopyKind::device_to_host : CopyKind::host_to_host;
}

}  // namespace ringattn
