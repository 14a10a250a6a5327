// AtomicFile, same_file and the removal of stale temporaries (ringattn/atomic_file.hpp).
#include "ringattn/atomic_file.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <system_error>
#include <utility>

#include "ringattn/error.hpp"

namespace ringattn {
namespace {

// Makes each temporary name of this process unique (with the pid).
std::atomic<unsigned long> g_temp_counter{0};

// Whether process `pid` can still be writing a temporary modified at `mtime`
// (seconds since the epoch): it exists, is not a zombie (a killed rank whose
// parent has not reaped it yet: it will never write again), and started no
// later than the file was last written (else the pid was reused). Where /proc
// says nothing, an existing process counts as the writer.
bool may_be_writer(long pid, double mtime) {
  if (::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) return false;
  std::FILE* f = std::fopen(fmt::format("/proc/{}/stat", pid).c_str(), "r");
  if (f == nullptr) return true;
  char buf[1024] = {};
  const std::size_t n = std::fread(buf, 1, sizeof(buf) - 1, f);
  std::fclose(f);
  // "pid (comm) state ... field 22 starttime": comm may hold spaces and ')'.
  const char* close = std::strrchr(buf, ')');
  if (n == 0 || close == nullptr) return true;
  char state = 0;
  unsigned long long start = 0;
  // After ") ": state (3), then fields 4..21, then starttime (22).
  if (std::sscanf(close + 1,
                  " %c %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s "
                  "%*s %*s %*s %llu",
                  &state, &start) != 2)
    return true;
  if (state == 'Z' || state == 'X') return false;
  // The boot time (btime, /proc/stat) turns starttime (clock ticks since boot) into epoch seconds.
  std::FILE* s = std::fopen("/proc/stat", "r");
  if (s == nullptr) return true;
  unsigned long long btime = 0;
  char line[256];
  while (std::fgets(line, sizeof(line), s) != nullptr)
    if (std::sscanf(line, "btime %llu", &btime) == 1) break;
  std::fclose(s);
  const long tick = ::sysconf(_SC_CLK_TCK);
  if (btime == 0 || tick <= 0) return true;
  const double started = double(btime) + double(start) / double(tick);
  return started <= mtime + 2.0;  // whole-second btime: a margin of two seconds
}

}  // namespace

bool same_file(const std::string& a, const std::string& b) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::exists(a, ec) && fs::exists(b, ec)) {
    const bool eq = fs::equivalent(a, b, ec);
    if (!ec) return eq;
  }
  const fs::path ca = fs::weakly_canonical(fs::absolute(a, ec), ec);
  const fs::path cb = fs::weakly_canonical(fs::absolute(b, ec), ec);
  return ca.lexically_normal() == cb.lexically_normal();
}

int remove_stale_temporaries(const std::string& path) {
  const std::filesystem::path p(path);
  const std::filesystem::path dir = p.has_parent_path() ? p.parent_path() : ".";
  const std::string prefix = p.filename().string() + ".tmp.";
  std::error_code ec;
  std::filesystem::directory_iterator it(dir, ec), end;
  int removed = 0;
  for (; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.compare(0, prefix.size(), prefix) != 0) continue;
    // <prefix><pid>.<counter>, both decimal
    const std::string rest = name.substr(prefix.size());
    const std::size_t dot = rest.find('.');
    if (dot == std::string::npos || dot == 0 || dot + 1 == rest.size() ||
        rest.find_first_not_of("0123456789") != dot ||
        rest.find_first_not_of("0123456789", dot + 1) != std::string::npos)
      continue;
    long pid = 0;
    const auto res = std::from_chars(rest.data(), rest.data() + dot, pid);
    if (res.ec != std::errc() || pid <= 0 || pid == static_cast<long>(::getpid())) continue;
    struct stat st {};
    if (::stat(it->path().c_str(), &st) != 0) continue;
    const double mtime = double(st.st_mtim.tv_sec) + 1e-9 * double(st.st_mtim.tv_nsec);
    if (may_be_writer(pid, mtime)) continue;  // still running
    if (::unlink(it->path().c_str()) == 0) ++removed;
  }
  return removed;
}

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {
  struct stat st {};
  if (::stat(path_.c_str(), &st) == 0 && S_ISDIR(st.st_mode))
    throw Error(fmt::format("cannot write output file '{}': {}", path_, std::strerror(EISDIR)));
  remove_stale_temporaries(path_);
  // pid + per-process counter make the name unique; retry past stale temporaries of a dead
  // process that had the same pid.
  for (int attempt = 0; attempt < 100; ++attempt) {
    tmp_ = fmt::format("{}.tmp.{}.{}", path_, static_cast<long>(::getpid()),
                       g_temp_counter.fetch_add(1));
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd_ >= 0) return;
    if (errno != EEXIST) break;
  }
  throw Error(fmt::format("cannot write output file '{}': {}", path_, std::strerror(errno)));
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(tmp_.c_str());
}

void AtomicFile::write(const void* data, std::size_t bytes) {
  if (fd_ < 0) throw Error(fmt::format("cannot write output file '{}': already committed", path_));
  const auto* p = static_cast<const char*>(data);
  while (bytes > 0) {
    const ssize_t r = ::write(fd_, p, bytes);
    if (r < 0) {
      if (errno == EINTR) continue;
      throw Error(fmt::format("cannot write output file '{}': {}", path_, std::strerror(errno)));
    }
    p += r;
    bytes -= static_cast<std::size_t>(r);
  }
}

void AtomicFile::commit() {
  if (fd_ < 0) throw Error(fmt::format("cannot write output file '{}': already committed", path_));
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0)
    throw Error(fmt::format("cannot write output file '{}': {}", path_, std::strerror(errno)));
  if (::rename(tmp_.c_str(), path_.c_str()) != 0)
    throw Error(fmt::format("cannot write output file '{}': {}", path_, std::strerror(errno)));
  committed_ = true;
}

}  // namespace ringattn
