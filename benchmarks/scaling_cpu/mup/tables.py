"""Tables of the CPU scaling study (benchmarks/scaling_cpu/mup/README.md).

    python benchmarks/scaling_cpu/mup/tables.py points SWEEP_DIR OUT.csv [--task python_docs_cloze]
        one row per finished run: params (non-embedding), params_total, tokens, loss (final valid
        loss), and the task's final acc and acc_norm (summary.json "tasks") when logged
    python benchmarks/scaling_cpu/mup/tables.py predict FIT.json POINTS.csv --params 230960 [--out OUT.json]
        a Chinchilla approach-3 fit.json (fit_scaling.py --method chinchilla) evaluated at the
        rows of POINTS.csv with that params value: actual, predicted, relative error
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path


def points(sweep: Path, out: Path, task: str | None) -> None:
    rows = []
    for s in sorted(sweep.glob("*/summary.json")):
        d = json.loads(s.read_text())
        if d.get("status") != "finished":
            print(f"skipped {s.parent.name}: status {d.get('status')!r}", file=sys.stderr)
            continue
        row = {"run": s.parent.name, "params": d["n_params_non_embedding"], "params_total": d["n_params"],
               "tokens": d["tokens"], "loss": d["final_valid_loss"]}
        if task:
            t = d.get("tasks", {}).get(task, {})
            row["acc"], row["acc_norm"] = t.get("acc", ""), t.get("acc_norm", "")
        rows.append(row)
    rows.sort(key=lambda r: (r["params"], r["tokens"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out} ({len(rows)} rows)")


def predict(fit: Path, pts: Path, params: float, out: Path | None) -> None:
    p = {k: v["value"] for k, v in json.loads(fit.read_text())["parameters"].items()}
    res = []
    with open(pts) as fh:
        for r in csv.DictReader(fh):
            N, D, L = float(r["params"]), float(r["tokens"]), float(r["loss"])
            if N != params:
                continue
            pred = p["E"] + p["A"] / N ** p["alpha"] + p["B"] / D ** p["beta"]
            res.append({"N": N, "D": D, "actual": L, "predicted": pred, "rel_error": pred / L - 1})
    for r in res:
        print(f"N={r['N']:.0f} D={r['D']:.0f} actual {r['actual']:.3f} predicted {r['predicted']:.3f} "
              f"error {100 * r['rel_error']:+.1f}%")
    if out:
        out.write_text(json.dumps({"fit": str(fit), "points": str(pts), "predictions": res}, indent=2) + "\n")
        print(f"wrote {out}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("points")
    a.add_argument("sweep", type=Path)
    a.add_argument("out", type=Path)
    a.add_argument("--task", default=None)
    b = sub.add_parser("predict")
    b.add_argument("fit", type=Path)
    b.add_argument("points", type=Path)
    b.add_argument("--params", type=float, required=True)
    b.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.cmd == "points":
        points(args.sweep, args.out, args.task)
    else:
        predict(args.fit, args.points, args.params, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
