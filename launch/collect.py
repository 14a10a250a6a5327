#!/usr/bin/env python3
"""Put the prediction beside each measurement: one CSV row per ring run.

    launch/collect.py OUT.csv --mode strong [--load L] RUN1.jsonl PLAN1.jsonl [RUN2.jsonl PLAN2.jsonl ...]

RUNk.jsonl is what `ringattn run --metrics` wrote for one run (one "rank" record per
rank, then a "summary"); PLANk.jsonl is `ringattn plan --json` for the same problem
(a "summary", then "rank" and "step" records). Rows are appended to OUT.csv (the
header is written when the file is new). Standard library only: any python3 runs it.

--load: the 1-minute load average before the runs (other work on the machine), recorded
as it is. Columns: see COLUMNS below; per-rank lists are ';'-separated in rank order. Times
are milliseconds, memory bytes; error_pct = 100 (predicted / measured - 1).
"""
import csv
import json
import os
import sys

COLUMNS = [
    "mode", "backend", "ranks", "n", "tokens_per_rank", "b", "hq", "hkv", "d", "dtype",
    "mask", "layout", "threads", "hardware",
    "measured_ms", "predicted_ms", "error_pct",
    "measured_gflops", "predicted_gflops",
    "measured_compute_ms", "predicted_compute_ms",
    "measured_merge_ms", "predicted_merge_ms",
    "measured_wait_ms", "predicted_wait_ms", "predicted_transfer_ms",
    "steps", "bytes_per_step", "imbalance_scheduled", "imbalance_measured",
    "measured_peak_bytes", "predicted_memory_bytes",
    "hidden", "min_tokens_hidden",
    "rank_total_ms", "rank_compute_ms", "rank_merge_ms", "rank_wait_ms",
    "pred_rank_total_ms", "pred_rank_compute_ms", "pred_rank_merge_ms", "pred_rank_wait_ms",
    "load", "reproduce",
    "comm_scheme", "ranks_per_node",
    "measured_intra_bytes", "predicted_intra_bytes",
    "measured_inter_bytes", "predicted_inter_bytes",
]


def records(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def joined(rows, key):
    return ";".join(f"{r[key]:.3f}" for r in rows)


def row(mode, load, run_path, plan_path):
    run = records(run_path)
    plan = records(plan_path)
    rs = [r for r in run if r.get("record") == "summary"]
    if not rs:
        raise SystemExit(f"collect.py: {run_path}: no run summary record (did the run fail?)")
    m = rs[-1]
    # The last run's rank records are the ones just before its summary.
    end = max(i for i, r in enumerate(run) if r.get("record") == "summary")
    ranks = [r for r in run[end - m["ranks"]:end] if r.get("record") == "rank"]
    ps = [r for r in plan if r.get("record") == "summary"]
    if not ps:
        raise SystemExit(f"collect.py: {plan_path}: no plan summary record")
    p = ps[0]
    prank = [r for r in plan if r.get("record") == "rank"]
    slow = max(ranks, key=lambda r: r["total_ms"])
    return {
        "mode": mode, "backend": m["backend"], "ranks": m["ranks"], "n": m["nq"],
        "tokens_per_rank": p["tokens_per_rank"], "b": m["b"], "hq": m["hq"], "hkv": m["hkv"],
        "d": m["d"], "dtype": m["dtype"], "mask": m["mask"], "layout": m["layout"],
        "threads": m["threads"], "hardware": p["hardware"],
        "measured_ms": m["time_ms"], "predicted_ms": p["time_ms"],
        "error_pct": 100.0 * (p["time_ms"] / m["time_ms"] - 1.0),
        "measured_gflops": m["gflops"], "predicted_gflops": p["gflops"],
        "measured_compute_ms": slow["compute_ms"], "predicted_compute_ms": p["compute_ms"],
        "measured_merge_ms": slow["merge_ms"], "predicted_merge_ms": p["merge_ms"],
        "measured_wait_ms": slow["wait_ms"], "predicted_wait_ms": p["wait_ms"],
        "predicted_transfer_ms": p["transfer_ms"],
        "steps": m["steps"], "bytes_per_step": m["bytes_per_step"],
        "imbalance_scheduled": m["imbalance_scheduled"],
        "imbalance_measured": m["imbalance_measured"],
        "measured_peak_bytes": max(r["peak_bytes"] for r in ranks),
        "predicted_memory_bytes": p["memory_bytes"],
        "hidden": p["hidden"], "min_tokens_hidden": p["min_tokens_hidden"],
        "rank_total_ms": joined(ranks, "total_ms"), "rank_compute_ms": joined(ranks, "compute_ms"),
        "rank_merge_ms": joined(ranks, "merge_ms"), "rank_wait_ms": joined(ranks, "wait_ms"),
        "pred_rank_total_ms": joined(prank, "total_ms"),
        "pred_rank_compute_ms": joined(prank, "compute_ms"),
        "pred_rank_merge_ms": joined(prank, "merge_ms"),
        "pred_rank_wait_ms": joined(prank, "wait_ms"),
        "load": load, "reproduce": m["reproduce"],
        "comm_scheme": m.get("comm_scheme", "flat"), "ranks_per_node": m.get("ranks_per_node", ""),
        "measured_intra_bytes": sum(r.get("intra_bytes", 0) for r in ranks),
        "predicted_intra_bytes": p.get("intra_bytes", ""),
        "measured_inter_bytes": sum(r.get("inter_bytes", 0) for r in ranks),
        "predicted_inter_bytes": p.get("inter_bytes", ""),
    }


def main(argv):
    if len(argv) < 5 or argv[2] != "--mode":
        raise SystemExit(__doc__.split("\n\n")[1])
    out, mode, pairs = argv[1], argv[3], argv[4:]
    load = ""
    if pairs[:1] == ["--load"]:
        load, pairs = pairs[1], pairs[2:]
    if not pairs or len(pairs) % 2:
        raise SystemExit(__doc__.split("\n\n")[1])
    new = not os.path.exists(out) or os.path.getsize(out) == 0
    if not new:
        with open(out, newline="") as f:
            header = next(csv.reader(f), [])
        if header != COLUMNS:
            raise SystemExit(f"collect.py: {out} has other columns (written by another version); "
                             "collect into a new file")
    with open(out, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            w.writeheader()
        for i in range(0, len(pairs), 2):
            w.writerow(row(mode, load, pairs[i], pairs[i + 1]))


if __name__ == "__main__":
    main(sys.argv)
