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
    if (::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) continue;  // still running
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
