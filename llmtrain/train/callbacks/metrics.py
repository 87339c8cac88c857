"""Metrics: the train record of each logged step (Throughput), metrics.jsonl and TensorBoard
(rank 0), and the console line."""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch

from llmtrain.train.callbacks.base import Callback
from llmtrain.train.metrics import MetricsLogger, memory_stats, truncate_metrics


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
            **memory_stats(t.device), **data_position(t),
        })
        self.t_last, self.tokens_last = time.time(), t.tokens

    def state_dict(self) -> dict:
        return {"last_train_losses": self.last_train_losses}

    def load_state_dict(self, state: dict) -> None:
        self.last_train_losses = list(state.get("last_train_losses", []))


def data_position(t) -> dict:
    """The data stage of the step just trained and the training tokens each source has given so
    far (host arithmetic on the sample positions; no device work)."""
    samples = t.step * t.cfg.train.global_batch_size
    return {"stage": t.data.stage_at(samples - 1), "tokens_by_source": t.data.tokens_by_source(samples)}


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
        final.update({f"valid:{name}/loss": v for name, v in (summary.get("valid_loss_by_source") or {}).items()})
        for name, r in (summary.get("tasks") or {}).items():
            final.update({f"task:{name}/acc": r["acc"], f"task:{name}/acc_norm": r["acc_norm"]})
        for name, r in (summary.get("harness") or {}).items():
            final.update({f"harness:{name}/{k}": v for k, v in r.items()})
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
