"""Blend order: what a rank computes to know which dataset each of its samples comes from.

    python benchmarks/bench_blend.py [--n 10000000] [--batch 512] [--calls 200] [--rounds 3]

``BlendedSamples.order(n, start)`` (llmtrain/data/sampler.py) places the global samples
[start, start+n): which dataset, and which sample of it. Before issue 19 every rank built the
order of the whole run at start-up (``order(n)`` from 0 for steps x global batch samples, one
sort over all their due times) and kept it in memory and in RUN/data_order/; now the trainer
asks for one batch at a time. Timed, with 2, 3 and 10 datasets: the whole order of n samples
(the old start-up cost; median of --rounds), and one global batch at positions 0, 1e9 and 1e12
(median of --calls calls each; a resume at any step costs the same). Checked: random stretches
equal the whole order's (the order of earlier runs, exactly), every dataset's samples are read
0, 1, 2, ... and the largest deviation from the shares over every prefix. Prints Markdown rows
for BENCHMARKS.md and, with --json, writes the numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np

from llmtrain.data.sampler import BlendedSamples

WEIGHTS = {
    2: [0.7, 0.3],
    3: [0.5, 0.3, 0.2],
    10: [0.3, 0.2, 0.1, 0.1, 0.08, 0.07, 0.05, 0.04, 0.03, 0.03],
}
FAR = (0, 10**9, 10**12)


def max_share_error(choice: np.ndarray, weights) -> float:
    """Largest |count_d(prefix) - w_d * len(prefix)| over every prefix and dataset (in samples)."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    g = np.arange(1, len(choice) + 1, dtype=np.float64)
    return max(float(np.abs(np.cumsum(choice == d) - w[d] * g).max()) for d in range(len(w)))


def load_average() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--batch", type=int, default=512, help="samples per call (a global batch)")
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--datasets", type=int, nargs="+", default=[2, 3, 10], choices=sorted(WEIGHTS))
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args()
    from benchutil import cpu_description

    print(f"machine: {cpu_description()}; load average at start {load_average()}", flush=True)
    rng = np.random.default_rng(0)
    results = []
    for k in args.datasets:
        w = WEIGHTS[k]
        blend = BlendedSamples([object()] * k, w)
        whole_s = []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            choice, local = blend.order(args.n)
            whole_s.append(time.perf_counter() - t0)
        for d in range(k):  # each dataset read in its own order, none skipped
            assert (local[choice == d] == np.arange((choice == d).sum())).all()
        for start in rng.integers(0, args.n - args.batch, size=50):  # any stretch is the whole order's
            c, loc = blend.order(args.batch, int(start))
            assert np.array_equal(c, choice[start:start + args.batch]) and np.array_equal(loc, local[start:start +
                                                                                                     args.batch])
        per_call = {}
        for far in FAR:
            times = []
            for i in range(args.calls):
                t0 = time.perf_counter()
                blend.order(args.batch, far + i * args.batch)
                times.append(time.perf_counter() - t0)
            per_call[far] = statistics.median(times)
        r = {"datasets": k, "weights": w, "n": args.n, "whole_order_s": statistics.median(whole_s),
             "whole_order_s_all": whole_s, "whole_order_mb": (choice.nbytes + local.nbytes) / 1e6,
             "batch": args.batch, "per_batch_ms": {str(f): s * 1e3 for f, s in per_call.items()},
             "max_share_error_samples": max_share_error(choice, w)}
        results.append(r)
        print(json.dumps(r), flush=True)
    print(f"\nload average at end {load_average()}\n")
    print(f"| datasets | whole order of {args.n / 1e6:g}M samples (old start-up, per rank) | one batch of "
          f"{args.batch} at " + ", ".join(f"{f:.0e}" for f in FAR) + " (now, per step) | max share error |")
    print("|---|---|---|---|")
    for r in results:
        per = " / ".join(f"{v:.2f} ms" for v in r["per_batch_ms"].values())
        print(f"| {r['datasets']} | {r['whole_order_s']:.2f} s, {r['whole_order_mb']:.0f} MB | {per} | "
              f"{r['max_share_error_samples']:.2f} samples |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"load_average_end": load_average(), "results": results}, fh, indent=1)


if __name__ == "__main__":
    main()
