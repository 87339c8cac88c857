"""Approach 3 of Hoffmann et al. (2022): L(N, D) = E + A / N^alpha + B / D^beta.

Fitted as Hoffmann et al. App. D.2 and Epoch AI's replication: log-sum-exp form
log L = LSE(log A - alpha log N, log B - beta log D, log E), the sum of Huber losses (delta 1e-3)
of log-loss residuals, from every point of Hoffmann's 4,500-start grid (``optim.fit_lse``).
Bootstrap: rows resampled with replacement, every replicate refitted in one batched solve from
the full fit's optimum and the grid points of its best distinct local optima.

Predicts the loss at given (N, D) and the compute-optimal N, D (and loss) for a budget C = 6 N D.
"""
from __future__ import annotations

import itertools
import time

import numpy as np

from llmtrain.scaling.bootstrap import compute_optimal, estimates, predictions, resample_counts
from llmtrain.scaling.optim import HUBER_DELTA, MultiStartFit, fit_lse, lse_predict, refit_lse
from llmtrain.scaling.points import FitError, Points
from llmtrain.scaling.results import BootstrapInfo, ChinchillaFit

NEED = 6  # points: 5 parameters


def grid() -> np.ndarray:
    """Hoffmann's grid as rows [a, b, e, alpha, beta]: alpha, beta in {0, 0.5, ..., 2}, e in
    {-1, -0.5, ..., 1}, a, b in {0, 5, ..., 25}: 5 * 5 * 5 * 6 * 6 = 4,500 starts."""
    ab = np.arange(0, 26, 5.0)
    ex = np.arange(-1, 1.01, 0.5)
    al = np.arange(0, 2.01, 0.5)
    return np.array([(a, b, e, alpha, beta) for alpha, beta, e, a, b in itertools.product(al, al, ex, ab, ab)])


def params(theta: np.ndarray) -> dict:
    """Natural parameters from rows [a, b, e, alpha, beta] (vectorised over leading axes)."""
    theta = np.asarray(theta, float)
    a_, b_, e, al, be = (theta[..., i] for i in range(5))
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        return {"E": np.exp(e), "A": np.exp(a_), "B": np.exp(b_), "alpha": al, "beta": be,
                "a": be / (al + be), "b": al / (al + be)}


def loss(theta: np.ndarray, N, D):
    """L(N, D) for one theta (5,) or many (B, 5)."""
    p = params(theta)
    with np.errstate(over="ignore", invalid="ignore"):
        return p["E"] + p["A"] / N ** p["alpha"] + p["B"] / D ** p["beta"]


def optimum(theta: np.ndarray, C) -> dict:
    """Compute-optimal N, D (and their loss) for budget C = 6 N D: N_opt = G (C/6)^a,
    D_opt = (C/6)/N_opt, G = (alpha A / (beta B))^(1/(alpha+beta)) (vectorised over theta rows)."""
    p = params(theta)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        # in logs: log G = (log(alpha) + log A - log(beta) - log B) / (alpha + beta)
        theta = np.asarray(theta, float)
        logG = (np.log(p["alpha"]) + theta[..., 0] - np.log(p["beta"]) - theta[..., 1]) / (p["alpha"] + p["beta"])
        logN = logG + p["a"] * np.log(np.asarray(C, float) / 6.0)
        logD = np.log(np.asarray(C, float) / 6.0) - logN
        N, D = np.exp(logN), np.exp(logD)
        L = p["E"] + p["A"] / N ** p["alpha"] + p["B"] / D ** p["beta"]
    return {"N": N, "D": D, "loss": L}


def features(pts: Points) -> tuple[np.ndarray, np.ndarray]:
    """(X, y): log N and log D per point, and the log loss."""
    return np.column_stack([np.log(pts.N), np.log(pts.D)]), np.log(pts.L)


def solve(pts: Points, delta: float = HUBER_DELTA) -> MultiStartFit:
    """The multi-start fit from Hoffmann's grid."""
    if len(pts) < NEED:
        raise FitError(f"approach 3 (chinchilla) fits 5 parameters and needs at least {NEED} points; got {len(pts)}")
    X, y = features(pts)
    return fit_lse(X, y, grid(), delta)


def refit(pts: Points, ms: MultiStartFit, counts: np.ndarray, boot_starts: int = 4,
          delta: float = HUBER_DELTA) -> np.ndarray:
    """Bootstrap replicates' parameters (B, 5) for resamples given as row counts (B, n)."""
    X, y = features(pts)
    return refit_lse(X, y, ms, counts, n_starts=boot_starts, delta=delta)[0]


def result(pts: Points, ms: MultiStartFit, level: float = 0.95, delta: float = HUBER_DELTA, thetas=None,
           bootstrap: BootstrapInfo | None = None, target_flops: float | None = None, targets=()) -> ChinchillaFit:
    """The typed result of a solved fit (and of its bootstrap replicates' parameters, if any)."""
    X, y = features(pts)
    theta = ms.theta
    fit = {
        "objective": "sum of Huber losses of log-loss residuals (log-sum-exp form, Hoffmann et al. App. D.2)",
        "huber_delta": delta, "objective_value": ms.f, "n_starts": len(ms.starts), "n_converged": ms.n_converged,
        "optimizer": "batched L-BFGS from every grid start (vectorised), best 5 distinct end points polished "
                     "with scipy L-BFGS-B (analytic gradient)",
        "grid": "alpha, beta in {0, 0.5, ..., 2}; e in {-1, -0.5, ..., 1}; a, b in {0, 5, ..., 25}",
        "time_s": round(ms.time_s, 3),
    }
    co = None
    if target_flops:
        co = compute_optimal(target_flops, "C = 6 N D", optimum, theta, thetas, level)
    preds = predictions([(N, D, "given") for N, D in targets], lambda th, N, D: {"loss": loss(th, N, D)},
                        theta, thetas, level)
    return ChinchillaFit(theta=theta, parameters=estimates(params(theta), None if thetas is None else params(thetas),
                                                           level),
                         fit=fit, residuals_log=(lse_predict(theta, X) - y).tolist(), bootstrap=bootstrap,
                         compute_optimal=co, predictions=preds)


def fit(pts: Points, n_boot: int = 0, seed: int = 0, target_flops: float | None = None, targets=(),
        level: float = 0.95, delta: float = HUBER_DELTA, boot_starts: int = 4) -> ChinchillaFit:
    """Fit approach 3; with n_boot, bootstrap intervals of every parameter and prediction; with
    target_flops, the compute-optimal model for that budget; targets: [(N, D), ...] to predict the
    loss at."""
    ms = solve(pts, delta)
    thetas = info = None
    if n_boot:
        t0 = time.perf_counter()
        thetas = refit(pts, ms, resample_counts(len(pts), n_boot, seed), boot_starts, delta)
        info = BootstrapInfo(n_boot, seed, level, "rows with replacement",
                             starts_per_refit=f"the full fit's optimum and the grid points of its {boot_starts - 1} "
                                              "best distinct local optima",
                             time_s=round(time.perf_counter() - t0, 3))
    return result(pts, ms, level, delta, thetas, info, target_flops, targets)
