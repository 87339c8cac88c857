"""Derive the DeepSpeed config actually used from the YAML config and a DeepSpeed JSON.

One source of truth: batch sizes, clipping and precision come from the YAML (train.*); the
JSON contributes ZeRO, offload, communication and the like. A JSON value that contradicts the
YAML is an error naming both files; one that agrees is accepted.
"""
from __future__ import annotations

import json
from pathlib import Path

from llmtrain.config import Config
from llmtrain.core.errors import ConfigError
from llmtrain.core.paths import REPO_ROOT

DEFAULT_DS_CONFIG = REPO_ROOT / "ds_configs" / "zero0.json"


def load_ds_json(path: str | Path | None) -> tuple[dict, str]:
    path = Path(path) if path else DEFAULT_DS_CONFIG
    if not path.is_file():
        raise ConfigError(f"{path}: DeepSpeed config not found; pass one of ds_configs/*.json with --deepspeed_config")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}: malformed JSON ({e.msg}); fix the syntax there") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a JSON object")
    return data, str(path)


def batch_layout(cfg: Config, dp_world: int, where: str) -> tuple[int, int]:
    """(micro_batch_per_rank, grad_accumulation_steps) for train.global_batch_size."""
    G = cfg.train.global_batch_size
    if G % dp_world:
        raise ConfigError(
            f"{where}: train.global_batch_size={G} cannot be split over {dp_world} data-parallel ranks; "
            f"use a multiple of {dp_world}"
        )
    per_rank = G // dp_world
    micro = cfg.train.micro_batch_size or per_rank
    if per_rank % micro:
        raise ConfigError(
            f"{where}: train.micro_batch_size={micro} does not divide the {per_rank} sequences per rank "
            f"(global_batch_size {G} / {dp_world} ranks)"
        )
    return micro, per_rank // micro


def build_ds_config(cfg: Config, user: dict, user_path: str, yaml_path: str, dp_world: int) -> dict:
    ds = json.loads(json.dumps(user))  # deep copy
    micro, gas = batch_layout(cfg, dp_world, yaml_path)
    derived = {
        "train_batch_size": cfg.train.global_batch_size,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": gas,
        "gradient_clipping": cfg.train.grad_clip,
    }
    yaml_key = {
        "train_batch_size": "train.global_batch_size",
        "train_micro_batch_size_per_gpu": "train.micro_batch_size",
        "gradient_accumulation_steps": "train.global_batch_size / train.micro_batch_size",
        "gradient_clipping": "train.grad_clip",
    }
    for k, v in derived.items():
        if k in ds and ds[k] != "auto" and ds[k] != v:
            raise ConfigError(
                f"{user_path}: '{k}'={ds[k]} conflicts with {yaml_path} ({yaml_key[k]} gives {v}); "
                f"remove '{k}' from the JSON or set 'auto': the YAML is the source of truth"
            )
        ds[k] = v
    for k in ("optimizer", "scheduler"):
        if k in ds:
            raise ConfigError(
                f"{user_path}: '{k}' is set in the DeepSpeed JSON, but the optimizer and LR schedule come from "
                f"{yaml_path} (train.lr, train.schedule, ...); remove '{k}' from the JSON"
            )
    for prec in ("bf16", "fp16"):
        want = cfg.train.precision == prec
        section = ds.get(prec, {})
        if section.get("enabled") not in (None, "auto", want):
            raise ConfigError(
                f"{user_path}: '{prec}.enabled'={section.get('enabled')} conflicts with {yaml_path} "
                f"train.precision={cfg.train.precision}; remove it from the JSON"
            )
        section = dict(section)
        section["enabled"] = want
        ds[prec] = section
    ds.setdefault("steps_per_print", 10**9)
    ds.setdefault("wall_clock_breakdown", False)
    zero = ds.setdefault("zero_optimization", {"stage": 0})
    if cfg.parallel.pipeline_stages > 1 and zero.get("stage", 0) > 1:
        raise ConfigError(
            f"{user_path}: ZeRO stage {zero['stage']} cannot be combined with pipeline parallelism "
            f"(parallel.pipeline_stages={cfg.parallel.pipeline_stages}): DeepSpeed supports pipeline with "
            f"ZeRO-0/1 only; use ds_configs/zero1.json or parallel.pipeline_stages=1"
        )
    return ds


def zero_stage(ds: dict) -> int:
    return int(ds.get("zero_optimization", {}).get("stage", 0))
