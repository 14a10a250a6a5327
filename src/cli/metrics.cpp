#include "cli/metrics.hpp"

#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>

#include "ringattn/error.hpp"

namespace ringattn::cli {
namespace {

std::string quote(const std::string& s) {
  std::string out = "\"";
  for (const char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20)
          out += fmt::format("\\u{:04x}", static_cast<unsigned>(c));
        else
          out += c;
    }
  }
  return out + "\"";
}

}  // namespace

JsonObject& JsonObject::number(const std::string& key, double v) {
  fields_.emplace_back(key, std::isfinite(v) ? fmt::format("{}", v) : std::string("null"));
  return *this;
}

JsonObject& JsonObject::integer(const std::string& key, int64_t v) {
  fields_.emplace_back(key, fmt::format("{}", v));
  return *this;
}

JsonObject& JsonObject::integers(const std::string& key, const std::vector<int64_t>& v) {
  std::string a = "[";
  for (std::size_t i = 0; i < v.size(); ++i) a += fmt::format("{}{}", i > 0 ? ", " : "", v[i]);
  fields_.emplace_back(key, a + "]");
  return *this;
}

JsonObject& JsonObject::text(const std::string& key, const std::string& v) {
  fields_.emplace_back(key, quote(v));
  return *this;
}

JsonObject& JsonObject::boolean(const std::string& key, bool v) {
  fields_.emplace_back(key, v ? "true" : "false");
  return *this;
}

JsonObject& JsonObject::null(const std::string& key) {
  fields_.emplace_back(key, "null");
  return *this;
}

std::string JsonObject::str() const {
  std::string out = "{";
  for (std::size_t i = 0; i < fields_.size(); ++i) {
    if (i > 0) out += ", ";
    out += quote(fields_[i].first) + ": " + fields_[i].second;
  }
  return out + "}";
}

MetricsFile::MetricsFile(const std::string& path) : path_(path) {
  if (path.empty()) return;
  f_ = std::fopen(path.c_str(), "a");
  if (f_ == nullptr)
    throw Error(fmt::format("option '--metrics': cannot open '{}' for appending ({})", path,
                            std::strerror(errno)));
}

void MetricsFile::check_writable(const std::string& path) {
  if (path.empty()) return;
  struct stat st {};
  const bool existed = ::stat(path.c_str(), &st) == 0;
  { const MetricsFile probe(path); }
  if (!existed) ::unlink(path.c_str());
}

MetricsFile::~MetricsFile() {
  if (f_ != nullptr) std::fclose(f_);
}

void MetricsFile::write(const JsonObject& row) {
  if (f_ == nullptr) return;
  const std::string line = row.str() + "\n";
  if (std::fwrite(line.data(), 1, line.size(), f_) != line.size() || std::fflush(f_) != 0)
    throw Error(fmt::format("{}: cannot write metrics ({})", path_, std::strerror(errno)));
}

}  // namespace ringattn::cli
