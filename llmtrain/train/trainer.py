"""The Trainer: a short loop (``fit``) with callbacks around it (callbacks/: metrics, console,
non-finite guard, stop signal, evaluation, checkpoints, summary, W&B, profiler), and the
services and state those callbacks use.

Beside it: setup.py (validation and building a Trainer; start.py decides where a run starts
from), dist.py (process group, collectives), engine.py (model, optimizer, schedule → DeepSpeed
engine), module.py (one optimizer step per layout), loader.py (batches prepared ahead).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from llmtrain.checkpoint.ds import reseed, rng_state, save_checkpoint, set_rng_state
from llmtrain.config import Config
from llmtrain.data.dataset import DataBundle
from llmtrain.train.callbacks import Callback
from llmtrain.train.loader import BatchPlan, PrefetchLoader, host_micro_batches, to_device

__all__ = ["Trainer"]


def slow_save_for_tests() -> None:
    """LLMTRAIN_TEST_SAVE_SECONDS=S: every save takes S seconds longer, as a big model's save on a
    slow shared filesystem does (the Slurm tests check that a job lives until every rank saved)."""
    seconds = float(os.environ.get("LLMTRAIN_TEST_SAVE_SECONDS", "0") or 0)
    if seconds > 0:
        time.sleep(seconds)


class Trainer:
    """The loop and the state callbacks read: step, tokens, the engine and its train module."""

    def __init__(self, cfg: Config, run_dir: Path, engine, module, data: DataBundle, callbacks: list[Callback], *,
                 rank: int, world: int, device: torch.device, total_steps: int, plan: BatchPlan,
                 param_counts: dict, flops_per_token: float, peak_flops: float):
        self.cfg, self.run_dir, self.engine, self.module, self.data = cfg, run_dir, engine, module, data
        self.callbacks = callbacks
        self.rank, self.world, self.device = rank, world, device
        self.total_steps, self.plan = total_steps, plan
        self.tokens_per_step = cfg.train.global_batch_size * cfg.train.seq_len
        self.param_counts, self.flops_per_token, self.peak_flops = param_counts, flops_per_token, peak_flops
        self.step = self.tokens = 0
        self.wall_before = 0.0
        self.resumed = False
        self.status = "running"
        self.stop_reason: str | None = None
        self.last_checkpoint: str | None = None
        self.last_lr = 0.0
        self.summary: dict | None = None
        self.layout: dict | None = None  # train/ds_config.layout_of, recorded beside each checkpoint
        self._t_start = time.time()

    # --- the loop

    def fit(self) -> str:
        """Train to total_steps (or a stop request); returns "finished" or "stopped"."""
        self._t_start = time.time()
        self._each("pre_train")
        loader = PrefetchLoader(self.data.train, self.plan, self.step, self.device)
        try:
            while self.step < self.total_steps and not self.stop_reason:
                micro_batches = next(loader)
                self._each("pre_step")
                self.last_lr = self.engine.get_lr()[0]  # the LR this step uses
                stop = getattr(self.callback("stop_signal"), "received", None) is not None
                ckpt = self.callback("checkpoint")
                save = ckpt is not None and ckpt.asks_by_time(self)
                out = self.module.train_batch(micro_batches, stop_flag=stop, save_flag=save)
                self.step += 1
                self.tokens += self.tokens_per_step
                self._each("post_step", out)
            self.status = "stopped" if self.stop_reason else "finished"
            self._each("post_train")
        except BaseException as e:
            self._each("on_error", e)
            raise
        finally:
            loader.close()
            self._each("close")
        return self.status

    def _each(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    # --- services for callbacks

    def callback(self, name: str) -> Callback | None:
        return next((cb for cb in self.callbacks if cb.name == name), None)

    def log(self, record: dict) -> None:
        self._each("log_metrics", record)

    def request_stop(self, reason: str) -> None:
        if not self.stop_reason:
            self.stop_reason = reason
            if self.rank == 0:
                print(f"{reason}: saving a checkpoint at step {self.step} and exiting", flush=True)

    def elapsed(self) -> float:
        return self.wall_before + time.time() - self._t_start

    def evaluate(self, valid=None) -> float | None:
        """Mean loss over the first eval_batches x global_batch_size windows of the valid split
        (the same windows every time), over every data-parallel rank: one pass over all their
        micro-batches, so that with a loss mask it is the mean over every counted target.
        ``valid``: other held-out samples (one source's valid split) instead of the run's."""
        valid = self.data.valid if valid is None else valid
        if valid is None:
            return None
        G = self.cfg.train.global_batch_size
        n_batches = max(1, min(self.cfg.train.eval_batches, valid.num_samples // G))
        self.module.eval()
        micro = [mb for b in range(n_batches) for mb in host_micro_batches(valid, self.plan, b)]
        loss = self.module.eval_batch(to_device(micro, self.device))
        self.module.train()
        return float(loss)

    def save_checkpoint(self) -> str:
        if self.last_checkpoint and self.last_checkpoint.endswith(f"global_step{self.step}"):
            return self.last_checkpoint
        from llmtrain.checkpoint.layout_free import gpt_names

        names = (gpt_names(self.cfg.parallel.pipeline_stages > 1, self.cfg.model.n_layer)
                 if self.cfg.checkpoint.layout_free else None)
        slow_save_for_tests()
        path = save_checkpoint(self.engine, self.run_dir, self.step, self.state_dict(), self.rank, self.layout, names)
        self.last_checkpoint = path
        self._each("on_checkpoint", path)
        return path

    # --- state

    def state_dict(self) -> dict:
        import torch.distributed as dist

        rngs = [None] * self.world
        dist.all_gather_object(rngs, rng_state())
        return {"step": self.step, "tokens": self.tokens, "wall_time": self.elapsed(), "rng": rngs,
                "callbacks": {cb.name: cb.state_dict() for cb in self.callbacks}}

    def load_state_dict(self, client: dict, exact: bool) -> None:
        """Restore step, tokens and this rank's RNG from a checkpoint's client state; ``exact`` (a
        resume of this run, not a branch from another): also the wall time and every callback's state.
        Rank r takes the RNG state saved by rank r; a rank the saving run did not have (a resume on
        more ranks) is seeded from (seed, rank, step)."""
        self.step, self.tokens = int(client["step"]), int(client["tokens"])
        rngs = client["rng"]
        if self.rank < len(rngs):
            set_rng_state(rngs[self.rank])
        else:
            reseed(self.cfg.train.seed, self.rank, self.step)
        if not exact:  # a branch counts only its own wall time and starts its own monitors
            return
        self.wall_before = float(client.get("wall_time", 0.0))
        states = client.get("callbacks", {})
        legacy = {"nonfinite": {"bad_steps": client.get("bad_steps", 0)}}
        for cb in self.callbacks:
            cb.load_state_dict(states.get(cb.name, legacy.get(cb.name, {})))
