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
    set_precision(cfg, ds, user_path, yaml_path)
    ds.setdefault("steps_per_print", 10**9)
    ds.setdefault("wall_clock_breakdown", False)
    zero = ds.setdefault("zero_optimization", {"stage": 0})
    if cfg.parallel.pipeline_stages > 1 and zero.get("stage", 0) > 1:
        raise ConfigError(
            f"{user_path}: ZeRO stage {zero['stage']} cannot be combined with pipeline parallelism "
            f"(parallel.pipeline_stages={cfg.parallel.pipeline_stages}): DeepSpeed supports pipeline with "
            f"ZeRO-0/1 only; use ds_configs/zero1.json or parallel.pipeline_stages=1"
        )
    nvme = [k for k in ("offload_optimizer", "offload_param") if (zero.get(k) or {}).get("device") == "nvme"]
    if nvme and cfg.checkpoint.layout_free:
        raise ConfigError(
            f"{user_path}: zero_optimization.{nvme[0]} on NVMe is not covered by the layout-free state written "
            f"beside each checkpoint; set checkpoint.layout_free=false in {yaml_path} (such a run resumes only on "
            f"its own layout)"
        )
    return ds


def set_precision(cfg: Config, ds: dict, user_path: str, yaml_path: str) -> None:
    """The precision sections of ``ds`` from train.precision, train.grad_accum_dtype and
    train.grad_reduce_dtype. Under bf16, gradients are accumulated and reduced in fp32 unless
    those say bf16:

    - ZeRO-1/2/3 (and the pipeline on ZeRO-1): DeepSpeed's bf16 (bf16 weights, fp32 master
      weights in the optimizer) with ``data_types.grad_accum_dtype`` and ``communication_data_type``;
    - ZeRO-0 (dense or pipeline): DeepSpeed has no bf16 path without ZeRO that accumulates in fp32
      (it raises NotImplementedError for that mix), so the weights stay fp32 and the forward and
      backward run under torch autocast to bf16 (DeepSpeed's ``torch_autocast``): gradients are
      fp32 and the optimizer steps the weights themselves. grad_accum_dtype=bf16 there selects
      DeepSpeed's bf16 instead (bf16 weights and gradients).
    """
    t = cfg.train
    for prec in ("bf16", "fp16"):
        section = ds.get(prec, {})
        if section.get("enabled") not in (None, "auto", t.precision == prec):
            raise ConfigError(
                f"{user_path}: '{prec}.enabled'={section.get('enabled')} conflicts with {yaml_path} "
                f"train.precision={t.precision}; remove it from the JSON"
            )
        ds[prec] = {**section, "enabled": t.precision == prec}
    if t.precision == "fp16":
        return  # DeepSpeed's fp16 (GPU only), as configured in the JSON
    derived = {"communication_data_type": t.grad_reduce_dtype if t.precision == "bf16" else "fp32"}
    autocast = t.precision == "bf16" and zero_stage(ds) == 0 and t.grad_accum_dtype == "fp32"
    if autocast:
        ds["bf16"]["enabled"] = False
        derived["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    elif t.precision == "bf16":
        derived["data_types"] = {"grad_accum_dtype": t.grad_accum_dtype}
    source = {"communication_data_type": "train.grad_reduce_dtype", "data_types": "train.grad_accum_dtype",
              "torch_autocast": "train.precision"}
    for key in ("communication_data_type", "data_types", "torch_autocast"):
        if key in ds and ds[key] != derived.get(key):
            raise ConfigError(
                f"{user_path}: '{key}'={json.dumps(ds[key])} conflicts with {yaml_path} ({source[key]}="
                f"{getattr(t, source[key].split('.')[1])} gives {json.dumps(derived.get(key))}); remove '{key}' from "
                f"the JSON: the YAML is the source of truth"
            )
    ds.update(derived)


def layout_of(cfg: Config, ds: dict, world: int) -> dict:
    """The layout a run trains in, as recorded beside each checkpoint (layout.json) and compared
    on a resume: same layout resumes from DeepSpeed's own checkpoint, another one from the
    layout-free state (llmtrain/checkpoint/layout_free.py)."""
    zero = ds.get("zero_optimization", {})
    bf16 = ("deepspeed" if ds.get("bf16", {}).get("enabled") else
            "autocast" if ds.get("torch_autocast", {}).get("enabled") else None)
    return {
        "world_size": world,
        "pipeline_stages": cfg.parallel.pipeline_stages,
        "expert_parallel": cfg.parallel.expert_parallel_size,
        "data_parallel": world // cfg.parallel.pipeline_stages,
        "zero_stage": zero_stage(ds),
        "precision": cfg.train.precision,
        "bf16": bf16,
        "grad_accum_dtype": cfg.train.grad_accum_dtype if cfg.train.precision == "bf16" else "fp32",
        "offload_optimizer": (zero.get("offload_optimizer") or {}).get("device"),
        "offload_param": (zero.get("offload_param") or {}).get("device"),
    }


def zero_stage(ds: dict) -> int:
    return int(ds.get("zero_optimization", {}).get("stage", 0))
