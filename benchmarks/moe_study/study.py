"""Dense against Mixture-of-Experts at equal active compute, on the CPU ladder.

    python benchmarks/moe_study/study.py                       # run both sweeps (resumable), then report
    python benchmarks/moe_study/study.py --report-only --out runs/sweeps

Runs configs/scaling/moe_ladder_dense.yaml and configs/scaling/moe_ladder.yaml with
launcher/sweep.py (the same shapes, data, batches, LR rule and token budgets per active parameter;
the MoE blocks hold 8 experts of half the MLP width, top-2), then pairs each dense point with the
MoE point of the same shape and budget and reports:

- the validation losses and the gap (MoE - dense, and relative);
- the compute multiplier: how much more compute the dense ladder needs to reach the MoE point's
  loss, read off the dense points' loss against compute (log-log, piecewise linear between the
  two dense points that bracket it, extrapolated from the nearest two outside), over the MoE
  point's own compute (> 1: the MoE model is more compute-efficient).

Writes OUT/moe_study/results.json and points.csv, and loss_vs_compute.png beside them, and prints
the Markdown table that benchmarks/BENCHMARKS.md holds.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
from pathlib import Path

from llmtrain.core.files import atomic_write_json
from llmtrain.core.paths import REPO_ROOT

SWEEPS = {"dense": "configs/scaling/moe_ladder_dense.yaml", "moe": "configs/scaling/moe_ladder.yaml"}


def run_sweeps(out: Path) -> None:
    for kind, cfg in SWEEPS.items():
        name = Path(cfg).stem
        cmd = [sys.executable, str(REPO_ROOT / "launcher" / "sweep.py"), "--config", str(REPO_ROOT / cfg), "--out",
               str(out / name)]
        print(f"[moe_study] {kind}: {' '.join(cmd)}", flush=True)
        if subprocess.run(cmd).returncode != 0:
            raise SystemExit(f"[moe_study] the {kind} sweep failed; rerun the same command to resume it")


def read_sweep(folder: Path) -> list[dict]:
    """One point per finished run: shape, counts, tokens, compute and validation loss."""
    pts = []
    for s_path in sorted(folder.glob("*/summary.json")):
        s = json.loads(s_path.read_text())
        if s.get("status") != "finished":
            continue
        size = s_path.parent.name.split("_D")[0]
        pts.append({"run": s_path.parent.name, "size": size, "n_params": s["n_params"],
                    "n_non_embedding": s["n_params_non_embedding"],
                    "n_active_non_embedding": s.get("n_params_active_non_embedding", s["n_params_non_embedding"]),
                    "tokens": s["tokens"], "flops": s["flops"], "valid_loss": s["final_valid_loss"],
                    "wall_time_s": s["wall_time_s"]})
    return pts


def by_size(points: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for p in points:
        out.setdefault(p["size"], []).append(p)
    return {k: sorted(v, key=lambda p: p["tokens"]) for k, v in out.items()}


def dense_compute_for(loss: float, dense: list[dict]) -> float:
    """The compute at which the dense points' loss-against-compute curve reaches ``loss``: log-log
    piecewise linear through the dense points' lower envelope, extrapolated beyond its ends."""
    pts = sorted((math.log(p["flops"]), math.log(p["valid_loss"])) for p in dense)
    frontier = []  # the lowest loss reached at each compute or less
    for c, lo in pts:
        if not frontier or lo < frontier[-1][1]:
            frontier.append((c, lo))
    target = math.log(loss)
    for (c0, l0), (c1, l1) in zip(frontier, frontier[1:]):
        if l1 <= target <= l0:
            return math.exp(c0 + (target - l0) * (c1 - c0) / (l1 - l0))
    (c0, l0), (c1, l1) = (frontier[-2], frontier[-1]) if target < frontier[-1][1] else (frontier[0], frontier[1])
    return math.exp(c0 + (target - l0) * (c1 - c0) / (l1 - l0))


def compare(dense_pts: list[dict], moe_pts: list[dict]) -> list[dict]:
    dense, moe = by_size(dense_pts), by_size(moe_pts)
    rows = []
    for size in sorted(set(dense) & set(moe), key=lambda s: dense[s][0]["n_active_non_embedding"]):
        for d, m in zip(dense[size], moe[size]):
            c_dense = dense_compute_for(m["valid_loss"], dense_pts)
            n_dense = d["n_active_non_embedding"]
            rows.append({"size": size, "n_dense": n_dense, "n_moe_active": m["n_active_non_embedding"],
                         "n_moe_total": m["n_params"],
                         "n_moe_total_non_embedding": m["n_non_embedding"],
                         "tokens_per_param": round(d["tokens"] / n_dense),
                         "tokens_dense": d["tokens"], "tokens_moe": m["tokens"], "flops_dense": d["flops"],
                         "flops_moe": m["flops"], "loss_dense": d["valid_loss"], "loss_moe": m["valid_loss"],
                         "gap": m["valid_loss"] - d["valid_loss"], "gap_rel": m["valid_loss"] / d["valid_loss"] - 1,
                         "compute_multiplier": c_dense / m["flops"],
                         "wall_ratio": m["wall_time_s"] / d["wall_time_s"]})
    return rows


def markdown(rows: list[dict]) -> str:
    out = ["| shape | N dense (non-emb) | MoE active / total (non-emb) | D/N | loss dense | loss MoE | gap | gap % | "
           "compute multiplier | wall time MoE / dense |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['size']} | {r['n_dense']:,} | {r['n_moe_active']:,} / {r['n_moe_total_non_embedding']:,} | "
                   f"{r['tokens_per_param']} | {r['loss_dense']:.3f} | {r['loss_moe']:.3f} | {r['gap']:+.3f} | "
                   f"{100 * r['gap_rel']:+.1f}% | {r['compute_multiplier']:.2f}x | {r['wall_ratio']:.2f} |")
    return "\n".join(out)


def plot(dense_pts: list[dict], moe_pts: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for pts, label, marker in ((dense_pts, "dense", "o"), (moe_pts, "MoE 8 experts, top-2 (granularity 2)", "s")):
        for i, ps in enumerate(by_size(pts).values()):
            ax.plot([p["flops"] for p in ps], [p["valid_loss"] for p in ps], marker=marker, linestyle="-",
                    color=f"C{0 if label == 'dense' else 1}", label=label if i == 0 else None, alpha=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training compute, 6 x active parameters x tokens (FLOPs)")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("Dense vs MoE at equal active compute (CPU ladder)")
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    tmp.replace(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/sweeps", help="folder of the two sweep folders")
    ap.add_argument("--report-only", action="store_true", help="do not run the sweeps, report what they hold")
    ap.add_argument("--results", default=None, help="where to write results (default OUT/moe_study)")
    args = ap.parse_args()
    out = Path(args.out)
    if not args.report_only:
        run_sweeps(out)
    dense = read_sweep(out / Path(SWEEPS["dense"]).stem)
    moe = read_sweep(out / Path(SWEEPS["moe"]).stem)
    if len(dense) < 2 or not moe:
        print(f"error: {out}: needs finished runs of both sweeps (dense {len(dense)}, MoE {len(moe)})", file=sys.stderr)
        return 2
    rows = compare(dense, moe)
    res = Path(args.results or out / "moe_study")
    res.mkdir(parents=True, exist_ok=True)
    atomic_write_json(res / "results.json", {"dense": dense, "moe": moe, "pairs": rows})
    with open(res / "points.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot(dense, moe, res / "loss_vs_compute.png")
    print(markdown(rows))
    print(f"\n[moe_study] {len(rows)} pairs; results in {res}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
