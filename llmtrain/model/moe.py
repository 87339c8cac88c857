"""Mixture of Experts: the block that takes the place of the dense MLP in every model.moe_every-th
block of the GPT. No parallelism in here: expert parallelism (llmtrain/train/expert_parallel.py)
is applied from outside, by replacing ``MoE.expert_rows`` (the one step that runs the experts)
with an all-to-all over the ranks that share the experts.

For the tokens x of a micro-batch (T of them):

    y(x) = sum_j w_j(x) * Expert_{e_j(x)}(x)  [+ g(x) * Shared(x)]

- Router: logits = W_r x computed in fp32 (input and weight cast up, whatever the training
  precision), p = softmax(logits); e_1..e_k are the k experts of highest p; w_j = p_{e_j},
  renormalised to sum to 1 with model.moe_norm_topk (Mixtral, Qwen3-MoE), as they are otherwise
  (OLMoE, Qwen2-MoE's default).
- Experts: E MLPs of width model.expert_dim, GELU or SwiGLU as model.mlp, stored as two batched
  tensors, up (E, h, d) and down (E, d, ff) in nn.Linear's (out, in) order, and run as one grouped
  matmul (``torch.nn.functional.grouped_mm``) over the assignments sorted by expert (where torch's
  kernel does not serve, fp32 on a GPU or under torch.compile, one matmul per expert after one host
  read of the group sizes: ``grouped_mm``).
- Shared experts (model.moe_shared_experts > 0, DeepSeekMoE): one MLP of moe_shared_experts x
  expert_dim that every token goes through; with model.moe_shared_gate its output is scaled by
  sigmoid(w_g . x) (Qwen2-MoE).
- Dropless by default: every assignment is computed. With model.moe_capacity_factor c, in training
  each expert takes at most C = ceil(c * k * T / E) of the micro-batch's assignments, those of
  highest router probability; a dropped assignment adds nothing (the token keeps its residual and
  the shared experts). Evaluation and generation are dropless, so an exported model computes the
  same function.
- Router losses (``MoE.aux_loss``; GPT.forward adds them to the training loss): load balance
  (Switch Transformer, Fedus et al. 2021, eq. 4, over top-k assignments): E * sum_e f_e * P_e, with
  f_e the share of the k*T assignments routed to e and P_e the mean router probability of e (1.0
  when balanced), times model.moe_aux_loss; router z-loss (ST-MoE, Zoph et al. 2022): the mean of
  logsumexp(logits)^2, times model.moe_z_loss. Both are per micro-batch.
- Statistics for logging (``MoEStats``: tokens per expert, the two losses unscaled, dropped
  assignments) accumulate on the device in training (GPT.forward adds each forward's); the
  trainer reads them once per logged step.

Initialisation (llmtrain.model.gpt.init_weights): the router and both expert tensors N(0,
init_std), the expert and shared down projections init_std / sqrt(2 n_layer) like the dense MLP's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmtrain.config import ModelConfig


@dataclass
class Routing:
    """Where the T tokens of a micro-batch go: k experts each."""
    experts: torch.Tensor  # (T, k) long: the chosen experts
    weights: torch.Tensor  # (T, k) fp32: their combine weights
    probs: torch.Tensor  # (T, E) fp32: the router's probabilities
    logits: torch.Tensor  # (T, E) fp32


@dataclass
class Placement:
    """The micro-batch's assignments (token t to its j-th expert, t * k + j) laid out as rows
    grouped by expert, the layout the experts run on."""
    source: torch.Tensor  # (R,) the assignment (t * k + j) whose token each row holds; T * k for an empty row
    counts: torch.Tensor  # (E,) rows per expert, on the device
    capacity: int | None  # every expert has exactly this many rows (capacity routing); None: dropless
    dropped: torch.Tensor  # () assignments left out (0 when dropless)
    slot: torch.Tensor  # (T * k,) the row of each assignment; R (an empty row past the end) when dropped


def expert_counts(experts: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Assignments per expert (E,), on the device (torch.bincount would sync with the host on a GPU
    to size its output)."""
    flat = experts.reshape(-1)
    return torch.zeros(n_experts, dtype=torch.long, device=flat.device).scatter_add_(0, flat, torch.ones_like(flat))


def route(logits: torch.Tensor, k: int, normalise: bool) -> Routing:
    """Top-k softmax routing of fp32 logits (T, E)."""
    probs = logits.softmax(dim=-1)
    weights, experts = probs.topk(k, dim=-1)
    if normalise:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return Routing(experts, weights, probs, logits)


def place_dropless(r: Routing, n_experts: int) -> Placement:
    """Every assignment gets a row; rows sorted by expert (stable: token order within an expert)."""
    flat = r.experts.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = expert_counts(flat, n_experts)
    slot = torch.empty_like(order)
    slot[order] = torch.arange(order.numel(), device=order.device)
    return Placement(order, counts, None, torch.zeros((), device=flat.device), slot)


def place_capacity(r: Routing, n_experts: int, capacity_factor: float) -> Placement:
    """Each expert gets C = ceil(c k T / E) rows, filled by its assignments of highest router
    probability (ties: the earlier token); the others are dropped, the rows left over are empty.
    Fixed shapes, so no host sync."""
    T, k = r.experts.shape
    n = T * k
    C = math.ceil(capacity_factor * n / n_experts)
    flat = r.experts.reshape(-1)
    score = r.probs.gather(1, r.experts).reshape(-1)
    by_score = torch.argsort(score, descending=True, stable=True)
    order = by_score[torch.argsort(flat[by_score], stable=True)]  # by expert, then by score
    counts = expert_counts(flat, n_experts)
    first = counts.cumsum(0) - counts
    expert_sorted = flat[order]
    pos = torch.arange(n, device=flat.device) - first[expert_sorted]
    keep = pos < C
    rows = n_experts * C
    slot_sorted = torch.where(keep, expert_sorted * C + pos, rows)
    slot = torch.empty_like(order)
    slot[order] = slot_sorted
    source = torch.full((rows + 1,), n, dtype=torch.long, device=flat.device)
    source[slot_sorted] = order  # dropped ones all land on the extra row, cut off below
    return Placement(source[:rows], torch.full_like(counts, C), C, (~keep).sum().float(), slot)


def _compiling() -> bool:
    check = getattr(torch.compiler, "is_compiling", None)  # torch >= 2.3
    return check() if check is not None else torch._dynamo.is_compiling()


def grouped_kernel(x: torch.Tensor) -> bool:
    """Whether torch's grouped matmul serves x: bf16 on a CUDA GPU of compute capability 8.0 or
    more (its kernel's requirement), any dtype on CPU in eager mode (torch's CPU implementation;
    the compiler checks the CUDA kernel's requirements); never in a torch that lacks it."""
    if not hasattr(F, "grouped_mm"):
        return False
    if x.device.type == "cuda":
        return x.dtype == torch.bfloat16 and torch.cuda.get_device_capability(x.device)[0] >= 8
    return x.device.type == "cpu" and not _compiling()


def grouped_mm(x: torch.Tensor, w: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """x (R, i) rows grouped by ``offs`` (each group's end, int32) times w (E, i, o): group e by w[e].
    One grouped kernel where ``grouped_kernel`` allows, else one matmul per group after one host
    read of the offsets (fp32 on a GPU, older GPUs, under torch.compile)."""
    if grouped_kernel(x):
        return F.grouped_mm(x, w, offs=offs)
    ends = offs.tolist()
    return torch.cat([x[a:b] @ w[e] for e, (a, b) in enumerate(zip([0] + ends[:-1], ends))])


def grouped_mlp(x: torch.Tensor, up: torch.Tensor, down: torch.Tensor, counts: torch.Tensor, swiglu: bool,
                gelu_approximate: str) -> torch.Tensor:
    """Rows x (R, d) grouped by expert (``counts`` rows each, in order) through the experts' MLPs
    up (E, h, d), down (E, d, ff): one grouped matmul per projection."""
    offs = counts.cumsum(0).to(torch.int32)
    h = grouped_mm(x, up.transpose(1, 2), offs)
    if swiglu:
        gate, val = h.chunk(2, dim=-1)
        h = F.silu(gate) * val
    else:
        h = F.gelu(h, approximate=gelu_approximate)
    return grouped_mm(h, down.transpose(1, 2), offs)


class Experts(nn.Module):
    """E expert MLPs as two batched weights: up (E, [2x] ff, d) and down (E, d, ff)."""

    def __init__(self, cfg: ModelConfig, n_experts: int):
        super().__init__()
        ff = cfg.expert_dim
        self.swiglu = cfg.mlp == "swiglu"
        self.gelu_approximate = "tanh" if cfg.gelu == "tanh" else "none"
        self.up = nn.Parameter(torch.empty(n_experts, (2 if self.swiglu else 1) * ff, cfg.d_model))
        self.down = nn.Parameter(torch.empty(n_experts, cfg.d_model, ff))

    def forward(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        return grouped_mlp(x, self.up, self.down, counts, self.swiglu, self.gelu_approximate)


class SharedExperts(nn.Module):
    """The experts every token goes through, as one MLP of moe_shared_experts x expert_dim (the
    GPT's own dense MLP class, ``mlp``), with Qwen2-MoE's sigmoid gate when model.moe_shared_gate."""

    def __init__(self, cfg: ModelConfig, mlp: type[nn.Module]):
        super().__init__()
        self.mlp = mlp(cfg, hidden=cfg.moe_shared_experts * cfg.expert_dim)
        self.gate = nn.Linear(cfg.d_model, 1, bias=False) if cfg.moe_shared_gate else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(x)
        return y if self.gate is None else y * torch.sigmoid(self.gate(x))


class MoEStats:
    """Training statistics of one MoE layer, summed on the device over forward passes until read:
    tokens per expert (E), then the balance loss, the z-loss (both unscaled), dropped and routed
    assignments, and the number of forward passes."""

    def __init__(self, n_experts: int):
        self.n_experts = n_experts
        self.sums: torch.Tensor | None = None

    def add(self, counts: torch.Tensor, balance: torch.Tensor, z: torch.Tensor, dropped: torch.Tensor,
            assigned: int) -> None:
        tail = torch.ones(2, device=counts.device)  # [assigned, passes]: filled on the device, no copy from the host
        tail[0] = assigned
        row = torch.cat([counts.float(), torch.stack([balance.float(), z.float(), dropped.float()]), tail])
        self.sums = row if self.sums is None else self.sums + row

    def take(self, device) -> torch.Tensor:
        """The sums since the last take (zeros if none), and start again."""
        out = self.sums if self.sums is not None else torch.zeros(self.n_experts + 5, device=device)
        self.sums = None
        return out


class MoE(nn.Module):
    """Router, routed experts and shared experts (see the module docstring); ``mlp`` is the dense
    MLP class the shared experts are built from (the GPT's, ``MLP(cfg, hidden=width)``)."""

    def __init__(self, cfg: ModelConfig, mlp: type[nn.Module]):
        super().__init__()
        self.n_experts, self.top_k = cfg.moe_experts, cfg.moe_top_k
        self.normalise = cfg.moe_norm_topk
        self.capacity_factor = cfg.moe_capacity_factor
        self.aux_coef, self.z_coef = cfg.moe_aux_loss, cfg.moe_z_loss
        self.router = nn.Linear(cfg.d_model, cfg.moe_experts, bias=False)
        self.experts = Experts(cfg, cfg.moe_experts)
        self.shared = SharedExperts(cfg, mlp) if cfg.moe_shared_experts else None
        self.drop = nn.Dropout(cfg.dropout)
        self.stats = MoEStats(cfg.moe_experts)
        self.aux_loss: torch.Tensor | None = None  # this forward's scaled router losses
        self.record: tuple | None = None  # this forward's statistics, for MoEStats.add

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        with torch.autocast(x.device.type, enabled=False):  # the router in fp32, under autocast too
            logits = F.linear(x.float(), self.router.weight.float())
        r = route(logits, self.top_k, self.normalise)
        if self.capacity_factor is not None and self.training:
            p = place_capacity(r, self.n_experts, self.capacity_factor)
        else:
            p = place_dropless(r, self.n_experts)
        self.router_losses(r, p)
        k, d = self.top_k, x.shape[1]
        rows = torch.cat([x, x.new_zeros(1, d)])[torch.div(p.source, k, rounding_mode="floor")]
        out = self.expert_rows(rows, p)
        out = torch.cat([out, out.new_zeros(1, d)])[p.slot]  # back to assignment order; dropped: 0
        y = self.drop((out.float().view(-1, k, d) * r.weights[..., None]).sum(dim=1).to(x.dtype))
        if self.shared is not None:
            y = y + self.shared(x)
        return y.reshape(shape)

    def expert_rows(self, rows: torch.Tensor, p: Placement) -> torch.Tensor:
        """The experts on rows grouped by expert (the step expert parallelism replaces)."""
        return self.experts(rows, p.counts)

    def router_losses(self, r: Routing, p: Placement) -> None:
        """This forward's aux_loss and statistics (``record``; device-side, no sync). The GPT adds
        the record to ``stats`` once per forward of the whole model, so that recomputing a block
        (activation checkpointing) does not count it twice."""
        T = r.experts.shape[0]
        counts = expert_counts(r.experts, self.n_experts)
        share = counts.float() / (T * self.top_k)
        balance = self.n_experts * (share * r.probs.mean(dim=0)).sum()
        z = torch.logsumexp(r.logits, dim=-1).pow(2).mean()
        self.aux_loss = self.aux_coef * balance + self.z_coef * z
        self.record = (counts, balance.detach(), z.detach(), p.dropped, T * self.top_k)
