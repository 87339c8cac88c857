"""Read any of the trainer's DeepSpeed checkpoints (ZeRO 0-3, CPU offload, pipeline) back into
one plain GPT state dict, whatever layout wrote it.

    python -m llmtrain.train.consolidate RUN_DIR_OR_CHECKPOINT --out model.pt

A checkpoint is named by its run folder (the latest checkpoint), its checkpoints/ folder, or a
step folder (checkpoints/global_stepN). The model's shape comes from the run's config.yaml.
The consolidated file holds {"model_config", "state_dict", "step", "tokens"}; the trainer can
start from it on any layout with checkpoint.init_from=FILE (weights, step and data position
carry over; optimizer moments start afresh).
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import sys
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
    out = {}
    files = sorted(step_dir.glob("layer_*-model_states.pt"))
    for f in files:
        idx = int(re.match(r"layer_(\d+)", f.name).group(1))
        if idx == 0:
            prefix = "embed."
        elif idx <= n_layer:
            prefix = f"blocks.{idx - 1}."
        elif idx == n_layer + 1:
            prefix = "head."
        else:  # the tied output embedding: same weight as layer 0
            continue
        for k, v in torch.load(f, map_location="cpu", weights_only=False).items():
            out[prefix + k] = v.float()
    return out


def consolidated_state(path: str | os.PathLike) -> dict:
    """{"model_config": dict, "state_dict": GPT state dict (fp32), "step", "tokens", "source"}."""
    step_dir, run_dir = resolve_checkpoint(path)
    model_cfg = model_config_of(run_dir)
    tag = step_dir.name
    if any(step_dir.glob("layer_*-model_states.pt")):
        state = _pipeline_state(step_dir, int(model_cfg["n_layer"]))
        meta = torch.load(next(iter(sorted(step_dir.glob("mp_rank_*_model_states.pt")))), map_location="cpu", weights_only=False)
    else:
        model_files = sorted(step_dir.glob("*mp_rank_00_model_states.pt"))
        meta = torch.load(model_files[0], map_location="cpu", weights_only=False)
        if glob.glob(str(step_dir / "*optim_states.pt")):
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            state = get_fp32_state_dict_from_zero_checkpoint(str(step_dir.parent), tag=tag)
        else:
            state = {k: v.float() for k, v in meta["module"].items()}
    state = {k: v.detach().clone().float() for k, v in state.items() if not k.endswith(("rope_cos", "rope_sin"))}
    return {"model_config": model_cfg, "state_dict": state, "step": meta.get("step"), "tokens": meta.get("tokens"),
            "source": str(step_dir)}


def load_gpt(path: str | os.PathLike):
    """A GPT (eval mode, fp32) with the checkpoint's weights, and the consolidated record."""
    from llmtrain.config import ModelConfig
    from llmtrain.model.gpt import GPT

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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    try:
        rec = consolidated_state(args.checkpoint)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(rec, tmp)
    os.replace(tmp, out)
    n = sum(v.numel() for v in rec["state_dict"].values())
    print(f"wrote {out}: {n:,} parameters from {rec['source']} (step {rec['step']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
