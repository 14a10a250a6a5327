// ringattn mask: draw a mask at block resolution (ASCII on stdout, optionally
// an SVG file), with rank boundaries for a layout over P ranks, and count the
// visible (query, key) pairs. See cli/mask_picture.hpp for what is drawn.
//
//   ringattn mask --seq-len 65536 --causal --window-left 4095 --sinks 4 --ranks 4
//
// Nothing is computed on tensors: this is the mask the kernel and the ring
// schedule see, at the resolution of the picture.
#include <fmt/format.h>

#include <optional>
#include <string>

#include "cli/commands.hpp"
#include "cli/mask_options.hpp"
#include "cli/mask_picture.hpp"
#include "cli/options.hpp"
#include "cli/problem_options.hpp"
#include "ringattn/attention.hpp"
#include "ringattn/hierarchy_stage.hpp"
#include "ringattn/npy.hpp"  // AtomicFile

namespace ringattn::cli {
namespace {

constexpr int64_t kMinWidth = 8;
constexpr int64_t kMaxWidth = 4096;  // cells per side
constexpr int kMaxRanks = 4096;
constexpr const char* kLayoutAuto = "auto";
// The problem options a picture needs: its lengths and the causal bound.
constexpr ProblemOptionSet kMaskProblem{kOptSeqLen | kOptKvSeqLen | kOptCausal, 0};

CommandSpec mask_spec() {
  CommandSpec s;
  s.name = "mask";
  s.summary =
      "Draw an attention mask at block resolution: each cell (query block, key block) is\n"
      "'#' (every pair visible), '+' (some) or '.' (none); rows are queries, top first.\n"
      "With --ranks P, rank boundaries of the layout are marked. Counts the visible pairs.";
  s.usage = "--seq-len N [--causal] [mask options] [--ranks P --layout L] [--svg FILE]";
  s.options = {
      OptionSpec::integer("block", "", "tokens per cell of the picture (both axes)", "tokens")
          .shown_default("the smallest that fits --width cells"),
      OptionSpec::integer(
          "width", "64", "most cells per side (--block is chosen to fit; a given --block must fit)",
          "cells"),
      OptionSpec::choice("layout", kLayoutAuto,
                         {kLayoutAuto, "contiguous", "zigzag", "striped", "balanced"},
                         "how tokens are split over ranks (auto: balanced with documents; when "
                         "causal contiguous for a window of at most N/16 keys, else zigzag; "
                         "contiguous when not causal)"),
      OptionSpec::integer("ranks", "1", "ranks P whose boundaries are marked").positive(),
      OptionSpec::flag("show", "true", "print the picture as ASCII"),
      OptionSpec::text("svg", "", "also write the picture as an SVG image").as_output(),
      OptionSpec::flag("legend", "false", "explain the characters of the picture"),
  };
  insert_options(&s.options, "", problem_option_specs(kMaskProblem));
  for (OptionSpec& o : mask_option_specs()) s.options.push_back(std::move(o));
  s.epilog =
      "A cell is full or empty only when every pair in it is; classify() answers are refined\n"
      "by exact counting when that is cheap. The visible fraction is exact up to 2^32 pairs.";
  return s;
}

int64_t checked(const ParsedOptions& opt, const char* name, int64_t lo, int64_t hi) {
  const int64_t v = opt.integer(name);
  if (v < lo || v > hi)
    throw UsageError(
        fmt::format("option '--{}': expected an integer in [{}, {}], got {}", name, lo, hi, v));
  return v;
}

}  // namespace

int cmd_mask(int argc, char** argv) {
  const CommandSpec spec = mask_spec();
  const std::optional<ParsedOptions> opt = parse_options(spec, argc, argv);
  if (!opt) return kExitOk;

  PictureProblem p;
  const ProblemShape problem = parse_problem_options(*opt, kMaskProblem);
  p.nq = problem.problem.nq;
  p.nk = problem.problem.nk;
  const int64_t width = checked(*opt, "width", kMinWidth, kMaxWidth);
  if (opt->has("block")) {
    p.cell = checked(*opt, "block", 1, kMaxSeqLen);
    const int64_t cells = (std::max(p.nq, p.nk) + p.cell - 1) / p.cell;
    if (cells > width)
      throw UsageError(fmt::format(
          "option '--block': {} tokens per cell makes {} cells per side, more than --width {}",
          p.cell, cells, width));
  } else {
    p.cell = fit_cell(p.nq, p.nk, width);
  }
  const MaskOptions& masks = problem.masks;
  p.mask = hierarchy_ring_mask(problem.problem);
  p.mask_problem = problem.problem.mask;
  p.hier = problem.problem.hier;
  p.mask_text = masks.describe();
  p.ranks = static_cast<int>(checked(*opt, "ranks", 1, kMaxRanks));
  const std::string& layout = opt->text("layout");
  p.layout = layout == kLayoutAuto ? auto_layout(p.mask_problem, masks.causal, p.nk)
                                   : parse_layout(layout);
  const std::string svg_path = opt->has("svg") ? opt->text("svg") : std::string();

  std::optional<AtomicFile> svg;  // opened first: an unwritable path fails before any output
  if (!svg_path.empty()) svg.emplace(svg_path);

  const MaskPicture pic = make_picture(p);
  fmt::print("{}", render_text(pic, opt->flag("show"), opt->flag("legend")));
  if (svg) {
    const std::string doc = render_svg(pic);
    svg->write(doc.data(), doc.size());
    svg->commit();
    fmt::print("wrote {} ({} cells)\n", svg_path, pic.rows * pic.cols);
  }
  return kExitOk;
}

}  // namespace ringattn::cli
