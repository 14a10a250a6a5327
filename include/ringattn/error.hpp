// ringattn::Error: the one exception type for bad input and failed resources.
// Its message is a complete, single-line description naming the option or file
// and the expected form; the CLI prints it as "ringattn: error: <message>".
#pragma once

#include <stdexcept>
#include <string>

namespace ringattn {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

}  // namespace ringattn
