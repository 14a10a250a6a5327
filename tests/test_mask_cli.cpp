// `ringattn mask` end to end (RINGATTN_BIN): exact pictures of simple masks,
// every cell checked against a brute-force count of Mask::allows over the
// cell (with the Mask built here by hand), rank boundaries, the SVG file, and
// one-line usage errors that leave no file behind.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "cli_fixture.hpp"
#include "ringattn/mask.hpp"
#include "util.hpp"

namespace ringattn {
namespace {

namespace fs = std::filesystem;
using test::CliResult;

std::vector<std::string> lines_of(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

bool is_grid_line(const std::string& l) {
  if (l.empty()) return false;
  for (char c : l)
    if (c != '#' && c != '+' && c != '.' && c != '|') return false;
  return true;
}

// The picture's rows (lines of only '#', '+', '.', '|'), in order.
std::vector<std::string> grid(const std::string& out) {
  std::vector<std::string> g;
  for (const std::string& l : lines_of(out))
    if (is_grid_line(l)) g.push_back(l);
  return g;
}

// '#', '+' or '.' from a brute-force count over cell (i, j).
char brute_cell(const Mask& m, int64_t nq, int64_t nk, int64_t cell, int64_t i, int64_t j) {
  int64_t seen = 0, all = 0;
  for (int64_t q = i * cell; q < std::min(nq, (i + 1) * cell); ++q)
    for (int64_t k = j * cell; k < std::min(nk, (j + 1) * cell); ++k, ++all) seen += m.allows(q, k);
  return seen == 0 ? '.' : seen == all ? '#' : '+';
}

class MaskCli : public test::CliFixture {
 protected:
  CliResult run(std::vector<std::string> args) const {
    args.insert(args.begin(), "mask");
    return run_binary(args);
  }
  // Runs and checks every cell of the picture against the brute force.
  void expect_brute(const std::vector<std::string>& args, const Mask& m, int64_t nq, int64_t nk,
                    int64_t cell) const {
    const CliResult r = run(args);
    ASSERT_EQ(r.rc, 0) << r.err;
    const std::vector<std::string> g = grid(r.out);
    const int64_t rows = (nq + cell - 1) / cell, cols = (nk + cell - 1) / cell;
    ASSERT_EQ(static_cast<int64_t>(g.size()), rows) << r.out;
    for (int64_t i = 0; i < rows; ++i) {
      ASSERT_EQ(static_cast<int64_t>(g[i].size()), cols) << g[i];
      for (int64_t j = 0; j < cols; ++j)
        EXPECT_EQ(g[i][j], brute_cell(m, nq, nk, cell, i, j)) << "cell (" << i << ", " << j << ")\n"
                                                              << r.out;
    }
  }
};

TEST_F(MaskCli, CausalTriangleExactLines) {
  const CliResult r = run({"--seq-len", "64", "--causal", "--block", "8"});
  ASSERT_EQ(r.rc, 0) << r.err;
  const std::vector<std::string> want = {"+.......", "#+......", "##+.....", "###+....",
                                         "####+...", "#####+..", "######+.", "#######+"};
  const std::vector<std::string> l = lines_of(r.out);
  ASSERT_GE(l.size(), want.size() + 3);
  EXPECT_NE(l[0].find("N = 64"), std::string::npos) << l[0];
  EXPECT_NE(l[0].find("causal"), std::string::npos) << l[0];
  for (std::size_t i = 0; i < want.size(); ++i) EXPECT_EQ(l[i + 1], want[i]);
  EXPECT_NE(r.out.find("28 full '#', 8 partial '+', 28 empty '.'"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("2080 of 4096"), std::string::npos) << r.out;  // 64 * 65 / 2
}

TEST_F(MaskCli, SlidingWindowIsABand) {
  const std::vector<std::string> g =
      grid(run({"--seq-len", "64", "--causal", "--window-left", "15", "--block", "8"}).out);
  ASSERT_EQ(g.size(), 8u);
  EXPECT_EQ(g[3], ".+#+....");
  for (int i = 0; i < 8; ++i)
    for (int j = 0; j < 8; ++j)
      if (j > i || j < i - 2) {
        EXPECT_EQ(g[i][j], '.') << i << "," << j;
      }
}

TEST_F(MaskCli, SinksAreAFullFirstColumn) {
  const std::vector<std::string> g =
      grid(run({"--seq-len", "64", "--window-left", "7", "--window-right", "0", "--sinks", "8",
                "--block", "8"})
               .out);
  ASSERT_EQ(g.size(), 8u);
  for (const std::string& row : g) EXPECT_EQ(row[0], '#') << row;
  EXPECT_EQ(g[5], "#...++..");
}

TEST_F(MaskCli, GlobalTokensAreAFullRowAndColumn) {
  const std::vector<std::string> g =
      grid(run({"--seq-len", "64", "--window-left", "0", "--window-right", "0", "--global", "16-23",
                "--block", "8"})
               .out);
  ASSERT_EQ(g.size(), 8u);
  EXPECT_EQ(g[2], "########");
  for (int i = 0; i < 8; ++i) EXPECT_EQ(g[i][2], '#');
  EXPECT_EQ(g[5], "..#..+..");
}

TEST_F(MaskCli, BigBirdMatchesTheIndependentDefinition) {
  const std::vector<std::string> g =
      grid(run({"--seq-len", "256", "--block-size", "16", "--block-window", "1", "--block-global",
                "1", "--block-random", "2", "--block-seed", "3", "--block", "16"})
               .out);
  ASSERT_EQ(g.size(), 16u);
  for (int64_t i = 0; i < 16; ++i)
    for (int64_t j = 0; j < 16; ++j)
      EXPECT_EQ(g[i][j], test::bigbird_reference(i, j, 1, 1, 2, 3, 16) ? '#' : '.')
          << i << "," << j;
}

// Every cell against Mask::allows, for masks built here by hand.
TEST_F(MaskCli, EveryCellAgreesWithBruteForce) {
  {  // causal, Nq != Nk (bottom-right), cells not dividing the lengths
    const int64_t nq = 70, nk = 100;
    expect_brute({"--seq-len", "70", "--kv-seq-len", "100", "--causal", "--block", "8"},
                 Mask::causal(nk - nq), nq, nk, 8);
  }
  {  // dilated causal window with sinks
    Mask m = Mask::causal(0);
    m.lo = -20, m.dilation = 3, m.sinks = 5;
    expect_brute({"--seq-len", "96", "--causal", "--window-left", "20", "--dilation", "3",
                  "--sinks", "5", "--block", "6"},
                 m, 96, 96, 6);
  }
  {  // non-causal window, global ranges, key block of 5
    Mask m = Mask::band(-6, 3);
    m.n_global = 2, m.global[0] = {0, 1}, m.global[1] = {40, 44};
    expect_brute({"--seq-len", "60", "--window-left", "6", "--window-right", "3", "--global",
                  "0,40-43", "--block", "5"},
                 m, 60, 60, 5);
  }
  {  // causal BigBird with random blocks; picture cells straddle the mask's blocks
    Mask m = Mask::causal(0);
    m.lo = 1, m.hi = 0;  // blocks only
    m.blocks.size = 8, m.blocks.window = 1, m.blocks.global = 1, m.blocks.random = 3;
    m.blocks.seed = 11, m.blocks.key_blocks = 16;
    expect_brute({"--seq-len", "128", "--causal", "--block-size", "8", "--block-global", "1",
                  "--block-random", "3", "--block-seed", "11", "--block", "12"},
                 m, 128, 128, 12);
  }
}

TEST_F(MaskCli, ContiguousRanksDrawBoundaries) {
  const CliResult r = run(
      {"--seq-len", "64", "--causal", "--block", "4", "--ranks", "4", "--layout", "contiguous"});
  ASSERT_EQ(r.rc, 0) << r.err;
  const std::vector<std::string> g = grid(r.out);
  ASSERT_EQ(g.size(), 16u);
  EXPECT_EQ(g[0], "+...|....|....|....");
  EXPECT_EQ(g[5], "####|#+..|....|....");
  int separators = 0;
  for (const std::string& l : lines_of(r.out))
    if (l == std::string(19, '-')) ++separators;
  EXPECT_EQ(separators, 3) << r.out;
  EXPECT_NE(r.out.find("rank 3: queries [48, 64)"), std::string::npos) << r.out;
}

TEST_F(MaskCli, ZigzagMarksRowOwners) {
  const CliResult r =
      run({"--seq-len", "64", "--causal", "--block", "8", "--ranks", "4", "--layout", "zigzag"});
  ASSERT_EQ(r.rc, 0) << r.err;
  const std::vector<std::string> l = lines_of(r.out);
  const char owners[] = "01233210";
  ASSERT_GE(l.size(), 10u);
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ(l[i + 2][0], owners[i]) << l[i + 2];
    EXPECT_EQ(l[i + 2].substr(2, 8), std::string(static_cast<std::size_t>(i), '#') + "+" +
                                         std::string(static_cast<std::size_t>(7 - i), '.'));
  }
  EXPECT_NE(r.out.find("rank 0: rows 0, 7"), std::string::npos) << r.out;
  // striped: every row is shared
  const CliResult s =
      run({"--seq-len", "64", "--causal", "--block", "8", "--ranks", "4", "--layout", "striped"});
  ASSERT_EQ(s.rc, 0) << s.err;
  EXPECT_NE(s.out.find("\n* +.......\n"), std::string::npos) << s.out;
}

// Balanced tags: every start tag closed in order, one root element.
bool balanced_xml(const std::string& doc, std::string* why) {
  std::vector<std::string> stack;
  int roots = 0;
  for (std::size_t i = doc.find('<'); i != std::string::npos; i = doc.find('<', i + 1)) {
    const std::size_t end = doc.find('>', i);
    if (end == std::string::npos) return *why = "unterminated tag", false;
    const std::string tag = doc.substr(i + 1, end - i - 1);
    if (tag.empty() || tag[0] == '?' || tag[0] == '!') continue;
    if (tag[0] == '/') {
      if (stack.empty() || stack.back() != tag.substr(1)) return *why = "stray </" + tag, false;
      stack.pop_back();
      continue;
    }
    if (stack.empty()) ++roots;
    if (tag.back() == '/') continue;
    stack.push_back(tag.substr(0, tag.find_first_of(" \n\t")));
  }
  if (!stack.empty()) return *why = "unclosed <" + stack.back(), false;
  return roots == 1 || (*why = "roots: " + std::to_string(roots), false);
}

std::size_t count_of(const std::string& s, const std::string& what) {
  std::size_t n = 0;
  for (std::size_t i = s.find(what); i != std::string::npos; i = s.find(what, i + 1)) ++n;
  return n;
}

TEST_F(MaskCli, SvgHasOneRectPerCellAndIsXml) {
  const std::string svg = path("mask.svg");
  const CliResult r =
      run({"--seq-len", "1000", "--kv-seq-len", "1200", "--causal", "--block", "100", "--sinks",
           "4", "--ranks", "3", "--layout", "zigzag", "--svg", svg, "--show=false"});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_TRUE(grid(r.out).empty()) << r.out;  // --show=false
  ASSERT_TRUE(fs::exists(svg));
  const std::string doc = test::slurp(svg);
  EXPECT_EQ(count_of(doc, "<rect"), 10u * 12u);
  EXPECT_NE(doc.find("<title>"), std::string::npos);
  EXPECT_NE(doc.find("<line"), std::string::npos);
  std::string why;
  EXPECT_TRUE(balanced_xml(doc, &why)) << why;
  EXPECT_TRUE(temporaries().empty());
  if (fs::exists("/usr/bin/python3")) {
    const std::string cmd =
        "/usr/bin/python3 -c 'import sys, xml.dom.minidom as m; "
        "d = m.parse(sys.argv[1]); "
        "sys.exit(0 if len(d.getElementsByTagName(\"rect\")) == 120 else 3)' " +
        test::shell_quote(svg);
    EXPECT_EQ(std::system(cmd.c_str()), 0) << "python3 xml.dom.minidom rejected " << svg;
  }
}

TEST_F(MaskCli, LargeProblemsCountOrEstimate) {
  // 2^20 x 2^20 causal: more than 2^32 pairs, but the partial cells are counted exactly.
  const CliResult exact = run({"--seq-len", "1048576", "--causal", "--show=false"});
  ASSERT_EQ(exact.rc, 0) << exact.err;
  EXPECT_NE(exact.out.find("549756338176 of"), std::string::npos) << exact.out;  // N (N+1) / 2
  // A dilated window is too costly to count pair by pair: estimated, and says so.
  const CliResult est = run({"--seq-len", "1048576", "--causal", "--window-left", "65535",
                             "--dilation", "2", "--show=false"});
  ASSERT_EQ(est.rc, 0) << est.err;
  EXPECT_NE(est.out.find("estimated"), std::string::npos) << est.out;
}

TEST_F(MaskCli, BadInputsAreOneLineUsageErrors) {
  const std::string svg = path("bad.svg");
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--width", "7"}, "--width"},
      {{"--block", "0"}, "--block"},
      {{"--seq-len", "0"}, "--seq-len"},
      {{"--seq-len", "4096", "--block", "1"}, "--block"},
      {{"--window-left", "-2"}, "--window-left"},
      {{"--global", "5-2"}, "--global"},
      {{"--block-random", "99", "--block-size", "8"}, "--block-random"},
      {{"--dilation", "0"}, "--dilation"},
      {{"--ranks", "0"}, "--ranks"},
      {{"--layout", "spiral"}, "layout"},
      // Sizes past 2^40 would overflow the mask's closed forms: refused, never miscounted.
      {{"--kv-seq-len", "32", "--block-size", "9223372036854775807"}, "--block-size"},
      {{"--block-size", "8", "--block-window", "9223372036854775807"}, "--block-window"},
      {{"--sinks", "9223372036854775807"}, "--sinks"},
      // Hierarchies: each rule names its option.
      {{"--causal", "--window-left", "6", "--regional-block", "4", "--regional-window", "9"},
       "--regional-window"},
      {{"--causal", "--regional-block", "4", "--regional-window", "40"}, "--regional-block"},
      {{"--causal", "--window-left", "6", "--regional-block", "4", "--regional-window", "16",
        "--global-block", "6"},
       "--global-block"},
      {{"--causal", "--global-block", "8"}, "--global-block"},
      {{"--causal", "--route-block", "8"}, "--route-block"},
      {{"--causal", "--route-block", "8", "--route-topk", "0"}, "--route-topk"},
      {{"--causal", "--window-left", "6", "--regional-block", "4", "--regional-window", "16",
        "--route-block", "8", "--route-topk", "2"},
       "--route-block"},
      {{"--causal", "--window-left", "6", "--dilation", "2", "--regional-block", "4",
        "--regional-window", "16"},
       "--regional-block"},
  };
  for (const auto& [args, option] : cases) {
    std::vector<std::string> a = args;
    a.insert(a.end(), {"--svg", svg});
    const CliResult r = run(a);
    EXPECT_EQ(r.rc, 2) << args[0] << ": " << r.err;
    EXPECT_EQ(count_of(r.err, "\n"), 1u) << r.err;
    EXPECT_NE(r.err.find(option), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(svg)) << args[0];
    EXPECT_TRUE(temporaries().empty()) << args[0];
  }
}

// The levels' picture, cell by cell (one token per cell), against the semantics of
// ringattn/hierarchy.hpp written out here: '#' exact, '2' / '3' level 2 / 3, '.' none.
TEST_F(MaskCli, LevelsPictureFollowsTheDefinition) {
  const int64_t n = 48, w1 = 6, s1 = 4, w2 = 16, s2 = 8, sinks = 1;
  const CliResult r = run({"--seq-len", "48", "--causal", "--window-left", "6", "--regional-block",
                           "4", "--regional-window", "16", "--global-block", "8", "--sinks", "1"});
  ASSERT_EQ(r.rc, 0) << r.err;
  std::vector<std::string> rows;
  for (const std::string& l : lines_of(r.out))
    if (static_cast<int64_t>(l.size()) == n && l.find_first_not_of("#.23") == std::string::npos)
      rows.push_back(l);
  ASSERT_EQ(static_cast<int64_t>(rows.size()), n);
  const auto fl = [](int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); };
  for (int64_t i = 0; i < n; ++i) {
    const int64_t e = std::max<int64_t>(0, s1 * fl(i - w1, s1));
    const int64_t g = std::max<int64_t>(0, std::min(e, s2 * fl(i - w2, s2)));
    for (int64_t j = 0; j < n; ++j) {
      char want = '.';
      if (j <= i && (j < sinks || j >= e))
        want = '#';
      else if (j <= i && j >= g)
        want = '2';
      else if (j <= i)
        want = '3';
      EXPECT_EQ(rows[static_cast<std::size_t>(i)][static_cast<std::size_t>(j)], want)
          << "query " << i << " key " << j;
    }
  }
}

TEST_F(MaskCli, ListedInHelp) {
  const CliResult top = run_binary({"--help"});
  EXPECT_NE(top.out.find("  mask "), std::string::npos) << top.out;
  const CliResult help = run({"--help"});
  ASSERT_EQ(help.rc, 0);
  EXPECT_NE(help.out.find("--svg"), std::string::npos);
  EXPECT_NE(help.out.find("--block-size"), std::string::npos);
}

}  // namespace
}  // namespace ringattn
