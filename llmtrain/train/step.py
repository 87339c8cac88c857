"""One optimizer step and one evaluation over the global batch, on any layout, with the loss
averaged over every data-parallel rank and non-finite steps skipped."""
from __future__ import annotations

import math

import torch

from llmtrain.config import Config
from llmtrain.data.dataset import DataBundle


def zero_loss(engine) -> torch.Tensor:
    """A loss of exactly 0 connected to every trainable parameter: its backward yields zero
    gradients and keeps DeepSpeed's gradient hooks and reductions in step on every rank."""
    return sum((p.sum() * 0.0 for p in engine.module.parameters() if p.requires_grad), torch.zeros(()))


def train_step(engine, data, start: int, micro: int, gas: int, device, pipeline: bool, world: int,
               own_norm: bool) -> tuple[float, float | None, bool]:
    """One optimizer step over this rank's gas micro-batches from global sample ``start``.

    Returns (loss averaged over the whole global batch, gradient norm or None, skipped). When
    any rank's micro-batch loss is not finite, every rank backpropagates a zero loss instead,
    and when the gradient norm is not finite the gradients are zeroed; either way the step is
    taken at LR 0, so the weights do not move (AdamW's moments decay by one step) while the
    data position and schedule move on. Under ZeRO/bf16 DeepSpeed itself skips a step whose
    gradients overflow; that counts as skipped too.
    """
    from llmtrain.data.sampler import batch

    micro_batches = (batch(data, start + m * micro, micro) for m in range(gas))
    skipped_before = engine.skipped_steps
    if pipeline:
        # the pipeline engine runs all micro-batches and averages the loss over data-parallel ranks
        loss = float(engine.train_batch(data_iter=micro_batches))
        gn = engine.get_global_grad_norm()
        return loss, (float(gn) if gn is not None else None), engine.skipped_steps > skipped_before
    total, grad_norm, bad = 0.0, None, False
    for m, (x, y) in enumerate(micro_batches):
        loss = engine(x.to(device), y.to(device))
        value = float(loss.detach())
        bad = bad or any_rank(not math.isfinite(value), world)
        if bad:
            loss = zero_loss(engine)
        engine.backward(loss)
        total += value
        if m == gas - 1:
            if own_norm and not bad:  # ZeRO-0: gradients are already averaged over ranks here
                grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
                grad_norm = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
                if not math.isfinite(grad_norm):
                    bad = True
                    for g in grads:
                        g.zero_()
            if bad:
                for group in engine.optimizer.param_groups:
                    group["lr"] = 0.0
        engine.step()
    if grad_norm is None and not bad:
        gn = engine.get_global_grad_norm()
        grad_norm = float(gn) if gn is not None else None
    skipped = bad or engine.skipped_steps > skipped_before
    return all_reduce_mean([total / gas], world)[0], grad_norm, skipped


def any_rank(flag: bool, world: int) -> bool:
    """True on every rank when ``flag`` is true on any rank."""
    if world == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_reduce_mean(values: list[float], world: int) -> list[float]:
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    if world > 1:
        dist.all_reduce(t)
        t /= world
    return t.tolist()


def evaluate(engine, data: DataBundle, cfg: Config, dp_rank: int, world: int, device, pipeline: bool) -> float | None:
    """Mean loss over the first eval_batches x global_batch_size windows of the valid split
    (the same windows every time), averaged over all data-parallel ranks."""
    if data.valid is None:
        return None
    from llmtrain.data.sampler import batch

    G = cfg.train.global_batch_size
    micro, gas = engine.train_micro_batch_size_per_gpu(), engine.gradient_accumulation_steps()
    n_batches = max(1, min(cfg.train.eval_batches, data.valid.num_samples // G))
    engine.eval()
    total = 0.0
    with torch.no_grad():
        for b in range(n_batches):
            start = b * G + dp_rank * micro * gas
            micro_batches = [batch(data.valid, start + m * micro, micro) for m in range(gas)]
            if pipeline:
                total += float(engine.eval_batch(iter(micro_batches), num_micro_batches=gas))
            else:
                total += sum(float(engine(x.to(device), y.to(device))) for x, y in micro_batches) / gas
    engine.train()
    return total / n_batches if pipeline else all_reduce_mean([total / n_batches], world)[0]
