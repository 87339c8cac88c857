"""muP (the maximal-update parametrisation of Yang et al., "Tensor Programs V: Tuning Large Neural
Networks via Zero-Shot Hyperparameter Transfer", 2022) for Adam, relative to a base width.

With ``model.parametrization: mup`` and ``model.mup_base_width: B`` (the d_model the learning
rate, init_std and the rest were tuned at), every rule below is a factor that is exactly 1 at
d_model == B, so a muP model at its base width IS the standard model (same init, logits, LRs).
Widening is by d_model with n_head fixed (head size grows); the base shapes are this config's
with d_model = B (and head size mup_base_head_dim, default B / n_head).

Each parameter has one of three roles, read from its name alone by ``is_hidden`` (so the same
rule serves the GPT, its pipeline stages and every ZeRO stage):

| role          | parameters                                   | init std                    | Adam LR       |
|---------------|----------------------------------------------|-----------------------------|---------------|
| hidden        | attn.qkv, attn.proj, mlp.up, mlp.down weights | standard x sqrt(base/fan_in) | lr x base/fan_in |
| vector-like   | token and position embeddings, norms, biases | standard                    | lr            |
| output        | the readout (tied embedding or head.out)     | standard                    | lr            |

and two multipliers in the forward pass:

- readout: the logits are multiplied by B / d_model (Table 8's form: output weights keep a
  width-independent init and LR, the multiplier 1/fan_in does the work). It is applied to the
  head's normalised input to the output projection (``Head``), which is the same product.
  The tied embedding is therefore consistent in both uses: as the input embedding Table 8 wants
  a constant init and a constant Adam LR, and as the readout it wants the same plus the
  multiplier, which lives in the forward pass, not in the weight.
- attention: scores are q.k * sqrt(base_head_dim) / head_dim (1/head_dim instead of
  1/sqrt(head_dim), equal to the standard 1/sqrt(head_dim) at the base head size), applied as
  a factor sqrt(base_head_dim / head_dim) on the queries before the standard SDPA scaling.

"fan_in" is the matrix's input size: d_model for qkv, proj and up; the MLP hidden size for down
(its base is the base config's MLP size, so an explicit fixed model.d_ff gets factor 1 there).
Weight decay keeps its coefficient; torch's AdamW multiplies it by each group's LR, so hidden
matrices decay in proportion to their (scaled) LR.

Export: ``standard_state_dict`` folds both multipliers into weights (the queries' rows of qkv, or
the query norm's weight with QK-norm; the final norm's weight and bias), giving a standard model
that computes the same logits, which is what llmtrain/checkpoint/hf/ writes.
"""
from __future__ import annotations

import dataclasses
import math

from llmtrain.config import Config, ModelConfig

HIDDEN = ("attn.qkv.weight", "attn.proj.weight", "mlp.up.weight", "mlp.down.weight")


def is_mup(cfg: ModelConfig) -> bool:
    return cfg.parametrization == "mup"


def is_hidden(name: str) -> bool:
    """A hidden (matrix-like) weight, by parameter name: 'blocks.0.attn.qkv.weight' in the GPT,
    '3.attn.qkv.weight' in a pipeline stage, 'attn.qkv.weight' inside one block."""
    return name.endswith(HIDDEN)


def base_config(cfg: ModelConfig) -> ModelConfig:
    """The model at the base width: d_model = mup_base_width, every other option the same."""
    return dataclasses.replace(cfg, d_model=cfg.mup_base_width)


def fan_in_ratio(cfg: ModelConfig, name: str) -> float:
    """fan_in / base fan_in of a hidden weight; 1.0 for every other parameter and under the
    standard parametrisation."""
    if not is_mup(cfg) or not is_hidden(name):
        return 1.0
    if name.endswith("mlp.down.weight"):
        return cfg.ffn_dim / base_config(cfg).ffn_dim
    return cfg.d_model / cfg.mup_base_width


def init_std_factor(cfg: ModelConfig, name: str) -> float:
    """Factor on the standard init std: init variance proportional to 1/fan_in for hidden weights."""
    r = fan_in_ratio(cfg, name)
    return 1.0 if r == 1.0 else 1.0 / math.sqrt(r)


def lr_factor(cfg: ModelConfig, name: str) -> float:
    """Factor on the Adam LR: 1/fan_in for hidden weights, constant for the rest."""
    r = fan_in_ratio(cfg, name)
    return 1.0 if r == 1.0 else 1.0 / r


def output_multiplier(cfg: ModelConfig) -> float:
    """The readout multiplier on the logits: mup_base_width / d_model (1.0 under standard)."""
    return cfg.mup_base_width / cfg.d_model if is_mup(cfg) else 1.0


def query_multiplier(cfg: ModelConfig) -> float:
    """Factor on the queries so that SDPA's 1/sqrt(head_dim) becomes sqrt(base_head_dim)/head_dim."""
    if not is_mup(cfg):
        return 1.0
    head_dim = cfg.d_model // cfg.n_head
    base = cfg.mup_base_head_dim or cfg.mup_base_width // cfg.n_head
    return 1.0 if base == head_dim else math.sqrt(base / head_dim)


def mup_param_groups(model, cfg: Config) -> list[dict]:
    """AdamW parameter groups for ``model`` (a GPT or this rank's pipeline stages): decoupled
    weight decay on matrices except position embeddings, and under muP each group's ``lr`` =
    train.lr x its ``lr_scale`` (kept in the group so a schedule restart can rebuild base LRs).
    The LR schedule (LambdaLR) multiplies every group's own initial LR, so the factors hold at
    every step. Under the standard parametrisation: two groups, decay and no-decay, at train.lr."""
    groups: dict[tuple[float, float], list] = {}
    for name, p in model.named_parameters():
        ndim = len(getattr(p, "ds_shape", p.shape))  # a ZeRO-3 partition keeps its full shape in ds_shape
        decay = cfg.train.weight_decay if ndim >= 2 and "wpe" not in name else 0.0
        groups.setdefault((decay, lr_factor(cfg.model, name)), []).append(p)
    return [{"params": ps, "weight_decay": wd, "lr_scale": scale, "lr": cfg.train.lr * scale}
            for (wd, scale), ps in groups.items()]


def standard_state_dict(sd: dict, cfg: ModelConfig) -> dict:
    """A muP model's state dict (GPT names) → the standard-parametrisation state dict that computes
    the same logits: the query multiplier folded into the query rows of each qkv weight and bias
    (or into the query norm's weight when model.qk_norm, since that norm follows the projection),
    the readout multiplier into the final norm's weight and bias. The standard parametrisation is
    returned as is."""
    q_mult, out_mult = query_multiplier(cfg), output_multiplier(cfg)
    if q_mult == 1.0 and out_mult == 1.0:
        return sd
    sd = dict(sd)
    for i in range(cfg.n_layer):
        p = f"blocks.{i}.attn."
        if cfg.qk_norm:
            sd[p + "q_norm.weight"] = sd[p + "q_norm.weight"] * q_mult
            if p + "q_norm.bias" in sd:
                sd[p + "q_norm.bias"] = sd[p + "q_norm.bias"] * q_mult
            continue
        for k in ("qkv.weight", "qkv.bias"):
            if p + k in sd:
                t = sd[p + k].clone()
                t[:cfg.d_model] *= q_mult
                sd[p + k] = t
    for k in ("head.norm.weight", "head.norm.bias"):
        if k in sd:
            sd[k] = sd[k] * out_mult
    return sd
