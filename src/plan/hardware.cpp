#include "ringattn/hardware.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "ringattn/attention.hpp"
#include "ringattn/error.hpp"

namespace ringattn {
namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
constexpr double kGiga = 1e9;
constexpr double kMicro = 1e-6;
constexpr int kMaxDevicesPerNode = 1 << 16;
constexpr const char* kDevice = "device";
constexpr const char* kKernel = "kernel-gflops";
constexpr const char* kIntra = "link.intra-node";
constexpr const char* kInter = "link.inter-node";
constexpr const char* kInProcess = "link.in-process";
constexpr const char* kSpread = "probe-spread";
const char* const kSections[] = {kDevice, kKernel, kIntra, kInter, kInProcess, kSpread};
const char* const kDeviceKeys[] = {"name",
                                   "kind",
                                   "description",
                                   "devices-per-node",
                                   "memory-gib",
                                   "memory-bandwidth-gb-s",
                                   "parallel-efficiency",
                                   "cpu",
                                   "isa",
                                   "partial-tile-cost"};
constexpr double kMaxPartialTileCost = 16;  // whole tiles: a sanity bound
const char* const kLinkKeys[] = {"latency-us", "bandwidth-gb-s", "overlap"};

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r");
  if (b == std::string::npos) return "";
  const auto e = s.find_last_not_of(" \t\r");
  return s.substr(b, e - b + 1);
}

// One `key = value` of a section, with the line it came from.
struct Entry {
  std::string value;
  int line = 0;
  bool used = false;
};
using Section = std::map<std::string, Entry>;

class Reader {
 public:
  Reader(const std::string& text, std::string source) : source_(std::move(source)) {
    std::istringstream in(text);
    std::string raw, section;
    int line = 0;
    while (std::getline(in, raw)) {
      ++line;
      std::string s = raw;
      if (const auto c = s.find_first_of("#;"); c != std::string::npos) s.erase(c);
      s = trim(s);
      if (s.empty()) continue;
      if (s.front() == '[') {
        if (s.back() != ']')
          fail(line, fmt::format("malformed section header '{}' (expected [name])", s));
        section = trim(s.substr(1, s.size() - 2));
        const bool known = std::any_of(std::begin(kSections), std::end(kSections),
                                       [&](const char* k) { return section == k; });
        if (!known)
          fail(line, fmt::format("unknown section [{}] (expected one of [{}])", section,
                                 fmt::join(kSections, "], [")));
        sections_[section];
        continue;
      }
      const auto eq = s.find('=');
      if (eq == std::string::npos) fail(line, fmt::format("expected `key = value`, got '{}'", s));
      if (section.empty())
        fail(line, fmt::format("'{}' is outside any section (start with [device])", s));
      const std::string key = trim(s.substr(0, eq)), value = trim(s.substr(eq + 1));
      if (key.empty()) fail(line, "empty key before '='");
      Section& sec = sections_[section];
      if (sec.count(key) != 0)
        fail(line, fmt::format("[{}] {} given more than once (first on line {})", section, key,
                               sec[key].line));
      sec[key] = {value, line};
    }
  }

  [[noreturn]] void fail(int line, const std::string& what) const {
    throw Error(fmt::format("{}:{}: {}", source_, line, what));
  }
  [[noreturn]] void fail_missing(const std::string& section, const std::string& key,
                                 const std::string& expected) const {
    throw Error(
        fmt::format("{}: missing key '{}' in [{}] (expected {})", source_, key, section, expected));
  }

  bool has_section(const std::string& s) const { return sections_.count(s) != 0; }
  Section* section(const std::string& s) {
    const auto it = sections_.find(s);
    return it == sections_.end() ? nullptr : &it->second;
  }

  const Entry* find(const std::string& section, const std::string& key) {
    Section* sec = this->section(section);
    if (sec == nullptr) return nullptr;
    const auto it = sec->find(key);
    if (it == sec->end()) return nullptr;
    it->second.used = true;
    return &it->second;
  }

  std::string text(const std::string& section, const std::string& key, bool required) {
    const Entry* e = find(section, key);
    if (e == nullptr) {
      if (required) fail_missing(section, key, "a value");
      return "";
    }
    if (e->value.empty()) fail(e->line, fmt::format("[{}] {}: empty value", section, key));
    return e->value;
  }

  // A finite number > 0 (or >= 0 when zero_ok), at most `max`.
  double number(const std::string& section, const std::string& key, const Entry& e,
                bool zero_ok = false, double max = HUGE_VAL) const {
    double v = 0;
    const char* end = e.value.data() + e.value.size();
    const auto r = std::from_chars(e.value.data(), end, v);
    const bool ok = !e.value.empty() && r.ec == std::errc() && r.ptr == end && std::isfinite(v) &&
                    (zero_ok ? v >= 0 : v > 0) && v <= max;
    if (!ok) {
      const std::string range =
          max < HUGE_VAL ? fmt::format(" in [{}, {}]", zero_ok ? "0" : "> 0", max) : "";
      fail(e.line, fmt::format("[{}] {}: expected a {} number{}, got '{}'", section, key,
                               zero_ok ? "non-negative" : "positive", range, e.value));
    }
    return v;
  }

  double number(const std::string& section, const std::string& key, bool required, double fallback,
                bool zero_ok = false, double max = HUGE_VAL) {
    const Entry* e = find(section, key);
    if (e == nullptr) {
      if (required)
        fail_missing(section, key, zero_ok ? "a non-negative number" : "a positive number");
      return fallback;
    }
    return number(section, key, *e, zero_ok, max);
  }

  // Throws for the first key of the section not in `known` (before reading any
  // value, so a typo is reported as such rather than as a missing key).
  void check_known(const std::string& section, const char* const* known, std::size_t n) {
    Section* sec = this->section(section);
    if (sec == nullptr) return;
    for (auto& [key, e] : *sec) {
      if (std::find_if(known, known + n, [&](const char* k) { return key == k; }) != known + n)
        continue;
      std::vector<std::string> names(known, known + n);
      fail(e.line, fmt::format("[{}]: unknown key '{}' (expected one of {})", section, key,
                               fmt::join(names, ", ")));
    }
  }

  const std::string& source() const { return source_; }

 private:
  std::string source_;
  std::map<std::string, Section> sections_;
};

LinkSpec read_link(Reader& r, const std::string& section) {
  LinkSpec l;
  if (!r.has_section(section)) return l;
  l.present = true;
  r.check_known(section, kLinkKeys, std::size(kLinkKeys));
  l.latency_s = r.number(section, "latency-us", true, 0, true) * kMicro;
  l.bandwidth_bps = r.number(section, "bandwidth-gb-s", true, 0) * kGiga;
  l.overlap = r.number(section, "overlap", false, 1.0, true, 1.0);
  return l;
}

// "float16.d128" -> (f16, 128).
void read_kernel(Reader& r, HardwareProfile* p) {
  Section* sec = r.section(kKernel);
  if (sec == nullptr || sec->empty())
    throw Error(fmt::format(
        "{}: missing section [{}] with at least one `<dtype>.d<head dim> = GFLOP/s` line "
        "(e.g. float16.d128 = 350000)",
        r.source(), kKernel));
  for (auto& [key, e] : *sec) {
    e.used = true;
    const auto dot = key.find(".d");
    int64_t d = 0;
    DType t = DType::f32;
    bool ok = dot != std::string::npos;
    if (ok) {
      try {
        t = parse_dtype(key.substr(0, dot), "dtype");
      } catch (const Error&) {
        ok = false;
      }
      const std::string ds = key.substr(dot + 2);
      const auto res = std::from_chars(ds.data(), ds.data() + ds.size(), d);
      ok = ok && !ds.empty() && res.ec == std::errc() && res.ptr == ds.data() + ds.size() &&
           d >= kMinHeadDim && d <= kMaxHeadDim;
    }
    if (!ok)
      r.fail(e.line,
             fmt::format("[{}]: key '{}' is not <dtype>.d<head dim> (dtype float32, float16 or "
                         "bfloat16; head dim in [{}, {}]), e.g. float16.d128",
                         kKernel, key, kMinHeadDim, kMaxHeadDim));
    if (p->kernel_flops.count({t, d}) != 0)
      r.fail(e.line, fmt::format("[{}]: {} head dim {} given twice", kKernel, dtype_name(t), d));
    p->kernel_flops[{t, d}] = r.number(kKernel, key, e) * kGiga;
  }
}

}  // namespace

double HardwareProfile::kernel_rate(DType dtype, int64_t head_dim) const {
  std::vector<std::pair<int64_t, double>> pts;
  for (const auto& [k, v] : kernel_flops)
    if (k.first == dtype) pts.emplace_back(k.second, v);
  if (pts.empty())
    throw Error(fmt::format("{}: no kernel rate for {} (add `{}.d{} = GFLOP/s` to [{}])", source,
                            dtype_name(dtype), dtype_name(dtype), head_dim, kKernel));
  if (head_dim <= pts.front().first) return pts.front().second;
  if (head_dim >= pts.back().first) return pts.back().second;
  for (std::size_t i = 1; i < pts.size(); ++i)
    if (head_dim <= pts[i].first) {
      const auto [d0, r0] = pts[i - 1];
      const auto [d1, r1] = pts[i];
      return r0 + (r1 - r0) * double(head_dim - d0) / double(d1 - d0);
    }
  return pts.back().second;
}

HardwareProfile parse_hardware_profile(const std::string& text, const std::string& source) {
  Reader r(text, source);
  if (!r.has_section(kDevice))
    throw Error(
        fmt::format("{}: missing section [{}] (name, kind, devices-per-node, memory-gib, "
                    "memory-bandwidth-gb-s)",
                    source, kDevice));
  HardwareProfile p;
  p.source = source;
  r.check_known(kDevice, kDeviceKeys, std::size(kDeviceKeys));
  p.name = r.text(kDevice, "name", true);
  p.description = r.text(kDevice, "description", false);
  const std::string kind = r.text(kDevice, "kind", true);
  if (kind == "gpu") {
    p.kind = DeviceKind::gpu;
  } else if (kind == "cpu") {
    p.kind = DeviceKind::cpu;
  } else {
    r.fail(r.find(kDevice, "kind")->line,
           fmt::format("[device] kind: expected gpu or cpu, got '{}'", kind));
  }
  const double dpn = r.number(kDevice, "devices-per-node", true, 0);
  if (dpn != std::floor(dpn) || dpn > kMaxDevicesPerNode)
    r.fail(r.find(kDevice, "devices-per-node")->line,
           fmt::format("[device] devices-per-node: expected an integer in [1, {}], got {}",
                       kMaxDevicesPerNode, dpn));
  p.devices_per_node = static_cast<int>(dpn);
  p.memory_bytes = r.number(kDevice, "memory-gib", true, 0) * kGiB;
  p.memory_bw_bps = r.number(kDevice, "memory-bandwidth-gb-s", true, 0) * kGiga;
  p.parallel_eff = r.number(kDevice, "parallel-efficiency", false, 1.0, false, 1.0);
  p.cpu = r.text(kDevice, "cpu", false);
  p.isa = r.text(kDevice, "isa", false);
  if (!p.isa.empty() && p.isa != "avx512" && p.isa != "avx2" && p.isa != "generic")
    r.fail(r.find(kDevice, "isa")->line,
           fmt::format("[device] isa: expected avx512, avx2 or generic, got '{}'", p.isa));
  p.partial_tile_cost =
      r.number(kDevice, "partial-tile-cost", false, 0.0, true, kMaxPartialTileCost);
  if ((!p.cpu.empty() || !p.isa.empty() || p.partial_tile_cost > 0) && p.kind != DeviceKind::cpu)
    r.fail(r.find(kDevice, "kind")->line,
           "[device] cpu, isa and partial-tile-cost describe cpu profiles (kind = cpu)");
  if (Section* sec = r.section(kSpread))
    for (auto& [key, e] : *sec) {
      e.used = true;
      p.spread[key] = r.number(kSpread, key, e, true);
    }
  read_kernel(r, &p);
  p.intra = read_link(r, kIntra);
  p.inter = read_link(r, kInter);
  p.in_process = read_link(r, kInProcess);
  if (!p.intra.present && !p.in_process.present)
    throw Error(
        fmt::format("{}: no link section: give [{}] (and [{}] for multi-node rings, [{}] "
                    "for in-process ranks)",
                    source, kIntra, kInter, kInProcess));
  return p;
}

HardwareProfile load_hardware_profile(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error(fmt::format("cannot open '{}' ({})", path, std::strerror(errno)));
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_hardware_profile(ss.str(), path);
}

std::string resolve_hardware_profile(const std::string& value,
                                     const std::vector<std::string>& dirs) {
  namespace fs = std::filesystem;
  if (value.empty()) throw Error("expected a profile name or an .ini path, got ''");
  const bool is_path = value.find('/') != std::string::npos ||
                       (value.size() > 4 && value.compare(value.size() - 4, 4, ".ini") == 0);
  if (is_path) return value;
  std::set<std::string> known;
  for (const std::string& d : dirs) {
    std::error_code ec;
    const fs::path p = fs::path(d) / (value + ".ini");
    if (fs::is_regular_file(p, ec)) return p.string();
    for (fs::directory_iterator it(d, ec), end; !ec && it != end; it.increment(ec))
      if (it->path().extension() == ".ini") known.insert(it->path().stem().string());
  }
  throw Error(fmt::format(
      "unknown hardware profile '{}' (expected an .ini path or one of: {})", value,
      known.empty() ? std::string("none found") : fmt::format("{}", fmt::join(known, ", "))));
}

namespace {
// Datasheet figures, derated (hardware.hpp): not measured here.
constexpr double kNdrGBs = 46, kNdrLatencyUs = 5;        // InfiniBand NDR 400 Gb/s (50 GB/s)
constexpr double kEth400GBs = 44, kEth400LatencyUs = 9;  // 400G Ethernet, RoCE v2 (50 GB/s)
constexpr double kGB = 1e9, kUs = 1e-6;

LinkSpec preset_link(double gb_s, double latency_us) {
  LinkSpec l;
  l.present = true;
  l.bandwidth_bps = gb_s * kGB;
  l.latency_s = latency_us * kUs;
  l.overlap = 1;
  return l;
}
}  // namespace

LinkSpec inter_node_link(const std::string& value, const LinkSpec& base) {
  if (value == "ndr") return preset_link(kNdrGBs, kNdrLatencyUs);
  if (value == "eth400") return preset_link(kEth400GBs, kEth400LatencyUs);
  double gb_s = 0;
  const auto r = std::from_chars(value.data(), value.data() + value.size(), gb_s);
  if (value.empty() || r.ec != std::errc() || r.ptr != value.data() + value.size() ||
      !std::isfinite(gb_s) || !(gb_s > 0))
    throw Error(fmt::format("expected ndr, eth400 or a bandwidth in GB/s (> 0), got '{}'", value));
  LinkSpec l = base.present ? base : preset_link(kNdrGBs, kNdrLatencyUs);
  l.bandwidth_bps = gb_s * kGB;
  return l;
}

std::string inter_node_preset_text(const std::string& value) {
  if (value == "ndr")
    return "InfiniBand NDR 400 Gb/s preset (datasheet 50 GB/s, derated to 46 GB/s; 5 us)";
  if (value == "eth400")
    return "400G Ethernet RoCE preset (datasheet 50 GB/s, derated to 44 GB/s; 9 us)";
  return "";
}

std::string hardware_profile_text(const HardwareProfile& p, const std::string& header_comment) {
  std::string out;
  std::istringstream hc(header_comment);
  for (std::string line; std::getline(hc, line);) out += "# " + line + "\n";
  out += fmt::format("\n[{}]\nname = {}\nkind = {}\n", kDevice, p.name,
                     p.kind == DeviceKind::gpu ? "gpu" : "cpu");
  if (!p.description.empty()) out += fmt::format("description = {}\n", p.description);
  out += fmt::format("devices-per-node = {}\nmemory-gib = {:.6g}\nmemory-bandwidth-gb-s = {:.6g}\n",
                     p.devices_per_node, p.memory_bytes / kGiB, p.memory_bw_bps / kGiga);
  if (p.parallel_eff != 1.0) out += fmt::format("parallel-efficiency = {:.4g}\n", p.parallel_eff);
  if (!p.cpu.empty()) out += fmt::format("cpu = {}\n", p.cpu);
  if (!p.isa.empty()) out += fmt::format("isa = {}\n", p.isa);
  if (p.partial_tile_cost > 0)
    out += fmt::format("partial-tile-cost = {:.4g}\n", p.partial_tile_cost);
  out += fmt::format("\n[{}]\n", kKernel);
  for (const auto& [k, v] : p.kernel_flops)
    out += fmt::format("{}.d{} = {:.6g}\n", dtype_name(k.first), k.second, v / kGiga);
  const auto link = [&](const char* name, const LinkSpec& l) {
    if (!l.present) return;
    out += fmt::format("\n[{}]\nlatency-us = {:.6g}\nbandwidth-gb-s = {:.6g}\noverlap = {:.3g}\n",
                       name, l.latency_s / kMicro, l.bandwidth_bps / kGiga, l.overlap);
  };
  link(kIntra, p.intra);
  link(kInter, p.inter);
  link(kInProcess, p.in_process);
  if (!p.spread.empty()) {
    out += fmt::format("\n[{}]\n", kSpread);
    for (const auto& [k, v] : p.spread) out += fmt::format("{} = {:.3g}\n", k, v);
  }
  return out;
}

}  // namespace ringattn
