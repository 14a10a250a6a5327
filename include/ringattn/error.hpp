// ringattn::Error: the one exception type for bad input and failed resources.
// Its message is a complete, single-line description naming the option or file
// and the expected form; the CLI prints it as "ringattn: error: <message>".
//
// FieldError is an Error about one field of a library description (a problem's
// "head_dim", a job's "out"): the library names its own fields, and a caller
// that took the value from somewhere else (the CLI: an option) renames the
// field in the message with `detail()`, e.g. "option '--head-dim': <detail>".
#pragma once

#include <stdexcept>
#include <string>

namespace ringattn {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

class FieldError : public Error {
 public:
  // what() is "<field>: <detail>".
  FieldError(std::string field, const std::string& detail)
      : Error(field + ": " + detail), field_(std::move(field)), detail_(detail) {}
  const std::string& field() const { return field_; }
  const std::string& detail() const { return detail_; }

 private:
  std::string field_, detail_;
};

}  // namespace ringattn
