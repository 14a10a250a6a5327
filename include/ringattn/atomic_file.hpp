// Output files that appear whole or not at all, and path comparisons.
#pragma once

#include <cstddef>
#include <string>

namespace ringattn {

// An output file written through a temporary in the same directory,
// `<path>.tmp.<pid>.<n>`. open() fails early (before any compute) with an
// Error naming the path if the directory is not writable. commit() renames the
// temporary over `path`; the destructor removes an uncommitted temporary. A
// process killed outright (SIGKILL) leaves its temporary behind: the next
// AtomicFile for the same path removes every `<path>.tmp.<pid>.<n>` whose
// process no longer runs on this machine (remove_stale_temporaries): gone, a
// zombie (killed, not yet reaped by its parent: it never writes again), or a
// later process that reuses the pid (started after the temporary's last write).
class AtomicFile {
 public:
  explicit AtomicFile(std::string path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return tmp_; }
  void write(const void* data, std::size_t bytes);  // appends
  void commit();

 private:
  std::string path_, tmp_;
  int fd_ = -1;
  bool committed_ = false;
};

// Whether two paths name the same file: the same inode where both exist, else
// the same absolute path once symlinks, "." and ".." of its existing part are
// resolved.
bool same_file(const std::string& a, const std::string& b);

// Removes the temporaries `<path>.tmp.<pid>.<n>` of processes that no longer
// run on this machine; returns how many. Never touches a live process's.
int remove_stale_temporaries(const std::string& path);

}  // namespace ringattn
