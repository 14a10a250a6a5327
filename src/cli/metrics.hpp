// Machine-readable results: `--metrics FILE` appends one JSON object per line
// (JSON lines), one line per result row, so repeated runs accumulate.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

namespace ringattn::cli {

// A flat JSON object with keys in insertion order.
class JsonObject {
 public:
  JsonObject& number(const std::string& key, double v);  // NaN/inf are written as null
  JsonObject& integer(const std::string& key, int64_t v);
  JsonObject& integers(const std::string& key, const std::vector<int64_t>& v);  // an array
  JsonObject& text(const std::string& key, const std::string& v);
  JsonObject& boolean(const std::string& key, bool v);
  JsonObject& null(const std::string& key);
  std::string str() const;  // one line, no trailing newline

 private:
  std::vector<std::pair<std::string, std::string>> fields_;  // key, encoded value
};

// The --metrics file, opened for appending when constructed (so an unwritable
// path fails before any work); disabled when the path is empty.
class MetricsFile {
 public:
  explicit MetricsFile(const std::string& path);
  // Throws the constructor's Error if `path` cannot be appended to; leaves no
  // file behind that was not there before.
  static void check_writable(const std::string& path);
  ~MetricsFile();
  MetricsFile(const MetricsFile&) = delete;
  MetricsFile& operator=(const MetricsFile&) = delete;

  bool enabled() const { return f_ != nullptr; }
  void write(const JsonObject& row);  // appends one line and flushes; no-op when disabled

 private:
  std::string path_;
  std::FILE* f_ = nullptr;
};

}  // namespace ringattn::cli
