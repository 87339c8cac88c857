"""Guards: skipped (non-finite) steps, and stopping on SIGTERM/SIGINT (preemption)."""
from __future__ import annotations

import math

import torch

from llmtrain.core.errors import RunError
from llmtrain.core.signals import catch_stop_signals, stop_signal
from llmtrain.train.callbacks.base import Callback


class NonFiniteGuard(Callback):
    """Counts skipped steps (non-finite loss or gradients: the weights did not move) and stops
    the run after train.max_bad_steps in a row, naming the last checkpoint saved before the
    streak began."""

    name = "nonfinite"

    def __init__(self, max_bad_steps: int):
        self.max_bad = max_bad_steps
        self.bad_steps = 0
        self.last_good: str | None = None

    def post_step(self, t, out) -> None:
        if not out.skipped:
            self.bad_steps = 0
            return
        self.bad_steps += 1
        loss = float(out.loss)  # a skipped step is rare: reading its loss now is fine
        finite = math.isfinite(loss)
        t.log({"step": t.step, "tokens": t.tokens, "event": "non_finite_gradients" if finite else "non_finite_loss",
               "loss": loss if finite else None, "skipped": True, "bad_steps_in_a_row": self.bad_steps})
        if self.bad_steps >= self.max_bad:
            raise RunError(
                f"{self.bad_steps} skipped steps (non-finite loss or gradients) in a row at step {t.step}; last good "
                f"checkpoint: {self.last_good or 'none'}; lower train.lr or check the data"
            )

    def on_checkpoint(self, t, path: str) -> None:
        if self.bad_steps == 0:
            self.last_good = path

    def state_dict(self) -> dict:
        return {"bad_steps": self.bad_steps, "last_good": self.last_good}

    def load_state_dict(self, state: dict) -> None:
        self.bad_steps = int(state.get("bad_steps", 0))
        self.last_good = state.get("last_good")


class StopOnSignal(Callback):
    """SIGTERM/SIGINT (preemption): every rank finishes its step, a checkpoint is saved and the
    run exits 0. The flag travels with the step's loss reduction (no extra collective) and is
    read one step later, when that reduction is long done, so the host never waits for it. The
    signals are caught by llmtrain.core.signals (launcher/pretrain.py catches them first thing)."""

    name = "stop_signal"

    def __init__(self):
        self.pending: torch.Tensor | None = None

    def install(self) -> None:
        catch_stop_signals()

    @property
    def received(self) -> str | None:
        return stop_signal()

    def post_step(self, t, out) -> None:
        if self.pending is not None and float(self.pending) > 0:
            t.request_stop(f"received {self.received or 'a stop signal (on another rank)'}")
        self.pending = out.stop
