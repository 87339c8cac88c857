"""StableLM (StableLmForCausalLM): rotary positions (partial: rotary_pct as partial_rotary_factor),
LayerNorm (with biases, written as zeros), SwiGLU MLP without biases, sequential residual, no
qk-norm; grouped-query attention. Export only: StableLM's released models have LayerNorm biases,
which our bias-free SwiGLU model (the only one StableLM represents) lacks."""
from __future__ import annotations

from llmtrain.checkpoint.hf import llama
from llmtrain.checkpoint.hf.spec import ArchSpec, common_config, head, rope_parameters


def config(cfg, bos: int, eos: int):
    from transformers import StableLmConfig

    return StableLmConfig(hidden_size=cfg.d_model, intermediate_size=cfg.ffn_dim, num_hidden_layers=cfg.n_layer,
                          num_attention_heads=cfg.n_head, num_key_value_heads=cfg.kv_heads, hidden_act="silu",
                          max_position_embeddings=cfg.seq_len, layer_norm_eps=cfg.norm_eps,
                          rope_parameters={**rope_parameters(cfg), "partial_rotary_factor": float(cfg.rotary_pct)},
                          use_qkv_bias=False, qk_layernorm=False, use_parallel_residual=False,
                          hidden_dropout=cfg.dropout, attention_dropout=cfg.dropout, **common_config(cfg, bos, eos))


def legacy_keys(cfg) -> dict:
    return {"rope_theta": float(cfg.rope_theta), "partial_rotary_factor": float(cfg.rotary_pct)}


def table(cfg) -> list:
    return llama.layers(cfg, norm_bias=True) + head(cfg, "model.embed_tokens.weight", "model.norm.", norm_bias=True)


SPEC = ArchSpec(name="stablelm", layout=dict(pos_encoding="rotary", norm="layernorm", mlp="swiglu", bias=False),
                options=frozenset({"gqa", "partial_rotary"}), config=config, table=table, legacy_keys=legacy_keys)
