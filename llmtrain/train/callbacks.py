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

Adding a logger or a monitor is a new class in this file and one line in
``default_callbacks``; the loop does not change. Callbacks that write files do so on rank 0
only; those that communicate (evaluation, checkpoints, the stop signal) run on every rank.
"""
from __future__ import annotations

import math
import os
import signal
import time
from pathlib import Path

import numpy as np
import torch

from llmtrain.utils import atomic_write_json


class RunError(RuntimeError):
    """A problem found while running, reported as one line."""


class Callback:
    name = "callback"

    def pre_train(self, t) -> None: ...
    def pre_step(self, t) -> None: ...
    def post_step(self, t, out) -> None: ...
    def log_metrics(self, t, record: dict) -> None: ...
    def on_checkpoint(self, t, path: str) -> None: ...
    def log_summary(self, t, summary: dict, hparams: dict) -> None: ...
    def post_train(self, t) -> None: ...
    def on_error(self, t, exc: BaseException) -> None: ...
    def close(self, t) -> None: ...

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...


# ----------------------------------------------------------------------------- metrics


class Throughput(Callback):
    """At every log_interval (and the last step): the train record, with the step's loss read
    from the device once for all the steps since the previous record; keeps the last interval's
    losses for the summary's final_train_loss."""

    name = "throughput"

    def __init__(self):
        self.pending: list[torch.Tensor] = []
        self.last_train_losses: list[float] = []

    def pre_train(self, t) -> None:
        self.t_last, self.tokens_last = time.time(), t.tokens

    def post_step(self, t, out) -> None:
        if out.skipped:
            return
        self.pending.append(out.loss)
        if t.step % t.cfg.train.log_interval and t.step != t.total_steps:
            return
        counted = out.loss_tokens if out.loss_tokens is not None else torch.full_like(out.loss, float("nan"))
        losses = torch.stack(self.pending + [counted.reshape(()).to(out.loss)]).tolist()  # the one host read
        loss_tokens = int(losses.pop()) if math.isfinite(losses[-1]) else None
        self.pending = []
        finite = [v for v in losses if math.isfinite(v)]
        self.last_train_losses = (self.last_train_losses + finite)[-t.cfg.train.log_interval:]
        dt = max(time.time() - self.t_last, 1e-9)
        tps = (t.tokens - self.tokens_last) / dt
        achieved = tps * t.flops_per_token / t.world
        gn = out.grad_norm
        t.log({
            "step": t.step, "tokens": t.tokens, "loss": losses[-1], "loss_tokens": loss_tokens, "lr": t.last_lr,
            "grad_norm": float(gn) if gn is not None else None,
            "tokens_per_s": tps, "tflops_per_device": achieved / 1e12,
            "mfu": achieved / t.peak_flops if t.peak_flops else None, "elapsed_s": t.elapsed(),
            **memory_stats(t.device),
        })
        self.t_last, self.tokens_last = time.time(), t.tokens

    def state_dict(self) -> dict:
        return {"last_train_losses": self.last_train_losses}

    def load_state_dict(self, state: dict) -> None:
        self.last_train_losses = list(state.get("last_train_losses", []))


class JsonlAndTensorBoard(Callback):
    """Rank 0: every record to RUN/metrics.jsonl (one JSON object a line) and its numbers to
    TensorBoard under <split>/<key>; HParams at the end. On resume, what was logged after the
    checkpoint is dropped from both, so the run reads as one. A run that starts over in a folder
    that has metrics (checkpoint.resume=false, or no checkpoint to resume from) moves the old
    metrics.jsonl to metrics.jsonl.prev and hides the old TensorBoard steps, so two runs never
    read as one."""

    name = "metrics"

    def __init__(self, run_dir: Path, tensorboard: bool):
        self.run_dir, self.tensorboard = Path(run_dir), tensorboard
        self.sink = None

    def pre_train(self, t) -> None:
        from llmtrain.train.checkpoint import truncate_metrics
        from llmtrain.train.metrics import MetricsLogger

        path = self.run_dir / "metrics.jsonl"
        if t.resumed:
            truncate_metrics(path, t.step)
        elif path.is_file() and path.stat().st_size:
            os.replace(path, path.with_name("metrics.jsonl.prev"))
            print(f"{self.run_dir}: starting over (not resuming); the earlier run's metrics.jsonl is now "
                  f"metrics.jsonl.prev", flush=True)
        self.sink = MetricsLogger(self.run_dir, self.tensorboard, purge_step=t.step + 1)

    def log_metrics(self, t, record: dict) -> None:
        if self.sink is not None:
            self.sink.log(record)

    def log_summary(self, t, summary: dict, hparams: dict) -> None:
        final = {"final_train_loss": summary["final_train_loss"], "final_valid_loss": summary["final_valid_loss"]}
        for name, r in (summary.get("tasks") or {}).items():
            final.update({f"task:{name}/acc": r["acc"], f"task:{name}/acc_norm": r["acc_norm"]})
        self.sink.log_hparams(hparams, final)

    def close(self, t) -> None:
        if self.sink is not None:
            self.sink.close()
            self.sink = None


class Console(Callback):
    """Rank 0: one line per train record, valid loss and skipped step."""

    name = "console"

    def log_metrics(self, t, r: dict) -> None:
        if r.get("event"):
            what = r["event"].replace("_", " ")
            print(f"step {r['step']:>6}: {what}, step skipped ({r['bad_steps_in_a_row']} in a row)", flush=True)
        elif r.get("split"):
            if "loss" in r:
                print(f"step {r['step']:>6} {r['split']} loss {r['loss']:.4f}", flush=True)
        else:
            gn = r["grad_norm"] if r["grad_norm"] is not None else float("nan")
            eta = (t.total_steps - t.step) * t.tokens_per_step / max(r["tokens_per_s"], 1e-9)
            print(f"step {r['step']:>6}/{t.total_steps} loss {r['loss']:.4f} lr {r['lr']:.2e} gnorm {gn:.3f} "
                  f"{r['tokens_per_s']:,.0f} tok/s mfu {r['mfu'] or 0:.1%} eta {eta:,.0f}s", flush=True)


def memory_stats(device: torch.device) -> dict:
    from llmtrain.train.metrics import memory_stats as stats

    return stats(device)


# ----------------------------------------------------------------------------- guards


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
    read one step later, when that reduction is long done, so the host never waits for it."""

    name = "stop_signal"

    def __init__(self):
        self.received: str | None = None
        self.pending: torch.Tensor | None = None

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name

    def post_step(self, t, out) -> None:
        if self.pending is not None and float(self.pending) > 0:
            t.request_stop(f"received {self.received or 'a stop signal (on another rank)'}")
        self.pending = out.stop


# ----------------------------------------------------------------------------- eval and checkpoints


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
    """Valid loss every train.eval_interval steps and at the end."""

    name = "eval"

    def __init__(self):
        self.last_valid_loss: float | None = None

    def _run(self, t) -> None:
        vl = t.evaluate()
        if vl is not None:
            self.last_valid_loss = vl
            t.log({"step": t.step, "tokens": t.tokens, "split": "valid", "loss": vl})

    def state_dict(self) -> dict:
        return {"last_valid_loss": self.last_valid_loss}

    def load_state_dict(self, state: dict) -> None:
        self.last_valid_loss = state.get("last_valid_loss")


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
            "steps": t.step,
            "tokens": t.tokens,
            "flops": 6.0 * counts["n_params"] * t.tokens,
            "flops_with_attention": t.flops_per_token * t.tokens,
            "flops_per_token": t.flops_per_token,
            "final_train_loss": final_train,
            "final_valid_loss": ev.last_valid_loss if ev else None,
            "wall_time_s": t.elapsed(),
            "world_size": t.world,
            "seq_len": t.cfg.model.seq_len,
            "global_batch_size": t.cfg.train.global_batch_size,
            "lr": t.cfg.train.lr,
            "checkpoint": t.last_checkpoint,
        }
        tasks = t.callback("tasks")
        if tasks is not None:
            summary["tasks"] = tasks.summary()
        atomic_write_json(t.run_dir / "summary.json", summary)
        d = t.cfg.to_dict()
        hp = {f"model.{k}": v for k, v in d["model"].items()}
        hp.update({f"train.{k}": v for k, v in d["train"].items()})
        hp.update({"n_params": counts["n_params"], "tokens": t.tokens})
        t.summary = summary
        for cb in t.callbacks:
            cb.log_summary(t, summary, hp)


# ----------------------------------------------------------------------------- optional


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
        split = record.get("split", "train")
        data = {f"{split}/{k}": v for k, v in record.items()
                if k not in ("step", "split") and isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.run.log(data, step=record["step"])

    def log_summary(self, t, summary: dict, hparams: dict) -> None:
        self.run.summary.update({k: v for k, v in summary.items() if v is not None})

    def close(self, t) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


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


def default_callbacks(cfg, run_dir: Path, rank: int, stop: StopOnSignal) -> list[Callback]:
    """The callbacks of a run, in the order their hooks run."""
    cbs: list[Callback] = []
    if cfg.train.profile_steps:
        cbs.append(Profiler(run_dir, cfg.train.profile_steps))
    cbs.append(Throughput())
    if rank == 0:
        cbs.append(JsonlAndTensorBoard(run_dir, cfg.log.tensorboard))
        cbs.append(Console())
        if cfg.log.wandb or os.environ.get("LLMTRAIN_WANDB") == "1":
            cbs.append(WandbSink(run_dir, cfg.log.wandb_project))
    cbs += [NonFiniteGuard(cfg.train.max_bad_steps), stop, Evaluate()]
    if cfg.train.eval_tasks:
        from llmtrain.train.task_eval import TaskEval

        cbs.append(TaskEval(cfg.train.eval_tasks))
    cbs += [Checkpointing(), Summary()]
    return cbs
