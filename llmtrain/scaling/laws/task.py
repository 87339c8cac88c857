"""Task-level scaling fits: predict a downstream metric (accuracy, error) from N and D in two steps.

Step 1, loss from size and data: L(N, D) = E + A/N^alpha + B/D^beta, fitted as approach 3
(``laws.chinchilla``: Huber on log loss, Hoffmann's 4,500-start grid).

Step 2, the metric from the loss, in one of two forms:

- ``sigmoid`` (Bhagia et al. 2024, "Establishing Task Scaling Laws via Compute-Efficient Model
  Ladders"): y = a / (1 + exp(-k (L - L0))) + b. Written with k >= 0 (the sign symmetry
  a s(k x) + b = -a s(-k x) + (a + b) is resolved that way), so a < 0 for a metric that rises as
  the loss falls (accuracy) and a > 0 for one that falls with it (error).
- ``exponential`` (Gadre et al. 2024, "Language models scale reliably with over-training and on
  downstream tasks", Eq. 5): y = eps - k exp(-gamma L). For top-1 error, eps is the error
  approached at high loss; for accuracy the same form holds with k < 0.

Both are least squares on the metric. Both are linear in two of their parameters once the others
are fixed ((a, b) given (k, L0); (eps, k) given gamma), so each fit first solves that linear
problem on a grid of the nonlinear ones (all at once, as arrays) and then polishes the best grid
points with scipy's least_squares over all parameters; the result does not hang on a starting
guess. The prediction for a new (N, D) chains the two steps: y(L(N, D)).

Bootstrap: rows resampled with replacement (as multinomial weights), both steps refitted on each
replicate, so the intervals of a prediction carry the uncertainty of both steps.
"""
from __future__ import annotations

import math
import time

import numpy as np
from scipy.optimize import least_squares

from llmtrain.scaling.bootstrap import estimates, predictions, resample_counts
from llmtrain.scaling.laws import chinchilla
from llmtrain.scaling.optim import HUBER_DELTA, lse_predict
from llmtrain.scaling.points import FitError, Points
from llmtrain.scaling.results import BootstrapInfo, MetricLaw, TaskFit

FORMS = ("sigmoid", "exponential")
NEED = {"sigmoid": 5, "exponential": 4}  # parameters + 1
LAWS = {"sigmoid": "y = a / (1 + exp(-k (L - L0))) + b  (k >= 0; Bhagia et al. 2024)",
        "exponential": "y = eps - k exp(-gamma L)  (Gadre et al. 2024, Eq. 5)"}
PARAM_NAMES = {"sigmoid": ("a", "k", "L0", "b"), "exponential": ("eps", "k", "gamma")}


def _sig(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # the logistic function, without overflow


def predict_metric(form: str, theta, L):
    """The metric at loss L under one form; theta in PARAM_NAMES order (vectorised over L, and
    over rows of theta with one L each)."""
    L = np.asarray(L, float)
    if form == "sigmoid":
        a, k, L0, b = np.moveaxis(np.asarray(theta, float), -1, 0)
        return a * _sig(k * (L - L0)) + b
    eps, k, gamma = np.moveaxis(np.asarray(theta, float), -1, 0)
    with np.errstate(over="ignore"):
        return eps - k * np.exp(-gamma * L)


def _linear_given(basis: np.ndarray, y: np.ndarray, w: np.ndarray):
    """Weighted least squares of y on [1, basis_j] for each row j of basis (G, n) at once.
    Returns (c0 (G,), c1 (G,), rss (G,))."""
    sw = w.sum()
    bw = basis * w
    sb = bw.sum(1)
    sbb = (bw * basis).sum(1)
    sy = (w * y).sum()
    sby = bw @ y
    det = sw * sbb - sb * sb
    ok = det > 1e-12 * np.maximum(sw * sbb, 1e-300)
    det = np.where(ok, det, 1.0)
    c1 = np.where(ok, (sw * sby - sb * sy) / det, 0.0)
    c0 = np.where(ok, (sy - c1 * sb) / sw, sy / sw)
    r = y[None, :] - c0[:, None] - c1[:, None] * basis
    rss = (w * r * r).sum(1)
    return c0, c1, np.where(ok, rss, np.inf)


def _grid_starts(form: str, L: np.ndarray, y: np.ndarray, w: np.ndarray, n_best: int = 4) -> list[np.ndarray]:
    """Best points of a grid over the nonlinear parameters, the linear ones solved exactly."""
    lo, hi = float(L.min()), float(L.max())
    span = max(hi - lo, 1e-6)
    if form == "sigmoid":
        L0 = np.linspace(lo - 2 * span, hi + 2 * span, 49)
        k = np.geomspace(0.1, 200.0, 40) / span
        KK, LL = (g.ravel() for g in np.meshgrid(k, L0))
        basis = _sig(KK[:, None] * (L[None, :] - LL[:, None]))
        b, a, rss = _linear_given(basis, y, w)
        cand = np.column_stack([a, KK, LL, b])
    else:
        g = np.geomspace(1e-3, 60.0, 120) / span
        gamma = np.concatenate([-g[::-1], g])
        Lc = 0.5 * (lo + hi)
        basis = -np.exp(-gamma[:, None] * (L[None, :] - Lc))  # centred: k' = k exp(-gamma Lc)
        eps, kc, rss = _linear_given(basis, y, w)
        with np.errstate(over="ignore"):
            cand = np.column_stack([eps, kc * np.exp(gamma * Lc), gamma])
    order = np.argsort(rss)
    return [cand[i] for i in order[:n_best] if np.isfinite(rss[i]) and np.all(np.isfinite(cand[i]))]


def _canonical(form: str, th: np.ndarray) -> np.ndarray:
    th = np.array(th, float)
    if form == "sigmoid" and th[1] < 0:
        a, k, L0, b = th
        th = np.array([-a, -k, L0, a + b])
    return th


def fit_metric(form: str, L, y, w=None, n_starts: int = 4) -> dict:
    """Least-squares fit of the metric y against the loss L under one form (weights w: counts),
    polished from the n_starts best grid points. Returns {'theta', 'rss', 'rmse'}."""
    L, y = np.asarray(L, float), np.asarray(y, float)
    w = np.ones_like(y) if w is None else np.asarray(w, float)
    best_th, best_rss = None, math.inf
    sw = np.sqrt(w)
    Lc = 0.5 * (L.min() + L.max())

    # polish in a well-scaled parametrisation: the exponential's k is centred at Lc
    def to_p(th):
        if form == "sigmoid":
            return th
        eps, k, gamma = th
        return np.array([eps, k * math.exp(-gamma * Lc), gamma])

    def from_p(p):
        if form == "sigmoid":
            return p
        eps, kc, gamma = p
        with np.errstate(over="ignore"):
            return np.array([eps, kc * math.exp(gamma * Lc), gamma])

    def resid(p):
        with np.errstate(over="ignore", invalid="ignore"):
            r = sw * (predict_metric(form, from_p(p), L) - y)
        return np.where(np.isfinite(r), r, 1e6)

    def jac(p):
        with np.errstate(over="ignore", invalid="ignore"):
            if form == "sigmoid":
                a, k, L0, _ = p
                sg = _sig(k * (L - L0))
                ds = sg * (1 - sg)
                J = np.column_stack([sg, a * ds * (L - L0), -a * ds * k, np.ones_like(L)])
            else:
                _, kc, gamma = p
                e = np.exp(-gamma * (L - Lc))
                J = np.column_stack([np.ones_like(L), -e, kc * (L - Lc) * e])
        J *= sw[:, None]
        return np.where(np.isfinite(J), J, 0.0)

    lo, hi = float(L.min()), float(L.max())
    span = max(hi - lo, 1e-6)
    if form == "sigmoid":
        # the midpoint L0 kept within 2 spans of the data's losses: past that the sigmoid's tail is
        # an exponential that least squares can slide along without end (a and b growing apart)
        bounds = ([-np.inf, -np.inf, lo - 2 * span, -np.inf], [np.inf, np.inf, hi + 2 * span, np.inf])
    else:
        bounds = (-np.inf, np.inf)
    for th0 in _grid_starts(form, L, y, w, n_starts):
        try:
            p0 = to_p(th0)
            if form == "sigmoid":
                p0[2] = np.clip(p0[2], bounds[0][2], bounds[1][2])
            r = least_squares(resid, p0, jac=jac, method="trf", bounds=bounds, xtol=1e-10, ftol=1e-10, gtol=1e-10,
                              max_nfev=300)
            th, rss = from_p(r.x), float(2 * r.cost)
        except (ValueError, np.linalg.LinAlgError):
            th, rss = th0, float(np.sum(resid(to_p(th0)) ** 2))
        th0_rss = float(np.sum(resid(to_p(th0)) ** 2))
        if not (rss <= th0_rss and np.all(np.isfinite(th))):
            th, rss = th0, th0_rss
        if rss < best_rss:
            best_th, best_rss = th, rss
    if best_th is None:
        raise FitError(f"{form}: no finite fit of the metric against the loss")
    best_th = _canonical(form, best_th)
    return {"theta": best_th, "rss": best_rss, "rmse": math.sqrt(best_rss / max(w.sum(), 1.0))}


def _named(form: str, theta) -> dict:
    return dict(zip(PARAM_NAMES[form], np.asarray(theta, float).T))


def two_step(res: TaskFit, pts: Points, form: str) -> np.ndarray:
    """The metric of each point predicted from its N and D through both steps."""
    X, _ = chinchilla.features(pts)
    return predict_metric(form, res.metric_laws[form].theta, np.exp(lse_predict(res.loss_law.theta, X)))


def fit(pts: Points, metric: np.ndarray, n_boot: int = 0, seed: int = 0, targets=(), target_flops=None,
        level: float = 0.95, forms=FORMS, delta: float = HUBER_DELTA, boot_starts: int = 4) -> TaskFit:
    """The two-step task fit. targets: [(N, D), ...] to predict at; target_flops: also predict at
    step 1's compute-optimal (N, D) for that budget."""
    y = np.asarray(metric, float)
    n = len(y)
    t0 = time.perf_counter()
    need = max(NEED[f] for f in forms)
    if n < need:
        raise FitError(f"task: the metric-from-loss forms ({', '.join(forms)}) need at least {need} points with the "
                       f"metric; got {n}")
    if np.ptp(pts.L) <= 0:
        raise FitError("task: every point has the same loss; the metric cannot be fitted against it")
    res = TaskFit(forms=list(forms), metric_laws={}, parameters={}, fit={})
    # step 1
    ms = None
    if n >= chinchilla.NEED:
        ms = chinchilla.solve(pts, delta)
        res.loss_law = chinchilla.result(pts, ms, level, delta, target_flops=target_flops)
    else:
        res.loss_law_skipped = f"approach 3 needs at least 6 points; got {n}: no predictions from N and D"
        if targets or target_flops:
            raise FitError(f"task: predicting from N and D needs the loss law, which needs at least 6 points; got {n}")
    # step 2
    for f in forms:
        r = fit_metric(f, pts.L, y)
        resid = predict_metric(f, r["theta"], pts.L) - y
        res.metric_laws[f] = MetricLaw(f, LAWS[f], r["rmse"], resid.tolist(), r["theta"])
    # the chain, in sample
    if res.loss_law is not None:
        for f in forms:
            res.metric_laws[f].two_step_rmse = float(np.sqrt(np.mean((two_step(res, pts, f) - y) ** 2)))
    # targets
    tg = [(float(N), float(D), "given") for N, D in targets]
    if target_flops and res.loss_law is not None:
        opt = chinchilla.optimum(res.loss_law.theta, target_flops)
        tg.append((float(opt["N"]), float(opt["D"]), f"compute-optimal at C = {target_flops:.3g}"))
    boot = None
    if n_boot:
        tb = time.perf_counter()
        boot = _bootstrap(pts, y, ms, forms, n_boot, seed, delta, boot_starts)
        res.bootstrap = BootstrapInfo(n_boot, seed, level, "rows with replacement; both steps refitted on each "
                                      "replicate", time_s=round(time.perf_counter() - tb, 3))
    for f in forms:
        named = estimates(_named(f, res.metric_laws[f].theta), _named(f, boot[f]) if boot else None, level)
        res.parameters.update({f"{f}.{k}": v for k, v in named.items()})
    if res.loss_law is not None:
        loss_params = {k: res.loss_law.parameters[k].value for k in ("E", "A", "B", "alpha", "beta")}
        named = estimates(loss_params, chinchilla.params(boot["loss"]) if boot else None, level)
        res.parameters.update({f"loss.{k}": v for k, v in named.items()})
        point = (res.loss_law.theta, {f: res.metric_laws[f].theta for f in forms})
        reps = (boot["loss"], {f: boot[f] for f in forms}) if boot else None

        def quantities(p, N, D):
            L = chinchilla.loss(p[0], N, D)
            return {"loss": L, **{f: predict_metric(f, p[1][f], L) for f in forms}}

        res.predictions = predictions(tg, quantities, point, reps, level)
    res.fit = {"step1": "approach 3 (chinchilla): Huber (delta 1e-3) on log loss, 4,500-start grid" if ms is not None
               else "skipped", "step2": "least squares on the metric: grid over the nonlinear parameters with the "
               "linear ones solved exactly, best grid points polished by scipy least_squares",
               "time_s": round(time.perf_counter() - t0, 3)}
    return res


def _bootstrap(pts: Points, y, ms, forms, n_boot, seed, delta, boot_starts) -> dict:
    """Both steps refitted on n_boot resamples, the same resamples for both (row counts)."""
    W = resample_counts(len(y), n_boot, seed)
    res = {}
    if ms is not None:
        res["loss"] = chinchilla.refit(pts, ms, W, boot_starts, delta)
    for f in forms:
        th = np.full((n_boot, len(PARAM_NAMES[f])), np.nan)
        for i in range(n_boot):
            if np.count_nonzero(W[i]) < NEED[f] - 1 or np.ptp(pts.L[W[i] > 0]) <= 0:
                continue  # too few distinct points in this replicate to fit the form
            try:
                th[i] = fit_metric(f, pts.L, y, W[i], n_starts=2)["theta"]
            except FitError:
                pass
        res[f] = th
    return res
