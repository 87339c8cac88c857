"""Checkpoints: DeepSpeed saves with an atomic 'latest', the client state (step, tokens, RNG of
every rank), the model-shape check before a resume, and trimming the metrics log on resume."""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from llmtrain.config import Config, ConfigError
from llmtrain.utils import atomic_write_text


def save_checkpoint(engine, run_dir: Path, step: int, client_state: dict, rank: int) -> str:
    """DeepSpeed checkpoint under RUN/checkpoints/global_step{step}; 'latest' is written only
    after every rank finished, through a rename, so an interrupted save never becomes latest."""
    import torch.distributed as dist

    ckpt_dir = run_dir / "checkpoints"
    tag = f"global_step{step}"
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False)
    dist.barrier()
    if rank == 0:
        atomic_write_text(ckpt_dir / "latest", tag)
    dist.barrier()
    return str(ckpt_dir / tag)


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


@dataclass
class Progress:
    step: int = 0
    tokens: int = 0
    wall_time: float = 0.0
    bad_steps: int = 0
    last_train_losses: list = field(default_factory=list)
    last_valid_loss: float | None = None


def check_same_model(old: dict, cfg: Config, source, hint: str) -> None:
    """Refuse, before loading, weights made by a model of another shape: every model field
    but dropout must match the saved ``old`` model section."""
    now = cfg.to_dict()["model"]
    diff = [k for k, v in now.items() if k != "dropout" and k in old and old[k] != v]
    if diff:
        k = diff[0]
        raise ConfigError(f"{source}: the checkpoint is of another model shape (model.{k}={old[k]} there, {now[k]} now){hint}")


def check_checkpoint_shape(ckpt_dir: Path, cfg: Config) -> None:
    """check_same_model against the config.yaml of the run that wrote ``ckpt_dir``."""
    saved = ckpt_dir.parent / "config.yaml"
    if not saved.is_file():
        return
    import yaml

    old = (yaml.safe_load(saved.read_text()) or {}).get("model", {})
    check_same_model(old, cfg, ckpt_dir, f"; use a new --run-dir or the checkpoint's config {saved}")


def truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop records logged after the checkpoint's step, so the log reads as one run."""
    if not path.is_file():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
    atomic_write_text(path, "".join(ln + "\n" for ln in keep))


def checkpoint_state(prog: Progress, wall: float, world: int) -> dict:
    import torch.distributed as dist

    states = [None] * world
    dist.all_gather_object(states, rng_state())
    return {"step": prog.step, "tokens": prog.tokens, "wall_time": wall, "bad_steps": prog.bad_steps, "rng": states}
