#!/usr/bin/env python
"""The data-stages study's table, from its sweep folder.

    python benchmarks/stages_cpu/report.py runs/stages_cpu/sweep --out benchmarks/stages_cpu

Reads every run's summary.json (held-out loss on the blended valid split and on each source's
own, the cloze task, tokens by source and by stage, wall time) and writes results.csv and
results.md: one row per run, and each cooldown's change against the size's plain cooldown.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path


def rows_of(sweep: Path) -> list[dict]:
    plan = json.loads((sweep / "plan.json").read_text())
    out = []
    for r in plan["runs"]:
        s = json.loads((sweep / r["name"] / "summary.json").read_text())
        task = next(iter((s.get("tasks") or {}).values()), {})
        out.append({
            "run": r["name"], "size": r["size"], "n_non_embedding": r["n_params_non_embedding"], "tokens": s["tokens"],
            "cooldown": r["cooldown"], "cooldown_from_step": r["cooldown_step"] or r["init_step"] or None,
            "steps": s["steps"], "valid_blend": s["final_valid_loss"],
            **{f"valid_{k}": v for k, v in s["valid_loss_by_source"].items()},
            "cloze_acc": task.get("acc"), "cloze_acc_norm": task.get("acc_norm"),
            **{f"tokens_{k}": v for k, v in s["tokens_by_source"].items()},
            "wall_s": round(s["wall_time_s"], 1),
        })
    return out


def table(rows: list[dict]) -> str:
    sources = sorted(k[len("valid_"):] for k in rows[0] if k.startswith("valid_") and k != "valid_blend")
    head = (["run", "N non-emb", "cooldown", "tokens " + " / ".join(sources), "valid (trunk blend)"]
            + [f"valid {s}" for s in sources] + ["cloze acc", "cloze acc_norm", "wall s"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    plain = {r["size"]: r for r in rows if r["cooldown"] == "plain"}
    for r in rows:
        base = plain.get(r["size"])
        toks = " / ".join(f"{r['tokens_' + s] / 1e6:.2f}M" for s in sources)
        keys = ["valid_blend", *(f"valid_{s}" for s in sources), "cloze_acc", "cloze_acc_norm"]
        lines.append("| " + " | ".join([r["run"], f"{r['n_non_embedding']:,}", r["cooldown"] or "-", toks]
                                       + [cell(r, base, k) for k in keys] + [f"{r['wall_s']:.0f}"]) + " |")
    return "\n".join(lines)


def cell(row: dict, base: dict | None, key: str) -> str:
    """The value, and its change against the plain cooldown of the same size."""
    v = row[key]
    if v is None:
        return "-"
    text = f"{v:.3f}"
    if base is not None and row is not base and base[key] is not None:
        text += f" ({v - base[key]:+.3f})"
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="folder for results.csv and results.md")
    args = ap.parse_args(argv)
    rows = rows_of(args.sweep)
    md = table(rows)
    print(md)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        with open(args.out / "results.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        (args.out / "results.md").write_text(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
