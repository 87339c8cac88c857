"""summary.json at the end of a finished run (what a scaling fit reads) and the HParams."""
from __future__ import annotations

import numpy as np

from llmtrain.core.files import atomic_write_json
from llmtrain.train.callbacks.base import Callback


class Summary(Callback):
    """Rank 0, at the end of a finished run: summary.json (what a scaling fit reads) and the
    hyperparameters and final metrics for TensorBoard's HParams and other sinks."""

    name = "summary"

    def post_train(self, t) -> None:
        if t.status != "finished" or t.rank != 0:
            return
        tp = t.callback("throughput")
        ev = t.callback("eval")
        final_train = float(np.mean(tp.last_train_losses)) if tp and tp.last_train_losses else None
        counts = t.param_counts
        summary = {
            "status": "finished",
            "name": t.cfg.log.name,
            "n_params": counts["n_params"],
            "n_params_non_embedding": counts["n_params_non_embedding"],
            "n_params_active": counts["n_params_active"],  # = n_params for a dense model
            "n_params_active_non_embedding": counts["n_params_active_non_embedding"],
            "steps": t.step,
            "tokens": t.tokens,
            "flops": 6.0 * counts["n_params_active"] * t.tokens,
            "flops_with_attention": t.flops_per_token * t.tokens,
            "flops_per_token": t.flops_per_token,
            "final_train_loss": final_train,
            "final_valid_loss": ev.last_valid_loss if ev else None,
            "wall_time_s": t.elapsed(),
            "world_size": t.world,
            "seq_len": t.cfg.train.seq_len,  # the window trained (flops_per_token counts attention over it)
            "positions": t.cfg.model.seq_len,
            "global_batch_size": t.cfg.train.global_batch_size,
            "lr": t.cfg.train.lr,
            "checkpoint": t.last_checkpoint,
            "tokens_by_source": t.data.tokens_by_source(t.step * t.cfg.train.global_batch_size),
            "stages": t.data.stage_summary(t.step * t.cfg.train.global_batch_size, t.cfg.train.global_batch_size),
        }
        if ev and ev.last_by_source:
            summary["valid_loss_by_source"] = dict(ev.last_by_source)
        tasks = t.callback("tasks")
        if tasks is not None:
            summary["tasks"] = tasks.summary()
        harness = t.callback("harness")
        if harness is not None:
            summary["harness"] = harness.summary()
        atomic_write_json(t.run_dir / "summary.json", summary)
        d = t.cfg.to_dict()
        hp = {f"model.{k}": v for k, v in d["model"].items()}
        hp.update({f"train.{k}": v for k, v in d["train"].items()})
        hp.update({"n_params": counts["n_params"], "n_params_active": counts["n_params_active"], "tokens": t.tokens})
        t.summary = summary
        for cb in t.callbacks:
            cb.log_summary(t, summary, hp)
