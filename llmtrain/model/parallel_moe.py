"""Expert parallelism, applied from outside the model: ``apply_expert_parallel(gpt, ep_size)``
replaces each MoE block (llmtrain/model/moe.py) of a built GPT with an ``ExpertParallelMoE`` that
holds only this rank's share of the experts and reaches the others by all-to-all. Like the
pipeline form beside it, this is the model laid out for DeepSpeed; the engine wiring (optimizer
groups, gradient clipping) lives in llmtrain/train/engine.py.

Layout (DeepSpeed's, ``deepspeed.utils.groups._create_expert_and_data_parallel``): the ranks are
cut into expert-parallel groups of ``ep_size`` consecutive ranks ([0, 1], [2, 3], ...); rank r of
a group holds experts r * E/ep .. (r+1) * E/ep - 1 of every MoE layer. Ranks holding the same
experts form an expert-data-parallel group ([0, 2, ...], [1, 3, ...]), over which those experts'
gradients are averaged; everything else is averaged over all ranks as usual.

Why this shape, and not deepspeed.moe.layer.MoE itself: DeepSpeed's TopKGate has top-1/top-2
only with its own capacity conventions, random token selection and a host read of the capacity
on every forward, no router z-loss, no shared experts as a plain (or Qwen2-MoE-gated) sum, no
choice of renormalising the top-k weights, and it deep-copies one expert module, so every expert
starts from the same weights. What DeepSpeed does have and we use as is: its process groups, the
engine's and ZeRO-1/2's handling of parameters tagged ``allreduce=False`` with a ``group_name``
(gradients reduced over the expert-data-parallel group, ZeRO partitions of the experts over it,
``split_params_into_different_moe_groups_for_optimizer`` for the optimizer's groups) and its MoE
checkpoint format (one file per expert: ``layer_L_expert_E_mp_rank_00_model_states.pt``). For the
engine to treat our layer so, ``ExpertParallelMoE`` is a ``deepspeed.moe.layer.MoE`` (the class the
engine looks for) whose local experts sit where DeepSpeed's checkpoint code expects them:
``deepspeed_moe.experts.deepspeed_experts.<i>.{up,down}``; nothing else under it has "expert" in
its name (the router is ``router``, the shared experts ``shared``).

The all-to-all: each rank sorts its assignments by expert (as the local model does), sends each
group member the rows for its experts, runs its experts on what it receives (rows regrouped by
local expert, one grouped matmul), and sends the results back. With a capacity factor every expert
has C rows from every rank, so the sizes are known and nothing waits for the device. Dropless
routing must tell the host how many rows go where before the all-to-all: one host read of the
split sizes per MoE layer per micro-batch (torchtitan's and Megatron's dropless all-to-all
dispatchers do the same); the backward pass reuses them. With one rank per group (the default
expert_parallel_size 1) every row stays on its rank, so the sizes are known without a read.

Every piece starts from the model's own weights (the GPT is built, seeded by position, then
sliced), so every layout starts from the same weights.
"""
from __future__ import annotations

import re

import torch
import torch.distributed as dist
import torch.nn as nn

from llmtrain.model.moe import MoE, Placement, grouped_mlp

EXPERT_KEY = re.compile(r"^(.*)\.deepspeed_moe\.experts\.deepspeed_experts\.(\d+)\.(up|down)$")


def group_name(ep_size: int) -> str:
    """DeepSpeed's name of the expert-parallel groups of this size (its parameters' ``group_name``)."""
    return f"ep_size_{ep_size}"


def expert_groups(ep_size: int):
    """(expert-parallel group, rank in it), creating DeepSpeed's expert and expert-data-parallel
    groups of this size on first use (every rank must call it)."""
    from deepspeed.utils import groups

    name = group_name(ep_size)
    if name not in groups._get_expert_parallel_group_dict():
        groups._create_expert_and_data_parallel(ep_size)
    group = groups._get_expert_parallel_group(name)
    return group, dist.get_rank(group=group)


class _AllToAll(torch.autograd.Function):
    """all_to_all_single with split sizes; its gradient is the all-to-all back."""

    @staticmethod
    def forward(ctx, x, out_splits, in_splits, group):
        ctx.splits, ctx.group = (out_splits, in_splits), group
        out = x.new_empty((sum(out_splits),) + tuple(x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        out_splits, in_splits = ctx.splits
        return _AllToAll.apply(grad, in_splits, out_splits, ctx.group), None, None, None


def all_to_all(x: torch.Tensor, out_splits: list[int], in_splits: list[int], group) -> torch.Tensor:
    return _AllToAll.apply(x, out_splits, in_splits, group)


class ExpertWeights(nn.Module):
    """One expert's up (h, d) and down (d, ff) weights, tagged for DeepSpeed's expert handling."""

    def __init__(self, up: torch.Tensor, down: torch.Tensor, name: str):
        super().__init__()
        self.up = nn.Parameter(up.detach().clone())
        self.down = nn.Parameter(down.detach().clone())
        for p in (self.up, self.down):
            p.allreduce = False  # DeepSpeed: reduce over the expert-data-parallel group ``group_name``
            p.group_name = name


def _deepspeed_moe_class():
    from deepspeed.moe.layer import MoE as DeepSpeedMoE

    return DeepSpeedMoE


class ExpertParallelMoE(MoE, _deepspeed_moe_class()):
    """An MoE block holding experts ``ep_rank * E/ep ..`` of ``moe``, the rest reached by
    all-to-all over ``group`` (see the module docstring). Computes what ``moe`` computes."""

    def __init__(self, moe: MoE, ep_size: int, ep_rank: int, group):
        nn.Module.__init__(self)  # neither MoE's nor DeepSpeed's constructor: the pieces come from ``moe``
        for k in ("n_experts", "top_k", "normalise", "capacity_factor", "aux_coef", "z_coef", "stats"):
            setattr(self, k, getattr(moe, k))
        self.router, self.shared, self.drop = moe.router, moe.shared, moe.drop
        self.aux_loss = None
        self.swiglu, self.gelu_approximate = moe.experts.swiglu, moe.experts.gelu_approximate
        # what DeepSpeed's engine and checkpoints read from a deepspeed.moe.layer.MoE
        self.num_experts, self.ep_size = moe.n_experts, ep_size
        self.num_local_experts = moe.n_experts // ep_size
        self.expert_group_name = group_name(ep_size)
        self.enable_expert_tensor_parallelism = False
        self.ep_rank, self.group = ep_rank, group
        first = ep_rank * self.num_local_experts
        local = range(first, first + self.num_local_experts)
        container = nn.Module()
        container.deepspeed_experts = nn.ModuleList(
            ExpertWeights(moe.experts.up[e], moe.experts.down[e], self.expert_group_name) for e in local)
        self.deepspeed_moe = nn.Module()
        self.deepspeed_moe.experts = container

    def set_deepspeed_parallelism(self, *args, **kwargs) -> None:
        """Called by the engine; the groups were made by ``expert_groups`` before it."""

    def local_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        experts = self.deepspeed_moe.experts.deepspeed_experts
        return torch.stack([e.up for e in experts]), torch.stack([e.down for e in experts])

    def expert_rows(self, rows: torch.Tensor, p: Placement) -> torch.Tensor:
        ep, n_local = self.ep_size, self.num_local_experts
        per_rank = p.counts.view(ep, n_local)  # rows this rank sends each group member, per expert there
        if p.capacity is not None:  # every (rank, expert) pair has C rows: sizes known without the device
            send = recv = [n_local * p.capacity] * ep
            got = per_rank.new_full((ep, n_local), p.capacity)
        else:
            got = torch.empty_like(per_rank)  # rows each member sends us, per local expert
            dist.all_to_all_single(got, per_rank.contiguous(), group=self.group)
            if ep == 1:  # every row stays here: the sizes are known without reading the device
                send = recv = [rows.shape[0]]
            else:
                send, recv = torch.stack([per_rank.sum(1), got.sum(1)]).tolist()  # the one host read (dropless)
        x = all_to_all(rows, recv, send, self.group)  # ordered by (source rank, local expert)
        # regroup by local expert (then source rank) for one grouped matmul
        block = torch.arange(n_local, device=got.device).repeat(ep) * ep + \
            torch.arange(ep, device=got.device).repeat_interleave(n_local)
        order = torch.argsort(block.repeat_interleave(got.reshape(-1), output_size=x.shape[0]), stable=True)
        up, down = self.local_weights()
        y = torch.empty_like(x)
        y[order] = grouped_mlp(x[order], up, down, got.sum(0), self.swiglu, self.gelu_approximate)
        return all_to_all(y, send, recv, self.group)


def apply_expert_parallel(model, ep_size: int) -> None:
    """Replace every MoE block of the GPT ``model`` with its expert-parallel form for this rank."""
    group, ep_rank = expert_groups(ep_size)
    for block in model.blocks:
        if isinstance(block.mlp, MoE) and not isinstance(block.mlp, ExpertParallelMoE):
            block.mlp = ExpertParallelMoE(block.mlp, ep_size, ep_rank, group)


def split_expert_groups(groups: list[dict]) -> list[dict]:
    """The optimizer's parameter groups with the experts in groups of their own (``moe``: True,
    ``name``: the expert group), as DeepSpeed's ZeRO-1/2 needs (its own splitter)."""
    from deepspeed.moe.utils import split_params_into_different_moe_groups_for_optimizer

    named = [{**g, "name": f"group{i}"} for i, g in enumerate(groups)]
    return [g for g in split_params_into_different_moe_groups_for_optimizer(named) if g["params"]]


def is_expert_param(p: torch.Tensor) -> bool:
    return getattr(p, "allreduce", True) is False


def ep_key_to_gpt(key: str) -> tuple[str, int] | None:
    """An expert-parallel parameter name ('blocks.1.mlp.deepspeed_moe.experts.deepspeed_experts.5.up',
    the expert's global number in a DeepSpeed expert file) → (the GPT's name, expert index):
    ('blocks.1.mlp.experts.up', 5). None for every other name (the same in both)."""
    m = EXPERT_KEY.match(key)
    return (f"{m.group(1)}.experts.{m.group(3)}", int(m.group(2))) if m else None


def expert_places(module: nn.Module) -> dict[int, tuple[str, tuple[int, ...], int]]:
    """Where each of this rank's expert weights sits in the GPT: {id(parameter): (the GPT's name,
    the whole expert tensor's shape, the first element of the flattened GPT tensor it holds)}.
    Local expert i of a rank at ``ep_rank`` is the GPT's expert ep_rank * E/ep + i, and one
    expert's weights are a contiguous run of the GPT's [E, ...] tensor."""
    out = {}
    for prefix, m in module.named_modules():
        if not isinstance(m, ExpertParallelMoE):
            continue
        for i, expert in enumerate(m.deepspeed_moe.experts.deepspeed_experts):
            e = m.ep_rank * m.num_local_experts + i
            for field in ("up", "down"):
                p = getattr(expert, field)
                out[id(p)] = (f"{prefix}.experts.{field}", (m.num_experts, *p.shape), e * p.numel())
    return out
