"""When checkpoints are saved, and which are kept."""
from __future__ import annotations

import time

from llmtrain.checkpoint.prune import prune_checkpoints
from llmtrain.train.callbacks.base import Callback


class Checkpointing(Callback):
    """A checkpoint every checkpoint.interval steps, every checkpoint.interval_minutes of wall
    time, at checkpoint.save_steps, on a stop request, and at the end (checkpoint.save_final);
    then only the newest checkpoint.keep_last are kept (with `latest`, the save_steps ones and
    the last one before a streak of skipped steps).

    The time is rank 0's: clocks of other nodes may differ, and ranks that saved at different
    steps would hang. Rank 0 asks through the step's loss all-reduce (``asks_by_time``), and every
    rank reads the answer one step later, when that reduction is long done."""

    name = "checkpoint"

    def __init__(self):
        self.clock = time.monotonic()
        self.pending = None  # the previous step's "rank 0 asks for a checkpoint" (on the accelerator)

    def pre_train(self, t) -> None:
        self.clock = time.monotonic()

    def asks_by_time(self, t) -> bool:
        """Rank 0, before a step: is a checkpoint due by time? (Asking restarts the clock.)"""
        minutes = t.cfg.checkpoint.interval_minutes
        if t.rank != 0 or not minutes or time.monotonic() - self.clock < minutes * 60:
            return False
        self.clock = time.monotonic()
        return True

    def post_step(self, t, out) -> None:
        c = t.cfg.checkpoint
        by_time = c.interval_minutes > 0 and self.pending is not None and float(self.pending) > 0
        self.pending = out.save
        periodic = c.interval and t.step % c.interval == 0
        if t.stop_reason or ((periodic or by_time or t.step in c.save_steps) and t.step < t.total_steps):
            t.save_checkpoint()

    def post_train(self, t) -> None:
        if t.status == "finished" and t.cfg.checkpoint.save_final:
            t.save_checkpoint()

    def on_checkpoint(self, t, path: str) -> None:
        self.clock = time.monotonic()
        c = t.cfg.checkpoint
        if t.rank == 0 and c.keep_last:
            guard = t.callback("nonfinite")
            keep = [getattr(guard, "last_good", None)]
            prune_checkpoints(t.run_dir / "checkpoints", c.keep_last, c.save_steps, [p for p in keep if p])
