"""DeepSpeed checkpoints: saves with an atomic 'latest', the client state (step, tokens, RNG of
every rank), and the checks before a resume (model shape, data settings, a finished run)."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from llmtrain.config import Config
from llmtrain.core.errors import ConfigError
from llmtrain.core.files import atomic_write_text


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
    """Every random state a step draws from on this rank: Python, NumPy, torch's CPU generator
    and the accelerator's (GPU dropout), so a resumed run continues bit for bit."""
    from deepspeed.accelerator import get_accelerator

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    acc = get_accelerator()
    if acc.device_name() != "cpu":
        state["accelerator"] = acc.get_rng_state().cpu()
        state["accelerator_name"] = acc.device_name()
    return state


def set_rng_state(state: dict) -> None:
    from deepspeed.accelerator import get_accelerator

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    acc = get_accelerator()
    if "accelerator" in state and acc.device_name() == state.get("accelerator_name"):
        acc.set_rng_state(state["accelerator"])


def check_same_model(old: dict, cfg: Config, source, hint: str) -> None:
    """Refuse, before loading, weights made by a model of another shape: every model field but
    dropout, z_loss (regularisers a continued run may change) and document_mask_token (where
    attention stops, not a weight) must match the saved ``old`` model section."""
    now = cfg.to_dict()["model"]
    free = ("dropout", "z_loss", "document_mask_token")
    diff = [k for k, v in now.items() if k not in free and k in old and old[k] != v]
    if diff:
        k = diff[0]
        raise ConfigError(f"{source}: the checkpoint is of another model shape (model.{k}={old[k]} there, "
                          f"{now[k]} now){hint}")


def check_checkpoint_shape(ckpt_dir: Path, cfg: Config) -> None:
    """check_same_model against the config.yaml of the run that wrote ``ckpt_dir``."""
    saved = ckpt_dir.parent / "config.yaml"
    if not saved.is_file():
        return
    import yaml

    old = (yaml.safe_load(saved.read_text()) or {}).get("model", {})
    check_same_model(old, cfg, ckpt_dir, f"; use a new --run-dir or the checkpoint's config {saved}")


# Settings a resume must keep for the data position to stay exact (model.seq_len, the positions,
# is checked with the model's shape; train.seq_len is the window). Raising max_steps or max_tokens is fine.
RESUME_FIXED = (("data", "prefix"), ("train", "global_batch_size"), ("train", "seed"), ("train", "seq_len"))


def check_resume_compatible(run_dir: Path, cfg: Config) -> None:
    """Refuse a resume whose data, global batch size or seed differ from the run's (the sample a
    step reads would change), unless checkpoint.allow_data_change=true."""
    saved = run_dir / "config.yaml"
    if cfg.checkpoint.allow_data_change or not saved.is_file():
        return
    import yaml

    old = yaml.safe_load(saved.read_text()) or {}
    now = cfg.to_dict()
    for section, key in RESUME_FIXED:
        was, is_ = (old.get(section) or {}).get(key), now[section][key]
        if (section, key) == ("train", "seq_len") and was is None:  # a run from before train.seq_len: its positions
            was = (old.get("model") or {}).get("seq_len")
        if section == "data" and was and is_ and Path(str(was)).resolve() == Path(str(is_)).resolve():
            continue
        if was is not None and was != is_:
            raise ConfigError(
                f"{saved}: the run was trained with {section}.{key}={was}, now {is_}; resuming would break the exact "
                f"data position. Keep {section}.{key}={was}, use a new --run-dir, or pass "
                f"checkpoint.allow_data_change=true to go on anyway"
            )


def finished_step(run_dir: Path) -> int | None:
    """The step at which the run in ``run_dir`` finished (summary.json with status finished), or None."""
    path = run_dir / "summary.json"
    if not path.is_file():
        return None
    try:
        s = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return int(s["steps"]) if s.get("status") == "finished" and s.get("steps") is not None else None
