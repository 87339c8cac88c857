"""Width studies without DeepSpeed (launcher/coord_check.py, benchmarks/mup_transfer.py): a
config at another width under muP or the standard parametrisation, and a plain single-process
AdamW loop over the engine's own parameter groups (muP's per-layer LRs included)."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from llmtrain.config import Config


def width_config(cfg: Config, width: int, parametrization: str, base_width: int, **model) -> Config:
    """``cfg`` with d_model = ``width`` under ``parametrization`` (muP relative to ``base_width``);
    ``model``: other model fields to set (e.g. vocab_size)."""
    mup = parametrization == "mup"
    fields = dict(d_model=width, parametrization=parametrization, mup_base_width=base_width if mup else None,
                  mup_base_head_dim=cfg.model.mup_base_head_dim if mup else None)
    m = dataclasses.replace(cfg.model, **{**fields, **model})
    m.validate(f"width {width}")
    return dataclasses.replace(cfg, model=m)


def train_plain(cfg: Config, next_batch: Callable[[], torch.Tensor], steps: int, seed: int,
                lr_lambda: Callable[[int], float] | None = None):
    """A fresh GPT(cfg.model) trained ``steps`` AdamW steps on ``next_batch()`` (B, T+1 token ids)
    with train.grad_clip, at a constant LR or ``lr_lambda(step)`` times it. Returns (model in
    eval mode, the training losses)."""
    from llmtrain.model.gpt import GPT
    from llmtrain.model.mup import mup_param_groups

    torch.manual_seed(seed)
    model = GPT(cfg.model, seed=seed)
    t = cfg.train
    opt = torch.optim.AdamW(mup_param_groups(model, cfg), lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda) if lr_lambda else None
    losses = []
    for _ in range(steps):
        batch = next_batch()
        loss = model(batch[:, :-1], batch[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if t.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(loss.detach())
    model.eval()
    return model, [float(x) for x in losses]
