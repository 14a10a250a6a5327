#include "cli/mask_picture.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "ringattn/kernel.hpp"  // visible_pairs

namespace ringattn::cli {
namespace {

constexpr int kMaxRankLines = 16;   // rank lines printed below the picture
constexpr int kMaxRowRanges = 8;    // row ranges listed per rank
constexpr int kSvgPicturePx = 640;  // the picture's side in the SVG, about
constexpr int kSvgMinCellPx = 2, kSvgMaxCellPx = 32;
constexpr int kSvgStrokeMinPx = 6;  // cells at least this big get a white outline
constexpr int kSvgLabelMinPx = 10;  // rank labels on chunks at least this tall
constexpr double kSvgLeft = 96, kSvgTop = 72, kSvgBottom = 72, kSvgRight = 24;
constexpr const char* kColorFull = "#1f4e79";
constexpr const char* kColorPartial = "#8ab6e0";
constexpr const char* kColorEmpty = "#f0f0f0";
constexpr const char* kColorRank = "#d62728";

double dbl(int64_t v) {
  return static_cast<double>(v);
}
int64_t cell_begin(int64_t i, int64_t cell) {
  return i * cell;
}
int64_t cell_end(int64_t i, int64_t cell, int64_t n) {
  return std::min(n, (i + 1) * cell);
}

// Does segment s hold a position in [a, b)?
bool holds_any(const Segment& s, int64_t a, int64_t b) {
  if (s.count <= 0) return false;
  const int64_t k = std::max<int64_t>(0, ceil_div(a - s.start, s.stride));
  return k < s.count && s.start + k * s.stride < b;
}

std::string segment_text(const Segment& s) {
  if (s.stride == 1) return fmt::format("[{}, {})", s.start, s.start + s.count);
  return fmt::format("{}, {}, ..., {} (every {})", s.start, s.start + s.stride, s.last(), s.stride);
}

std::string ranges_text(const std::vector<int64_t>& rows) {  // sorted row indices
  std::string out;
  int shown = 0;
  std::size_t i = 0, ranges = 0;
  while (i < rows.size()) {
    std::size_t j = i;
    while (j + 1 < rows.size() && rows[j + 1] == rows[j] + 1) ++j;
    if (shown < kMaxRowRanges) {
      out += (out.empty() ? "" : ", ") +
             (i == j ? std::to_string(rows[i]) : fmt::format("{}-{}", rows[i], rows[j]));
      ++shown;
    }
    ++ranges, i = j + 1;
  }
  if (ranges > static_cast<std::size_t>(shown)) out += fmt::format(", ... ({} ranges)", ranges);
  return out.empty() ? "none" : out;
}

// The picture's layout of the queries or the keys (balanced: from its mask).
Layout picture_layout(const PictureProblem& p, bool keys) {
  AttentionProblem a;
  a.nq = p.nq, a.nk = p.nk, a.mask = p.mask;
  return Layout::of(p.layout, a, p.ranks, keys);
}

// Rank boundaries (contiguous) at the nearest cell edges; each rank's tokens.
void mark_ranks(MaskPicture& pic) {
  const PictureProblem& p = pic.problem;
  const Layout lq = picture_layout(p, false), lk = picture_layout(p, true);
  if (p.layout == LayoutKind::contiguous) {
    auto edges = [&](const Layout& l, int64_t ncells, std::vector<int64_t>& out) {
      for (int r = 1; r < p.ranks; ++r) {
        if (l.tokens(r) == 0) continue;
        const int64_t b = l.segments(r).front().start;
        if (b % p.cell != 0) pic.edges_aligned = false;
        const int64_t e = (b + p.cell / 2) / p.cell;
        if (e > 0 && e < ncells) out.push_back(e);
      }
      out.erase(std::unique(out.begin(), out.end()), out.end());
    };
    edges(lq, pic.rows, pic.row_edges);
    edges(lk, pic.cols, pic.col_edges);
  } else {
    pic.row_owner.assign(static_cast<std::size_t>(pic.rows), -2);
  }
  for (int r = 0; r < p.ranks; ++r) {
    std::string tokens;
    for (const Segment& s : lq.segments(r))
      if (s.count > 0) tokens += (tokens.empty() ? "" : " ") + segment_text(s);
    if (tokens.empty()) tokens = "none";
    if (p.layout == LayoutKind::contiguous) {
      const auto& ks = lk.segments(r);
      const std::string keys = lk.tokens(r) > 0 ? segment_text(ks.front()) : "none";
      pic.rank_rows.push_back(fmt::format("rank {}: queries {}, keys {}", r, tokens, keys));
      continue;
    }
    std::vector<int64_t> rows;
    for (int64_t i = 0; i < pic.rows; ++i) {
      const int64_t a = cell_begin(i, p.cell), b = cell_end(i, p.cell, p.nq);
      bool any = false;
      for (const Segment& s : lq.segments(r)) any = any || holds_any(s, a, b);
      if (!any) continue;
      rows.push_back(i);
      int& owner = pic.row_owner[static_cast<std::size_t>(i)];
      owner = owner == -2 ? r : -1;
    }
    pic.rank_rows.push_back(
        fmt::format("rank {}: rows {} (query tokens {})", r, ranges_text(rows), tokens));
  }
}

// Counts partial cells exactly when affordable, redrawing them as full/empty.
void refine(MaskPicture& pic) {
  const PictureProblem& p = pic.problem;
  const bool elementwise = p.mask.dilation != 1;
  int64_t cost = 0;
  for (int64_t i = 0; i < pic.rows && cost <= kRefineBudget; ++i)
    for (int64_t j = 0; j < pic.cols; ++j)
      if (pic.at(i, j) == TileClass::partial)
        cost += (cell_end(i, p.cell, p.nq) - cell_begin(i, p.cell)) *
                (elementwise ? cell_end(j, p.cell, p.nk) - cell_begin(j, p.cell) : 1);
  if (cost > kRefineBudget) return;
  pic.counted = true;
  for (int64_t i = 0; i < pic.rows; ++i) {
    const int64_t q0 = cell_begin(i, p.cell), qn = cell_end(i, p.cell, p.nq) - q0;
    for (int64_t j = 0; j < pic.cols; ++j) {
      TileClass& c = pic.cells[static_cast<std::size_t>(i * pic.cols + j)];
      if (c != TileClass::partial) continue;
      const int64_t k0 = cell_begin(j, p.cell), kn = cell_end(j, p.cell, p.nk) - k0;
      const int64_t n = visible_pairs(p.mask, {q0, 1}, qn, {k0, 1}, kn);
      if (n == 0 || n == qn * kn) {
        c = n == 0 ? TileClass::empty : TileClass::full;
        ++pic.refined;
      } else {
        pic.visible_partial += static_cast<double>(n);
      }
    }
  }
}

Visibility visibility(const MaskPicture& pic) {
  const PictureProblem& p = pic.problem;
  const double total = static_cast<double>(p.nq) * static_cast<double>(p.nk);
  Visibility v;
  if (total <= kExactPairs && (p.mask.dilation == 1 || total <= kElementwisePairs)) {
    v.exact = true;
    v.pairs = static_cast<double>(visible_pairs(p.mask, {0, 1}, p.nq, {0, 1}, p.nk));
    v.lo = v.hi = v.pairs;
    v.how = "exact: visible_pairs over the whole problem";
    return v;
  }
  double full = 0, partial = 0;
  for (int64_t i = 0; i < pic.rows; ++i)
    for (int64_t j = 0; j < pic.cols; ++j) {
      const double area = static_cast<double>(cell_end(i, p.cell, p.nq) - cell_begin(i, p.cell)) *
                          static_cast<double>(cell_end(j, p.cell, p.nk) - cell_begin(j, p.cell));
      if (pic.at(i, j) == TileClass::full) full += area;
      if (pic.at(i, j) == TileClass::partial) partial += area;
    }
  if (pic.counted) {
    v.exact = true;
    v.pairs = v.lo = v.hi = full + pic.visible_partial;
    v.how = "exact: full cells plus the counted partial cells";
  } else {
    v.lo = full, v.hi = full + partial, v.pairs = full + partial / 2;
    v.how = "estimated from the cell classes, partial cells as half: too many pairs to count";
  }
  return v;
}

std::string percent(double part, double total) {
  return fmt::format("{:.4g}%", total > 0 ? 100.0 * part / total : 0.0);
}

std::string xml_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

const char* color(TileClass c) {
  return c == TileClass::full ? kColorFull : c == TileClass::partial ? kColorPartial : kColorEmpty;
}

// Which level the centre (query, key) pair of each cell is seen through.
void mark_levels(MaskPicture& pic) {
  const PictureProblem& p = pic.problem;
  const LevelMasks lm = level_masks(p.hier, p.mask_problem, p.nq, p.nk);
  const int64_t s1 = p.hier.regional_block, s2 = p.hier.global_block;
  pic.level.assign(pic.cells.size(), 0);
  for (int64_t i = 0; i < pic.rows; ++i)
    for (int64_t j = 0; j < pic.cols; ++j) {
      const int64_t qp = (cell_begin(i, p.cell) + cell_end(i, p.cell, p.nq) - 1) / 2;
      const int64_t kp = (cell_begin(j, p.cell) + cell_end(j, p.cell, p.nk) - 1) / 2;
      const int64_t b1 = kp / s1 * s1;
      char lv = 0;
      if (lm.l2_left.allows(qp, b1) || (lm.right && lm.l2_right.allows(qp, b1 + s1 - 1))) lv = 2;
      if (s2 > 0 && (lm.l3_left.allows(qp, kp / s2 * s2) ||
                     (lm.right && lm.l3_right.allows(qp, kp / s2 * s2))))
        lv = 3;
      pic.level[static_cast<std::size_t>(i * pic.cols + j)] = lv;
    }
}

}  // namespace

int64_t fit_cell(int64_t nq, int64_t nk, int64_t width) {
  return std::max<int64_t>(1, ceil_div(std::max(nq, nk), width));
}

char cell_char(TileClass c) {
  return c == TileClass::full ? '#' : c == TileClass::partial ? '+' : '.';
}

MaskPicture make_picture(const PictureProblem& p) {
  MaskPicture pic;
  pic.problem = p;
  pic.rows = ceil_div(p.nq, p.cell);
  pic.cols = ceil_div(p.nk, p.cell);
  pic.cells.resize(static_cast<std::size_t>(pic.rows * pic.cols));
  for (int64_t i = 0; i < pic.rows; ++i)
    for (int64_t j = 0; j < pic.cols; ++j)
      pic.cells[static_cast<std::size_t>(i * pic.cols + j)] =
          p.mask.classify(cell_begin(i, p.cell), cell_end(i, p.cell, p.nq) - 1,
                          cell_begin(j, p.cell), cell_end(j, p.cell, p.nk) - 1);
  refine(pic);
  if (p.hier.levels()) mark_levels(pic);
  for (TileClass c : pic.cells)
    ++(c == TileClass::full ? pic.n_full : c == TileClass::partial ? pic.n_partial : pic.n_empty);
  pic.visible = visibility(pic);
  if (p.ranks > 1) mark_ranks(pic);
  return pic;
}

std::string render_text(const MaskPicture& pic, bool show, bool legend) {
  const PictureProblem& p = pic.problem;
  std::string out = fmt::format(
      "ringattn mask: N = {} queries x Nk = {} keys, mask {}, cell {} x {} tokens ({} x {} "
      "cells)\n",
      p.nq, p.nk, p.mask_text, p.cell, p.cell, pic.rows, pic.cols);
  if (p.ranks > 1)
    out += fmt::format("ranks: {}, layout {} ({})\n", p.ranks, layout_name(p.layout),
                       pic.margin() ? "left column: the rank owning each row of cells, '*': shared"
                                    : "'|' and '-' at rank boundaries");
  const int label = static_cast<int>(std::to_string(std::max(p.ranks - 1, 0)).size());
  if (show) {
    std::vector<bool> col_edge(static_cast<std::size_t>(pic.cols + 1), false);
    for (int64_t e : pic.col_edges) col_edge[static_cast<std::size_t>(e)] = true;
    std::size_t next_row_edge = 0;
    for (int64_t i = 0; i < pic.rows; ++i) {
      std::string line;
      if (pic.margin()) {
        const int o = pic.row_owner[static_cast<std::size_t>(i)];
        line += fmt::format("{:>{}} ", o >= 0 ? std::to_string(o) : std::string("*"), label);
      }
      for (int64_t j = 0; j < pic.cols; ++j) {
        if (col_edge[static_cast<std::size_t>(j)]) line += '|';
        const char lv =
            pic.level.empty() ? 0 : pic.level[static_cast<std::size_t>(i * pic.cols + j)];
        line += lv != 0 && pic.at(i, j) != TileClass::full ? static_cast<char>('0' + lv)
                                                           : cell_char(pic.at(i, j));
      }
      if (next_row_edge < pic.row_edges.size() && pic.row_edges[next_row_edge] == i) {
        out += std::string(line.size(), '-') + "\n";
        ++next_row_edge;
      }
      out += line + "\n";
    }
  }
  const int shown = std::min<int>(p.ranks, kMaxRankLines);
  if (p.ranks > 1) {
    for (int r = 0; r < shown; ++r) out += "  " + pic.rank_rows[static_cast<std::size_t>(r)] + "\n";
    if (p.ranks > shown) out += fmt::format("  ... ({} more ranks)\n", p.ranks - shown);
  }
  if (legend) {
    out += fmt::format(
        "legend: '#' every (query, key) pair of the cell visible, '+' some, '.' none; rows: "
        "queries {} at a time (top = first), columns: keys{}\n",
        p.cell, p.ranks > 1 ? " (split over the ranks like the queries)" : "");
    if (!pic.level.empty())
      out +=
          "        '2' / '3': seen through level-2 / level-3 block summaries (the cell's centre)\n";
  }
  out += fmt::format("cells: {} full '#', {} partial '+', {} empty '.' ({} in all)\n", pic.n_full,
                     pic.n_partial, pic.n_empty, pic.rows * pic.cols);
  const double total = static_cast<double>(p.nq) * static_cast<double>(p.nk);
  const Visibility& v = pic.visible;
  if (v.exact)
    out += fmt::format("visible: {:.0f} of {:.0f} (query, key) pairs = {} ({})\n", v.pairs, total,
                       percent(v.pairs, total), v.how);
  else
    out += fmt::format("visible: about {} of {:.4g} (query, key) pairs, between {} and {} ({})\n",
                       percent(v.pairs, total), total, percent(v.lo, total), percent(v.hi, total),
                       v.how);
  if (pic.refined > 0)
    out += fmt::format(
        "note: {} cells that Mask::classify calls partial are exactly full or empty (counted), "
        "and drawn so\n",
        pic.refined);
  if (!pic.edges_aligned)
    out += "note: some rank boundaries fall inside a cell; drawn at the nearest cell edge\n";
  return out;
}

std::string render_svg(const MaskPicture& pic) {
  const PictureProblem& p = pic.problem;
  const int px = static_cast<int>(std::clamp<int64_t>(kSvgPicturePx / std::max(pic.rows, pic.cols),
                                                      kSvgMinCellPx, kSvgMaxCellPx));
  const double scale = static_cast<double>(px) / static_cast<double>(p.cell);  // px per token
  const double gw = static_cast<double>(p.nk) * scale, gh = static_cast<double>(p.nq) * scale;
  const double w = kSvgLeft + gw + kSvgRight, h = kSvgTop + gh + kSvgBottom;
  const double x0 = kSvgLeft, y0 = kSvgTop;
  const std::string title = xml_escape(
      fmt::format("ringattn mask: N = {} x Nk = {}, cell {} tokens", p.nq, p.nk, p.cell) +
      (p.ranks > 1 ? fmt::format(", {} over {} ranks", layout_name(p.layout), p.ranks)
                   : std::string()));
  const std::string mask_text = xml_escape("mask: " + p.mask_text);
  std::string s = fmt::format(
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0:.6g}\" height=\"{1:.6g}\" "
      "viewBox=\"0 0 {0:.6g} {1:.6g}\" font-family=\"monospace\" font-size=\"12\">\n"
      "<title>{2}; {3}</title>\n"
      "<text x=\"8\" y=\"20\" font-size=\"14\">{2}</text>\n"
      "<text x=\"8\" y=\"38\">{3}</text>\n"
      "<text x=\"{4:.6g}\" y=\"{5:.6g}\">key position 0 &#8594; {6}</text>\n"
      "<text transform=\"translate({7:.6g} {8:.6g}) rotate(90)\">query position 0 &#8594; "
      "{9}</text>\n",
      w, h, title, mask_text, x0, y0 - 10, p.nk, x0 - 72, y0, p.nq);
  s += fmt::format("<g shape-rendering=\"crispEdges\"{}>\n",
                   px >= kSvgStrokeMinPx ? " stroke=\"#ffffff\" stroke-width=\"0.5\"" : "");
  for (int64_t i = 0; i < pic.rows; ++i) {
    const double y = y0 + static_cast<double>(cell_begin(i, p.cell)) * scale;
    const double ch =
        static_cast<double>(cell_end(i, p.cell, p.nq) - cell_begin(i, p.cell)) * scale;
    for (int64_t j = 0; j < pic.cols; ++j) {
      const double x = x0 + static_cast<double>(cell_begin(j, p.cell)) * scale;
      const double cw =
          static_cast<double>(cell_end(j, p.cell, p.nk) - cell_begin(j, p.cell)) * scale;
      s += fmt::format(
          "<rect x=\"{:.6g}\" y=\"{:.6g}\" width=\"{:.6g}\" height=\"{:.6g}\" fill=\"{}\"/>\n", x,
          y, cw, ch, color(pic.at(i, j)));
    }
  }
  s += "</g>\n";
  if (p.ranks > 1) {  // lines at the starts of stride-1 segments, rank labels on the rows
    const Layout lq = picture_layout(p, false), lk = picture_layout(p, true);
    s += fmt::format("<g stroke=\"{}\" stroke-width=\"1.5\">\n", kColorRank);
    for (int r = 0; r < p.ranks; ++r) {
      for (const Segment& seg : lq.segments(r))
        if (seg.stride == 1 && seg.count > 0 && seg.start > 0)
          s += fmt::format("<line x1=\"{:.6g}\" y1=\"{:.6g}\" x2=\"{:.6g}\" y2=\"{:.6g}\"/>\n", x0,
                           y0 + dbl(seg.start) * scale, x0 + gw, y0 + dbl(seg.start) * scale);
      for (const Segment& seg : lk.segments(r))
        if (seg.stride == 1 && seg.count > 0 && seg.start > 0)
          s += fmt::format("<line x1=\"{:.6g}\" y1=\"{:.6g}\" x2=\"{:.6g}\" y2=\"{:.6g}\"/>\n",
                           x0 + dbl(seg.start) * scale, y0, x0 + dbl(seg.start) * scale, y0 + gh);
    }
    s += "</g>\n";
    for (int r = 0; r < p.ranks; ++r)
      for (const Segment& seg : lq.segments(r))
        if (seg.stride == 1 && static_cast<double>(seg.count) * scale >= kSvgLabelMinPx)
          s += fmt::format(
              "<text x=\"{:.6g}\" y=\"{:.6g}\" text-anchor=\"end\" fill=\"{}\">r{}</text>\n",
              x0 - 4, y0 + (static_cast<double>(seg.start) + dbl(seg.count) / 2.0) * scale + 4,
              kColorRank, r);
    if (p.layout == LayoutKind::striped)
      s += fmt::format(
          "<text x=\"{:.6g}\" y=\"{:.6g}\" fill=\"{}\">striped: token t on rank t "
          "mod {}</text>\n",
          x0, y0 + gh + 52, kColorRank, p.ranks);
  }
  const double ly = y0 + gh + 28;
  const std::pair<TileClass, const char*> items[] = {
      {TileClass::full, "full"}, {TileClass::partial, "partial"}, {TileClass::empty, "empty"}};
  double lx = x0;
  for (const auto& [c, name] : items) {
    s += fmt::format(
        "<text x=\"{:.6g}\" y=\"{:.6g}\"><tspan fill=\"{}\" stroke=\"#999999\" "
        "stroke-width=\"0.5\">&#9632;</tspan> {} {}</text>\n",
        lx, ly, color(c), name,
        c == TileClass::full      ? pic.n_full
        : c == TileClass::partial ? pic.n_partial
                                  : pic.n_empty);
    lx += 120;
  }
  s += fmt::format(
      "<text x=\"{:.6g}\" y=\"{:.6g}\">visible {}{}</text>\n", lx, ly,
      pic.visible.exact ? "" : "about ",
      percent(pic.visible.pairs, static_cast<double>(p.nq) * static_cast<double>(p.nk)));
  s += "</svg>\n";
  return s;
}

}  // namespace ringattn::cli
