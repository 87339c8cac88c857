"""The batched solver behind the parametric scaling laws: multi-start L-BFGS on a Huber loss in
log space, vectorised over starts and over bootstrap resamples.

Every parametric law here (Chinchilla's L(N, D), Kaplan's L(X)) is a sum of power terms plus a
constant, fitted in log space in the log-sum-exp form of Hoffmann et al. (2022), App. D.2:

    log L = LSE(c_1 - alpha_1 x_1, ..., c_k - alpha_k x_k, e),   x_j = log(feature j)

(Chinchilla: k = 2, x = (log N, log D), c = (log A, log B), e = log E. Kaplan: k = 1.) The
objective is the SUM over points of the Huber loss (delta = 1e-3) of predicted minus observed
log loss, minimised from every point of a grid of starts (the law's own), the best kept.

Speed: instead of one scipy optimiser per start, ``batched_lbfgs`` runs L-BFGS on all starts at
once as arrays (S starts x n points), each start with its own history, step length and stopping
test, and only the starts still moving are evaluated. The objective's gradient is analytic. The
problem is unconstrained, so L-BFGS-B (Hoffmann's and Epoch's choice) is L-BFGS here; the best
few results are then polished with scipy's L-BFGS-B (analytic gradient, tight tolerances), so the
reported optimum is an L-BFGS-B optimum. Bootstrap refits (``refit_lse``) use the same batched
optimiser with each resample given as per-point weights (counts), all replicates at once.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

HUBER_DELTA = 1e-3


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
# a multi-start fit of an LSE power law, and its bootstrap refits

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


def refit_lse(X: np.ndarray, y: np.ndarray, fit: MultiStartFit, weights: np.ndarray, n_starts: int = 4,
              delta: float = HUBER_DELTA, chunk: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Refit on resamples given as per-point weights (B, n): the row counts of
    ``llmtrain.scaling.bootstrap.resample_counts``, so that a caller can refit other quantities on
    the same resamples.

    Each refit starts from the full fit's optimum and from the grid points whose runs ended best
    in the full fit (the n_starts - 1 best, one per distinct end point). Returns (thetas (B, P),
    objective (B,)): each replicate's best start.
    """
    n_boot = len(weights)
    st = bootstrap_starts(fit, n_starts)
    K = len(st)
    thetas = np.empty((n_boot, st.shape[1]))
    fs = np.empty(n_boot)
    for b0 in range(0, n_boot, chunk):
        b1 = min(n_boot, b0 + chunk)
        Wb = np.repeat(weights[b0:b1], K, axis=0)  # (B*K, n)
        x0 = np.tile(st, (b1 - b0, 1))

        def fun(idx, th, Wb=Wb):
            return lse_objective(th, X, y, Wb[idx], delta)

        res = batched_lbfgs(fun, x0)
        fr = np.where(np.isfinite(res.f), res.f, np.inf).reshape(b1 - b0, K)
        best = fr.argmin(1)
        thetas[b0:b1] = res.x.reshape(b1 - b0, K, -1)[np.arange(b1 - b0), best]
        fs[b0:b1] = fr[np.arange(b1 - b0), best]
    return thetas, fs
