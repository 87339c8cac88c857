"""Task metrics in the loop: ``TaskEval`` scores the multiple-choice tasks of train.eval_tasks
(llmtrain/eval/tasks.py) every train.eval_interval steps and at the end, like ``Evaluate``.

Each evaluation logs one record per task, ``{"step", "tokens", "split": "task:NAME", "acc",
"acc_norm"}``, to metrics.jsonl and TensorBoard (``task:NAME/acc``); the last results go to
summary.json (``"tasks": {NAME: {"acc", "acc_norm"}}``) and TensorBoard's HParams.

Every rank runs it: a data-parallel rank scores its share of the examples through
``module.logits`` (every rank of a replica makes the same calls; pipeline stages without the
logits count nothing), and one all-reduce of the counts gives the totals.
"""
from __future__ import annotations

import torch

from llmtrain.eval.tasks import SHAPES, TaskScorer, load_tasks
from llmtrain.train.callbacks.evaluation import PeriodicEval
from llmtrain.train.dist import all_reduce


class TaskEval(PeriodicEval):
    name = "tasks"

    def __init__(self, paths: list[str]):
        self.tasks = load_tasks(paths)  # checked again here: a bad file fails before training starts
        self.results: dict[str, dict] = {}  # NAME → {"acc", "acc_norm", "n", "step"} of the last evaluation
        self.scorer: TaskScorer | None = None

    def pre_train(self, t) -> None:
        from llmtrain.tokenizer import load_tokenizer, manifest_eod_token

        tok, eod = load_tokenizer(t.data.tokenizer_path, manifest_eod_token(t.data.manifests))
        shapes = 1 if t.cfg.parallel.pipeline_stages > 1 else SHAPES  # the pipeline's buffers: micro x seq_len
        self.scorer = TaskScorer(self.tasks, tok, eod, t.cfg.train.seq_len, t.plan.micro, shapes=shapes,
                                 dp_rank=t.plan.dp_rank, dp_world=t.world // t.cfg.parallel.pipeline_stages)
        calls = torch.tensor([float(self.scorer.n_calls)], device=t.device)
        self.scorer.n_calls = int(all_reduce(calls, "max").item())  # every rank makes as many forward calls
        if t.rank == 0:
            n = sum(len(task.examples) for task in self.tasks)
            cut = self.scorer.truncated
            cut = f"; {cut} rows on rank 0 cut from the left to train.seq_len" if cut else ""
            print(f"tasks: {', '.join(task.name for task in self.tasks)} ({n} examples; {self.scorer.n_calls} "
                  f"forward calls per rank per evaluation{cut})", flush=True)

    def _run(self, t) -> None:
        t.module.eval()
        try:
            counts = self.scorer.run(t.module.logits, t.device)
        finally:
            t.module.train()
        all_reduce(counts)
        counts = counts.cpu().tolist()
        for task, (correct, correct_norm, n) in zip(self.tasks, counts):
            acc, acc_norm = correct / n, correct_norm / n
            self.results[task.name] = {"acc": acc, "acc_norm": acc_norm, "n": int(n), "step": t.step}
            t.log({"step": t.step, "tokens": t.tokens, "split": f"task:{task.name}", "acc": acc, "acc_norm": acc_norm})
            if t.rank == 0:
                print(f"step {t.step:>6} task:{task.name} acc {acc:.4f} acc_norm {acc_norm:.4f} ({int(n)} examples)",
                      flush=True)

    def summary(self) -> dict:
        """NAME → {"acc", "acc_norm"} of the last evaluation (for summary.json)."""
        return {name: {"acc": r["acc"], "acc_norm": r["acc_norm"]} for name, r in self.results.items()}

    def state_dict(self) -> dict:
        return {"results": self.results}

    def load_state_dict(self, state: dict) -> None:
        self.results = dict(state.get("results", {}))
