"""A torch.profiler trace of chosen steps."""
from __future__ import annotations

from pathlib import Path

from llmtrain.train.callbacks.base import Callback


class Profiler(Callback):
    """A torch.profiler trace of steps [a, b) (train.profile_steps=[a, b]) per rank, written to
    RUN/profile/ for TensorBoard's profiler plugin or chrome://tracing."""

    name = "profiler"

    def __init__(self, run_dir: Path, steps: list[int]):
        self.out = Path(run_dir) / "profile"
        self.first, self.last = steps
        self.prof = None

    def pre_step(self, t) -> None:
        if t.step == self.first and self.prof is None:
            from torch.profiler import ProfilerActivity, profile

            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if t.device.type == "cuda" else [])
            self.prof = profile(activities=acts, record_shapes=True, with_stack=False)
            self.prof.__enter__()

    def post_step(self, t, out) -> None:
        if self.prof is not None and t.step >= self.last:
            self._finish(t)

    def _finish(self, t) -> None:
        self.prof.__exit__(None, None, None)
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / f"trace_rank{t.rank}_steps{self.first}-{self.last}.json"
        self.prof.export_chrome_trace(str(path))
        self.prof = None
        if t.rank == 0:
            print(f"profile: {path}", flush=True)

    def post_train(self, t) -> None:
        if self.prof is not None:
            self._finish(t)
