"""When checkpoints are saved."""
from __future__ import annotations

from llmtrain.train.callbacks.base import Callback


class Checkpointing(Callback):
    """A checkpoint every checkpoint.interval steps, at checkpoint.save_steps, on a stop
    request, and at the end (checkpoint.save_final)."""

    name = "checkpoint"

    def post_step(self, t, out) -> None:
        c = t.cfg.checkpoint
        periodic = c.interval and t.step % c.interval == 0
        if t.stop_reason or ((periodic or t.step in c.save_steps) and t.step < t.total_steps):
            t.save_checkpoint()

    def post_train(self, t) -> None:
        if t.status == "finished" and t.cfg.checkpoint.save_final:
            t.save_checkpoint()
