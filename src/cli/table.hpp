// A fixed-width text table printed row by row (nccl-tests style), so long
// benchmarks show each result as soon as it is measured.
#pragma once

#include <string>
#include <vector>

namespace ringattn::cli {

class Table {
 public:
  struct Column {
    std::string header;
    int width = 0;      // at least the header's width; longer cells push the row right
    bool left = false;  // left-align (text) instead of right-align (numbers)
  };
  explicit Table(std::vector<Column> columns);

  std::string header() const;  // "#" + column titles, newline-terminated
  std::string row(const std::vector<std::string>& cells) const;  // newline-terminated

 private:
  std::string line(const std::vector<std::string>& cells, const char* lead) const;
  std::vector<Column> columns_;
};

// Common cell formats; non-finite values print as "-".
std::string cell_fixed(double v, int decimals);
std::string cell_sci(double v);  // "1.2e-07"

}  // namespace ringattn::cli
