"""Llama (LlamaForCausalLM): rotary positions, RMSNorm, SwiGLU MLP; grouped-query attention,
Llama 3 rope scaling, attention_bias = mlp_bias = model.bias. Our fused qkv projection is
[q heads | k heads | v heads], split into q/k/v; our SwiGLU up projection is [gate | value],
split into gate_proj and up_proj. Imports Llama and Mistral (without a sliding window shorter
than its context).

``layers`` and ``llama_style`` serve the architectures built like Llama (Qwen3, StableLM)."""
from __future__ import annotations

from llmtrain.checkpoint.hf.spec import (ArchSpec, bias, common_config, common_from_hf, head, rope_from_hf,
                                         rope_parameters, rotary_from_hf, same, split)


def config(cfg, bos: int, eos: int):
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=cfg.d_model, intermediate_size=cfg.ffn_dim, num_hidden_layers=cfg.n_layer,
                       num_attention_heads=cfg.n_head, num_key_value_heads=cfg.kv_heads,
                       head_dim=cfg.d_model // cfg.n_head, hidden_act="silu", max_position_embeddings=cfg.seq_len,
                       rms_norm_eps=cfg.norm_eps, rope_parameters=rope_parameters(cfg), attention_bias=bool(cfg.bias),
                       mlp_bias=bool(cfg.bias), attention_dropout=cfg.dropout, pretraining_tp=1,
                       **common_config(cfg, bos, eos))


def legacy_keys(cfg) -> dict:
    scaling = {"rope_scaling": rope_parameters(cfg)} if cfg.rope_scaling else {}
    return {"rope_theta": float(cfg.rope_theta), **scaling}


def dense_mlp(cfg, i: int, p: str, q: str) -> list:
    """A block's SwiGLU MLP as gate_proj / up_proj / down_proj."""
    f = cfg.ffn_dim
    return [split(p + "mlp.up.weight", [q + "mlp.gate_proj.weight", q + "mlp.up_proj.weight"], [f, f]),
            same(p + "mlp.down.weight", q + "mlp.down_proj.weight")]


def layers(cfg, norm_bias: bool = False, mlp=dense_mlp) -> list:
    """The decoder layers of a Llama-style model (model.layers.I.*): separate q/k/v and gate/up
    projections; per-head q/k norms with model.qk_norm; LayerNorm biases with ``norm_bias``;
    ``mlp(cfg, i, ours, theirs)`` gives block i's MLP rows (experts: llmtrain/checkpoint/hf/mixtral.py)."""
    d, f = cfg.d_model, cfg.ffn_dim
    kv = cfg.kv_heads * (d // cfg.n_head)
    t = []
    for i in range(cfg.n_layer):
        p, q = f"blocks.{i}.", f"model.layers.{i}."
        t += [same(p + "norm1.weight", q + "input_layernorm.weight"),
              same(p + "norm2.weight", q + "post_attention_layernorm.weight")]
        if norm_bias:
            t += [bias(cfg, p + "norm1.bias", q + "input_layernorm.bias", d),
                  bias(cfg, p + "norm2.bias", q + "post_attention_layernorm.bias", d)]
        t += [split(p + "attn.qkv.weight", [q + f"self_attn.{n}_proj.weight" for n in "qkv"], [d, kv, kv]),
              same(p + "attn.proj.weight", q + "self_attn.o_proj.weight"), *mlp(cfg, i, p, q)]
        if cfg.qk_norm:  # one norm over head_dim, shared by the heads, as ours
            t += [same(p + "attn.q_norm.weight", q + "self_attn.q_norm.weight"),
                  same(p + "attn.k_norm.weight", q + "self_attn.k_norm.weight")]
        if cfg.bias:
            t += [split(p + "attn.qkv.bias", [q + f"self_attn.{n}_proj.bias" for n in "qkv"], [d, kv, kv]),
                  same(p + "attn.proj.bias", q + "self_attn.o_proj.bias"),
                  split(p + "mlp.up.bias", [q + "mlp.gate_proj.bias", q + "mlp.up_proj.bias"], [f, f]),
                  same(p + "mlp.down.bias", q + "mlp.down_proj.bias")]
    return t


def table(cfg) -> list:
    return layers(cfg) + head(cfg, "model.embed_tokens.weight", "model.norm.", norm_bias=False)


def llama_style(hc: dict, refuse) -> dict:
    """Our model section for a Llama-style config.json (Llama, Mistral, Qwen3): RMSNorm, SwiGLU,
    rotary (default or llama3), one bias switch."""
    d, H = int(hc["hidden_size"]), int(hc["num_attention_heads"])
    rot = rotary_from_hf(rope_from_hf(hc), refuse)
    seq_len = int(hc.get("max_position_embeddings", 2048))
    if hc.get("hidden_act", "silu") != "silu":
        refuse(f"hidden_act {hc.get('hidden_act')!r} (the gated MLP here is SwiGLU)")
    if hc.get("head_dim") not in (None, d // H):
        refuse(f"head_dim {hc['head_dim']} != hidden_size / num_attention_heads = {d // H}")
    if bool(hc.get("attention_bias", False)) != bool(hc.get("mlp_bias", False)):
        refuse("attention_bias != mlp_bias (this GPT has one bias switch)")
    if hc.get("pretraining_tp", 1) not in (None, 1):
        refuse(f"pretraining_tp={hc['pretraining_tp']}")
    window = hc.get("sliding_window")
    if hc.get("model_type") == "mistral" and window is not None and int(window) < seq_len:
        refuse(f"sliding_window={window} (shorter than max_position_embeddings={seq_len}; set it to null for full "
               f"attention)")
    kv = int(hc.get("num_key_value_heads") or H)
    return dict(n_layer=int(hc["num_hidden_layers"]), d_model=d, n_head=H, seq_len=seq_len, norm="rmsnorm",
                norm_eps=float(hc.get("rms_norm_eps", 1e-6)), mlp="swiglu", d_ff=int(hc["intermediate_size"]),
                bias=bool(hc.get("attention_bias", False)), n_kv_head=None if kv == H else kv, **rot,
                **common_from_hf(hc, tie_default=False))


SPEC = ArchSpec(name="llama", layout=dict(pos_encoding="rotary", norm="rmsnorm", mlp="swiglu"),
                options=frozenset({"gqa", "rope_scaling"}), config=config, table=table, legacy_keys=legacy_keys,
                reads=("llama", "mistral"), from_config=llama_style)
