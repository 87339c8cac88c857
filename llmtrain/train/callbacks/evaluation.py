"""Periodic evaluation: the valid loss every train.eval_interval steps and at the end."""
from __future__ import annotations

from llmtrain.train.callbacks.base import Callback


def eval_due(t) -> bool:
    """An evaluation is due after this step: every train.eval_interval steps, except the last
    (evaluated in post_train) and a step that ends in a stop."""
    every = t.cfg.train.eval_interval
    return bool(every) and t.step % every == 0 and t.step < t.total_steps and not t.stop_reason


class PeriodicEval(Callback):
    """Base of the evaluations: ``_run(t)`` every train.eval_interval steps and at the end of a
    finished run."""

    def _run(self, t) -> None:
        raise NotImplementedError

    def post_step(self, t, out) -> None:
        if eval_due(t):
            self._run(t)

    def post_train(self, t) -> None:
        if t.status == "finished":
            self._run(t)


class Evaluate(PeriodicEval):
    """Valid loss every train.eval_interval steps and at the end: the run's blended valid split
    ("split": "valid"), and, when the run reads several datasets (a blend or data stages), each
    dataset's valid split alone ("split": "valid:NAME")."""

    name = "eval"

    def __init__(self):
        self.last_valid_loss: float | None = None
        self.last_by_source: dict[str, float] = {}

    def _run(self, t) -> None:
        vl = t.evaluate()
        if vl is not None:
            self.last_valid_loss = vl
            t.log({"step": t.step, "tokens": t.tokens, "split": "valid", "loss": vl})
        for name, samples in t.data.per_source_valid().items():
            loss = t.evaluate(samples)
            self.last_by_source[name] = loss
            t.log({"step": t.step, "tokens": t.tokens, "split": f"valid:{name}", "loss": loss})

    def state_dict(self) -> dict:
        return {"last_valid_loss": self.last_valid_loss, "last_by_source": self.last_by_source}

    def load_state_dict(self, state: dict) -> None:
        self.last_valid_loss = state.get("last_valid_loss")
        self.last_by_source = dict(state.get("last_by_source") or {})
