"""lm-evaluation-harness in the loop: ``HarnessEval`` scores the lm-eval tasks of train.harness_tasks
(found in train.harness_include_path, else among lm-eval's own) every train.eval_interval steps and
at the end, on the trainer's live weights, like ``TaskEval``.

Each evaluation logs one record per task, ``{"step", "tokens", "split": "harness:TASK", METRIC:
value, ...}`` with lm-eval's metric names (``acc``, ``acc_norm``, ``word_perplexity``,
``bits_per_byte``, ``exact_match``, ...; a metric of a filter other than ``none`` keeps lm-eval's
full key, ``exact_match,strict-match``), to metrics.jsonl and TensorBoard (``harness:TASK/acc``);
the last results go to summary.json (``"harness": {TASK: {METRIC: value}}``) and the HParams, where
``fit_scaling.py --method task --metric harness:TASK/acc`` reads them. No stderr is computed (no
bootstrap in the loop).

Every rank runs lm-eval's ``evaluate`` over the same requests; the model (llmtrain/eval/harness.py)
deals the rows out over the data-parallel ranks, calls ``module.logits`` (every rank of a replica
the same calls; pipeline stages without the logits add zeros) and gathers every result with one
all-reduce, so it works on every layout. Training's random state is restored afterwards.
"""
from __future__ import annotations

from llmtrain.train.callbacks.evaluation import PeriodicEval
from llmtrain.train.dist import all_reduce


class HarnessEval(PeriodicEval):
    name = "harness"

    def __init__(self, tasks: list[str], include_path: list[str]):
        self.names, self.include_path = list(tasks), list(include_path)
        self.results: dict[str, dict] = {}  # TASK → {METRIC: value} of the last evaluation
        self.steps: dict[str, int] = {}  # TASK → the step of that evaluation
        self.lm = self.loaded = None

    def pre_train(self, t) -> None:
        from llmtrain.eval.harness import Forward, HarnessLM, load_tasks
        from llmtrain.tokenizer import load_tokenizer, manifest_eod_token

        _, self.loaded = load_tasks(self.names, self.include_path or None, "train.harness_tasks", quiet=True)
        tok, eod = load_tokenizer(t.data.tokenizer_path, manifest_eod_token(t.data.manifests))
        stages, seq_len, micro = t.cfg.parallel.pipeline_stages, t.cfg.train.seq_len, t.plan.micro  # the window
        fwd = Forward(logits=t.module.logits, device=t.device, seq_len=seq_len, batch_size=micro,
                      width=seq_len if stages > 1 else None,
                      dp_rank=t.plan.dp_rank, dp_world=t.world // stages, reduce=all_reduce)
        self.lm = HarnessLM(fwd, tok, eod, quiet=True)
        if t.rank == 0:
            print(f"harness: {', '.join(self.loaded['tasks'])} (lm-evaluation-harness, every evaluation)", flush=True)

    def _run(self, t) -> None:
        from llmtrain.checkpoint.ds import rng_state, set_rng_state
        from llmtrain.eval.harness import evaluate_loaded, task_metrics

        state = rng_state()  # lm-eval seeds and draws from the global generators: training must not notice
        t.module.eval()
        try:
            metrics = task_metrics(evaluate_loaded(self.lm, self.loaded))
        finally:
            t.module.train()
            set_rng_state(state)
        for task, m in metrics.items():
            self.results[task], self.steps[task] = m, t.step
            t.log({"step": t.step, "tokens": t.tokens, "split": f"harness:{task}", **m})
            if t.rank == 0:
                shown = "  ".join(f"{k} {v:.4f}" for k, v in m.items())
                print(f"step {t.step:>6} harness:{task} {shown}", flush=True)
        if t.rank == 0 and self.lm.cut_continuations:
            print(f"harness: {self.lm.cut_continuations} continuations longer than train.seq_len were scored on "
                  f"their last {self.lm.max_length} tokens (lm-eval's hf backend refuses them)", flush=True)
            self.lm.cut_continuations = 0

    def summary(self) -> dict:
        """TASK → {METRIC: value} of the last evaluation (for summary.json)."""
        return {task: dict(m) for task, m in self.results.items()}

    def state_dict(self) -> dict:
        return {"results": self.results, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.results = dict(state.get("results", {}))
        self.steps = dict(state.get("steps", {}))
