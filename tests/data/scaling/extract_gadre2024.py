"""Rebuild gadre2024_models.csv from a checkout of github.com/mlfoundations/scaling (MIT licence).

    git clone https://github.com/mlfoundations/scaling /tmp/scaling
    python tests/data/scaling/extract_gadre2024.py /tmp/scaling tests/data/scaling/gadre2024_models.csv

One row per released model (104): its size and token count from exp_data/models/NAME.json
(hyperparameters.params, .tokens, .chinchilla_multiplier), its C4 validation loss (the result
whose val_data folder is c4_val), and its 46 downstream accuracies from
exp_data/evals/evaluation_NAME_heavy.json (eval_metrics.icl). err_avg is the mean top-1 error
(1 - accuracy) over the 46 tasks, err_avg_subset over the paper's 17-task subset.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

# the 17-task subset of Gadre et al. 2024 (its Table 2 default for the downstream fits)
SUBSET_17 = ["arc_easy", "bigbench_cs_algorithms", "bigbench_dyck_languages", "bigbench_novel_concepts",
             "bigbench_operators", "bigbench_qa_wikidata", "boolq", "commonsense_qa", "copa", "coqa", "hellaswag",
             "hellaswag_zeroshot", "lambada_openai", "piqa", "pubmed_qa_labeled", "squad", "winograd"]


def rows(repo: Path):
    tasks = None
    for mj in sorted((repo / "exp_data" / "models").glob("*.json")):
        m = json.loads(mj.read_text())
        hp = m["hyperparameters"]
        c4 = [r["loss"] for r in m["results"] if Path(r["val_data"][0]).parent.name == "c4_val"]
        if len(c4) != 1:
            raise SystemExit(f"{mj}: {len(c4)} c4_val results, expected 1")
        icl = json.loads((repo / "exp_data" / "evals" / f"evaluation_{mj.stem}_heavy.json").read_text())
        icl = icl["eval_metrics"]["icl"]
        if tasks is None:
            tasks = sorted(icl)
            if len(tasks) != 46 or not set(SUBSET_17) <= set(tasks):
                raise SystemExit(f"{mj}: {len(tasks)} tasks, expected the paper's 46")
        if sorted(icl) != tasks:
            raise SystemExit(f"{mj}: its tasks differ from the other models'")
        N, D = int(hp["params"]), int(hp["tokens"])
        yield {
            "name": m["name"], "dataset": m["dataset_name"], "model": Path(hp["model"]).stem,
            "tokens_per_param": 20 * float(hp["chinchilla_multiplier"]), "params": N, "tokens": D,
            "flops": f"{6.0 * N * D:.6e}", "loss_c4_val": f"{c4[0]:.6f}",
            "err_avg": f"{sum(1 - icl[t] for t in tasks) / len(tasks):.6f}",
            "err_avg_subset": f"{sum(1 - icl[t] for t in SUBSET_17) / len(SUBSET_17):.6f}",
            **{f"acc_{t}": f"{icl[t]:.6f}" for t in tasks},
        }


def main(repo: str, out: str) -> None:
    data = sorted(rows(Path(repo)), key=lambda r: (r["dataset"], r["params"], r["tokens"]))
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(data[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(data)
    print(f"wrote {out}: {len(data)} models")


if __name__ == "__main__":
    main(*sys.argv[1:3])
