#include "cli/table.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace ringattn::cli {
namespace {
constexpr int kColumnGap = 2;  // spaces between columns
}

Table::Table(std::vector<Column> columns) : columns_(std::move(columns)) {
  for (auto& c : columns_) c.width = std::max(c.width, static_cast<int>(c.header.size()));
}

std::string Table::line(const std::vector<std::string>& cells, const char* lead) const {
  std::string out = lead;
  for (std::size_t i = 0; i < columns_.size(); ++i) {
    const std::string& s = i < cells.size() ? cells[i] : std::string("-");
    const auto w = static_cast<std::size_t>(columns_[i].width);
    if (i > 0) out += std::string(kColumnGap, ' ');
    out += columns_[i].left ? fmt::format("{:<{}}", s, w) : fmt::format("{:>{}}", s, w);
  }
  while (!out.empty() && out.back() == ' ') out.pop_back();
  return out + "\n";
}

std::string Table::header() const {
  std::vector<std::string> titles;
  for (const auto& c : columns_) titles.push_back(c.header);
  return line(titles, "#");
}

std::string Table::row(const std::vector<std::string>& cells) const {
  return line(cells, " ");
}

std::string cell_fixed(double v, int decimals) {
  return std::isfinite(v) ? fmt::format("{:.{}f}", v, decimals) : std::string("-");
}

std::string cell_sci(double v) {
  return std::isfinite(v) ? fmt::format("{:.1e}", v) : std::string("-");
}

}  // namespace ringattn::cli
