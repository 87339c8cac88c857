"""Fit scaling laws to a sweep's runs (or a CSV) and predict the compute-optimal model.

    python launcher/fit_scaling.py runs/sweeps/NAME --method chinchilla --out runs/sweeps/NAME/fit \\
        --target-flops 1e21 --bootstrap 1000
    python launcher/fit_scaling.py data.csv --method isoflop --out fit --n-col params --d-col tokens \\
        --loss-col loss --c-col flops
    python launcher/fit_scaling.py runs/sweeps/NAME --method task --metric task:NAME/acc_norm --out fit \\
        --target 1e9,2e10 --bootstrap 1000
    python launcher/fit_scaling.py runs/sweeps/NAME --method chinchilla --out fit --target 1e9,2e10 --bootstrap 1000

SOURCE: a sweep folder (its run folders), one run folder, or a CSV. Methods:
  chinchilla  approach 3: L = E + A/N^alpha + B/D^beta, Huber on log loss, 4,500-start grid
  isoflop     approach 2: per compute budget the loss-minimising N, then N_opt = k C^a
  kaplan      L(N), L(D), L(C) each E + (X_c/X)^alpha_X on the loss frontiers
  task        a downstream metric in two steps: L(N, D) as chinchilla, then the metric from L,
              sigmoid (Bhagia et al. 2024) and exponential Err = eps - k exp(-gamma L) (Gadre et al. 2024)
--target N,D (repeatable) predicts at N parameters and D tokens under every method, with bootstrap
intervals: chinchilla the loss; kaplan each frontier's loss (loss_N, loss_D, loss_C at C = 6ND);
isoflop the compute-optimal N_opt, D_opt at C = 6ND and N / N_opt; task the loss and the metric.
Metrics of run folders are SPLIT/FIELD: the FIELD of metrics.jsonl records with "split": SPLIT,
e.g. {"step": S, "tokens": T, "split": "task:NAME", "acc": a, "acc_norm": b} is task:NAME/acc_norm.
Writes OUT/fit.json and PNG plots. Bad input: one line on stderr, exit status 2.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from llmtrain.core.files import atomic_write_json
from llmtrain.scaling.laws import chinchilla, isoflop, kaplan, task
from llmtrain.scaling.points import FitError
from llmtrain.scaling.results import jsonable
from llmtrain.scaling.sources import BASIS, SourceError, best_of_duplicates, drop_highest_loss, load


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    ap.add_argument("source", help="sweep folder, run folder or CSV file")
    ap.add_argument("--method", required=True, choices=["chinchilla", "isoflop", "kaplan", "task"])
    ap.add_argument("--out", required=True, help="output folder for fit.json and plots")
    ap.add_argument("--target-flops", type=float, help="predict the compute-optimal N, D for this budget")
    ap.add_argument("--bootstrap", type=int, default=0, metavar="N", help="bootstrap refits for intervals (e.g. 1000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ci-level", type=float, default=0.95)
    ap.add_argument("--n-col", default="params", help="CSV column of N (default params)")
    ap.add_argument("--d-col", default="tokens", help="CSV column of D (default tokens)")
    ap.add_argument("--loss-col", default="loss", help="CSV column of the loss (default loss)")
    ap.add_argument("--c-col", default="flops", help="CSV column of C (default flops; C = 6ND without it)")
    ap.add_argument("--params", choices=["total", "non_embedding", "active", "active_non_embedding"], default="total",
                    help="run folders: N is n_params (default), n_params_non_embedding, or for Mixture-of-Experts runs "
                         "the active counts (only the experts a token uses; C = 6 N D with that N)")
    ap.add_argument("--allow-unfinished", action="store_true", help="fit the finished runs, listing the others")
    ap.add_argument("--drop-highest-loss", type=int, default=0, metavar="K",
                    help="drop the K highest-loss points (Epoch AI drop 5 on Hoffmann's data)")
    ap.add_argument("--flops-tol-dex", type=float, default=0.05,
                    help="isoflop: compute values within this many log10 units form one budget (default 0.05)")
    ap.add_argument("--window-dex", type=float, default=0.5,
                    help="isoflop: parabola fitted to points within this many log10 units of the minimum")
    ap.add_argument("--metric", help="task: the metric to predict: SPLIT/FIELD of the runs' metrics.jsonl "
                    "(task:NAME/acc_norm, harness:TASK/acc) or a CSV column")
    ap.add_argument("--loss-metric", metavar="SPLIT/FIELD",
                    help="run folders: a logged quantity read in place of the validation loss (e.g. valid/loss)")
    ap.add_argument("--target", action="append", default=[], metavar="N,D",
                    help="predict at N parameters and D tokens (repeatable; see above for what each method predicts)")
    ap.add_argument("--forms", nargs="+", choices=list(task.FORMS), default=list(task.FORMS),
                    help="task: the metric-from-loss forms to fit (default both)")
    ap.add_argument("--where", action="append", default=[], metavar="COL=VALUE",
                    help="CSV: keep the rows that match (=, !=, <, <=, >, >=; repeatable), e.g. dataset=rpj")
    ap.add_argument("--best-of-duplicates", action="store_true",
                    help="runs with the same N and D (a sweep's hparams.lr_grid) count once, with the lowest loss")
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args(argv)
    try:
        if args.method == "task" and not args.metric:
            raise SourceError("--method task needs --metric: a logged SPLIT/FIELD such as task:NAME/acc_norm, or a "
                              "CSV column")
        if args.metric and args.method != "task":
            raise SourceError(f"--metric {args.metric}: only --method task predicts a metric; to fit another "
                              "logged loss in place of the validation loss use --loss-metric")
        targets = [_target(t) for t in args.target]
        if args.bootstrap < 0:
            raise SourceError(f"--bootstrap {args.bootstrap}: must be >= 0")
        if not 0 < args.ci_level < 1:
            raise SourceError(f"--ci-level {args.ci_level}: must be between 0 and 1")
        if args.target_flops is not None and not (args.target_flops > 0 and np.isfinite(args.target_flops)):
            raise SourceError(f"--target-flops {args.target_flops}: must be a positive number")
        ld = load(args.source, n_col=args.n_col, d_col=args.d_col, loss_col=args.loss_col, c_col=args.c_col,
                  basis=args.params, allow_unfinished=args.allow_unfinished, metric=args.metric,
                  loss_metric=args.loss_metric, where=args.where)
        n_read = len(ld.points) + len(ld.dropped)
        if args.best_of_duplicates:
            ld = best_of_duplicates(ld)
        ld = drop_highest_loss(ld, args.drop_highest_loss)
        pts = ld.points
        print(f"{args.method}: {len(pts)} points from {args.source} ({ld.kind}); loss: {ld.loss_source}", flush=True)
        if args.bootstrap:
            print(f"fitting, then {args.bootstrap} bootstrap refits ...", flush=True)
        t0 = time.perf_counter()
        kw = dict(n_boot=args.bootstrap, seed=args.seed, target_flops=args.target_flops, targets=targets,
                  level=args.ci_level)
        if args.method == "chinchilla":
            res = chinchilla.fit(pts, **kw)
        elif args.method == "task":
            res = task.fit(pts, pts.M, forms=args.forms, **kw)
        elif args.method == "isoflop":
            res = isoflop.fit(pts, tol_dex=args.flops_tol_dex, window_dex=args.window_dex, **kw)
        else:
            res = kaplan.fit(pts, **kw)
        elapsed = time.perf_counter() - t0
    except (SourceError, FitError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    for note in ld.notes:
        print(f"note: {note}", file=sys.stderr)
    out = Path(args.out)
    plots = []
    if not args.no_plots:
        from llmtrain.scaling import plot

        if args.method == "task":
            plots = plot.task_plots(out, pts, res, args.metric)
        else:
            fn = {"chinchilla": plot.chinchilla_plots, "isoflop": plot.isoflop_plots, "kaplan": plot.kaplan_plots}
            plots = fn[args.method](out, pts, res)
    doc = {
        "method": args.method,
        "source": str(Path(args.source).resolve()),
        "source_kind": ld.kind,
        "n_points": len(pts),
        "n_rows_read": n_read,
        "loss_source": ld.loss_source,
        "n_basis": BASIS[args.params] if ld.kind != "csv" else f"column {args.n_col!r}",
        "dropped": ld.dropped,
        "unfinished_runs_skipped": ld.unfinished,
        "notes": ld.notes,
        **res.to_json(),
        "elapsed_s": round(elapsed, 3),
        "plots": plots,
        "points": [{"label": lab, "N": float(n), "D": float(d), "C": float(c), "loss": float(lo)}
                   for lab, n, d, c, lo in zip(pts.labels, pts.N, pts.D, pts.C, pts.L)],
    }
    if args.metric:
        doc["metric"] = args.metric
        for p, m in zip(doc["points"], pts.M):
            p["metric"] = float(m)
    atomic_write_json(out / "fit.json", jsonable(doc))
    print(summary(doc), flush=True)
    print(f"wrote {out / 'fit.json'}" + (f" and {', '.join(plots)}" if plots else ""))
    return 0


def _target(text: str) -> tuple[float, float]:
    """'N,D' -> (N, D), both positive."""
    try:
        N, D = (float(v) for v in text.split(","))
    except ValueError:
        raise SourceError(f"--target {text!r}: write N,D (parameters and tokens), e.g. --target 1.4e9,2.9e10") from None
    if not (N > 0 and D > 0 and np.isfinite(N) and np.isfinite(D)):
        raise SourceError(f"--target {text!r}: N and D must be positive numbers")
    return N, D


def summary(doc: dict) -> str:
    def fmt(k, v):
        s = f"  {k:>14} = {v['value']:.6g}"
        if v.get("ci_low") is not None:
            s += f"  [{v['ci_low']:.4g}, {v['ci_high']:.4g}]"
        if v.get("se") is not None:
            s += f"  se {v['se']:.3g}"
        return s

    lines = [f"{doc['method']} fit on {doc['n_points']} points ({doc['elapsed_s']:.1f}s):"]
    lines += [fmt(k, v) for k, v in doc["parameters"].items()]
    for p in doc.get("predictions", []):
        lines.append(f"predicted at N = {p['N']:.4g}, D = {p['D']:.4g} ({p['how']}):")
        lines += [fmt(k, v) for k, v in p.items() if isinstance(v, dict)]
    co = doc.get("compute_optimal")
    if co:
        lines.append(f"compute-optimal at C = {co['flops']:.3g}:")
        lines += [fmt(k, co[k]) for k in ("N", "D", "tokens_per_param", "loss") if k in co]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
