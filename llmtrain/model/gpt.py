"""A GPT in one readable file. No parallelism in here: DeepSpeed wiring lives in llmtrain/train.

Options (all from ``ModelConfig``): learned, rotary (whole or partial head, optionally with
Llama 3 frequency scaling) or fixed sinusoidal positions; LayerNorm or RMSNorm; GELU or SwiGLU
MLP; multi-head, grouped-query or multi-query attention (n_kv_head); QK-norm; sequential or
parallel (GPT-NeoX) residual; z-loss; tied or untied embeddings; dropout; optional biases.
Attention goes through ``F.scaled_dot_product_attention`` (grouped-query without materialising
repeated key/value heads, ``enable_gqa``).

Generation can pass a ``KVCache``: each call then runs only the new tokens, attending to the
keys and values kept from earlier calls.

Document masking (``model.document_mask_token``, set by the trainer from ``data.document_mask``):
a packed sequence holds several documents separated by that token; attention then never crosses
from one document into an earlier one, and positions restart at 0 at each separator (see
``Documents``).
On a GPU this runs flex attention with a block-sparse mask (blocks wholly outside every document
are skipped, flash-style); elsewhere, and with attention dropout, scaled_dot_product_attention with
a dense boolean mask. Decoding with a KV cache does not mask (one document at a time).

Initialisation: every weight N(0, init_std); the two projections that write into the residual
stream (attention out, MLP down) get init_std / sqrt(2 * n_layer), as in GPT-2, so the
residual stream's variance does not grow with depth. Under model.parametrization=mup the hidden
matrices' std, the attention scale and a readout multiplier follow llmtrain/model/mup.py (each
factor 1 at the base width).

The model is built from three pieces, Embedding -> Block x n_layer -> Head, so that the
pipeline form (llmtrain/model/pipeline.py) can lay the same modules out as stages.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmtrain.config import ModelConfig
from llmtrain.model import mup
from llmtrain.model.moe import MoE, Experts


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def make_norm(cfg: ModelConfig, dim: int | None = None) -> nn.Module:
    dim = dim or cfg.d_model
    if cfg.norm == "rmsnorm":
        return RMSNorm(dim, cfg.norm_eps)
    return nn.LayerNorm(dim, eps=cfg.norm_eps, bias=cfg.bias)


def rope_inv_freq(cfg: ModelConfig, device=None) -> torch.Tensor:
    """theta^(-2i/dim) over the rotated dimensions, with Llama 3's scaling when configured: long
    wavelengths slowed by the factor, short ones kept, the band between interpolated."""
    dim = cfg.rotary_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim))
    if cfg.rope_scaling == "llama3":
        factor, lo, hi, old = (cfg.rope_scaling_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor,
                               cfg.rope_original_seq_len)
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old / lo, inv_freq / factor, inv_freq)
        smooth = (old / wavelen - lo) / (hi - lo)
        mid = (wavelen >= old / hi) & (wavelen <= old / lo)
        inv_freq = torch.where(mid, (1 - smooth) * scaled / factor + smooth * scaled, scaled)
    return inv_freq


def rotary_tables(seq_len: int, head_dim: int, theta: float,
                  inv_freq: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    if inv_freq is None:
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)  # (T, rotated/2)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, start: int = 0) -> torch.Tensor:
    """Rotate pairs (r[..., :n/2], r[..., n/2:]) of the first n = 2 * cos.shape[-1] dimensions r of
    x (B, H, T, hd) by the angle of positions start..start+T-1 of a table cos, sin (>= T, n/2), or
    by per-token angles cos, sin (B, 1, T, n/2); the rest of each head passes."""
    T, n = x.shape[-2], 2 * cos.shape[-1]
    if cos.dim() == 2:
        cos, sin = cos[start:start + T], sin[start:start + T]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    rot, rest = x[..., :n], x[..., n:]
    x1, x2 = rot.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos, rest), dim=-1)


def sinusoidal_table(seq_len: int, dim: int) -> torch.Tensor:
    """The fixed positions of "Attention is all you need": sin at even, cos at odd dimensions."""
    return sinusoidal_at(torch.arange(seq_len), dim)


def sinusoidal_at(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """The sinusoidal embeddings (..., dim) of integer ``positions`` (...), in fp32 on their device:
    made per call for the positions used, so no table of the model's whole context is kept."""
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device) * (-math.log(10000.0) / dim))
    angles = positions.float()[..., None] * freq
    table = torch.zeros(*positions.shape, dim, device=positions.device)
    table[..., 0::2], table[..., 1::2] = angles.sin(), angles.cos()
    return table


class LayerCache:
    """One layer's keys and values (B, n_kv_head, T_seen, hd) from earlier calls."""

    def __init__(self):
        self.k = self.v = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[-2]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k = k if self.k is None else torch.cat([self.k, k], dim=-2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=-2)
        return self.k, self.v


class KVCache:
    """Every layer's LayerCache, for incremental decoding: ``model(new_ids, cache=cache)``."""

    def __init__(self, n_layer: int):
        self.layers = [LayerCache() for _ in range(n_layer)]

    @property
    def length(self) -> int:
        return self.layers[0].length


class Documents:
    """The documents packed into a batch of token ids (B, T), separated by the token ``sep``:
    ``ids`` (B, T) numbers each token's document and ``positions`` (B, T) is each token's position
    inside it. A separator opens the document after it, at position 0, as a beginning-of-document
    token: every document then reads [sep, tokens...], which is what generation feeds the model
    ([end-of-document] + prompt); the last token of a document still learns to predict the
    separator. The attention masks are made on first use and kept, so every layer of one
    forward shares them."""

    def __init__(self, ids: torch.Tensor):
        self.ids = ids
        T = ids.shape[1]
        ar = torch.arange(T, device=ids.device)
        first = torch.ones_like(ids, dtype=torch.bool)
        first[:, 1:] = ids[:, 1:] != ids[:, :-1]
        self.positions = ar - torch.where(first, ar, 0).cummax(dim=1).values
        self._dense = self._block = None

    @classmethod
    def from_tokens(cls, idx: torch.Tensor, sep: int) -> Documents:
        return cls((idx == sep).long().cumsum(dim=1))

    def dense_mask(self) -> torch.Tensor:
        """(B, 1, T, T) bool: query i may see key j when j <= i in the same document."""
        if self._dense is None:
            T = self.ids.shape[1]
            causal = torch.ones(T, T, dtype=torch.bool, device=self.ids.device).tril()
            self._dense = ((self.ids[:, :, None] == self.ids[:, None, :]) & causal)[:, None]
        return self._dense

    def block_mask(self):
        """The same mask as a flex-attention BlockMask (block-sparse: fully masked blocks are skipped)."""
        if self._block is None:
            from torch.nn.attention.flex_attention import create_block_mask

            ids = self.ids

            def same_document_causal(b, h, q, kv):
                return (q >= kv) & (ids[b, q] == ids[b, kv])

            B, T = ids.shape
            self._block = create_block_mask(same_document_causal, B, None, T, T, device=ids.device)
        return self._block


_compiled_flex = None


def flex_document_attention(q, k, v, docs: Documents, compiled: bool = True) -> torch.Tensor:
    """Document-masked causal attention through flex attention (compiled: the fused kernel; eager:
    torch's unfused reference, forward only on CPU)."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    fn = flex_attention
    if compiled:
        if _compiled_flex is None:
            _compiled_flex = torch.compile(flex_attention, dynamic=False)
        fn = _compiled_flex
    return fn(q, k, v, block_mask=docs.block_mask(), enable_gqa=k.shape[1] != q.shape[1])


def document_attention(q, k, v, docs: Documents, dropout_p: float) -> torch.Tensor:
    """Causal attention that stays inside each document: flex attention on a GPU (it has no
    dropout, and no backward on CPU); scaled_dot_product_attention with the dense mask otherwise."""
    if q.device.type == "cuda" and dropout_p == 0.0:
        return flex_document_attention(q, k, v, docs)
    return _sdpa(q, k, v, causal=False, dropout_p=dropout_p, mask=docs.dense_mask())


def _sdpa(q, k, v, causal: bool, dropout_p: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of q (B, H, T, hd) over k, v (B, KV, S, hd), under ``mask`` if given. With S > T (a
    cache) the causal mask is aligned to the end: query i sees keys up to S - T + i."""
    T, S = q.shape[-2], k.shape[-2]
    if causal and T != S:
        causal = False
        if T > 1:
            mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
    if k.shape[1] != q.shape[1]:
        if _HAS_GQA:  # grouped-query: SDPA maps each group of query heads onto its key/value head
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, dropout_p=dropout_p,
                                                  enable_gqa=True)
        rep = q.shape[1] // k.shape[1]  # older torch: repeat the key/value heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, dropout_p=dropout_p)


_HAS_GQA = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)


class Attention(nn.Module):
    """Causal self-attention. The fused projection's rows are [q heads | k heads | v heads]:
    n_head query heads and n_kv_head key and value heads of head_dim each."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv_head = cfg.n_head, cfg.kv_heads
        self.head_dim = cfg.d_model // cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, (self.n_head + 2 * self.n_kv_head) * self.head_dim, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.q_norm = make_norm(cfg, self.head_dim) if cfg.qk_norm else None
        self.k_norm = make_norm(cfg, self.head_dim) if cfg.qk_norm else None
        self.dropout = cfg.dropout
        self.resid_drop = nn.Dropout(cfg.dropout)
        self.rotary = cfg.pos_encoding == "rotary"
        self.cfg = cfg
        self.q_mult = mup.query_multiplier(cfg)  # muP: scores scaled by 1/head_dim (1.0 at the base width)

    def rotary_angles(self, start: int, T: int, device=None,
                      positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (T, rotary_dim/2) of positions start..start+T-1, or (B, 1, T, rotary_dim/2) of
        per-token ``positions`` (B, T); made in fp32 on the device at each call (cheap; no table of
        the whole context, no buffer a bf16 cast could round)."""
        inv_freq = rope_inv_freq(self.cfg, device)
        if positions is not None:
            angles = (positions.float()[..., None] * inv_freq)[:, None]
        else:
            angles = torch.outer(torch.arange(start, start + T, dtype=torch.float32, device=device), inv_freq)
        return angles.cos(), angles.sin()

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None, docs: Documents | None = None) -> torch.Tensor:
        B, T, C = x.shape
        hd, kv = self.head_dim, self.n_kv_head * self.head_dim
        q, k, v = self.qkv(x).split([C, kv, kv], dim=-1)
        q = q.view(B, T, self.n_head, hd).transpose(1, 2)
        k = k.view(B, T, self.n_kv_head, hd).transpose(1, 2)
        v = v.view(B, T, self.n_kv_head, hd).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.q_mult != 1.0:
            q = q * self.q_mult
        if self.rotary:
            cos, sin = self.rotary_angles(0 if cache is None else cache.length, T, x.device,
                                          None if docs is None else docs.positions)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.append(k, v)
        dropout_p = self.dropout if self.training else 0.0
        if docs is not None:
            y = document_attention(q, k, v, docs, dropout_p)
        else:
            y = _sdpa(q, k, v, causal=True, dropout_p=dropout_p)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, hidden: int | None = None):
        super().__init__()
        self.swiglu = cfg.mlp == "swiglu"
        self.gelu_approximate = "tanh" if cfg.gelu == "tanh" else "none"
        hidden = hidden or cfg.ffn_dim
        self.up = nn.Linear(cfg.d_model, (2 if self.swiglu else 1) * hidden, bias=cfg.bias)
        self.down = nn.Linear(hidden, cfg.d_model, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        if self.swiglu:
            gate, val = h.chunk(2, dim=-1)
            h = F.silu(gate) * val
        else:
            h = F.gelu(h, approximate=self.gelu_approximate)
        return self.drop(self.down(h))


class Block(nn.Module):
    """Attention and an MLP, or an MoE (llmtrain/model/moe.py) in the blocks model.moe_every picks."""

    def __init__(self, cfg: ModelConfig, layer: int = 0):
        super().__init__()
        self.norm1 = make_norm(cfg)
        self.attn = Attention(cfg)
        self.norm2 = make_norm(cfg)
        self.mlp = MoE(cfg, MLP) if cfg.is_moe_layer(layer) else MLP(cfg)
        self.parallel = cfg.parallel_residual

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None, docs: Documents | None = None) -> torch.Tensor:
        if self.parallel:  # GPT-NeoX: attention and MLP both read the block's input
            return x + self.attn(self.norm1(x), cache, docs) + self.mlp(self.norm2(x))
        x = x + self.attn(self.norm1(x), cache, docs)
        return x + self.mlp(self.norm2(x))


class Embedding(nn.Module):
    """Token (+ learned or sinusoidal position) embedding; also serves as the tied output head."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.seq_len, cfg.d_model) if cfg.pos_encoding == "learned" else None
        self.sinusoidal = cfg.pos_encoding == "sinusoidal"  # fixed, not a parameter (made per call, no buffer)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, idx: torch.Tensor, start: int = 0, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings of idx (B, T) at positions start..start+T-1, or at ``positions`` (B, T)."""
        x = self.wte(idx)
        T = idx.shape[1]
        if self.wpe is not None:
            x = x + (self.wpe.weight[start:start + T] if positions is None else self.wpe(positions))
        elif self.sinusoidal:
            pos = torch.arange(start, start + T, device=idx.device) if positions is None else positions
            x = x + sinusoidal_at(pos, x.shape[-1]).to(x.dtype)
        return self.drop(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.wte.weight)


class Head(nn.Module):
    """Final norm and, when embeddings are untied, the output projection. Under muP the normalised
    input of the output projection (tied or not) is multiplied by the readout multiplier
    base_width / d_model, which scales the logits by it."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm = make_norm(cfg)
        self.out = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.out_mult = mup.output_multiplier(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        if self.out_mult != 1.0:
            x = x * self.out_mult
        return x if self.out is None else self.out(x)


def init_weights(module: nn.Module, cfg: ModelConfig, seed: int | None = None) -> None:
    """Apply the depth-stable initialisation to every submodule of ``module``. With a seed, the
    draw depends only on (seed, module), so one piece initialises the same wherever it lives
    (the whole model on one rank, or one pipeline stage)."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    resid_std = cfg.init_std / math.sqrt(2 * cfg.n_layer)
    for name, m in module.named_modules():
        if isinstance(m, Experts):  # all experts in one draw each, so a slice of them is the same on any rank
            nn.init.normal_(m.up, 0.0, cfg.init_std, generator=gen)
            nn.init.normal_(m.down, 0.0, resid_std, generator=gen)
        elif isinstance(m, nn.Linear):
            std = resid_std if name.endswith(("attn.proj", "mlp.down")) else cfg.init_std
            std *= mup.init_std_factor(cfg, name + ".weight")  # muP: hidden weights var ~ 1/fan_in
            nn.init.normal_(m.weight, 0.0, std, generator=gen)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, cfg.init_std, generator=gen)


def piece_seed(seed: int, index: int) -> int:
    """Seed of piece ``index`` in the layer sequence embed (0), blocks (1..L), head (L+1)."""
    return seed * 100003 + index


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, z_loss: float = 0.0) -> torch.Tensor:
    """Mean next-token cross-entropy over the counted positions, computed in fp32: a target of
    -100 (a prompt token of prompt/response data, see llmtrain.data.sampler) does not count, and
    a batch with no counted target has loss 0 (not NaN). With ``z_loss`` > 0
    and gradients on (training), plus z_loss * mean(logsumexp(logits)^2) (PaLM's z-loss, which
    keeps the softmax normaliser near 1); evaluation (no gradients) reports the cross-entropy."""
    logits = logits.float().reshape(-1, logits.shape[-1])
    flat = targets.reshape(-1)
    loss = F.cross_entropy(logits, flat, ignore_index=-100, reduction="sum") / (flat != -100).sum().clamp(min=1)
    if z_loss and torch.is_grad_enabled():
        loss = loss + z_loss * torch.logsumexp(logits, dim=-1).pow(2).mean()
    return loss


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig, seed: int = 0, init: bool = True):
        """``init=False`` leaves torch's default initialisation, for a caller that initialises each
        piece itself (ZeRO-3 builds partitioned and initialises one gathered piece at a time)."""
        super().__init__()
        if cfg.vocab_size is None:
            raise ValueError("model.vocab_size must be set (the trainer takes it from the tokenizer)")
        self.cfg = cfg
        self.embed = Embedding(cfg)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.head = Head(cfg)
        if init:
            for i, (_, piece) in enumerate(self.pieces()):
                init_weights(piece, cfg, piece_seed(seed, i))

    def pieces(self) -> list[tuple[str, nn.Module]]:
        """(state-dict prefix, module) of embed, blocks 0..L-1 and head, in the order piece_seed numbers them."""
        return [("embed.", self.embed), *((f"blocks.{i}.", b) for i, b in enumerate(self.blocks)), ("head.", self.head)]

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        """idx (B, T) token ids → logits (B, T, V); with targets, the mean loss instead. With a
        cache, idx are the tokens after the cached ones (positions continue from there)."""
        docs = self.documents(idx) if cache is None else None
        x = self.embed(idx, 0 if cache is None else cache.length, None if docs is None else docs.positions)
        for i, block in enumerate(self.blocks):
            x = block(x, None if cache is None else cache.layers[i], docs)
        x = self.head(x)
        logits = self.embed.logits(x) if self.head.out is None else x
        if self.training:
            for m in self.moe_layers():
                m.stats.add(*m.record)
        if targets is None:
            return logits
        loss = lm_loss(logits, targets, self.cfg.z_loss)
        if self.cfg.is_moe and torch.is_grad_enabled():  # training: plus the routers' losses
            loss = loss + sum(m.aux_loss for m in self.moe_layers())
        return loss

    def moe_layers(self) -> list[MoE]:
        return [b.mlp for b in self.blocks if isinstance(b.mlp, MoE)]

    def documents(self, idx: torch.Tensor) -> Documents | None:
        """The packed documents of idx under document masking; None without it."""
        sep = self.cfg.document_mask_token
        return None if sep is None else Documents.from_tokens(idx, sep)


def count_params(cfg: ModelConfig) -> dict:
    """Parameter counts without building the model.

    n_params: every trained parameter once (a tied head is not counted twice).
    n_params_non_embedding: n_params less the token and learned-position embeddings
    (Kaplan et al.'s N); an untied output head counts as non-embedding.
    n_params_active: the parameters one token goes through: n_params with only model.moe_top_k of
    each MoE layer's routed experts (router and shared experts included); n_params for a dense model.
    n_params_active_non_embedding: the same less the embeddings.
    """
    d, L, V, f = cfg.d_model, cfg.n_layer, cfg.vocab_size, cfg.ffn_dim
    b = 1 if cfg.bias else 0
    per_dim = 2 if (cfg.norm == "layernorm" and cfg.bias) else 1  # weight (+ bias) per normalised dim
    norm = d * per_dim
    qkv = d + 2 * cfg.kv_heads * (d // cfg.n_head)  # query heads + key and value heads
    attn = d * qkv + qkv * b + d * d + d * b
    if cfg.qk_norm:
        attn += 2 * (d // cfg.n_head) * per_dim
    up = 2 if cfg.mlp == "swiglu" else 1

    def mlp(width: int) -> int:
        return d * up * width + up * width * b + width * d + d * b

    total = active = L * (attn + 2 * norm)
    for i in range(L):
        if cfg.is_moe_layer(i):
            router_shared = d * cfg.moe_experts
            if cfg.moe_shared_experts:
                router_shared += mlp(cfg.moe_shared_experts * cfg.expert_dim) + (d if cfg.moe_shared_gate else 0)
            total += router_shared + cfg.moe_experts * mlp(cfg.expert_dim)
            active += router_shared + cfg.moe_top_k * mlp(cfg.expert_dim)
        else:
            total += mlp(f)
            active += mlp(f)
    emb = V * d + (cfg.seq_len * d if cfg.pos_encoding == "learned" else 0)
    head = norm + (0 if cfg.tie_embeddings else V * d)
    n_params, n_active = emb + total + head, emb + active + head
    return {"n_params": n_params, "n_params_non_embedding": n_params - emb, "n_params_active": n_active,
            "n_params_active_non_embedding": n_active - emb}


def flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> float:
    """Training FLOPs per token counting every matmul (forward + backward = 3x forward):
    6 x (active non-embedding params + the V x d output projection) + 12 x n_layer x seq_len x
    d_model for attention scores and values (causal masking not discounted, as in PaLM's MFU), where
    seq_len is the window trained (train.seq_len; default the model's positions). Fewer
    key/value heads shrink only the qkv projection (in the parameters): every query head still
    scores seq_len keys. An MoE layer counts its router, shared experts and top_k routed experts
    (the active parameters), not the experts a token skips."""
    counts = count_params(cfg)
    matmul_params = (counts["n_params_active_non_embedding"]
                     + (cfg.vocab_size * cfg.d_model if cfg.tie_embeddings else 0))
    return 6.0 * matmul_params + 12.0 * cfg.n_layer * (seq_len or cfg.seq_len) * cfg.d_model
