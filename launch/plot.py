#!/usr/bin/python3
"""Plot a sweep CSV (launch/sweep.sh, launch/collect.py) as PNG files.

    /usr/bin/python3 launch/plot.py sweep.csv [--out DIR]

Writes into DIR (default: next to the CSV):
  time_vs_p.png            measured (solid) and predicted (dashed) time vs P, one line per
                           (mode, backend, problem)
  efficiency_vs_p.png      efficiency vs P: throughput per rank relative to the same series'
                           smallest P, (F_P / (P T_P)) / (F_1 / T_1) -- for strong scaling
                           T_1 / (P T_P), for weak scaling what stays of the per-rank rate
  predicted_vs_measured.png  every run, with the y = x line and a +-20% band
  breakdown.png            per rank compute / merge / wait (the rest of the total) of the
                           largest-P run of each series, measured beside predicted

Needs matplotlib: Debian's python3-matplotlib (scripts/install-deps.sh), which belongs to
/usr/bin/python3 -- another `python3` first on PATH may not have it. Exit status 77 and
one line when matplotlib is missing (ctest counts that as skipped).
"""
import argparse
import csv
import os
import sys
from collections import OrderedDict

SKIP = 77  # ctest SKIP_RETURN_CODE

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print(f"plot.py: matplotlib is not available to {sys.executable}; install python3-matplotlib "
          "(scripts/install-deps.sh) and run with /usr/bin/python3", file=sys.stderr)
    sys.exit(SKIP)

NUMERIC = {"ranks", "n", "tokens_per_rank", "b", "hq", "hkv", "d", "threads", "steps",
           "measured_ms", "predicted_ms", "error_pct", "measured_gflops", "predicted_gflops"}
BAND = 0.20  # the validation target: within 20%


def load(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SystemExit(f"plot.py: {path}: no rows")
    for r in rows:
        for k in NUMERIC:
            if k in r:
                r[k] = float(r[k])
    return rows


def series(rows):
    """Rows grouped by (mode, backend, problem), each sorted by P."""
    groups = OrderedDict()
    for r in rows:
        problem = f"H={int(r['hq'])}/{int(r['hkv'])} D={int(r['d'])} {r['dtype']} {r['mask']}"
        size = f"N={int(r['n'])}" if r["mode"] == "strong" else (
            f"{int(r['tokens_per_rank'])}/rank" if r["mode"] == "weak" else "N~sqrt(P)")
        key = f"{r['mode']} {r['backend']} {size} {problem}"
        if r.get("comm_scheme", "flat") not in ("", "flat"):
            key += f" {r['comm_scheme']} w={r.get('ranks_per_node', '')}"
        groups.setdefault(key, []).append(r)
    for v in groups.values():
        v.sort(key=lambda r: r["ranks"])
    return groups


def ranks_axis(ax, groups):
    ps = sorted({int(r["ranks"]) for v in groups.values() for r in v})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ps)
    ax.set_xticklabels([str(p) for p in ps])
    ax.set_xlabel("ranks P")
    ax.grid(True, alpha=0.3)


def plot_time(groups, out):
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (name, v) in enumerate(groups.items()):
        c = f"C{i % 10}"
        ps = [r["ranks"] for r in v]
        ax.plot(ps, [r["measured_ms"] for r in v], "o-", color=c, label=f"{name} measured")
        ax.plot(ps, [r["predicted_ms"] for r in v], "x--", color=c, label=f"{name} predicted")
    ranks_axis(ax, groups)
    ax.set_yscale("log")
    ax.set_ylabel("time of the ring (slowest rank), ms")
    ax.set_title("time vs ranks")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_efficiency(groups, out):
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (name, v) in enumerate(groups.items()):
        c = f"C{i % 10}"
        base = v[0]
        for key, style, what in (("measured_gflops", "o-", "measured"),
                                 ("predicted_gflops", "x--", "predicted")):
            ref = base[key] / base["ranks"]
            eff = [100.0 * (r[key] / r["ranks"]) / ref for r in v]
            ax.plot([r["ranks"] for r in v], eff, style, color=c, label=f"{name} {what}")
    ranks_axis(ax, groups)
    ax.axhline(100, color="gray", lw=0.8)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("efficiency, % (per-rank throughput vs the smallest P)")
    ax.set_title("efficiency vs ranks")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_pred_vs_meas(rows, out):
    fig, ax = plt.subplots(figsize=(6, 6))
    for i, backend in enumerate(sorted({r["backend"] for r in rows})):
        sel = [r for r in rows if r["backend"] == backend]
        ax.scatter([r["measured_ms"] for r in sel], [r["predicted_ms"] for r in sel],
                   color=f"C{i}", label=backend)
        for r in sel:
            ax.annotate(f"P={int(r['ranks'])}", (r["measured_ms"], r["predicted_ms"]),
                        fontsize=7, xytext=(3, 3), textcoords="offset points")
    lo = min(min(r["measured_ms"], r["predicted_ms"]) for r in rows) * 0.7
    hi = max(max(r["measured_ms"], r["predicted_ms"]) for r in rows) * 1.4
    xs = [lo, hi]
    ax.plot(xs, xs, "k-", lw=0.8, label="predicted = measured")
    ax.fill_between(xs, [x * (1 - BAND) for x in xs], [x * (1 + BAND) for x in xs],
                    color="gray", alpha=0.2, label=f"+-{int(BAND * 100)}%")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured, ms")
    ax.set_ylabel("predicted (ringattn plan), ms")
    ax.set_title("predicted vs measured")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def floats(text):
    return [float(x) for x in str(text).split(";") if x != ""]


def plot_breakdown(groups, out):
    runs = [(name, v[-1]) for name, v in groups.items()]
    fig, axes = plt.subplots(len(runs), 1, figsize=(9, 2.6 * len(runs)), squeeze=False)
    for ax, (name, r) in zip(axes[:, 0], runs):
        labels, comp, merge, wait, other = [], [], [], [], []
        for prefix, tag in (("rank_", "meas"), ("pred_rank_", "pred")):
            c, m, w, t = (floats(r[prefix + k]) for k in ("compute_ms", "merge_ms", "wait_ms",
                                                          "total_ms"))
            for k in range(len(t)):
                labels.append(f"r{k} {tag}")
                comp.append(c[k])
                merge.append(m[k])
                wait.append(w[k])
                other.append(max(t[k] - c[k] - m[k] - w[k], 0.0))
        ys = range(len(labels))
        left = [0.0] * len(labels)
        for vals, col, lab in ((comp, "C0", "compute"), (merge, "C1", "merge"),
                               (wait, "C3", "wait"), (other, "C7", "other (sends, copies)")):
            ax.barh(ys, vals, left=left, color=col, label=lab)
            left = [a + b for a, b in zip(left, vals)]
        ax.set_yticks(list(ys))
        ax.set_yticklabels(labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("ms")
        ax.set_title(f"{name}, P={int(r['ranks'])}: per-rank breakdown", fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("csv")
    ap.add_argument("--out", help="directory for the PNG files (default: the CSV's)")
    a = ap.parse_args()
    if not os.path.exists(a.csv):
        print(f"plot.py: cannot open '{a.csv}'", file=sys.stderr)
        return 2
    out = a.out or os.path.dirname(os.path.abspath(a.csv))
    os.makedirs(out, exist_ok=True)
    rows = load(a.csv)
    groups = series(rows)
    files = {
        "time_vs_p.png": lambda p: plot_time(groups, p),
        "efficiency_vs_p.png": lambda p: plot_efficiency(groups, p),
        "predicted_vs_measured.png": lambda p: plot_pred_vs_meas(rows, p),
        "breakdown.png": lambda p: plot_breakdown(groups, p),
    }
    for name, draw in files.items():
        draw(os.path.join(out, name))
        print(os.path.join(out, name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
