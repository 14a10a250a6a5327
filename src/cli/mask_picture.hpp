// A mask drawn at block resolution: the picture behind `ringattn mask`.
//
// The (Nq x Nk) grid of (query, key) pairs is cut into cells of `cell` x `cell`
// tokens (the last row/column of cells may be smaller). Cell (i, j) covers
// queries [i cell, min((i+1) cell, Nq)) and keys [j cell, min((j+1) cell, Nk)),
// in global token order; rows are queries (top = first), columns keys. Each cell
// is classified with Mask::classify on those position ranges:
//
//   '#' full     every pair visible
//   '+' partial  some pairs visible
//   '.' empty    no pair visible
//
// classify() may answer `partial` conservatively (a dilated band, many BigBird
// blocks in one cell, parts whose union covers the cell). When counting the
// partial cells exactly is cheap (kRefineBudget), they are counted with
// visible_pairs and redrawn as full or empty where they are; the picture is then
// exact, and `refined` says how many cells changed.
//
// Ranks: with P > 1 a Layout splits queries (and, the same way, keys) over
// ranks. Contiguous layouts draw '|' / '-' separators at the cell edges nearest
// each rank boundary; zigzag and striped layouts (not contiguous in global
// order) get a left margin with the owning rank of each row of cells ('*' when
// several ranks own tokens of it) and a per-rank list of rows below.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ringattn/hierarchy.hpp"
#include "ringattn/layout.hpp"
#include "ringattn/mask.hpp"

namespace ringattn::cli {

// Above this many row evaluations (rows of partial cells, or pairs for a
// dilated band) the partial cells are not counted exactly.
inline constexpr int64_t kRefineBudget = int64_t{1} << 26;
// Whole-problem visible_pairs up to this many (query, key) pairs (and up to
// kElementwisePairs when the mask must be checked pair by pair).
inline constexpr double kExactPairs = 4294967296.0;       // 2^32
inline constexpr double kElementwisePairs = 268435456.0;  // 2^28

struct PictureProblem {
  int64_t nq = 0, nk = 0;
  int64_t cell = 1;       // tokens per cell, both axes
  Mask mask;              // the exact part (with levels: hierarchy_ring_mask)
  Mask mask_problem;      // the problem's mask (levels: the window before alignment)
  Hierarchy hier;         // levels: cells seen through summaries are drawn '2' / '3'
  std::string mask_text;  // MaskOptions::describe()
  LayoutKind layout = LayoutKind::contiguous;
  int ranks = 1;
};

// How many (query, key) pairs are visible: exact, or bounds from the cell classes.
struct Visibility {
  bool exact = false;
  double pairs = 0;       // exact count, or the midpoint of [lo, hi]
  double lo = 0, hi = 0;  // bounds (lo = hi = pairs when exact)
  std::string how;        // how it was obtained
};

struct MaskPicture {
  PictureProblem problem;
  int64_t rows = 0, cols = 0;
  std::vector<TileClass> cells;  // rows x cols, row-major
  std::vector<char> level;       // rows x cols: 2 / 3 where the cell's centre pair goes
                                 // through a level-2 / level-3 summary, else 0 (levels only)
  int64_t n_full = 0, n_partial = 0, n_empty = 0;
  int64_t refined = 0;   // cells classify() called partial that are exactly full or empty
  bool counted = false;  // partial cells were counted exactly (visible_partial valid)
  double visible_partial = 0;
  Visibility visible;
  // Contiguous, P > 1: cell edges (0 < e < rows / cols) drawn as rank boundaries,
  // and whether every boundary falls on a cell edge.
  std::vector<int64_t> row_edges, col_edges;
  bool edges_aligned = true;
  // Zigzag / striped, P > 1: the rank owning each row of cells, -1 if shared,
  // -2 if none (cannot happen for n >= 1); and each rank's rows, as text.
  std::vector<int> row_owner;
  std::vector<std::string> rank_rows;

  TileClass at(int64_t i, int64_t j) const { return cells[static_cast<std::size_t>(i * cols + j)]; }
  bool margin() const { return !row_owner.empty(); }
};

// The smallest cell size that fits max(nq, nk) tokens in `width` cells.
int64_t fit_cell(int64_t nq, int64_t nk, int64_t width);

MaskPicture make_picture(const PictureProblem& p);

char cell_char(TileClass c);

// Header (2 lines with ranks), picture (when `show`), rank lines, legend
// (when `legend`) and footer, each line ending in '\n'.
std::string render_text(const MaskPicture& pic, bool show, bool legend);

// The picture as a standalone SVG document: one <rect> per cell, rank lines,
// axis labels, a title and a legend (text only, so the rects are the cells).
std::string render_svg(const MaskPicture& pic);

}  // namespace ringattn::cli
