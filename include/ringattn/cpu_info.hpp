// This machine's CPU: which cores a process may run on, which the node has,
// and what the CPU is. `calibrate` names the CPU in the profiles it writes and
// measures the whole node whatever a launcher bound it to; `plan` compares a
// cpu profile's CPU with this one; `run` shares a rank's cores among the ranks
// bound to them.
#pragma once

#include <cstdint>
#include <string>

namespace ringattn {

// A set of CPUs 0 .. kMaxCpus - 1 (a plain value: it travels in allgathers).
struct CpuSet {
  static constexpr int kWords = 16;
  static constexpr int kMaxCpus = kWords * 64;
  uint64_t words[kWords] = {};

  void add(int cpu);
  bool has(int cpu) const;
  int count() const;
  bool empty() const { return count() == 0; }
  bool overlaps(const CpuSet& o) const;
  bool operator==(const CpuSet& o) const;
  bool operator!=(const CpuSet& o) const { return !(*this == o); }
  // "0-3,8,10-11" (Linux cpulist form); "none" when empty.
  std::string text() const;
};

// Parses a Linux cpulist ("0-3,8"); throws Error naming `what` otherwise.
CpuSet parse_cpu_list(const std::string& text, const std::string& what);

// The CPUs this thread may run on (sched_getaffinity); empty when unknown.
CpuSet bound_cpus();
// The CPUs of this node that this process's container may use: the cgroup's
// effective cpuset (v2, then v1) when readable, else every online CPU. A
// launcher's binding (mpirun binds each of np <= 2 ranks to one core) does
// not narrow it.
CpuSet node_cpus();
// Binds the calling thread (and the threads it starts later) to `cpus`;
// false when the system refuses.
bool bind_cpus(const CpuSet& cpus);

// The CPU's model name with its family and model numbers, which tell apart
// CPUs that virtual machines name alike: "AMD EPYC (family 25, model 17)".
// "unknown CPU" where /proc/cpuinfo says nothing.
std::string cpu_identity();

}  // namespace ringattn
