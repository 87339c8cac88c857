"""Read any of the trainer's DeepSpeed checkpoints (ZeRO 0-3, CPU offload, pipeline, experts on
any number of ranks) back into one plain GPT state dict, whatever layout wrote it.

    python launcher/consolidate.py RUN_DIR_OR_CHECKPOINT --out model.pt

A checkpoint is named by its run folder (the latest checkpoint), its checkpoints/ folder, or a
step folder (checkpoints/global_stepN). The model's shape comes from the run's config.yaml.
The consolidated file holds only tensors and plain metadata: {"model_config", "state_dict",
"step", "tokens", "source"} as a .pt file, or (``--out X.safetensors``) the state dict as
safetensors with the rest as JSON metadata. The trainer can start from it on any layout with
checkpoint.init_from=FILE (weights, step and data position carry over; optimizer moments start
afresh).

Loading never runs code from a file: ``load_consolidated`` reads .pt files with
``torch.load(weights_only=True)`` (a pickle naming any other Python object is refused) or
safetensors, which cannot hold code. The one exception is DeepSpeed's own checkpoint folders
(checkpoints/global_stepN), which DeepSpeed itself loads with full pickle: they must come from a
trusted source.
"""
from __future__ import annotations

import glob
import json
import os
import pickle
import re
from pathlib import Path

import torch
import yaml


class CheckpointError(ValueError):
    """One line naming what is missing."""


def resolve_checkpoint(path: str | os.PathLike) -> tuple[Path, Path]:
    """(step folder, run folder) for a run folder, its checkpoints/ folder or a step folder."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such run or checkpoint folder")
    if (p / "checkpoints").is_dir():
        p = p / "checkpoints"
    if (p / "latest").is_file():
        p = p / (p / "latest").read_text().strip()
    if not p.is_dir() or not any(p.glob("*model_states.pt")):
        raise CheckpointError(f"{p}: not a DeepSpeed checkpoint folder (no *model_states.pt); name a run folder or "
                              f"checkpoints/global_stepN")
    run_dir = p.parent.parent
    return p, run_dir


def model_config_of(run_dir: Path) -> dict:
    cfg = run_dir / "config.yaml"
    if not cfg.is_file():
        raise CheckpointError(f"{cfg}: missing; the run's config is needed to know the model's shape")
    model = (yaml.safe_load(cfg.read_text()) or {}).get("model")
    if not model or not model.get("vocab_size"):
        raise CheckpointError(f"{cfg}: has no resolved model section with vocab_size")
    return model


def _pipeline_state(step_dir: Path, n_layer: int) -> dict:
    """Map DeepSpeed's layer_XX files (embed, blocks, head[, tied embed]) to GPT names."""
    from llmtrain.model.pipeline import gpt_prefix

    out = {}
    files = sorted(step_dir.glob("layer_*-model_states.pt"))
    for f in files:
        prefix = gpt_prefix(int(re.match(r"layer_(\d+)", f.name).group(1)), n_layer)
        if prefix is None:  # the tied output embedding: same weight as layer 0
            continue
        for k, v in torch.load(f, map_location="cpu", weights_only=True).items():  # plain module state
            out[prefix + k] = v.float()
    return out


def _moe_state(step_dir: Path, module: dict) -> dict:
    """An MoE run's checkpoint (DeepSpeed's MoE format, whatever the expert-parallel size): the
    module's other weights, plus one file per layer and expert whose tensors are stacked back into
    the GPT's batched expert weights (llmtrain.model.parallel_moe names them). The weights are the
    module's own: fp32 in an fp32 run, the bf16 weights (as fp32) in a bf16 run."""
    from llmtrain.model.parallel_moe import ep_key_to_gpt

    out = dict(module)
    experts: dict[str, dict[int, torch.Tensor]] = {}
    for f in sorted(step_dir.glob("layer_*_expert_*_model_states.pt")):
        for k, v in torch.load(f, map_location="cpu", weights_only=True).items():
            name, e = ep_key_to_gpt(k)
            experts.setdefault(name, {})[e] = v
    for name, parts in experts.items():
        if sorted(parts) != list(range(len(parts))):
            raise CheckpointError(f"{step_dir}: expert files of {name} are incomplete (experts {sorted(parts)})")
        out[name] = torch.stack([parts[e] for e in range(len(parts))])
    return out


def _deepspeed_load(f: Path) -> dict:
    """A DeepSpeed model_states file. These hold DeepSpeed's own objects besides tensors and are
    loaded with full pickle, as DeepSpeed loads them itself: a checkpoint folder must come from a
    trusted source (the README says so). Consolidated files and imports never take this path."""
    return torch.load(f, map_location="cpu", weights_only=False)


def consolidated_state(path: str | os.PathLike) -> dict:
    """{"model_config": dict, "state_dict": GPT state dict (fp32), "step", "tokens", "source"}."""
    step_dir, run_dir = resolve_checkpoint(path)
    model_cfg = model_config_of(run_dir)
    tag = step_dir.name
    if any(step_dir.glob("layer_*-model_states.pt")):
        state = _pipeline_state(step_dir, int(model_cfg["n_layer"]))
        meta = _deepspeed_load(next(iter(sorted(step_dir.glob("mp_rank_*_model_states.pt")))))
    elif any(step_dir.glob("layer_*_expert_*_model_states.pt")):
        meta = _deepspeed_load(step_dir / "mp_rank_00_model_states.pt")
        state = _moe_state(step_dir, meta["module"])
    else:
        model_files = sorted(step_dir.glob("*mp_rank_00_model_states.pt"))
        meta = _deepspeed_load(model_files[0])
        if glob.glob(str(step_dir / "*optim_states.pt")):
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            state = get_fp32_state_dict_from_zero_checkpoint(str(step_dir.parent), tag=tag)
        else:
            state = {k: v.float() for k, v in meta["module"].items()}
    state = {k: v.detach().clone().float() for k, v in state.items() if not k.endswith(("rope_cos", "rope_sin"))}
    return {"model_config": model_cfg, "state_dict": state, "step": meta.get("step"), "tokens": meta.get("tokens"),
            "source": str(step_dir)}


def is_consolidated(path: str | os.PathLike) -> bool:
    """A consolidated file, or a folder written by launcher/import_hf.py (model.safetensors beside a
    config.yaml; not a DeepSpeed folder, not a Hugging Face folder, whose config is config.json)."""
    p = Path(path)
    return p.is_file() or (p.is_dir() and (p / "model.safetensors").is_file() and (p / "config.yaml").is_file()
                           and not (p / "checkpoints").is_dir())


def load_gpt(path: str | os.PathLike):
    """A GPT (eval mode, fp32) with the checkpoint's weights, and the consolidated record."""
    from llmtrain.config import ModelConfig
    from llmtrain.model.gpt import GPT

    if is_consolidated(path):
        state, meta = load_consolidated(path)
        rec = {**meta, "state_dict": state}
    else:
        rec = consolidated_state(path)
    cfg = ModelConfig(**rec["model_config"])
    model = GPT(cfg)
    missing, unexpected = model.load_state_dict(rec["state_dict"], strict=False)
    missing = [m for m in missing if not m.endswith(("rope_cos", "rope_sin"))]
    if missing or unexpected:
        raise CheckpointError(
            f"{rec['source']}: does not match the model in its config.yaml (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}); the checkpoint is incomplete or from another model shape"
        )
    return model.eval(), rec


META_KEYS = ("model_config", "step", "tokens", "source")


def _plain_meta(meta: dict) -> dict:
    """The metadata as plain JSON types (no Python objects in a consolidated file)."""
    return json.loads(json.dumps({k: meta.get(k) for k in META_KEYS}, default=str))


def save_consolidated(state_dict: dict, meta: dict, path: str | os.PathLike) -> None:
    """Write a consolidated file: ``*.safetensors`` (tensors; metadata as JSON under the key
    "llmtrain") or a .pt that ``torch.load(weights_only=True)`` reads. Written to a temporary
    name and renamed into place."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    state = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    try:
        if out.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(state, str(tmp), metadata={"llmtrain": json.dumps(_plain_meta(meta))})
        else:
            torch.save({**_plain_meta(meta), "state_dict": state}, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _refusal(e: Exception) -> str:
    """One line from torch's multi-line weights_only refusal: the global it would have run."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    first = lines[0] if lines else type(e).__name__
    hit = next((ln for ln in lines if "GLOBAL" in ln or "global" in ln.lower()), first)
    return hit[:200]


def load_consolidated(path: str | os.PathLike) -> tuple[dict, dict]:
    """(state dict of fp32 tensors, metadata {"model_config", "step", "tokens", "source"}) from a
    consolidated file (.pt or .safetensors) or a folder holding model.safetensors (what
    launcher/import_hf.py writes). Never runs code from the file: a .pt is read with
    ``torch.load(weights_only=True)`` and a pickle naming anything but tensors and plain data is
    refused with a CheckpointError (one line)."""
    p = Path(path)
    if p.is_dir():
        if not (p / "model.safetensors").is_file():
            raise CheckpointError(f"{p}: folder has no model.safetensors; name a consolidated file or a folder "
                                  f"written by launcher/import_hf.py")
        p = p / "model.safetensors"
    if not p.is_file():
        raise CheckpointError(f"{p}: no such consolidated checkpoint file")
    with open(p, "rb") as fh:
        head = fh.read(8)
    is_zip_or_pickle = head[:2] == b"PK" or head[:1] == b"\x80"
    if p.suffix == ".safetensors" or not is_zip_or_pickle:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            from safetensors import safe_open

            with safe_open(str(p), framework="pt") as fh:
                raw = (fh.metadata() or {}).get("llmtrain")
            state = load_file(str(p))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{p}: not a readable safetensors file ({str(e).splitlines()[0]}); re-write it "
                                  f"with python launcher/consolidate.py") from None
        if raw is None:
            raise CheckpointError(f"{p}: safetensors file without llmtrain metadata (model_config); write it with "
                                  f"python launcher/consolidate.py or launcher/import_hf.py")
        meta = json.loads(raw)
    else:
        try:
            rec = torch.load(p, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise CheckpointError(f"{p}: refused to load: the file holds Python objects, not only tensors and plain "
                                  f"data ({_refusal(e)}); only load files from a trusted source, re-written with "
                                  f"python launcher/consolidate.py") from None
        except (RuntimeError, EOFError, OSError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{p}: cannot be read ({msg}); the file is incomplete or damaged") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("state_dict"), dict):
            raise CheckpointError(f"{p}: not a consolidated checkpoint (no state_dict); write one with "
                                  f"python launcher/consolidate.py")
        state = rec["state_dict"]
        meta = {k: rec.get(k) for k in META_KEYS}
    if not isinstance(meta.get("model_config"), dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{p}: not a consolidated checkpoint (needs tensors and a model_config); write one with "
                              f"python launcher/consolidate.py")
    meta = {k: meta.get(k) for k in META_KEYS}
    meta["source"] = meta.get("source") or str(p)
    return {k: v.float() for k, v in state.items()}, meta
