"""Train modules: one optimizer step and one evaluation over the global batch, per layout.

``DenseTrainModule`` drives a DeepSpeed engine over a GPT (ZeRO 0-3, offload); ``PipelineTrainModule``
subclasses it for DeepSpeed's pipeline engine. Both keep the device discipline: losses stay on
the accelerator, one all-reduce per optimizer step, and the host reads a loss only when a
callback asks for it (a logged step).

With a loss mask (prompt/response data), every counted target of the global batch weighs the
same: micro-batch i's mean loss is scaled by n_i x (micro-batches x data-parallel ranks) / N,
where n_i counts its targets and N those of the whole global batch (one extra all-reduce per
step, before the first backward), so the mean over micro-batches and ranks that DeepSpeed takes
is the mean over tokens. Without a mask every n_i is the same and nothing changes.

One non-finite policy for every layout: a step whose loss or gradients are not finite on any
rank never moves the weights and leaves the optimizer state as it was; the step counter, the
LR schedule and the data position move on as for any step.

- A non-finite loss is turned into NaN gradients (``poison_nonfinite``), so that a bad loss and
  bad gradients are one case.
- ZeRO-1/2/3, bf16 and fp16: DeepSpeed's own overflow check skips the step (it then leaves the
  LR schedule behind; ``step_schedule_after_skip`` moves it on).
- ZeRO-0 in fp32 or in bf16 under autocast (dense or pipeline), where DeepSpeed checks nothing: the optimizer is a
  ``SkipNonFiniteAdamW`` that checks every rank's gradients with one all-reduce and skips.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from llmtrain.train.dist import accelerator_device, all_reduce


def poison_nonfinite(loss: torch.Tensor) -> torch.Tensor:
    """``loss`` itself when finite; otherwise a value whose gradient is NaN everywhere, so the
    optimizer's non-finite check skips the step. Device-side, no host sync."""
    scale = torch.where(torch.isfinite(loss.detach()), 1.0, float("nan"))  # a constant: no gradient through it
    return loss * scale


class SkipNonFiniteAdamW(torch.optim.AdamW):
    """AdamW that skips its step, leaving weights and state untouched, when any rank's gradients
    are not finite (one all-reduce over every rank: pipeline stages hold different parameters).
    ``skipped`` counts the steps it skipped."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.skipped = 0
        self.last_norm: torch.Tensor | None = None
        self.clip_norm: torch.Tensor | None = None  # this step's norm when the engine's clipping computed it

    @torch.no_grad()
    def step(self, closure=None):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        device = accelerator_device()
        norm, self.clip_norm = self.clip_norm, None
        if norm is None:
            norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        norm = torch.as_tensor(norm, dtype=torch.float32).to(device)
        bad = (~torch.isfinite(norm)).float().reshape(1)
        all_reduce(bad, "max")
        self.last_norm = norm
        if bad.item():  # one host sync per optimizer step, as DeepSpeed's own overflow check does
            self.skipped += 1
            for g in grads:
                g.zero_()
            return None
        return super().step(closure)


@dataclass
class StepOutput:
    loss: torch.Tensor  # mean loss over the whole global batch, on the accelerator (not read yet)
    skipped: bool  # the optimizer did not move the weights (non-finite loss or gradients)
    grad_norm: torch.Tensor | float | None  # before clipping when DeepSpeed computed it
    stop: torch.Tensor | None = None  # > 0 when any rank received a stop signal (on the accelerator)
    save: torch.Tensor | None = None  # > 0 when rank 0 asked for a checkpoint (on the accelerator)
    loss_tokens: torch.Tensor | None = None  # targets counted in the loss over the global batch (not -100)


def skip_counter(engine) -> int:
    opt = getattr(engine, "basic_optimizer", None) or engine.optimizer
    return engine.skipped_steps + getattr(opt, "skipped", 0)


def step_schedule_after_skip(engine, ds_skips_before: int) -> None:
    """DeepSpeed does not step the LR scheduler on a step it skipped for overflow; the project's
    rule is that the schedule follows the step counter, so step it here."""
    if engine.skipped_steps > ds_skips_before and engine.lr_scheduler is not None:
        engine.lr_scheduler.step()


def token_weights(micro_batches, device, dp_world: int, replicas: int = 1) -> torch.Tensor:
    """n_i x (micro-batches x data-parallel ranks) / N per micro-batch (see the module's
    docstring), on the device. ``replicas``: how many ranks of a data-parallel replica read the
    same batches (pipeline stages): the all-reduce over every rank counts N that many times."""
    counts = torch.stack([(y.to(device) != -100).sum() for _, y in micro_batches]).float()
    total = counts.sum().reshape(1)
    all_reduce(total)
    return counts * (len(micro_batches) * dp_world * replicas) / total.clamp(min=1)


class DenseTrainModule:
    """GPT under a DeepSpeed engine (ZeRO 0-3): gas micro-batches, then the optimizer step.
    ``token_weighted``: the data has a loss mask (weigh every counted target the same)."""

    def __init__(self, engine, dp_world: int, token_weighted: bool = False):
        self.engine = engine
        self.dp_world = dp_world
        self.token_weighted = token_weighted
        self.device = accelerator_device()

    def weights(self, micro_batches) -> torch.Tensor | None:
        return token_weights(micro_batches, self.device, self.dp_world) if self.token_weighted else None

    def train_batch(self, micro_batches, stop_flag: bool = False, save_flag: bool = False) -> StepOutput:
        """One optimizer step over this rank's micro-batches. ``stop_flag`` (this rank received a
        stop signal) and ``save_flag`` (this rank asks for a checkpoint) are summed over ranks in
        the same all-reduce as the loss."""
        engine = self.engine
        before, ds_before = skip_counter(engine), engine.skipped_steps
        # [loss sum, ranks asked to stop, counted targets, ranks asked for a checkpoint]
        total = torch.zeros(4, device=self.device, dtype=torch.float32)
        weights = self.weights(micro_batches)
        for i, (x, y) in enumerate(micro_batches):
            loss = engine(x, y)
            if weights is not None:
                loss = loss * weights[i]
            engine.backward(poison_nonfinite(loss))
            engine.step()
            total[0] += loss.detach().float()
            total[2] += (y != -100).sum()
        step_schedule_after_skip(engine, ds_before)
        total[1], total[3] = float(stop_flag), float(save_flag)
        all_reduce(total)
        skipped = skip_counter(engine) > before
        loss = total[0] / (len(micro_batches) * self.dp_world)
        return StepOutput(loss, skipped, self.grad_norm(skipped), stop=total[1], loss_tokens=total[2], save=total[3])

    def grad_norm(self, skipped: bool):
        if skipped:
            return None
        gn = self.engine.get_global_grad_norm()
        if gn is None:
            opt = getattr(self.engine, "basic_optimizer", None) or self.engine.optimizer
            gn = getattr(opt, "last_norm", None)
        return gn

    @torch.no_grad()
    def eval_batch(self, micro_batches) -> torch.Tensor:
        """Mean loss of these micro-batches over every data-parallel rank (a device tensor)."""
        total = torch.zeros((), device=self.device, dtype=torch.float32)
        weights = self.weights(micro_batches)
        for i, (x, y) in enumerate(micro_batches):
            loss = self.engine(x, y).float()
            total += loss if weights is None else loss * weights[i]
        all_reduce(total)
        return total / (len(micro_batches) * self.dp_world)

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor | None:
        """Logits (B, T, V) of a batch of inputs on this rank's replica (call in eval mode; every
        rank of the replica must call it). None on ranks that do not hold them."""
        return self.engine(x)

    def train(self) -> None:
        self.engine.train()

    def eval(self) -> None:
        self.engine.eval()


class PipelineTrainModule(DenseTrainModule):
    """DeepSpeed's pipeline engine runs the micro-batches through the stages itself (its loss
    is already the mean over data-parallel replicas, on every stage)."""

    def __init__(self, engine, dp_world: int, token_weighted: bool = False):
        super().__init__(engine, dp_world, token_weighted)
        loss_fn = engine.module.loss_fn
        self._weights: list[torch.Tensor] = []  # this batch's token weights, consumed in micro-batch order

        def weighted_loss(logits, targets):
            loss = loss_fn(logits, targets)
            if self._weights:
                loss = loss * self._weights.pop(0)
            return poison_nonfinite(loss)

        engine.module.loss_fn = weighted_loss

    def weights(self, micro_batches) -> torch.Tensor | None:
        return (token_weights(micro_batches, self.device, self.dp_world, replicas=self.engine.num_stages)
                if self.token_weighted else None)

    def _set_weights(self, micro_batches) -> None:
        w = self.weights(micro_batches)
        self._weights = [] if w is None or not self.engine.is_last_stage() else list(w)

    def train_batch(self, micro_batches, stop_flag: bool = False, save_flag: bool = False) -> StepOutput:
        engine = self.engine
        before, ds_before = skip_counter(engine), engine.skipped_steps
        self._set_weights(micro_batches)
        loss = engine.train_batch(data_iter=iter(micro_batches))
        step_schedule_after_skip(engine, ds_before)
        # [ranks asked to stop, counted targets, ranks asked for a checkpoint]: every stage of a
        # replica reads the same batches, so the count is divided by the number of stages.
        flags = torch.zeros(3, device=self.device, dtype=torch.float32)
        flags[0], flags[2] = float(stop_flag), float(save_flag)
        for _, y in micro_batches:
            flags[1] += (y.to(self.device) != -100).sum()
        all_reduce(flags)
        skipped = skip_counter(engine) > before
        return StepOutput(loss.detach().float().to(self.device).reshape(()), skipped, self.grad_norm(skipped),
                          stop=flags[0], loss_tokens=flags[1] / engine.num_stages, save=flags[2])

    @torch.no_grad()
    def eval_batch(self, micro_batches) -> torch.Tensor:
        self._set_weights(micro_batches)
        loss = self.engine.eval_batch(iter(micro_batches), num_micro_batches=len(micro_batches))
        return loss.detach().float().to(self.device).reshape(())


    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor | None:
        """The last stage's logits; None on the other stages. Give batches of the training
        micro-batch shape (micro x seq_len): the pipeline's buffers are sized by it."""
        _, out = self.engine.eval_batch(iter([(x, torch.zeros_like(x))]), return_logits=True, num_micro_batches=1)
        return out if self.engine.is_last_stage() else None


def train_module(engine, pipeline: bool, dp_world: int, token_weighted: bool = False) -> DenseTrainModule:
    return (PipelineTrainModule if pipeline else DenseTrainModule)(engine, dp_world, token_weighted)
