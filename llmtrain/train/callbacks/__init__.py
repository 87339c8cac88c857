"""Everything around the training loop, as callbacks (the loop itself is in trainer.py).

A callback overrides the hooks it needs; each hook gets the Trainer. Hooks:

    pre_train(t)              after set-up and resume, before the first step
    pre_step(t)               before each optimizer step
    post_step(t, out)         after each optimizer step (``out``: module.StepOutput)
    log_metrics(t, record)    a record to show or store (t.log sends it to every callback)
    on_checkpoint(t, path)    a checkpoint was saved at t.step
    log_summary(t, summary, hparams)  the run finished: its summary.json and hyperparameters
    post_train(t)             after the loop (t.status: "finished" or "stopped")
    on_error(t, exc)          the loop raised
    close(t)                  last of all, after post_train or on_error: release files and runs
    state_dict() / load_state_dict(state)  saved in every checkpoint, restored on resume

Adding a logger or a monitor is a new file in this package and one line in
``default_callbacks``; the loop does not change. Callbacks that write files do so on rank 0
only; those that communicate (evaluation, checkpoints, the stop signal) run on every rank.
"""
from __future__ import annotations

import os
from pathlib import Path

from llmtrain.train.callbacks.base import Callback
from llmtrain.train.callbacks.checkpointing import Checkpointing
from llmtrain.train.callbacks.evaluation import Evaluate, PeriodicEval, eval_due
from llmtrain.train.callbacks.guards import NonFiniteGuard, StopOnSignal
from llmtrain.train.callbacks.harness import HarnessEval
from llmtrain.train.callbacks.metrics import Console, JsonlAndTensorBoard, Throughput
from llmtrain.train.callbacks.moe import MoEMetrics
from llmtrain.train.callbacks.profiler import Profiler
from llmtrain.train.callbacks.summary import Summary
from llmtrain.train.callbacks.tasks import TaskEval
from llmtrain.train.callbacks.wandb import WandbSink

__all__ = ["Callback", "Checkpointing", "Console", "Evaluate", "HarnessEval", "JsonlAndTensorBoard", "MoEMetrics",
           "NonFiniteGuard", "PeriodicEval", "Profiler", "StopOnSignal", "Summary", "TaskEval", "Throughput",
           "WandbSink", "default_callbacks", "eval_due"]


def default_callbacks(cfg, run_dir: Path, rank: int, stop: StopOnSignal) -> list[Callback]:
    """The callbacks of a run, in the order their hooks run."""
    cbs: list[Callback] = []
    if cfg.train.profile_steps:
        cbs.append(Profiler(run_dir, cfg.train.profile_steps))
    cbs.append(Throughput())
    if cfg.model.is_moe:
        cbs.append(MoEMetrics())
    if rank == 0:
        cbs.append(JsonlAndTensorBoard(run_dir, cfg.log.tensorboard))
        cbs.append(Console())
        if cfg.log.wandb or os.environ.get("LLMTRAIN_WANDB") == "1":
            cbs.append(WandbSink(run_dir, cfg.log.wandb_project))
    cbs += [NonFiniteGuard(cfg.train.max_bad_steps), stop, Evaluate()]
    if cfg.train.eval_tasks:
        cbs.append(TaskEval(cfg.train.eval_tasks))
    if cfg.train.harness_tasks:
        cbs.append(HarnessEval(cfg.train.harness_tasks, cfg.train.harness_include_path))
    cbs += [Checkpointing(), Summary()]
    return cbs
