#include "ringattn/cpu_info.hpp"

#include <fmt/format.h>
#include <sched.h>
#include <unistd.h>

#include <charconv>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "ringattn/error.hpp"

namespace ringattn {

void CpuSet::add(int cpu) {
  if (cpu >= 0 && cpu < kMaxCpus) words[cpu / 64] |= uint64_t{1} << (cpu % 64);
}

bool CpuSet::has(int cpu) const {
  return cpu >= 0 && cpu < kMaxCpus && ((words[cpu / 64] >> (cpu % 64)) & 1) != 0;
}

int CpuSet::count() const {
  int n = 0;
  for (const uint64_t w : words) n += __builtin_popcountll(w);
  return n;
}

bool CpuSet::overlaps(const CpuSet& o) const {
  for (int i = 0; i < kWords; ++i)
    if ((words[i] & o.words[i]) != 0) return true;
  return false;
}

bool CpuSet::operator==(const CpuSet& o) const {
  for (int i = 0; i < kWords; ++i)
    if (words[i] != o.words[i]) return false;
  return true;
}

std::string CpuSet::text() const {
  std::string s;
  for (int c = 0; c < kMaxCpus; ++c) {
    if (!has(c)) continue;
    int e = c;
    while (has(e + 1)) ++e;
    if (!s.empty()) s += ',';
    s += e == c ? fmt::format("{}", c) : fmt::format("{}-{}", c, e);
    c = e;
  }
  return s.empty() ? "none" : s;
}

CpuSet parse_cpu_list(const std::string& text, const std::string& what) {
  CpuSet set;
  std::string t = text;
  while (!t.empty() && (t.back() == '\n' || t.back() == ' ')) t.pop_back();
  const auto bad = [&] {
    return Error(fmt::format("{}: expected a CPU list like 0-3,8 (CPUs below {}), got '{}'", what,
                             CpuSet::kMaxCpus, t));
  };
  if (t.empty()) return set;
  std::istringstream in(t);
  for (std::string part; std::getline(in, part, ',');) {
    const auto dash = part.find('-');
    const std::string a = part.substr(0, dash),
                      b = dash == std::string::npos ? a : part.substr(dash + 1);
    int lo = -1, hi = -1;
    const auto ra = std::from_chars(a.data(), a.data() + a.size(), lo);
    const auto rb = std::from_chars(b.data(), b.data() + b.size(), hi);
    if (a.empty() || b.empty() || ra.ec != std::errc() || rb.ec != std::errc() ||
        ra.ptr != a.data() + a.size() || rb.ptr != b.data() + b.size() || lo < 0 || hi < lo ||
        hi >= CpuSet::kMaxCpus)
      throw bad();
    for (int c = lo; c <= hi; ++c) set.add(c);
  }
  return set;
}

CpuSet bound_cpus() {
  CpuSet set;
  cpu_set_t s;
  CPU_ZERO(&s);
  if (sched_getaffinity(0, sizeof(s), &s) != 0) return set;
  for (int c = 0; c < CpuSet::kMaxCpus && c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &s)) set.add(c);
  return set;
}

namespace {
// The first line of a file, "" when unreadable.
std::string first_line(const char* path) {
  std::ifstream in(path);
  std::string line;
  if (in) std::getline(in, line);
  return line;
}
}  // namespace

CpuSet node_cpus() {
  for (const char* path :
       {"/sys/fs/cgroup/cpuset.cpus.effective", "/sys/fs/cgroup/cpuset/cpuset.effective_cpus"}) {
    try {
      const CpuSet s = parse_cpu_list(first_line(path), path);
      if (!s.empty()) return s;
    } catch (const Error&) {
      // an unreadable or odd file: fall back to the online CPUs
    }
  }
  try {
    const CpuSet s = parse_cpu_list(first_line("/sys/devices/system/cpu/online"), "online");
    if (!s.empty()) return s;
  } catch (const Error&) {
  }
  CpuSet s;
  const long n = sysconf(_SC_NPROCESSORS_ONLN);
  for (long c = 0; c < n && c < CpuSet::kMaxCpus; ++c) s.add(static_cast<int>(c));
  if (s.empty()) s.add(0);
  return s;
}

bool bind_cpus(const CpuSet& cpus) {
  cpu_set_t s;
  CPU_ZERO(&s);
  for (int c = 0; c < CpuSet::kMaxCpus && c < CPU_SETSIZE; ++c)
    if (cpus.has(c)) CPU_SET(c, &s);
  return !cpus.empty() && sched_setaffinity(0, sizeof(s), &s) == 0;
}

std::string cpu_identity() {
  std::ifstream in("/proc/cpuinfo");
  std::string model, family, number;
  for (std::string line;
       std::getline(in, line) && line.find_first_not_of(" \t") != std::string::npos;) {
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string key = line.substr(0, colon);
    while (!key.empty() && (key.back() == ' ' || key.back() == '\t')) key.pop_back();
    std::string value = colon + 2 <= line.size() ? line.substr(colon + 2) : "";
    while (!value.empty() && value.back() == ' ') value.pop_back();
    if (key == "model name" && model.empty()) model = value;
    if (key == "cpu family" && family.empty()) family = value;
    if (key == "model" && number.empty()) number = value;
  }
  if (model.empty()) model = "unknown CPU";
  if (family.empty() || number.empty()) return model;
  return fmt::format("{} (family {}, model {})", model, family, number);
}

}  // namespace ringattn
