"""Benchmark the Chinchilla approach-3 fit: the 4,500-start grid and 1,000 bootstrap refits on
Hoffmann et al.'s data (Epoch AI's CSV, 5 highest-loss rows dropped, 240 points).

Ours: llmtrain.scaling.fit (all starts as one batched L-BFGS with the analytic gradient, the best
5 distinct end points polished by scipy L-BFGS-B; bootstrap replicates batched as weights, each
from the full fit's optimum and the grid points of its 3 best distinct local optima).

Baseline, measured side by side: what Epoch's script does, one scipy.optimize.minimize
(L-BFGS-B, numerical gradient) per start, objective with scipy.special.logsumexp and huber.
The baseline is timed on a random subset of starts (and of bootstrap refits, each from the same
4 starts as ours) and extrapolated linearly; --full times all 4,500 starts.

    python benchmarks/bench_fit.py [--subset 300] [--boot-subset 25] [--full] [--write FILE]
        (FILE: the section of benchmarks/BENCHMARKS.md)
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import scipy
from benchutil import cpu_description  # benchmarks/ is this script's folder
from scipy.optimize import minimize
from scipy.special import huber, logsumexp

from llmtrain.scaling.fit import (
    HUBER_DELTA,
    bootstrap_lse,
    bootstrap_starts,
    chinchilla_grid,
    chinchilla_params,
    fit_lse,
)
from llmtrain.scaling.sources import drop_highest_loss, read_csv

CSV = Path(__file__).resolve().parents[1] / "tests" / "data" / "scaling" / "chinchilla_epoch.csv"


def baseline_objective(p, logN, logD, logL, w=None):
    a, b, e, alpha, beta = p
    pred = logsumexp([a - alpha * logN, b - beta * logD, np.full_like(logN, e)], axis=0)
    h = huber(HUBER_DELTA, pred - logL)
    return float(h.sum() if w is None else (w * h).sum())


def baseline_fit(starts, logN, logD, logL, w=None):
    best = (np.inf, None)
    for s in starts:
        r = minimize(baseline_objective, s, args=(logN, logD, logL, w), method="L-BFGS-B")
        if r.fun < best[0]:
            best = (r.fun, r.x)
    return best


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu_description()} (shared with other work; load average {load:.1f} at start); "
            f"Python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--csv", default=str(CSV))
    ap.add_argument("--subset", type=int, default=300, help="baseline: grid starts timed (extrapolated to all)")
    ap.add_argument("--boot", type=int, default=1000, help="bootstrap refits (ours)")
    ap.add_argument("--boot-subset", type=int, default=25, help="baseline: bootstrap refits timed (extrapolated)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--full", action="store_true", help="baseline over all 4,500 starts (slow)")
    ap.add_argument("--write", help="write the results as Markdown to this file")
    args = ap.parse_args()

    pts = drop_highest_loss(read_csv(Path(args.csv)), 5).points
    X = np.column_stack([np.log(pts.N), np.log(pts.D)])
    y = np.log(pts.L)
    grid = chinchilla_grid()
    info = machine()
    print(info, flush=True)

    # ours: full grid
    times, fit = [], None
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        fit = fit_lse(X, y, grid)
        times.append(time.perf_counter() - t0)
    t_grid = float(np.median(times))
    est = {k: float(v) for k, v in chinchilla_params(fit.theta).items()}
    print(f"ours: grid of {len(grid)} starts in {t_grid:.2f}s (median of {args.repeats}: "
          f"{', '.join(f'{t:.2f}' for t in times)}); objective {fit.f:.10g}; E {est['E']:.4f} alpha "
          f"{est['alpha']:.4f} beta {est['beta']:.4f}", flush=True)

    # ours: bootstrap
    t0 = time.perf_counter()
    thetas, _ = bootstrap_lse(X, y, fit, args.boot, seed=0, n_starts=4)
    t_boot = time.perf_counter() - t0
    se = {k: float(np.std(v, ddof=1)) for k, v in chinchilla_params(thetas).items()}
    print(f"ours: {args.boot} bootstrap refits (4 starts each) in {t_boot:.2f}s; se E {se['E']:.3f} A {se['A']:.1f} "
          f"B {se['B']:.1f} alpha {se['alpha']:.4f} beta {se['beta']:.4f}", flush=True)

    # baseline: one scipy minimize per start, numerical gradient
    rng = np.random.default_rng(0)
    n_sub = len(grid) if args.full else min(args.subset, len(grid))
    sub = grid[rng.choice(len(grid), n_sub, replace=False)] if n_sub < len(grid) else grid
    t0 = time.perf_counter()
    bf, bx = baseline_fit(sub, X[:, 0], X[:, 1], y)
    t_sub = time.perf_counter() - t0
    t_base = t_sub * len(grid) / n_sub
    # ours on the same subset, for a like-for-like objective comparison
    sub_f = fit_lse(X, y, sub).f
    bp = {k: float(v) for k, v in chinchilla_params(bx).items()}
    print(f"baseline: {n_sub} starts in {t_sub:.1f}s -> {len(grid)} starts {'took' if n_sub == len(grid) else '~'}"
          f"{t_base:.0f}s; best objective on those starts {bf:.10g} (ours on the same starts {sub_f:.10g}); "
          f"E {bp['E']:.4f} alpha {bp['alpha']:.4f} beta {bp['beta']:.4f}", flush=True)

    # baseline bootstrap: per refit, scipy from the same 4 starts as ours
    n = len(y)
    ours_starts = bootstrap_starts(fit, 4)
    W = rng.multinomial(n, np.full(n, 1.0 / n), size=args.boot_subset).astype(float)
    t0 = time.perf_counter()
    for w in W:
        baseline_fit(ours_starts, X[:, 0], X[:, 1], y, w)
    t_bsub = time.perf_counter() - t0
    t_bbase = t_bsub * args.boot / args.boot_subset
    print(f"baseline: {args.boot_subset} bootstrap refits in {t_bsub:.1f}s -> {args.boot} refits ~{t_bbase:.0f}s",
          flush=True)

    grid_base = ('all starts' if n_sub == len(grid) else
                 f'{n_sub} random starts timed: {t_sub:.1f} s, extrapolated')
    table = "\n".join([
        "| | ours (`llmtrain.scaling.fit`) | baseline: one `scipy.optimize.minimize` (L-BFGS-B, numerical gradient) "
        "per start | speed-up |",
        "|---|---|---|---|",
        f"| 4,500-start grid fit | {t_grid:.2f} s (median of {args.repeats}) | "
        f"{'' if n_sub == len(grid) else '~'}{t_base:.0f} s ({grid_base}) | {t_base / t_grid:.0f}x |",
        f"| {args.boot} bootstrap refits, 4 starts each | {t_boot:.2f} s | ~{t_bbase:.0f} s ({args.boot_subset} refits "
        f"timed: {t_bsub:.1f} s, extrapolated) | {t_bbase / t_boot:.0f}x |",
    ])
    md = f"""# Scaling-law fit benchmark (`benchmarks/bench_fit.py`)

What: Chinchilla approach 3 on Hoffmann et al.'s data (Epoch AI's CSV, 5 highest-loss rows dropped,
240 points): L = E + A/N^alpha + B/D^beta in log-sum-exp form, sum of Huber losses (delta 1e-3) of
log-loss residuals, from every point of Hoffmann's 4,500-start grid; then {args.boot} bootstrap refits.

Machine: {info}.

{table}

Result of the grid fit (ours): objective {fit.f:.10g}; E = {est['E']:.4f}, A = {est['A']:.2f}, B = {est['B']:.2f},
alpha = {est['alpha']:.4f}, beta = {est['beta']:.4f} (Epoch AI: 1.8172, 477.84, 2143.86, 0.3473, 0.3672).
Bootstrap standard errors (ours, {args.boot} refits, seed 0): E {se['E']:.3f}, A {se['A']:.1f}, B {se['B']:.1f},
alpha {se['alpha']:.4f}, beta {se['beta']:.4f} (Epoch AI: 0.026, 124.5, 1293.3, 0.015, 0.021).
On the baseline's {n_sub} starts: baseline best objective {bf:.10g}, ours from the same starts {sub_f:.10g}.

How ours is fast: all starts run as one L-BFGS over arrays of shape (starts x points), each start with its
own history, step length and stopping test (scipy's default ftol and gtol), only the starts still moving
evaluated; the gradient is analytic (one pass). The 5 best distinct end points are polished with scipy's
L-BFGS-B (analytic gradient, tight tolerances). Bootstrap resamples become per-point weights
(multinomial counts), so all replicates x starts are again one batched L-BFGS; each refit starts from the
full fit's optimum and the grid points of its 3 best distinct local optima.
"""
    if args.write:
        from llmtrain.utils import atomic_write_text

        atomic_write_text(args.write, md)
        print(f"wrote {args.write}")
    else:
        print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
