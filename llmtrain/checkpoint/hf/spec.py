"""The ArchSpec type: one transformers architecture, read both ways.

A spec says which of our models it represents exactly (``layout``: the model fields it needs;
``options``: the optional features it has, see ``OPTIONS``), the transformers config it writes
(``config``), the parameter-name table used by the export and, read backwards, by the import
(``table``, rows of ``Entry`` with their tensor transforms), and, if it imports, which config.json
``model_type`` values it reads and how they become our model section (``reads``, ``from_config``).

The helpers below are what the specs share: table rows (the same tensor, transposed, a fused
tensor split, zeros for a bias we lack, GPT-NeoX's per-head qkv order), the rope parameters, and
the pieces of a config.json every import reads. ``specs()`` finds every spec of the package.
"""
from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Entry:
    """One row of an architecture's name-mapping table, used in both directions: our parameter
    ``ours`` becomes the transformers tensors ``hf`` through ``to_hf`` and comes back through
    ``from_hf``. ``ours`` None: a tensor our model does not have (a bias of a bias-free model),
    written as zeros on export and required to be zero on import."""
    ours: str | None
    hf: tuple[str, ...]
    to_hf: Callable[[torch.Tensor], tuple[torch.Tensor, ...]]
    from_hf: Callable[[tuple[torch.Tensor, ...]], torch.Tensor]


def same(ours, hf) -> Entry:
    return Entry(ours, (hf,), lambda t: (t,), lambda ts: ts[0])


def transposed(ours, hf) -> Entry:  # GPT-2's Conv1D stores (in, out)
    return Entry(ours, (hf,), lambda t: (t.t().contiguous(),), lambda ts: ts[0].t().contiguous())


def split(ours, hfs, sizes) -> Entry:  # one fused tensor of ours, several of theirs (rows in order)
    return Entry(ours, tuple(hfs), lambda t: tuple(x.contiguous() for x in t.split(sizes)), lambda ts: torch.cat(ts))


def zeros(hf, size) -> Entry:
    return Entry(None, (hf,), lambda _: (torch.zeros(size),), lambda ts: ts[0])


def per_head_qkv(ours, hf, H) -> Entry:
    """GPT-NeoX views its fused qkv as (heads, [q, k, v], head_dim); ours is ([q, k, v], heads, head_dim)."""
    def to_hf(t):
        return (t.reshape(3, H, -1, *t.shape[1:]).transpose(0, 1).reshape(t.shape).contiguous(),)

    def from_hf(ts):
        t = ts[0]
        return t.reshape(H, 3, -1, *t.shape[1:]).transpose(0, 1).reshape(t.shape).contiguous()
    return Entry(ours, (hf,), to_hf, from_hf)


def bias(cfg, ours, hf, size, how=same) -> Entry:
    """A bias, or zeros where our model has none (exact: adding 0)."""
    return how(ours, hf) if cfg.bias else zeros(hf, size)


def head(cfg, embed: str, norm: str, norm_bias: bool) -> list[Entry]:
    """The final norm (``norm`` + weight/bias), the token embedding ``embed`` and the output head
    (lm_head.weight; one tensor of ours for two names of theirs when tied)."""
    t = [same("head.norm.weight", norm + "weight")]
    if norm_bias:
        t.append(bias(cfg, "head.norm.bias", norm + "bias", cfg.d_model))
    if cfg.tie_embeddings:
        t.append(Entry("embed.wte.weight", (embed, "lm_head.weight"), lambda x: (x, x), lambda ts: ts[0]))
    else:
        t += [same("embed.wte.weight", embed), same("head.out.weight", "lm_head.weight")]
    return t


# --------------------------------------------------------------------------------------------
# the optional features of our model, and what no spec represents

# name: (does the model use it, why an architecture without it cannot represent the model);
# checked in this order, so a refusal names the first one missing
OPTIONS: dict[str, tuple[Callable, Callable]] = {
    "qk_norm": (lambda c: c.qk_norm,
                lambda c, arch: "model.qk_norm=true: only Qwen3 has the same per-head QK-norm, and it needs RMSNorm, "
                                "SwiGLU and model.bias=false"),
    "gqa": (lambda c: c.kv_heads != c.n_head,
            lambda c, arch: f"model.n_kv_head={c.n_kv_head}: {arch} has no grouped-query attention (Llama-style "
                            f"models do)"),
    "parallel_residual": (lambda c: c.parallel_residual,
                          lambda c, arch: "model.parallel_residual=true: only GPT-NeoX (rotary, LayerNorm, GELU) has "
                                          "this residual"),
    "partial_rotary": (lambda c: c.rotary_pct != 1.0,
                       lambda c, arch: f"model.rotary_pct={c.rotary_pct}: only GPT-NeoX and StableLM rotate part of "
                                       f"each head"),
    "rope_scaling": (lambda c: c.rope_scaling,
                     lambda c, arch: f"model.rope_scaling={c.rope_scaling}: only Llama-style models take Llama 3 rope "
                                     f"scaling here"),
    "exact_gelu": (lambda c: c.gelu != "tanh" and c.mlp == "gelu", lambda c, arch: "model.gelu=exact"),
    "moe": (lambda c: c.is_moe,
            lambda c, arch: f"model.moe_experts={c.moe_experts}: {arch} has no experts (Mixtral, Qwen2-MoE and "
                            f"Qwen3-MoE do: rotary, RMSNorm, SwiGLU, model.bias=false)"),
    "moe_ungated_shared": (lambda c: c.is_moe and c.moe_shared_experts and not c.moe_shared_gate,
                           lambda c, arch: f"model.moe_shared_experts={c.moe_shared_experts} without "
                                           f"model.moe_shared_gate: the one exported architecture with shared "
                                           f"experts, Qwen2-MoE, gates them (set model.moe_shared_gate=true)"),
    "moe_shared": (lambda c: c.is_moe and c.moe_shared_experts,
                   lambda c, arch: f"model.moe_shared_experts={c.moe_shared_experts}: {arch} has no shared experts "
                                   f"(Qwen2-MoE has, gated: model.moe_shared_gate=true, no model.qk_norm)"),
    "moe_dense_layers": (lambda c: c.is_moe and c.moe_every > 1,
                         lambda c, arch: f"model.moe_every={c.moe_every}: {arch} has experts in every layer "
                                         f"(Qwen2-MoE and Qwen3-MoE have decoder_sparse_step)"),
    "moe_unnormalised": (lambda c: c.is_moe and not c.moe_norm_topk,
                         lambda c, arch: f"model.moe_norm_topk=false: {arch} always renormalises the top-k weights "
                                         f"(Qwen2-MoE and Qwen3-MoE have norm_topk_prob)"),
}

# layouts no spec has: (does the model have it, why), the first that holds names the reason
NO_ARCHITECTURE: list[tuple[Callable, str]] = [
    (lambda c: c.pos_encoding == "sinusoidal",
     "fixed sinusoidal positions: no transformers causal-LM architecture adds a sin/cos table to its embeddings "
     "(use learned or rotary positions to export)"),
    (lambda c: c.pos_encoding == "learned" and c.norm == "rmsnorm",
     "learned position embeddings with RMSNorm: no transformers architecture has both (GPT-2 and OPT use "
     "LayerNorm, Llama-style models use rotary)"),
    (lambda c: c.pos_encoding == "learned" and c.mlp == "swiglu",
     "learned position embeddings with a SwiGLU MLP: no transformers architecture has both (GPT-2 has a plain "
     "GELU MLP)"),
    (lambda c: c.norm == "rmsnorm" and c.mlp == "gelu",
     "RMSNorm with a non-gated GELU MLP: no transformers architecture has both (Llama's MLP is gated, GPT-NeoX and "
     "GPT-2 use LayerNorm)"),
    (lambda c: c.norm == "layernorm" and c.mlp == "swiglu" and c.bias,
     "rotary + LayerNorm + SwiGLU with model.bias=true: StableLM, the one architecture with this layout, has no MLP "
     "or attention-output biases"),
]


# --------------------------------------------------------------------------------------------
# the spec


@dataclass(frozen=True)
class ArchSpec:
    """One transformers architecture. See the module docstring and the package's for how to add one."""
    name: str  # what choose_architecture returns ("llama")
    layout: dict  # ModelConfig field -> the value this architecture needs
    options: frozenset  # the OPTIONS it represents
    config: Callable  # (cfg, bos, eos) -> the transformers config to write
    table: Callable  # cfg -> [Entry]: every parameter of ours and of theirs, once
    legacy_keys: Callable = lambda cfg: {}  # config.json keys transformers 4.x reads instead of rope_parameters
    reads: tuple = ()  # config.json model_type values imported through this spec
    from_config: Callable | None = None  # (hc, refuse) -> our model section; refuse(what) raises

    def matches(self, cfg) -> bool:
        return all(getattr(cfg, k) == v for k, v in self.layout.items())

    def refusal(self, cfg) -> str | None:
        """Why this architecture cannot represent ``cfg`` (its layout matching), or None."""
        for name, (used, why) in OPTIONS.items():
            if used(cfg) and name not in self.options:
                return why(cfg, self.name)
        return None


@functools.cache
def specs() -> tuple[ArchSpec, ...]:
    """Every module-level SPEC of this package's modules, the most specific layout first (a model
    matching several layouts goes to the narrowest one that represents it)."""
    import llmtrain.checkpoint.hf as package

    found = []
    for info in pkgutil.iter_modules(package.__path__):
        spec = getattr(importlib.import_module(f"{package.__name__}.{info.name}"), "SPEC", None)
        if isinstance(spec, ArchSpec):
            found.append(spec)
    return tuple(sorted(found, key=lambda s: (-len(s.layout), s.name)))


# --------------------------------------------------------------------------------------------
# config helpers, both ways


def common_config(cfg, bos: int, eos: int) -> dict:
    """The transformers config keys every architecture takes the same way."""
    return dict(vocab_size=cfg.vocab_size, tie_word_embeddings=bool(cfg.tie_embeddings), bos_token_id=bos,
                eos_token_id=eos, initializer_range=cfg.init_std)


def rope_parameters(cfg) -> dict:
    """transformers' rope_parameters for our rotary settings."""
    if cfg.rope_scaling == "llama3":
        return {"rope_type": "llama3", "rope_theta": float(cfg.rope_theta), "factor": float(cfg.rope_scaling_factor),
                "low_freq_factor": float(cfg.rope_low_freq_factor),
                "high_freq_factor": float(cfg.rope_high_freq_factor),
                "original_max_position_embeddings": int(cfg.rope_original_seq_len)}
    return {"rope_type": "default", "rope_theta": float(cfg.rope_theta)}


def gelu_activation(cfg) -> str:
    """transformers' name of our GELU (the same kernels)."""
    return "gelu_pytorch_tanh" if cfg.gelu == "tanh" else "gelu"


def common_from_hf(hc: dict, tie_default: bool) -> dict:
    """Our model fields every import reads the same way."""
    return dict(vocab_size=int(hc["vocab_size"]), dropout=0.0,
                tie_embeddings=bool(hc.get("tie_word_embeddings", tie_default)))


def rope_from_hf(hc: dict) -> dict:
    """rope_parameters (transformers 5), else the legacy rope_theta / rope_scaling keys (4.x)."""
    rope = dict(hc.get("rope_parameters") or {})
    if not rope:
        rope = dict(hc.get("rope_scaling") or {})
        rope.setdefault("rope_theta", hc.get("rope_theta", hc.get("rotary_emb_base", 10000.0)))
        if "partial_rotary_factor" not in rope and ("rotary_pct" in hc or "partial_rotary_factor" in hc):
            rope["partial_rotary_factor"] = hc.get("partial_rotary_factor", hc.get("rotary_pct"))
    rope.setdefault("rope_type", rope.pop("type", "default"))
    return rope


def rotary_from_hf(rope: dict, refuse, types=("default", "llama3")) -> dict:
    """Our rotary fields from rope_parameters (``rope_from_hf``); a rope type outside ``types`` is refused."""
    if rope.get("rope_type") not in types:
        refuse(f"rope_type {rope.get('rope_type')!r}")
    rot = dict(pos_encoding="rotary", rope_theta=float(rope.get("rope_theta", 10000.0)))
    if rope["rope_type"] == "llama3":
        rot.update(rope_scaling="llama3", rope_scaling_factor=float(rope["factor"]),
                   rope_low_freq_factor=float(rope["low_freq_factor"]),
                   rope_high_freq_factor=float(rope["high_freq_factor"]),
                   rope_original_seq_len=int(rope["original_max_position_embeddings"]))
    return rot


def gelu_from_hf(act: str, refuse) -> str:
    """Our model.gelu for a transformers activation name."""
    if act in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return "tanh" if act != "gelu_fast" else refuse(f"hidden activation {act!r}")
    if act == "gelu":
        return "exact"
    return refuse(f"hidden activation {act!r} (GELU, exact or tanh, is supported)")
