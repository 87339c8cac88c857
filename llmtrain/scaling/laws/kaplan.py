"""Kaplan-style single-variable laws: L(X) = E + (X_c / X)^alpha_X for X in N, D and C, each on
its frontier (Kaplan et al. 2020): the lowest loss over D per N, the lowest loss over N per D, and
the lower envelope of loss over compute. Each is fitted in log space, LSE form
log L = LSE(c - alpha log X, e) with c = alpha log X_c, e = log E, Huber objective, from a grid
of starts (``optim.fit_lse``), with a bootstrap over the frontier's points. On the compute
frontier, N_opt = k_N C^a and D_opt = k_D C^b are fitted as lines (``allocation``).

At a target (N, D) each law predicts the loss on its own frontier: loss_N = L(N), the loss of
an N-parameter model when data is not what limits it (in a sweep: at the most data the sweep
gave that size); loss_D = L(D), the same for D tokens when the model size is not the limit;
loss_C = L(C) at C = 6 N D, the loss of the compute-efficient model for that budget. A model of N
parameters trained on D tokens does no better than the larger of loss_N and loss_D.
"""
from __future__ import annotations

import itertools

import numpy as np

from llmtrain.scaling.bootstrap import compute_optimal, estimates, predictions, resample_counts
from llmtrain.scaling.laws import allocation
from llmtrain.scaling.optim import HUBER_DELTA, fit_lse, lse_predict, refit_lse
from llmtrain.scaling.points import FitError, Points, group_close
from llmtrain.scaling.results import BootstrapInfo, Estimate, KaplanFit, KaplanLaw

NEED = 4  # frontier points per law


def grid() -> np.ndarray:
    """Starts for log L = LSE(c - alpha x, e) as rows [c, e, alpha]: c in {0, 5, ..., 25},
    e in {-1, -0.5, ..., 1}, alpha in {0, 0.25, ..., 2} (the Chinchilla grid's one-term analogue)."""
    c = np.arange(0, 26, 5.0)
    ex = np.arange(-1, 1.01, 0.5)
    al = np.arange(0, 2.01, 0.25)
    return np.array([(ci, e, a) for ci, e, a in itertools.product(c, ex, al)])


def frontier_min(x: np.ndarray, L: np.ndarray, tol_dex: float = 0.01) -> np.ndarray:
    """Indices of the lowest loss per value of x, values within tol_dex (log10) counted equal."""
    g = group_close(x, tol_dex)
    return np.array([np.flatnonzero(g == k)[np.argmin(L[g == k])] for k in np.unique(g)])


def lower_envelope(C: np.ndarray, L: np.ndarray) -> np.ndarray:
    """Indices of the points no cheaper-or-equal point beats: the lower envelope of L over C."""
    order = np.lexsort((L, C))
    keep, best = [], np.inf
    for i in order:
        if L[i] < best:
            keep.append(i)
            best = L[i]
    return np.array(keep)


def params(theta) -> dict:
    """E, x_c, alpha from rows [c, e, alpha] (vectorised over leading axes)."""
    th = np.asarray(theta, float)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        return {"E": np.exp(th[..., 1]), "x_c": np.exp(th[..., 0] / th[..., 2]), "alpha": th[..., 2]}


def loss(theta, x):
    """L(x) = E + (x_c / x)^alpha for one theta (3,) or many (B, 3)."""
    th = np.asarray(theta, float)
    with np.errstate(over="ignore"):
        return np.exp(np.logaddexp(th[..., 0] - th[..., 2] * np.log(x), th[..., 1]))


def _frontier_law(name: str, x: np.ndarray, idx: np.ndarray, L: np.ndarray, how: str, n_boot: int, seed: int,
                  level: float, delta: float = HUBER_DELTA, boot_starts: int = 4):
    """One law on its frontier: (KaplanLaw, {E, x_c, alpha} estimates, replicates' thetas or None)."""
    X = np.log(x[idx])[:, None]
    y = np.log(L[idx])
    ms = fit_lse(X, y, grid(), delta)
    thetas = None
    if n_boot:
        thetas = refit_lse(X, y, ms, resample_counts(len(y), n_boot, seed), n_starts=boot_starts, delta=delta)[0]
    law = KaplanLaw(name=name, points=how, n_points=int(len(idx)), objective_value=ms.f,
                    residuals_log=(lse_predict(ms.theta, X) - y).tolist(), theta=ms.theta, point_indices=idx.tolist())
    return law, estimates(params(ms.theta), None if thetas is None else params(thetas), level), thetas


def fit(pts: Points, n_boot: int = 0, seed: int = 0, target_flops: float | None = None, targets=(),
        level: float = 0.95, tol_dex: float = 0.01) -> KaplanFit:
    """Fit L(N), L(D), L(C) on their frontiers (each needs 4 points), and a, b on the compute
    frontier; with target_flops, the compute-optimal N and D there; targets: [(N, D), ...] to
    predict each law's loss at (see the module docstring)."""
    sets = {
        "N": (pts.N, frontier_min(pts.N, pts.L, tol_dex), "lowest loss over D per N (converged frontier)"),
        "D": (pts.D, frontier_min(pts.D, pts.L, tol_dex), "lowest loss over N per D"),
        "C": (pts.C, lower_envelope(pts.C, pts.L), "lower envelope of loss over compute"),
    }
    laws, skipped, params_, point, reps = {}, {}, {}, {}, {}
    for name, (x, idx, how) in sets.items():
        if len(idx) < NEED:
            skipped[name] = f"{len(idx)} frontier point(s) ({how}); L({name}) needs at least {NEED}"
            continue
        laws[name], p, reps[name] = _frontier_law(name, x, idx, pts.L, how, n_boot, seed, level)
        point[name] = laws[name].theta
        params_[f"E_{name}"] = p["E"]
        params_[f"{name}_c"] = p["x_c"]
        params_[f"alpha_{name}"] = p["alpha"]
    if not laws:
        raise FitError("kaplan needs at least 4 distinct values of N, D or C on a frontier; "
                       + "; ".join(skipped.values()))
    res = KaplanFit(parameters=params_, laws=laws, laws_skipped=skipped, fit={
        "objective": "sum of Huber losses (delta 1e-3) of log-loss residuals, LSE form", "n_starts": len(grid()),
        "grid": "log(x_c)*alpha in {0, 5, ..., 25}, log E in {-1, -0.5, ..., 1}, alpha in {0, 0.25, ..., 2}",
        "optimizer": "batched L-BFGS from every start, best end points polished with scipy L-BFGS-B"})
    env = sets["C"][1]
    distinct = lambda v: len(np.unique(np.round(np.log10(v[env]), 6)))  # noqa: E731
    if len(env) >= 3 and distinct(pts.C) >= 3 and distinct(pts.N) >= 2 and distinct(pts.D) >= 2:
        _allocation(res, pts, env, n_boot, seed, target_flops, level)
    if n_boot:
        res.bootstrap = BootstrapInfo(n_boot, seed, level, "frontier points with replacement")

    def quantities(th, N, D):
        at = {"N": N, "D": D, "C": 6 * N * D}
        return {f"loss_{k}": loss(th[k], at[k]) for k in laws}

    res.predictions = predictions([(N, D, "given") for N, D in targets], quantities, point,
                                  reps if n_boot else None, level)
    return res


def _allocation(res: KaplanFit, pts: Points, env: np.ndarray, n_boot: int, seed: int, target_flops, level) -> None:
    """Kaplan et al. (Fig. 14): the model sizes on the compute frontier, N_opt = k_N C^a, and their
    token counts, D_opt = k_D C^b, by least squares in log-log; adds a, b (and the compute-optimal
    model) to ``res``."""
    lC, lN, lD = np.log(pts.C[env]), np.log(pts.N[env]), np.log(pts.D[env])
    a, kN, se_a, se_kN = allocation.linfit(lC, lN)
    b, kD, se_b, se_kD = allocation.linfit(lC, lD)
    point = np.array([a, kN, b, kD])
    boot = None
    if n_boot:
        boot = allocation.bootstrap_lines(lC, lN, lD, n_boot, seed)
        res.parameters.update(estimates({"a": a, "b": b}, {"a": boot[:, 0], "b": boot[:, 2]}, level))
    else:
        res.parameters["a"] = Estimate(float(a), se=float(se_a))
        res.parameters["b"] = Estimate(float(b), se=float(se_b))
    res.a_b_note = ("a, b: log-log least squares of N and D against C over the compute frontier's points "
                    "(Kaplan et al. Fig. 14); a + b need not be 1 when C is not exactly 6ND")
    if target_flops:
        res.compute_optimal = compute_optimal(target_flops, "power laws of N and D along the compute frontier",
                                              allocation.optimum, point, boot, level)
