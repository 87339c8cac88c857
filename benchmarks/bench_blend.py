"""Blend order: how long the trainer's data order takes to build, against the old per-sample loop.

    python benchmarks/bench_blend.py [--n 10000000] [--old-n 100000 300000] [--rounds 3]

``BlendedSamples.order(n)`` (llmtrain/data/sampler.py) is the vectorised blend: which dataset,
and which sample of it, each global sample index reads. It is timed for n samples (10M by
default) with 2, 3 and 10 datasets; ``prepare(n, cache_dir)`` is timed twice on an empty folder,
the first call building the order and writing it (.npz), the second mapping it back (what a
resume does). The old code, a pure-Python greedy loop (for each global index g:
d = argmax(w*(g+1) - counts); counts[d] += 1), is timed on a few smaller n and extrapolated
linearly to n (its cost per sample is constant). Both orders are compared on the old loop's
samples. Prints Markdown rows for BENCHMARKS.md and, with --json, writes the numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import numpy as np

from llmtrain.data.sampler import BlendedSamples

WEIGHTS = {
    2: [0.7, 0.3],
    3: [0.5, 0.3, 0.2],
    10: [0.3, 0.2, 0.1, 0.1, 0.08, 0.07, 0.05, 0.04, 0.03, 0.03],
}


class Source:
    """A stand-in dataset: the blend order only needs the sources' count."""

    num_samples = 1 << 40

    def __getitem__(self, i):
        return i


def old_greedy(weights, n: int) -> np.ndarray:
    """The loop the trainer used before (one NumPy argmax per sample)."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    counts = np.zeros(len(w), dtype=np.int64)
    out = np.empty(n, dtype=np.uint16)
    for g in range(n):
        d = int(np.argmax(w * (g + 1) - counts))
        counts[d] += 1
        out[g] = d
    return out


def max_share_error(choice: np.ndarray, weights) -> float:
    """Largest |count_d(prefix) - w_d * len(prefix)| over every prefix and dataset (in samples)."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    g = np.arange(1, len(choice) + 1, dtype=np.float64)
    worst = 0.0
    for d in range(len(w)):
        worst = max(worst, float(np.abs(np.cumsum(choice == d) - w[d] * g).max()))
    return worst


def load_average() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--old-n", type=int, nargs="+", default=[100_000, 300_000])
    ap.add_argument("--rounds", type=int, default=3, help="timings of the new code per case (median reported)")
    ap.add_argument("--datasets", type=int, nargs="+", default=[2, 3, 10], choices=sorted(WEIGHTS))
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args()
    from benchutil import cpu_description

    print(f"machine: {cpu_description()}; load average at start {load_average()}", flush=True)
    results = []
    for k in args.datasets:
        w = WEIGHTS[k]
        blend = BlendedSamples([Source() for _ in w], w)
        times = []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            choice, local = blend.order(args.n)
            times.append(time.perf_counter() - t0)
        new_s = statistics.median(times)
        # sanity: local indices count each dataset's samples 0, 1, 2, ... in order
        for d in range(k):
            loc = local[choice == d]
            assert (loc == np.arange(len(loc))).all(), f"dataset {d}: local indices not consecutive"
        share_err = max_share_error(choice, w)
        m = args.n // 10  # any prefix is the same whatever n the order was built for
        prefix_stable = all(np.array_equal(a[:m], b) for a, b in zip((choice, local), blend.order(m)))
        assert prefix_stable, "order(n)[:m] != order(m)"
        with tempfile.TemporaryDirectory() as tmp:
            b1 = BlendedSamples([Source() for _ in w], w)
            t0 = time.perf_counter()
            b1.prepare(args.n, cache_dir=tmp)
            first = time.perf_counter() - t0
            b2 = BlendedSamples([Source() for _ in w], w)
            t0 = time.perf_counter()
            b2.prepare(args.n, cache_dir=tmp)
            reload = time.perf_counter() - t0
            assert np.array_equal(b2._choice, choice) and np.array_equal(b2._local, local)
            cache_mb = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp)) / 1e6
        old = []
        for n_old in args.old_n:
            t0 = time.perf_counter()
            ref = old_greedy(w, n_old)
            old.append((n_old, time.perf_counter() - t0))
        per_sample = max(s / n for n, s in old)  # under load the slowest is the noisiest; report both below
        per_sample_med = statistics.median(s / n for n, s in old)
        n_cmp = args.old_n[-1]
        same = float((ref == choice[:n_cmp]).mean())
        old_share_err = max_share_error(ref, w)
        new_share_err = max_share_error(choice[:n_cmp], w)
        r = {
            "datasets": k, "weights": w, "n": args.n, "order_s_median": new_s, "order_s_all": times,
            "prepare_first_s": first, "prepare_reload_s": reload, "cache_mb": cache_mb,
            "old_loop_timed": [{"n": n, "s": s} for n, s in old],
            "old_loop_s_per_1m": per_sample_med * 1e6, "old_loop_extrapolated_s": per_sample_med * args.n,
            "old_loop_extrapolated_s_slowest": per_sample * args.n,
            "speedup": per_sample_med * args.n / new_s, "same_choice_as_old_on_first": n_cmp,
            "same_choice_fraction": same, "max_share_error_samples": share_err,
            "max_share_error_first_old_n": {"new": new_share_err, "old": old_share_err},
        }
        results.append(r)
        print(json.dumps(r), flush=True)
    print(f"\nload average at end {load_average()}\n")
    print(f"| datasets | `order({args.n:,})` (median of {args.rounds}) | `prepare` first (build + write .npz) | "
          f"`prepare` again (load .npz) | old loop, timed | old loop, extrapolated to {args.n / 1e6:g}M | speed-up | "
          f"same order as old loop | max share error, new (old on its n) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        timed = ", ".join(f"{t['s']:.2f} s / {t['n'] / 1e3:,.0f}k" for t in r["old_loop_timed"])
        err_old = r["max_share_error_first_old_n"]["old"]
        print(f"| {r['datasets']} | {r['order_s_median']:.2f} s | {r['prepare_first_s']:.2f} s | "
              f"{r['prepare_reload_s']:.2f} s ({r['cache_mb']:.0f} MB) | {timed} | "
              f"{r['old_loop_extrapolated_s']:,.0f} s | {r['speedup']:,.0f}x | {r['same_choice_fraction']:.2%} of the "
              f"first {r['same_choice_as_old_on_first']:,} | {r['max_share_error_samples']:.2f} ({err_old:.2f}) "
              f"samples |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"load_average_end": load_average(), "results": results}, fh, indent=1)


if __name__ == "__main__":
    main()
