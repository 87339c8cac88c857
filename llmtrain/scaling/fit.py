"""Scaling-law fits: Chinchilla approach 3 (parametric L(N, D)), approach 2 (IsoFLOP minima) and
Kaplan-style single-variable power laws with an irreducible term.

All parametric laws here are sums of power terms plus a constant, fitted in log space in the
log-sum-exp form of Hoffmann et al. (2022), App. D.2:

    log L = LSE(c_1 - alpha_1 x_1, ..., c_k - alpha_k x_k, e),   x_j = log(feature j)

(Chinchilla: k = 2, x = (log N, log D), c = (log A, log B), e = log E. Kaplan: k = 1.) The
objective is the SUM over points of the Huber loss (delta = 1e-3) of predicted minus observed
log loss, minimised from every point of a grid of starts, the best kept.

Speed: instead of one scipy optimiser per start, ``batched_lbfgs`` runs L-BFGS on all starts at
once as arrays (S starts x n points), each start with its own history, step length and stopping
test, and only the starts still moving are evaluated. The objective's gradient is analytic. The
problem is unconstrained, so L-BFGS-B (Hoffmann's and Epoch's choice) is L-BFGS here; the best
few results are then polished with scipy's L-BFGS-B (analytic gradient, tight tolerances), so the
reported optimum is an L-BFGS-B optimum. Bootstrap refits use the same batched optimiser with
resampling expressed as per-point weights (multinomial counts), all replicates at once.
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize

HUBER_DELTA = 1e-3


class FitError(ValueError):
    """Input that cannot be fitted (too few points, nothing left after dropping)."""


# --------------------------------------------------------------------------------------------
# the log-sum-exp power-law objective, batched over starts


def lse_objective(theta: np.ndarray, X: np.ndarray, y: np.ndarray, W: np.ndarray | None = None,
                  delta: float = HUBER_DELTA, grad: bool = True):
    """Sum of Huber losses of the LSE model for S parameter vectors at once.

    theta: (S, 2k+1) rows [c_1..c_k, e, alpha_1..alpha_k]; X: (n, k) log features; y: (n,) log
    losses; W: (S, n) per-point weights (bootstrap counts) or None for all ones.
    Returns f (S,) and, with grad, g (S, 2k+1).
    """
    k = X.shape[1]
    c, e, al = theta[:, :k], theta[:, k], theta[:, k + 1:]
    T = [c[:, j, None] - al[:, j, None] * X[None, :, j] for j in range(k)]
    m = np.maximum(T[0], e[:, None])
    for t in T[1:]:
        np.maximum(m, t, out=m)
    ex = []
    for t in T:  # in place: T[j] becomes exp(T[j] - m)
        t -= m
        np.exp(t, out=t)
        ex.append(t)
    ee = np.exp(e[:, None] - m)
    s = ee
    for t in ex:
        s += t
    r = np.log(s)
    r += m
    r -= y[None, :]
    psi = np.clip(r, -delta, delta)
    # Huber: r^2/2 inside [-delta, delta], delta(|r| - delta/2) outside, = psi (r - psi/2)
    r -= 0.5 * psi
    r *= psi
    if W is not None:
        r *= W
    ones = np.ones(r.shape[1])
    f = r @ ones
    if not grad:
        return f
    if W is not None:
        psi *= W
    # the LSE weights sum to one, so d/de = sum(W psi) - sum_j d/dc_j
    g = np.empty_like(theta)
    g[:, k] = psi @ ones
    u = psi
    u /= s
    for j in range(k):
        uj = ex[j]
        uj *= u
        g[:, j] = uj @ ones
        g[:, k + 1 + j] = -(uj @ X[:, j])
        g[:, k] -= g[:, j]
    return f, g


def lse_predict(theta: np.ndarray, X: np.ndarray) -> np.ndarray:
    """log L predicted by one parameter vector theta (2k+1,) at log features X (n, k)."""
    k = X.shape[1]
    terms = [theta[j] - theta[k + 1 + j] * X[:, j] for j in range(k)] + [np.full(len(X), theta[k])]
    return np.logaddexp.reduce(np.stack(terms), axis=0)


# --------------------------------------------------------------------------------------------
# batched L-BFGS


@dataclass
class BatchResult:
    x: np.ndarray  # (S, P) end points
    f: np.ndarray  # (S,) objective at the end points
    iters: np.ndarray  # (S,) iterations each start took
    converged: np.ndarray  # (S,) bool: stopped by a tolerance (not the iteration cap)
    n_evals: int = 0  # objective evaluations, summed over starts


def batched_lbfgs(fun, x0: np.ndarray, m: int = 10, maxiter: int = 1000, ftol: float = 2.220446049250313e-09,
                  gtol: float = 1e-5, max_ls: int = 30) -> BatchResult:
    """Minimise S independent problems with L-BFGS, vectorised across problems.

    fun(idx, x) -> (f, g) evaluates the problems named by index array idx at rows x. Each
    problem keeps its own m-pair history, takes the step t = 1 along the L-BFGS direction and
    halves it until the Armijo condition holds, and stops when max|g| <= gtol, when the
    decrease (f_old - f_new) <= ftol * max(|f_old|, |f_new|, 1) (scipy's test), when no step
    decreases f, or after maxiter iterations.
    """
    x = np.array(x0, dtype=float)
    S, P = x.shape
    idx_all = np.arange(S)
    f, g = fun(idx_all, x)
    n_evals = S
    Sh = np.zeros((m, S, P))
    Yh = np.zeros((m, S, P))
    rho = np.zeros((m, S))
    gamma = np.zeros(S)  # initial inverse-Hessian scale; 0 means "no pair yet"
    iters = np.zeros(S, dtype=int)
    converged = np.abs(g).max(1) <= gtol
    active = ~converged & np.isfinite(f)
    for it in range(maxiter):
        ia = np.flatnonzero(active)
        if ia.size == 0:
            break
        slot = it % m
        q = g[ia].copy()
        alphas = np.zeros((m, ia.size))
        order = [(slot - 1 - i) % m for i in range(m)]  # newest first
        for j in order:
            a_ = rho[j, ia] * np.einsum("sp,sp->s", Sh[j, ia], q)
            alphas[j] = a_
            q -= a_[:, None] * Yh[j, ia]
        gam = gamma[ia]
        first = gam == 0
        # first iteration: a steepest-descent step of length at most 1 in the max norm
        gam = np.where(first, 1.0 / np.maximum(np.abs(g[ia]).max(1), 1.0), gam)
        r = q * gam[:, None]
        for j in reversed(order):
            b_ = rho[j, ia] * np.einsum("sp,sp->s", Yh[j, ia], r)
            r += (alphas[j] - b_)[:, None] * Sh[j, ia]
        d = -r
        slope = np.einsum("sp,sp->s", g[ia], d)
        bad = ~(slope < 0)  # not a descent direction: restart from steepest descent
        if bad.any():
            d[bad] = -g[ia][bad] / np.maximum(np.abs(g[ia][bad]).max(1), 1.0)[:, None]
            slope[bad] = np.einsum("sp,sp->s", g[ia][bad], d[bad])
            rho[:, ia[bad]] = 0.0
            gamma[ia[bad]] = 0.0
        # backtracking line search (Armijo, c1 = 1e-4), vectorised over the active problems
        t = np.ones(ia.size)
        done = np.zeros(ia.size, dtype=bool)
        fn = np.empty(ia.size)
        gn = np.empty((ia.size, P))
        for _ in range(max_ls):
            todo = np.flatnonzero(~done)
            if todo.size == 0:
                break
            xt = x[ia[todo]] + t[todo, None] * d[todo]
            ft, gt = fun(ia[todo], xt)
            n_evals += todo.size
            ok = np.isfinite(ft) & (ft <= f[ia[todo]] + 1e-4 * t[todo] * slope[todo])
            acc = todo[ok]
            fn[acc], gn[acc] = ft[ok], gt[ok]
            done[acc] = True
            t[todo[~ok]] *= 0.5
        # problems where no step was accepted have stalled: stop them where they are
        stalled = ia[~done]
        active[stalled] = False
        converged[stalled] = True
        ia_ok, sel = ia[done], np.flatnonzero(done)
        s_vec = t[sel, None] * d[sel]
        y_vec = gn[sel] - g[ia_ok]
        sy = np.einsum("sp,sp->s", s_vec, y_vec)
        yy = np.einsum("sp,sp->s", y_vec, y_vec)
        ss = np.einsum("sp,sp->s", s_vec, s_vec)
        good = sy > 1e-12 * np.maximum(yy, 1e-300) ** 0.5 * np.maximum(ss, 1e-300) ** 0.5
        Sh[slot, ia_ok] = np.where(good[:, None], s_vec, 0.0)
        Yh[slot, ia_ok] = np.where(good[:, None], y_vec, 0.0)
        rho[slot, ia_ok] = np.where(good, 1.0 / np.where(good, sy, 1.0), 0.0)
        gamma[ia_ok] = np.where(good, sy / np.where(good, yy, 1.0), gamma[ia_ok])
        f_old = f[ia_ok]
        x[ia_ok] += s_vec
        f[ia_ok], g[ia_ok] = fn[sel], gn[sel]
        iters[ia_ok] += 1
        stop = ((f_old - fn[sel]) <= ftol * np.maximum(np.maximum(np.abs(f_old), np.abs(fn[sel])), 1.0)) | (
            np.abs(gn[sel]).max(1) <= gtol)
        converged[ia_ok[stop]] = True
        active[ia_ok[stop]] = False
    return BatchResult(x=x, f=f, iters=iters, converged=converged, n_evals=n_evals)


def polish(theta: np.ndarray, X: np.ndarray, y: np.ndarray, w: np.ndarray | None = None,
           delta: float = HUBER_DELTA) -> tuple[np.ndarray, float]:
    """scipy L-BFGS-B from theta with the analytic gradient and tight tolerances."""
    W = None if w is None else w[None, :]

    def fg(t):
        f, g = lse_objective(t[None, :], X, y, W, delta)
        return float(f[0]), g[0]

    res = minimize(fg, theta, jac=True, method="L-BFGS-B", options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 5000})
    f0 = fg(theta)[0]
    return (res.x, float(res.fun)) if res.fun <= f0 else (np.asarray(theta, float), f0)


# --------------------------------------------------------------------------------------------
# grids and a multi-start fit of an LSE power law


def chinchilla_grid() -> np.ndarray:
    """Hoffmann's grid as rows [a, b, e, alpha, beta]: alpha, beta in {0, 0.5, ..., 2}, e in
    {-1, -0.5, ..., 1}, a, b in {0, 5, ..., 25}: 5 * 5 * 5 * 6 * 6 = 4,500 starts."""
    ab = np.arange(0, 26, 5.0)
    ex = np.arange(-1, 1.01, 0.5)
    al = np.arange(0, 2.01, 0.5)
    return np.array([(a, b, e, alpha, beta) for alpha, beta, e, a, b in itertools.product(al, al, ex, ab, ab)])


def kaplan_grid() -> np.ndarray:
    """Starts for log L = LSE(c - alpha x, e) as rows [c, e, alpha]: c in {0, 5, ..., 25},
    e in {-1, -0.5, ..., 1}, alpha in {0, 0.25, ..., 2} (the Chinchilla grid's one-term analogue)."""
    c = np.arange(0, 26, 5.0)
    ex = np.arange(-1, 1.01, 0.5)
    al = np.arange(0, 2.01, 0.25)
    return np.array([(ci, e, a) for ci, e, a in itertools.product(c, ex, al)])


@dataclass
class MultiStartFit:
    theta: np.ndarray  # best parameters
    f: float  # best objective
    ends: np.ndarray  # (S, P) every start's end point
    end_f: np.ndarray  # (S,) every start's objective
    starts: np.ndarray  # (S, P)
    time_s: float
    n_evals: int
    n_converged: int


def fit_lse(X: np.ndarray, y: np.ndarray, starts: np.ndarray, delta: float = HUBER_DELTA,
            n_polish: int = 5) -> MultiStartFit:
    """Minimise the Huber objective from every start; polish the n_polish best distinct end
    points with scipy L-BFGS-B; keep the best."""
    t0 = time.perf_counter()

    def fun(idx, th):
        return lse_objective(th, X, y, None, delta)

    res = batched_lbfgs(fun, starts)
    order = np.argsort(np.where(np.isfinite(res.f), res.f, np.inf))
    best_theta, best_f = res.x[order[0]], res.f[order[0]]
    seen = []
    for i in order:
        if len(seen) >= n_polish or not np.isfinite(res.f[i]):
            break
        if any(np.allclose(res.x[i], s, rtol=1e-4, atol=1e-4) for s in seen):
            continue
        seen.append(res.x[i])
        th, fv = polish(res.x[i], X, y, None, delta)
        if fv < best_f:
            best_theta, best_f = th, fv
    return MultiStartFit(theta=np.asarray(best_theta), f=float(best_f), ends=res.x, end_f=res.f, starts=starts,
                         time_s=time.perf_counter() - t0, n_evals=res.n_evals, n_converged=int(res.converged.sum()))


def bootstrap_starts(fit: MultiStartFit, n_starts: int = 4) -> np.ndarray:
    """Starts for a bootstrap refit: the full fit's optimum, then the grid points whose runs
    ended at its n_starts - 1 best distinct local optima (grid points rather than their end
    points, so a refit may still fall into a different basin)."""
    ends = [fit.theta]
    for i in np.argsort(fit.end_f):
        if len(ends) > n_starts - 1:
            break
        if np.isfinite(fit.end_f[i]) and not any(np.allclose(fit.ends[i], e, rtol=1e-3, atol=1e-3) for e in ends):
            ends.append(fit.ends[i])
    return np.array([fit.theta] + [fit.starts[np.flatnonzero((fit.ends == e).all(1))[0]] for e in ends[1:]])


def bootstrap_lse(X: np.ndarray, y: np.ndarray, fit: MultiStartFit, n_boot: int, seed: int,
                  n_starts: int = 4, delta: float = HUBER_DELTA, chunk: int = 1000,
                  weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Refit on n_boot resamples (rows drawn with replacement, as multinomial weights; or the
    given weights (n_boot, n), so that a caller can refit other quantities on the same resamples).

    Each refit starts from the full fit's optimum and from the grid points whose runs ended best
    in the full fit (the n_starts - 1 best, one per distinct end point). Returns (thetas (B, P),
    objective (B,)): each replicate's best start.
    """
    n = len(y)
    rng = np.random.default_rng(seed)
    W_all = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float) if weights is None else weights
    st = bootstrap_starts(fit, n_starts)
    K = len(st)
    thetas = np.empty((n_boot, st.shape[1]))
    fs = np.empty(n_boot)
    for b0 in range(0, n_boot, chunk):
        b1 = min(n_boot, b0 + chunk)
        Wb = np.repeat(W_all[b0:b1], K, axis=0)  # (B*K, n)
        x0 = np.tile(st, (b1 - b0, 1))

        def fun(idx, th, Wb=Wb):
            return lse_objective(th, X, y, Wb[idx], delta)

        res = batched_lbfgs(fun, x0)
        fr = np.where(np.isfinite(res.f), res.f, np.inf).reshape(b1 - b0, K)
        best = fr.argmin(1)
        thetas[b0:b1] = res.x.reshape(b1 - b0, K, -1)[np.arange(b1 - b0), best]
        fs[b0:b1] = fr[np.arange(b1 - b0), best]
    return thetas, fs


# --------------------------------------------------------------------------------------------
# summaries of estimates


def interval(value: float, samples: np.ndarray | None, level: float) -> dict:
    """{'value', 'ci_low', 'ci_high', 'se'}: percentile interval and standard deviation of the
    bootstrap samples (None without a bootstrap)."""
    out = {"value": float(value), "ci_low": None, "ci_high": None, "se": None}
    if samples is not None:
        s = np.asarray(samples, float)
        s = s[np.isfinite(s)]
        if s.size >= 2:
            lo, hi = np.percentile(s, [50 * (1 - level), 50 * (1 + level)])
            out.update(ci_low=float(lo), ci_high=float(hi), se=float(s.std(ddof=1)))
    return out


def _finite(x):
    x = float(x)
    return x if math.isfinite(x) else None


# --------------------------------------------------------------------------------------------
# approach 3


def chinchilla_params(theta: np.ndarray) -> dict:
    """Natural parameters from rows [a, b, e, alpha, beta] (vectorised over leading axes)."""
    theta = np.asarray(theta, float)
    a_, b_, e, al, be = (theta[..., i] for i in range(5))
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        return {"E": np.exp(e), "A": np.exp(a_), "B": np.exp(b_), "alpha": al, "beta": be,
                "a": be / (al + be), "b": al / (al + be)}


def chinchilla_optimal(theta: np.ndarray, C) -> dict:
    """Compute-optimal N, D for budget C = 6 N D under L = E + A/N^alpha + B/D^beta:
    N_opt = G (C/6)^a, D_opt = (C/6)/N_opt, G = (alpha A / (beta B))^(1/(alpha+beta))."""
    p = chinchilla_params(theta)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        # in logs: log G = (log(alpha) + log A - log(beta) - log B) / (alpha + beta)
        theta = np.asarray(theta, float)
        logG = (np.log(p["alpha"]) + theta[..., 0] - np.log(p["beta"]) - theta[..., 1]) / (p["alpha"] + p["beta"])
        logN = logG + p["a"] * np.log(np.asarray(C, float) / 6.0)
        logD = np.log(np.asarray(C, float) / 6.0) - logN
        N, D = np.exp(logN), np.exp(logD)
        L = p["E"] + p["A"] / N ** p["alpha"] + p["B"] / D ** p["beta"]
    return {"N": N, "D": D, "tokens_per_param": D / N, "loss": L}


@dataclass
class Points:
    """The (N, D, C, L) points a fit uses, with labels for messages and plots."""
    N: np.ndarray
    D: np.ndarray
    C: np.ndarray
    L: np.ndarray
    labels: list = field(default_factory=list)
    M: np.ndarray | None = None  # a downstream metric per point (the task method), or None

    def __len__(self):
        return len(self.L)


def fit_chinchilla(pts: Points, n_boot: int = 0, seed: int = 0, target_flops: float | None = None,
                   level: float = 0.95, delta: float = HUBER_DELTA, boot_starts: int = 4) -> dict:
    need = 6
    if len(pts) < need:
        raise FitError(f"approach 3 (chinchilla) fits 5 parameters and needs at least {need} points; got {len(pts)}")
    X = np.column_stack([np.log(pts.N), np.log(pts.D)])
    y = np.log(pts.L)
    fit = fit_lse(X, y, chinchilla_grid(), delta)
    est = chinchilla_params(fit.theta)
    boot = None
    t_boot = 0.0
    if n_boot:
        t0 = time.perf_counter()
        thetas, _ = bootstrap_lse(X, y, fit, n_boot, seed, n_starts=boot_starts, delta=delta)
        t_boot = time.perf_counter() - t0
        boot = chinchilla_params(thetas)
    params = {k: interval(v, None if boot is None else boot[k], level) for k, v in est.items()}
    out = {
        "law": "L = E + A / N^alpha + B / D^beta",
        "parameters": params,
        "a": float(est["a"]),
        "b": float(est["b"]),
        "log_parameters": {"a_logA": float(fit.theta[0]), "b_logB": float(fit.theta[1]), "e_logE": float(fit.theta[2])},
        "fit": {
            "objective": "sum of Huber losses of log-loss residuals (log-sum-exp form, Hoffmann et al. App. D.2)",
            "huber_delta": delta, "objective_value": fit.f, "n_starts": len(fit.starts),
            "n_converged": fit.n_converged,
            "optimizer": "batched L-BFGS from every grid start (vectorised), best 5 distinct end points polished "
                         "with scipy L-BFGS-B (analytic gradient)",
            "grid": "alpha, beta in {0, 0.5, ..., 2}; e in {-1, -0.5, ..., 1}; a, b in {0, 5, ..., 25}",
            "time_s": round(fit.time_s, 3),
        },
        "residuals_log": (lse_predict(fit.theta, X) - y).tolist(),
        "_theta": fit.theta,
        "_fit": fit,
    }
    if n_boot:
        out["bootstrap"] = {"n": n_boot, "seed": seed, "level": level, "resampling": "rows with replacement",
                            "starts_per_refit": f"the full fit's optimum and the grid points of its {boot_starts - 1} "
                                                "best distinct local optima", "time_s": round(t_boot, 3)}
        out["_boot_thetas"] = thetas
    if target_flops:
        opt = chinchilla_optimal(fit.theta, target_flops)
        bopt = chinchilla_optimal(thetas, target_flops) if n_boot else None
        out["compute_optimal"] = {"flops": float(target_flops), "rule": "C = 6 N D",
                                  **{k: interval(v, None if bopt is None else bopt[k], level) for k, v in opt.items()}}
    return out


# --------------------------------------------------------------------------------------------
# approach 2: IsoFLOP profiles


def group_budgets(C: np.ndarray, tol_dex: float = 0.05) -> np.ndarray:
    """Group labels for compute values (log-space bins centred on the densest values).

    Repeatedly: among the values not yet grouped, take the one with the most ungrouped values
    within +-tol_dex (log10) of it (ties: the smaller C), and make those values a group. Exact
    repeats always share a group; a dense IsoFLOP budget is not chained to its neighbours through
    scattered points in between (as splitting sorted values at gaps would).
    """
    lc = np.log10(np.asarray(C, float))
    labels = np.full(len(lc), -1)
    near = np.abs(lc[:, None] - lc[None, :]) <= tol_dex + 1e-12
    g = 0
    while (labels < 0).any():
        free = labels < 0
        counts = (near & free[None, :]).sum(1)
        counts[~free] = -1
        best = np.flatnonzero(counts == counts.max())
        c = best[np.argmin(lc[best])]
        labels[near[c] & free] = g
        g += 1
    # number groups in order of compute
    order = np.argsort([lc[labels == k].mean() for k in range(g)])
    remap = np.empty(g, dtype=int)
    remap[order] = np.arange(g)
    return remap[labels]


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


def _linfit(x, y):
    """OLS y = c0 + c1 x: (c1, c0, se1, se0)."""
    Xd = np.column_stack([np.ones_like(x), x])
    beta, *_ = np.linalg.lstsq(Xd, y, rcond=None)
    dof = len(x) - 2
    if dof > 0:
        s2 = float(((y - Xd @ beta) ** 2).sum() / dof)
        cov = s2 * np.linalg.inv(Xd.T @ Xd)
        se = np.sqrt(np.diag(cov))
    else:
        se = np.array([np.nan, np.nan])
    return beta[1], beta[0], se[1], se[0]


def fit_isoflop(pts: Points, n_boot: int = 0, seed: int = 0, target_flops: float | None = None,
                level: float = 0.95, tol_dex: float = 0.05, window_dex: float = 0.5) -> dict:
    from scipy import stats

    groups = group_budgets(pts.C, tol_dex)
    budgets, dropped = [], []
    for gi in np.unique(groups):
        sel = np.flatnonzero(groups == gi)
        Cg = float(np.exp(np.mean(np.log(pts.C[sel]))))
        r = isoflop_minimum(np.log(pts.N[sel]), pts.L[sel], window_dex)
        entry = {"flops": Cg, "n_points": int(sel.size), "index": sel}
        if not r["ok"]:
            dropped.append({"flops": Cg, "n_points": int(sel.size), "reason": r["reason"]})
            continue
        Nopt = math.exp(r["logN_opt"])
        entry.update(N_opt=Nopt, D_opt=Cg / (6 * Nopt), loss_opt=r["L_opt"], n_used=int(r["used"].sum()),
                     coef_log10N=r["coef"], used=r["used"])
        budgets.append(entry)
    need = 3
    if len(budgets) < need:
        why = "; ".join(f"C={d['flops']:.3g}: {d['reason']}" for d in dropped)
        raise FitError(f"approach 2 (isoflop) needs at least {need} compute budgets with >= 3 points each and a "
                       f"bracketed minimum; got {len(budgets)}" + (f" (rejected: {why})" if why else ""))
    lC = np.log(np.array([b["flops"] for b in budgets]))
    lN = np.log(np.array([b["N_opt"] for b in budgets]))
    lD = np.log(np.array([b["D_opt"] for b in budgets]))
    a, logkN, se_a, se_kN = _linfit(lC, lN)
    b, logkD, se_b, se_kD = _linfit(lC, lD)
    dof = len(lC) - 2
    tq = stats.t.ppf(0.5 + level / 2, dof) if dof > 0 else np.nan

    def reg(v, se, transform=lambda z: z):
        return {"value": float(transform(v)), "ci_low": _finite(transform(v - tq * se)),
                "ci_high": _finite(transform(v + tq * se)), "se": _finite(se) if transform is not np.exp else None}

    out = {
        "law": "N_opt = k_N C^a, D_opt = k_D C^b (D_opt = C / (6 N_opt) per budget)",
        "parameters": {}, "a": float(a), "b": float(b),
        "budgets": [{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in e.items()
                     if k not in ("index", "used")} for e in budgets],
        "budgets_dropped": dropped,
        "fit": {"grouping": f"budgets: values within +-{tol_dex} dex of the densest remaining value, repeatedly",
                "minimum": f"parabola in log10 N refitted on the points within +-{window_dex} dex of its vertex "
                           "(>= 3 points) until stable; budgets whose lowest loss is at an edge of the N grid are "
                           "dropped", "interval": "OLS t-interval on the log-log regression"},
        "_budgets": budgets,
    }
    boot_a = boot_b = boot_kN = boot_kD = None
    if n_boot:
        # pairs bootstrap over budgets: resample (C, N_opt) rows, refit both lines
        rng = np.random.default_rng(seed)
        Bn = []
        for _ in range(n_boot):
            i = rng.integers(0, len(lC), len(lC))
            if len(np.unique(lC[i])) < 2:
                continue
            a_i, kN_i, _, _ = _linfit(lC[i], lN[i])
            b_i, kD_i, _, _ = _linfit(lC[i], lD[i])
            Bn.append((a_i, kN_i, b_i, kD_i))
        Bn = np.array(Bn)
        boot_a, boot_kN, boot_b, boot_kD = Bn[:, 0], Bn[:, 1], Bn[:, 2], Bn[:, 3]
        out["bootstrap"] = {"n": n_boot, "n_valid": len(Bn), "seed": seed, "level": level,
                            "resampling": "compute budgets (their fitted minima) with replacement"}
        out["fit"]["interval"] = "bootstrap percentile over budgets; regression t-intervals in 'regression'"
        par = {"a": interval(a, boot_a, level), "b": interval(b, boot_b, level),
               "k_N": interval(math.exp(logkN), np.exp(boot_kN), level),
               "k_D": interval(math.exp(logkD), np.exp(boot_kD), level)}
        out["regression"] = {"a": reg(a, se_a), "b": reg(b, se_b)}
    else:
        par = {"a": reg(a, se_a), "b": reg(b, se_b), "k_N": reg(logkN, se_kN, np.exp), "k_D": reg(logkD, se_kD, np.exp)}
    out["parameters"] = par
    if target_flops:
        lt = math.log(target_flops)
        N = math.exp(logkN + a * lt)
        D = math.exp(logkD + b * lt)
        co = {"flops": float(target_flops), "rule": "power-law fits of N_opt(C) and D_opt(C)"}
        if n_boot:
            Nb = np.exp(boot_kN + boot_a * lt)
            Db = np.exp(boot_kD + boot_b * lt)
            co.update(N=interval(N, Nb, level), D=interval(D, Db, level),
                      tokens_per_param=interval(D / N, Db / Nb, level))
        else:
            # prediction interval of the regression line's mean at log C = lt
            def pred(lx, ly, c1, c0):
                Xd = np.column_stack([np.ones_like(lx), lx])
                res = ly - Xd @ np.array([c0, c1])
                s2 = float(res @ res / dof) if dof > 0 else np.nan
                v = np.array([1.0, lt])
                se = math.sqrt(s2 * v @ np.linalg.inv(Xd.T @ Xd) @ v) if dof > 0 else np.nan
                mu = c0 + c1 * lt
                return {"value": math.exp(mu), "ci_low": _finite(math.exp(mu - tq * se)),
                        "ci_high": _finite(math.exp(mu + tq * se)), "se": None}
            co.update(N=pred(lC, lN, a, logkN), D=pred(lC, lD, b, logkD),
                      tokens_per_param={"value": D / N, "ci_low": None, "ci_high": None, "se": None})
        out["compute_optimal"] = co
    return out


# --------------------------------------------------------------------------------------------
# Kaplan-style single-variable laws


def frontier_min(x: np.ndarray, L: np.ndarray, tol_dex: float = 0.01) -> np.ndarray:
    """Indices of the lowest loss per value of x, values within tol_dex (log10) counted equal."""
    g = group_budgets(x, tol_dex)
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


def fit_power_law(x: np.ndarray, L: np.ndarray, n_boot: int, seed: int, level: float, delta: float = HUBER_DELTA,
                  boot_starts: int = 4) -> dict:
    """L = E + (x_c / x)^alpha in log space, LSE form with c = alpha log x_c; Huber objective;
    multi-start; bootstrap over the points."""
    X = np.log(x)[:, None]
    y = np.log(L)
    fit = fit_lse(X, y, kaplan_grid(), delta)
    c, e, al = fit.theta

    def nat(th):
        th = np.asarray(th, float)
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            return {"E": np.exp(th[..., 1]), "x_c": np.exp(th[..., 0] / th[..., 2]), "alpha": th[..., 2]}

    est = nat(fit.theta)
    boot = None
    if n_boot:
        thetas, _ = bootstrap_lse(X, y, fit, n_boot, seed, n_starts=boot_starts, delta=delta)
        boot = nat(thetas)
    return {"params": {k: interval(v, None if boot is None else boot[k], level) for k, v in est.items()},
            "theta": fit.theta, "objective_value": fit.f, "residuals_log": (lse_predict(fit.theta, X) - y).tolist(),
            "boot": boot}


def fit_kaplan(pts: Points, n_boot: int = 0, seed: int = 0, target_flops: float | None = None,
               level: float = 0.95, tol_dex: float = 0.01) -> dict:
    need = 4
    sets = {
        "N": (pts.N, frontier_min(pts.N, pts.L, tol_dex), "lowest loss over D per N (converged frontier)"),
        "D": (pts.D, frontier_min(pts.D, pts.L, tol_dex), "lowest loss over N per D"),
        "C": (pts.C, lower_envelope(pts.C, pts.L), "lower envelope of loss over compute"),
    }
    laws, skipped, params = {}, {}, {}
    for name, (x, idx, how) in sets.items():
        if len(idx) < need:
            skipped[name] = f"{len(idx)} frontier point(s) ({how}); L({name}) needs at least {need}"
            continue
        r = fit_power_law(x[idx], pts.L[idx], n_boot, seed, level)
        laws[name] = {"law": f"L({name}) = E + ({name}_c / {name})^alpha_{name}", "points": how,
                      "n_points": int(len(idx)), "objective_value": r["objective_value"],
                      "residuals_log": r["residuals_log"], "_idx": idx, "_theta": r["theta"], "_boot": r["boot"]}
        p = r["params"]
        params[f"E_{name}"] = p["E"]
        params[f"{name}_c"] = p["x_c"]
        params[f"alpha_{name}"] = p["alpha"]
    if not laws:
        raise FitError("kaplan needs at least 4 distinct values of N, D or C on a frontier; "
                       + "; ".join(skipped.values()))
    out = {"law": "L(X) = E_X + (X_c / X)^alpha_X for X in N, D, C", "parameters": params, "laws": laws,
           "laws_skipped": skipped,
           "fit": {"objective": "sum of Huber losses (delta 1e-3) of log-loss residuals, LSE form",
                   "n_starts": len(kaplan_grid()),
                   "grid": "log(x_c)*alpha in {0, 5, ..., 25}, log E in {-1, -0.5, ..., 1}, alpha in {0, 0.25, ..., 2}",
                   "optimizer": "batched L-BFGS from every start, best end points polished with scipy L-BFGS-B"}}
    out["a"] = out["b"] = None
    env = sets["C"][1]
    distinct = lambda v: len(np.unique(np.round(np.log10(v[env]), 6)))  # noqa: E731
    if len(env) >= 3 and distinct(pts.C) >= 3 and distinct(pts.N) >= 2 and distinct(pts.D) >= 2:
        # Kaplan et al. (Fig. 14): the model sizes on the compute frontier, N_opt = k_N C^a, and
        # their token counts, D_opt = k_D C^b, by least squares in log-log
        lC, lN, lD = np.log(pts.C[env]), np.log(pts.N[env]), np.log(pts.D[env])
        a, kN, se_a, se_kN = _linfit(lC, lN)
        b, kD, se_b, se_kD = _linfit(lC, lD)
        out["a"], out["b"] = float(a), float(b)
        params["a"] = {"value": float(a), "ci_low": None, "ci_high": None, "se": _finite(se_a)}
        params["b"] = {"value": float(b), "ci_low": None, "ci_high": None, "se": _finite(se_b)}
        if n_boot:
            rng = np.random.default_rng(seed)
            Bs = []
            for _ in range(n_boot):
                i = rng.integers(0, len(lC), len(lC))
                if len(np.unique(lC[i])) >= 2:
                    Bs.append((*_linfit(lC[i], lN[i])[:2], *_linfit(lC[i], lD[i])[:2]))
            Bs = np.array(Bs)
            params["a"] = interval(a, Bs[:, 0], level)
            params["b"] = interval(b, Bs[:, 2], level)
        out["a_b_note"] = ("a, b: log-log least squares of N and D against C over the compute frontier's points "
                           "(Kaplan et al. Fig. 14); a + b need not be 1 when C is not exactly 6ND")
        if target_flops:
            lt = math.log(target_flops)
            N, D = math.exp(kN + a * lt), math.exp(kD + b * lt)
            co = {"flops": float(target_flops), "rule": "power laws of N and D along the compute frontier"}
            if n_boot:
                Nb, Db = np.exp(Bs[:, 1] + Bs[:, 0] * lt), np.exp(Bs[:, 3] + Bs[:, 2] * lt)
                co.update(N=interval(N, Nb, level), D=interval(D, Db, level),
                          tokens_per_param=interval(D / N, Db / Nb, level))
            else:
                co.update(N=interval(N, None, level), D=interval(D, None, level),
                          tokens_per_param=interval(D / N, None, level))
            out["compute_optimal"] = co
    if n_boot:
        out["bootstrap"] = {"n": n_boot, "seed": seed, "level": level, "resampling": "frontier points with replacement"}
    return out
