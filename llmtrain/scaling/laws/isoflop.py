"""Approach 2 of Hoffmann et al. (2022): IsoFLOP profiles.

Points are grouped into compute budgets (``points.group_close``); per budget, the loss-minimising
N comes from a parabola in log10 N fitted near the minimum; then N_opt = k_N C^a and
D_opt = k_D C^b (D_opt = C / (6 N_opt) per budget) are fitted as lines in log-log
(``allocation``). Intervals: without a bootstrap, the regression's t-intervals; with one, the
budgets' minima resampled (pairs bootstrap).

Approach 2 predicts where the optimum lies, not a loss: at a target (N, D) it reports the
compute-optimal N_opt, D_opt and tokens per parameter for the target's compute C = 6 N D, and
N_over_N_opt, how far the target's size is from that optimum (1: compute-optimal; above 1: a
larger model on fewer tokens than optimal).
"""
from __future__ import annotations

import math

import numpy as np

from llmtrain.scaling.bootstrap import compute_optimal, estimates
from llmtrain.scaling.laws import allocation
from llmtrain.scaling.points import FitError, Points, group_close
from llmtrain.scaling.results import BootstrapInfo, Budget, ComputeOptimal, Estimate, IsoflopFit, Prediction

NEED = 3  # budgets
RULE = "power-law fits of N_opt(C) and D_opt(C)"


def _parabola(x, y):
    """Least-squares y = p0 + p1 x + p2 x^2; returns coefficients (p2, p1, p0) for np.polyval."""
    return np.polyfit(x, y, 2)


def isoflop_minimum(logN: np.ndarray, L: np.ndarray, window_dex: float = 0.5, min_points: int = 3) -> dict:
    """Loss-minimising N of one compute budget by a parabola in log N fitted near the minimum.

    A parabola only describes loss vs log N near its minimum: on a wide or off-centre grid of N
    the far side is steep (too-small models) or flat (too-few tokens) and a parabola through all
    points puts its vertex off the true minimum. So: fit all points, then repeatedly refit using
    only the points within +-window_dex (log10) of the current vertex (never fewer than the
    min_points nearest to it) until the set stops changing. The budget is rejected when the
    lowest-loss point is at an end of the grid (minimum not bracketed), or the fit is not convex.
    Returns {'ok', 'reason', 'logN_opt', 'L_opt', 'coef', 'used'}.
    """
    x = np.asarray(logN, float) / math.log(10)  # log10 N
    L = np.asarray(L, float)
    n = len(x)
    if n < min_points:
        return {"ok": False, "reason": f"{n} point(s); a budget needs at least {min_points}"}
    if len(np.unique(x)) < 3:
        return {"ok": False, "reason": "fewer than 3 distinct model sizes"}
    i_min = int(np.argmin(L))
    if x[i_min] <= x.min() or x[i_min] >= x.max():
        return {"ok": False, "reason": "lowest loss at the edge of the N grid: minimum not bracketed"}
    used = np.ones(n, dtype=bool)
    center = x[i_min]
    for _ in range(20):
        dist = np.abs(x - center)
        new = dist <= window_dex
        if new.sum() < min_points:
            new = np.zeros(n, dtype=bool)
            new[np.argsort(dist)[:min_points]] = True
        if len(np.unique(x[new])) < 3:
            nearest = np.argsort(dist)
            new = np.zeros(n, dtype=bool)
            for j in nearest:
                new[j] = True
                if len(np.unique(x[new])) >= 3:
                    break
        coef = _parabola(x[new], L[new])
        if coef[0] <= 0:
            return {"ok": False, "reason": "parabola near the minimum is not convex"}
        v = -coef[1] / (2 * coef[0])
        if np.array_equal(new, used) and abs(v - center) < 1e-9:
            break
        used, center = new, v
    if not (x[used].min() <= center <= x[used].max()):
        return {"ok": False, "reason": "fitted minimum outside the fitted points"}
    return {"ok": True, "reason": None, "logN_opt": center * math.log(10), "L_opt": float(np.polyval(coef, center)),
            "coef": coef.tolist(), "used": used}


def _budgets(pts: Points, tol_dex: float, window_dex: float) -> tuple[list[Budget], list[dict]]:
    groups = group_close(pts.C, tol_dex)
    budgets, dropped = [], []
    for gi in np.unique(groups):
        sel = np.flatnonzero(groups == gi)
        Cg = float(np.exp(np.mean(np.log(pts.C[sel]))))
        r = isoflop_minimum(np.log(pts.N[sel]), pts.L[sel], window_dex)
        if not r["ok"]:
            dropped.append({"flops": Cg, "n_points": int(sel.size), "reason": r["reason"]})
            continue
        Nopt = math.exp(r["logN_opt"])
        budgets.append(Budget(flops=Cg, n_points=int(sel.size), N_opt=Nopt, D_opt=Cg / (6 * Nopt), loss_opt=r["L_opt"],
                              n_used=int(r["used"].sum()), coef_log10N=r["coef"], point_indices=sel.tolist(),
                              used_indices=sel[r["used"]].tolist()))
    if len(budgets) < NEED:
        why = "; ".join(f"C={d['flops']:.3g}: {d['reason']}" for d in dropped)
        raise FitError(f"approach 2 (isoflop) needs at least {NEED} compute budgets with >= 3 points each and a "
                       f"bracketed minimum; got {len(budgets)}" + (f" (rejected: {why})" if why else ""))
    return budgets, dropped


def fit(pts: Points, n_boot: int = 0, seed: int = 0, target_flops: float | None = None, targets=(),
        level: float = 0.95, tol_dex: float = 0.05, window_dex: float = 0.5) -> IsoflopFit:
    """Fit approach 2; with target_flops, the compute-optimal N and D for that budget; targets:
    [(N, D), ...], the optimum at each one's compute (see the module docstring)."""
    from scipy import stats

    budgets, dropped = _budgets(pts, tol_dex, window_dex)
    lC = np.log(np.array([b.flops for b in budgets]))
    lN = np.log(np.array([b.N_opt for b in budgets]))
    lD = np.log(np.array([b.D_opt for b in budgets]))
    a, logkN, se_a, se_kN = allocation.linfit(lC, lN)
    b, logkD, se_b, se_kD = allocation.linfit(lC, lD)
    point = np.array([a, logkN, b, logkD])
    dof = len(lC) - 2
    tq = stats.t.ppf(0.5 + level / 2, dof) if dof > 0 else np.nan

    def reg(v, se, transform=lambda z: z):
        return Estimate(float(transform(v)), float(transform(v - tq * se)), float(transform(v + tq * se)),
                        float(se) if transform is not np.exp else None)

    def reg_mean(lx, ly, c1, c0, lt):
        """The regression line's mean at log C = lt, with its t-interval."""
        Xd = np.column_stack([np.ones_like(lx), lx])
        res = ly - Xd @ np.array([c0, c1])
        s2 = float(res @ res / dof) if dof > 0 else np.nan
        v = np.array([1.0, lt])
        se = math.sqrt(s2 * v @ np.linalg.inv(Xd.T @ Xd) @ v) if dof > 0 else np.nan
        mu = c0 + c1 * lt
        return Estimate(math.exp(mu), math.exp(mu - tq * se), math.exp(mu + tq * se))

    fit_notes = {"grouping": f"budgets: values within +-{tol_dex} dex of the densest remaining value, repeatedly",
                 "minimum": f"parabola in log10 N refitted on the points within +-{window_dex} dex of its vertex "
                            "(>= 3 points) until stable; budgets whose lowest loss is at an edge of the N grid are "
                            "dropped", "interval": "OLS t-interval on the log-log regression"}
    boot = info = regression = None
    if n_boot:
        boot = allocation.bootstrap_lines(lC, lN, lD, n_boot, seed)
        info = BootstrapInfo(n_boot, seed, level, "compute budgets (their fitted minima) with replacement",
                             n_valid=len(boot))
        fit_notes["interval"] = "bootstrap percentile over budgets; regression t-intervals in 'regression'"
        nat = {"a": point[0], "b": point[2], "k_N": math.exp(logkN), "k_D": math.exp(logkD)}
        par = estimates(nat, {"a": boot[:, 0], "b": boot[:, 2], "k_N": np.exp(boot[:, 1]),
                              "k_D": np.exp(boot[:, 3])}, level)
        regression = {"a": reg(a, se_a), "b": reg(b, se_b)}
    else:
        par = {"a": reg(a, se_a), "b": reg(b, se_b), "k_N": reg(logkN, se_kN, np.exp), "k_D": reg(logkD, se_kD, np.exp)}

    def optimum_at(C) -> ComputeOptimal:
        """The optimum at compute C: bootstrap percentiles, or the regression mean's t-intervals."""
        if boot is not None:
            return compute_optimal(C, RULE, allocation.optimum, point, boot, level)
        lt = math.log(C)
        N, D = math.exp(logkN + a * lt), math.exp(logkD + b * lt)
        return ComputeOptimal(float(C), RULE, {"N": reg_mean(lC, lN, a, logkN, lt), "D": reg_mean(lC, lD, b, logkD, lt),
                                               "tokens_per_param": Estimate(D / N)})

    co = optimum_at(target_flops) if target_flops else None
    preds = [_prediction(float(N), float(D), optimum_at(6 * float(N) * float(D)), boot, point, level)
             for N, D in targets]
    return IsoflopFit(parameters=par, budgets=budgets, budgets_dropped=dropped, fit=fit_notes, bootstrap=info,
                      regression=regression, compute_optimal=co, predictions=preds)


def _prediction(N: float, D: float, opt: ComputeOptimal, boot, point, level: float) -> Prediction:
    """At (N, D): the optimum at its compute C = 6 N D, and N / N_opt."""
    C = 6 * N * D
    if boot is not None:
        ratio = Estimate.from_samples(N / allocation.optimum(point, C)["N"], N / allocation.optimum(boot, C)["N"],
                                      level)
    else:
        lo, hi = opt["N"].ci_high, opt["N"].ci_low
        ratio = Estimate(N / opt["N"].value, None if lo is None else N / lo, None if hi is None else N / hi)
    return Prediction(N, D, C, "given", {"N_opt": opt["N"], "D_opt": opt["D"],
                                         "tokens_per_param": opt["tokens_per_param"], "N_over_N_opt": ratio})
