"""PNG plots of scaling-law fits (matplotlib, Agg backend). Each file is written under a
temporary name and renamed, so a reader never sees a half-written plot."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from llmtrain.scaling.laws import chinchilla, kaplan, task  # noqa: E402
from llmtrain.scaling.points import Points  # noqa: E402
from llmtrain.scaling.results import ChinchillaFit, IsoflopFit, KaplanFit, TaskFit  # noqa: E402


def save_figure(fig, path: Path) -> str:
    """Write ``fig`` as a PNG through a temporary name (team-readable), close it, return the name."""
    from llmtrain.core.files import atomic_path

    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path.name


_save = save_figure


def _span(x, target=None, lo=1 / 3, hi=30):
    """A log range past the data: [min*lo, max*hi], stretched to include target."""
    a, b = float(np.min(x)) * lo, float(np.max(x)) * hi
    if target:
        a, b = min(a, target / 3), max(b, target * 3)
    return np.geomspace(a, b, 200)


def chinchilla_plots(out: Path, pts: Points, res: ChinchillaFit) -> list[str]:
    theta = res.theta
    p = {k: float(v) for k, v in chinchilla.params(theta).items()}
    co = res.compute_optimal
    files = []

    def law(N, D):
        return p["E"] + p["A"] / N ** p["alpha"] + p["B"] / D ** p["beta"]

    Cs = _span(pts.C, co.flops if co else None, 1, 100)
    opt = chinchilla.optimum(theta, Cs)
    for var, other, name in ((pts.N, pts.D, "N"), (pts.D, pts.N, "D")):
        fig, ax = plt.subplots(figsize=(7, 5))
        sc = ax.scatter(var, pts.L, c=np.log10(other), cmap="viridis", s=14, zorder=3)
        fig.colorbar(sc, ax=ax, label=f"log10 {'D (tokens)' if name == 'N' else 'N (parameters)'}")
        xs = _span(var, co[name].value if co else None)
        cmap = plt.get_cmap("viridis")
        lo, hi = np.log10(other).min(), np.log10(other).max()
        for q in np.quantile(other, [0.0, 0.25, 0.5, 0.75, 1.0]):
            y = law(xs, q) if name == "N" else law(q, xs)
            ax.plot(xs, y, color=cmap((np.log10(q) - lo) / max(hi - lo, 1e-9)), lw=1, alpha=0.8)
        ax.plot(opt[name], opt["loss"], "k--", lw=1.5, label="compute-optimal frontier (C = 6ND)")
        if co:
            ax.plot([co[name].value], [co["loss"].value], "r*", ms=14, label=f"optimum at C = {co.flops:.3g}")
        ax.set_xscale("log")
        ax.set_xlabel("N (parameters)" if name == "N" else "D (tokens)")
        ax.set_ylabel("loss")
        ymax = np.quantile(pts.L, 0.98) * 1.05
        ax.set_ylim(min(p["E"], pts.L.min()) * 0.95, ymax)
        ax.set_title(f"L = {p['E']:.3f} + {p['A']:.4g}/N^{p['alpha']:.3f} + {p['B']:.4g}/D^{p['beta']:.3f}\n"
                     f"curves at fixed {'D' if name == 'N' else 'N'} (quantiles), extended past the data", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, which="both")
        files.append(_save(fig, out / f"loss_vs_{name}.png"))
    files.append(_residuals(out, pts, np.asarray(res.residuals_log), [("N", pts.N), ("D", pts.D)]))
    return files


def _residuals(out: Path, pts: Points, r: np.ndarray, axes, title="predicted - observed log loss") -> str:
    fig, axs = plt.subplots(1, len(axes), figsize=(5 * len(axes), 4), squeeze=False)
    for ax, (name, x) in zip(axs[0], axes):
        ax.scatter(x, r, s=10)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
    return _save(fig, out / "residuals.png")


def isoflop_plots(out: Path, pts: Points, res: IsoflopFit) -> list[str]:
    budgets = res.budgets
    files = []
    fig, ax = plt.subplots(figsize=(7, 5))
    cmap = plt.get_cmap("plasma")
    used_any = np.zeros(len(pts), dtype=bool)
    lcs = np.log10([b.flops for b in budgets])
    for b in budgets:
        col = cmap(0.85 * (np.log10(b.flops) - lcs.min()) / max(np.ptp(lcs), 1e-9))
        idx = np.asarray(b.point_indices)
        used_any[idx] = True
        ax.scatter(pts.N[idx], pts.L[idx], color=col, s=16, zorder=3, label=f"C = {b.flops:.2g}")
        xu = np.log10(pts.N[b.used_indices])
        xs = np.linspace(xu.min() - 0.1, xu.max() + 0.1, 100)
        ax.plot(10 ** xs, np.polyval(b.coef_log10N, xs), color=col, lw=1.2)
        ax.plot([b.N_opt], [b.loss_opt], marker="*", color=col, ms=13, mec="k", zorder=4)
    if (~used_any).any():
        ax.scatter(pts.N[~used_any], pts.L[~used_any], color="0.7", s=12, label="budgets not used")
    ax.set_xscale("log")
    ax.set_xlabel("N (parameters)")
    ax.set_ylabel("loss")
    ax.set_title("IsoFLOP profiles: parabola in log N near each minimum (stars: fitted minima)", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3, which="both")
    files.append(_save(fig, out / "isoflop.png"))

    co = res.compute_optimal
    C = np.array([b.flops for b in budgets])
    Cs = _span(C, co.flops if co else None, 1 / 3, 30)
    par = res.parameters
    fig, ax = plt.subplots(figsize=(7, 5))
    for key, k, e, col in (("N_opt", "k_N", "a", "C0"), ("D_opt", "k_D", "b", "C1")):
        ax.scatter(C, [getattr(b, key) for b in budgets], color=col, zorder=3, label=f"{key} per budget")
        ax.plot(Cs, par[k].value * Cs ** par[e].value, color=col,
                label=f"{key} = {par[k].value:.3g} C^{par[e].value:.3f}")
    if co:
        ax.plot([co.flops] * 2, [co["N"].value, co["D"].value], "r*", ms=13, label=f"C = {co.flops:.3g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("C (FLOPs)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    ax.set_title("compute-optimal N and D, fitted power laws extended past the data", fontsize=9)
    files.append(_save(fig, out / "optimal.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    for b in budgets:
        idx = b.used_indices
        x10 = np.log10(pts.N[idx])
        ax.scatter(x10 - np.log10(b.N_opt), np.polyval(b.coef_log10N, x10) - pts.L[idx], s=12,
                   label=f"C = {b.flops:.2g}")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("log10 N - log10 N_opt (points used in each parabola)")
    ax.set_ylabel("fitted - observed loss")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    files.append(_save(fig, out / "residuals.png"))
    return files


def kaplan_plots(out: Path, pts: Points, res: KaplanFit) -> list[str]:
    files = []
    xs_all = {"N": pts.N, "D": pts.D, "C": pts.C}
    label = {"N": "N (parameters)", "D": "D (tokens)", "C": "C (FLOPs)"}
    resid = []
    for name, law in res.laws.items():
        x = xs_all[name]
        idx = np.asarray(law.point_indices)
        fig, ax = plt.subplots(figsize=(7, 5))
        ax.scatter(x, pts.L, color="0.75", s=10, label="all points")
        ax.scatter(x[idx], pts.L[idx], color="C0", s=18, zorder=3, label=law.points)
        xs = _span(x[idx])
        ax.plot(xs, kaplan.loss(law.theta, xs), "C3", label=law.law + " (extended past the data)")
        p = res.parameters
        ax.axhline(p[f"E_{name}"].value, color="C3", ls=":", lw=1, label=f"E = {p[f'E_{name}'].value:.3f}")
        ax.set_xscale("log")
        ax.set_xlabel(label[name])
        ax.set_ylabel("loss")
        ax.set_title(f"alpha_{name} = {p[f'alpha_{name}'].value:.3f}, {name}_c = {p[f'{name}_c'].value:.3g}",
                     fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, which="both")
        files.append(_save(fig, out / f"loss_vs_{name}.png"))
        resid.append((name, x[idx], np.asarray(law.residuals_log)))
    fig, axs = plt.subplots(1, len(resid), figsize=(5 * len(resid), 4), squeeze=False)
    for ax, (name, x, r) in zip(axs[0], resid):
        ax.scatter(x, r, s=12)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel(label[name])
        ax.set_ylabel("predicted - observed log loss")
        ax.grid(alpha=0.3)
    files.append(_save(fig, out / "residuals.png"))
    return files


def task_plots(out: Path, pts: Points, res: TaskFit, metric_name: str = "metric") -> list[str]:
    """The task method: the metric against the loss with both forms (and the predictions), the
    loss law's plots (step 1), and observed against two-step predicted metric (pts.M: the metric)."""
    files = []
    M = pts.M
    forms = res.forms
    preds = res.predictions
    lo, hi = float(pts.L.min()), float(pts.L.max())
    for p in preds:
        lo, hi = min(lo, p["loss"].value), max(hi, p["loss"].value)
    span = hi - lo
    Ls = np.linspace(lo - 0.15 * span, hi + 0.15 * span, 300)
    fig, ax = plt.subplots(figsize=(7, 5))
    sc = ax.scatter(pts.L, M, c=np.log10(pts.N), cmap="viridis", s=18, zorder=3)
    fig.colorbar(sc, ax=ax, label="log10 N (parameters)")
    styles = {"sigmoid": ("C3", "-"), "exponential": ("C0", "--")}
    for f in forms:
        law = res.metric_laws[f]
        col, ls = styles[f]
        ax.plot(Ls, task.predict_metric(f, law.theta, Ls), color=col, ls=ls, lw=1.3,
                label=f"{f}: {law.law.split('  (')[0]} (rmse {law.rmse:.3g})")
        for p in preds:
            y, x = p[f], p["loss"]
            xerr = None if x.ci_low is None else [[x.value - x.ci_low], [x.ci_high - x.value]]
            yerr = None if y.ci_low is None else [[y.value - y.ci_low], [y.ci_high - y.value]]
            ax.errorbar([x.value], [y.value], xerr=xerr, yerr=yerr, color=col, marker="*", ms=12, mec="k",
                        capsize=3, zorder=4)
    if preds:
        ax.plot([], [], "k*", ms=10, label="predicted from N, D (two steps), with intervals")
    ax.set_xlabel("loss")
    ax.set_ylabel(metric_name)
    ax.set_title(f"{metric_name} against the loss; curves extended past the data", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    files.append(_save(fig, out / "metric_vs_loss.png"))
    if res.loss_law is not None:
        files += chinchilla_plots(out, pts, res.loss_law)
        fig, ax = plt.subplots(figsize=(5.5, 5))
        two = {f: task.two_step(res, pts, f) for f in forms}
        for f in forms:
            col, _ = styles[f]
            ax.scatter(two[f], M, s=14, color=col, label=f"{f} (rmse {res.metric_laws[f].two_step_rmse:.3g})")
        a, b = float(min(M.min(), *(two[f].min() for f in forms))), float(max(M.max(), *(two[f].max() for f in forms)))
        ax.plot([a, b], [a, b], "k", lw=0.8)
        ax.set_xlabel(f"{metric_name} predicted from N and D (two steps)")
        ax.set_ylabel(f"{metric_name} observed")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        files.append(_save(fig, out / "two_step.png"))
    return files
