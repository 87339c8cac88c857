"""The optional Weights & Biases sink."""
from __future__ import annotations

from pathlib import Path

from llmtrain.train.callbacks.base import Callback


class WandbSink(Callback):
    """Rank 0: records to Weights & Biases (log.wandb=true; WANDB_MODE=offline works without a
    network). The W&B run id is derived from the run folder, so a resumed run continues the
    same W&B run."""

    name = "wandb"

    def __init__(self, run_dir: Path, project: str | None):
        self.run_dir, self.project = Path(run_dir), project
        self.run = None

    def pre_train(self, t) -> None:
        import hashlib

        import wandb

        run_id = hashlib.sha256(str(self.run_dir.resolve()).encode()).hexdigest()[:16]
        self.run = wandb.init(project=self.project or "llmtrain", id=run_id, name=self.run_dir.name,
                              dir=str(self.run_dir), resume="allow", config=t.cfg.to_dict())

    def log_metrics(self, t, record: dict) -> None:
        from llmtrain.train.metrics import scalars

        self.run.log(scalars(record), step=record["step"])

    def log_summary(self, t, summary: dict, hparams: dict) -> None:
        self.run.summary.update({k: v for k, v in summary.items() if v is not None})

    def close(self, t) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
