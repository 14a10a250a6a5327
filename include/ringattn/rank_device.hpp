// Where the ranks of a job compute (the job's device; `ringattn run --device`):
//   cpu   the CPU engine on host memory; the ring's communicator is the job's.
//   cuda  the CUDA engine on one GPU per rank: under MPI the device is the
//         node-local rank's (RINGATTN_DEVICE overrides) and K/V move over NCCL
//         (bootstrapped over MPI); in-process ranks share GPU 0 and the
//         in-process communicator moves device buffers.
// The inputs are copied to the device once; O and LSE come back to host
// memory after the timed passes, for the gather, the outputs and the checks.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "ringattn/attention.hpp"
#include "ringattn/comm.hpp"
#include "ringattn/kernel.hpp"
#include "ringattn/ring.hpp"

namespace ringattn {

enum class Device : uint8_t { cpu, cuda };
const char* device_name(Device d);  // "cpu", "cuda"

// Throws FieldError("device") when this binary or the problem cannot use the
// device: no CUDA build, a dtype other than float16/bfloat16, an unsupported
// head dimension.
void check_device(Device device, const AttentionProblem& p);

// The in-process communicator's memory for the device (host or GPU 0).
LocalMemory local_memory_for(Device device);

class RankDevice {
 public:
  // Every rank of `comm` constructs it (NCCL set-up is collective).
  RankDevice(Communicator& comm, Device device, const KernelOptions& kopt);
  ~RankDevice();
  RankDevice(const RankDevice&) = delete;
  RankDevice& operator=(const RankDevice&) = delete;

  // One ring pass of `host` (q, k, v in host memory). cpu: O and LSE go to
  // o / lse directly; cuda: the inputs are copied to the device on the first
  // pass, O and LSE stay there until finish().
  RingMetrics pass(const RingSchedule& sch, const RingProblem& host, float* o, float* lse);
  // Makes o / lse (host) hold the last pass's O and LSE.
  void finish(float* o, float* lse);
  const std::string& name() const { return name_; }  // "cpu", "cuda:0"

 private:
  Communicator& comm_;
  Device device_;
  std::unique_ptr<Communicator> nccl_;
  std::unique_ptr<RingEngine> engine_;
  std::unique_ptr<EngineBuffer> q_, k_, v_, o_, lse_;  // cuda only
  std::size_t o_bytes_ = 0, lse_bytes_ = 0;
  std::string name_;
};

}  // namespace ringattn
