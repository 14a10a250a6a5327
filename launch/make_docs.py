#!/usr/bin/env python3
"""Writes document boundaries for packed-sequence runs: cumulative offsets
[0, l0, l0 + l1, ..., N] (flash-attn's cu_seqlens) as a 1-d int64 .npy, for
`ringattn run --cu-seqlens FILE`.

Lengths are drawn from a seeded lognormal (long-tailed, as real corpora are),
clipped to [--min, --max]; the last document is cut so that they add up to
--tokens exactly. Prints the count, the length range and the visible pairs of a
causal mask inside the documents (sum of l (l + 1) / 2).

  /usr/bin/python3 launch/make_docs.py --tokens 1048576 --min 128 --max 262144 \\
      --median 2048 --sigma 1.5 --seed 1 --out docs.npy
"""
import argparse
import sys

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, required=True, help="N, the packed length")
    ap.add_argument("--min", type=int, default=128, help="shortest document (tokens)")
    ap.add_argument("--max", type=int, default=262144, help="longest document (tokens)")
    ap.add_argument("--median", type=float, default=2048, help="lognormal median (tokens)")
    ap.add_argument("--sigma", type=float, default=1.5, help="lognormal sigma (natural log)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", required=True, help="output .npy (int64 offsets)")
    a = ap.parse_args()
    if a.tokens < 1 or a.min < 1 or a.max < a.min:
        sys.exit("make_docs.py: expected --tokens >= 1 and 1 <= --min <= --max")
    rng = np.random.default_rng(a.seed)
    lens = []
    total = 0
    while total < a.tokens:
        l = int(np.clip(rng.lognormal(np.log(a.median), a.sigma), a.min, a.max))
        l = min(l, a.tokens - total)
        lens.append(l)
        total += l
    off = np.zeros(len(lens) + 1, dtype=np.int64)
    off[1:] = np.cumsum(lens)
    np.save(a.out, off)
    l = np.array(lens, dtype=np.float64)
    print(f"{a.out}: {len(lens)} documents, {int(l.min())} to {int(l.max())} tokens "
          f"(median {int(np.median(l))}), N = {int(off[-1])}, causal pairs "
          f"{(l * (l + 1) / 2).sum():.4g}")


if __name__ == "__main__":
    main()
