"""Mixture of Experts: the routers' statistics, once per logged step (every rank takes part)."""
from __future__ import annotations

import torch

from llmtrain.train.callbacks.base import Callback
from llmtrain.train.dist import all_reduce


class MoEMetrics(Callback):
    """At every log_interval (and the last step), one record with ``"split": "moe"`` over the
    steps since the previous one (since the start or resume for the first), summed over every rank
    with one all-reduce and read from the device once:

    - ``balance_loss``, ``z_loss``: the router losses (unscaled; mean over micro-batches and MoE layers);
    - ``load_min``, ``load_max``: the least and most loaded expert of any MoE layer, as its tokens
      over the mean tokens per expert (1.0: balanced), and the same per layer (``load_max/layerI``);
    - ``tokens_per_expert/layerI``: assignments per expert (a histogram in TensorBoard);
    - ``dropped_frac``: the share of assignments dropped by the capacity factor (0 when dropless).
    """

    name = "moe"

    def post_step(self, t, out) -> None:
        if t.step % t.cfg.train.log_interval and t.step != t.total_steps:
            return
        blocks = [i for i, b in enumerate(t.engine.module.blocks) if t.cfg.model.is_moe_layer(i)]
        layers = t.engine.module.moe_layers()
        sums = torch.stack([m.stats.take(t.device).to(t.device) for m in layers])  # (layers, E + 5)
        all_reduce(sums)
        rows = sums.tolist()  # the one host read
        E = t.cfg.model.moe_experts
        rec = {"step": t.step, "tokens": t.tokens, "split": "moe"}
        passes = sum(r[E + 4] for r in rows) or 1.0
        rec["balance_loss"] = sum(r[E] for r in rows) / passes
        rec["z_loss"] = sum(r[E + 1] for r in rows) / passes
        rec["dropped_frac"] = sum(r[E + 2] for r in rows) / max(sum(r[E + 3] for r in rows), 1.0)
        loads = []
        for i, r in zip(blocks, rows):
            mean = sum(r[:E]) / E or 1.0
            load = [c / mean for c in r[:E]]
            loads += load
            rec[f"load_min/layer{i}"], rec[f"load_max/layer{i}"] = min(load), max(load)
            rec[f"tokens_per_expert/layer{i}"] = [int(c) for c in r[:E]]
        rec["load_min"], rec["load_max"] = min(loads), max(loads)
        t.log(rec)
