"""A GPT in one readable file. No parallelism in here: DeepSpeed wiring lives in llmtrain/train.

Options (all from ``ModelConfig``): learned or rotary positions, LayerNorm or RMSNorm, GELU or
SwiGLU MLP, tied or untied embeddings, dropout, optional biases. Attention goes through
``F.scaled_dot_product_attention`` with ``is_causal=True``.

Initialisation: every weight N(0, init_std); the two projections that write into the residual
stream (attention out, MLP down) get init_std / sqrt(2 * n_layer), as in GPT-2, so the
residual stream's variance does not grow with depth.

The model is built from three pieces, Embedding -> Block x n_layer -> Head, so that the
pipeline form (llmtrain/model/pipeline.py) can lay the same modules out as stages.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmtrain.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.d_model, cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)


def rotary_tables(seq_len: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)  # (T, hd/2)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., :h/2], x[..., h/2:]) of x (B, H, T, hd) by the position's angle."""
    T = x.shape[-2]
    cos, sin = cos[:T].to(x.dtype), sin[:T].to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.head_dim = cfg.d_model // cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.resid_drop = nn.Dropout(cfg.dropout)
        self.rotary = cfg.pos_encoding == "rotary"
        if self.rotary:
            cos, sin = rotary_tables(cfg.seq_len, self.head_dim, cfg.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.rotary:
            q = apply_rotary(q, self.rope_cos, self.rope_sin)
            k = apply_rotary(k, self.rope_cos, self.rope_sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.swiglu = cfg.mlp == "swiglu"
        hidden = cfg.ffn_dim
        self.up = nn.Linear(cfg.d_model, (2 if self.swiglu else 1) * hidden, bias=cfg.bias)
        self.down = nn.Linear(hidden, cfg.d_model, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        if self.swiglu:
            gate, val = h.chunk(2, dim=-1)
            h = F.silu(gate) * val
        else:
            h = F.gelu(h, approximate="tanh")
        return self.drop(self.down(h))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1 = make_norm(cfg)
        self.attn = Attention(cfg)
        self.norm2 = make_norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Embedding(nn.Module):
    """Token (+ learned position) embedding; also serves as the tied output head."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.seq_len, cfg.d_model) if cfg.pos_encoding == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx)
        if self.wpe is not None:
            x = x + self.wpe.weight[: idx.shape[1]]
        return self.drop(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.wte.weight)


class Head(nn.Module):
    """Final norm and, when embeddings are untied, the output projection."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm = make_norm(cfg)
        self.out = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        return x if self.out is None else self.out(x)


def init_weights(module: nn.Module, cfg: ModelConfig, seed: int | None = None) -> None:
    """Apply the depth-stable initialisation to every submodule of ``module``. With a seed, the
    draw depends only on (seed, module), so one piece initialises the same wherever it lives
    (the whole model on one rank, or one pipeline stage)."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    resid_std = cfg.init_std / math.sqrt(2 * cfg.n_layer)
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear):
            std = resid_std if name.endswith(("attn.proj", "mlp.down")) else cfg.init_std
            nn.init.normal_(m.weight, 0.0, std, generator=gen)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, cfg.init_std, generator=gen)


def piece_seed(seed: int, index: int) -> int:
    """Seed of piece ``index`` in the layer sequence embed (0), blocks (1..L), head (L+1)."""
    return seed * 100003 + index


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over every position, computed in fp32."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig, seed: int = 0):
        super().__init__()
        if cfg.vocab_size is None:
            raise ValueError("model.vocab_size must be set (the trainer takes it from the tokenizer)")
        self.cfg = cfg
        self.embed = Embedding(cfg)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.head = Head(cfg)
        for i, piece in enumerate([self.embed, *self.blocks, self.head]):
            init_weights(piece, cfg, piece_seed(seed, i))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """idx (B, T) token ids → logits (B, T, V); with targets, the mean loss instead."""
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x)
        x = self.head(x)
        logits = self.embed.logits(x) if self.head.out is None else x
        return logits if targets is None else lm_loss(logits, targets)


def count_params(cfg: ModelConfig) -> dict:
    """Parameter counts without building the model.

    n_params: every trained parameter once (a tied head is not counted twice).
    n_params_non_embedding: n_params less the token and learned-position embeddings
    (Kaplan et al.'s N); an untied output head counts as non-embedding.
    """
    d, L, V, f = cfg.d_model, cfg.n_layer, cfg.vocab_size, cfg.ffn_dim
    b = 1 if cfg.bias else 0
    norm = d * (2 if (cfg.norm == "layernorm" and cfg.bias) else 1)
    attn = 3 * d * d + 3 * d * b + d * d + d * b
    up = (2 if cfg.mlp == "swiglu" else 1) * f
    mlp = d * up + up * b + f * d + d * b
    per_layer = attn + mlp + 2 * norm
    emb = V * d + (cfg.seq_len * d if cfg.pos_encoding == "learned" else 0)
    head = norm + (0 if cfg.tie_embeddings else V * d)
    n_params = emb + L * per_layer + head
    return {"n_params": n_params, "n_params_non_embedding": n_params - emb}


def flops_per_token(cfg: ModelConfig) -> float:
    """Training FLOPs per token counting every matmul (forward + backward = 3x forward):
    6 x (non-embedding params + the V x d output projection) + 12 x n_layer x seq_len x d_model
    for attention scores and values (causal masking not discounted, as in PaLM's MFU)."""
    counts = count_params(cfg)
    matmul_params = counts["n_params_non_embedding"] + (cfg.vocab_size * cfg.d_model if cfg.tie_embeddings else 0)
    return 6.0 * matmul_params + 12.0 * cfg.n_layer * cfg.seq_len * cfg.d_model
