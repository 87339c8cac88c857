"""Qwen3 (Qwen3ForCausalLM): Llama's layout without biases, plus a per-head RMSNorm on queries
and keys (our model.qk_norm: one norm over head_dim, shared by the heads). Same tables as Llama.
Imports Qwen3 configs whose head_dim is hidden_size / num_attention_heads, without sliding
windows."""
from __future__ import annotations

from llmtrain.checkpoint.hf import llama
from llmtrain.checkpoint.hf.spec import ArchSpec, common_config, rope_parameters


def config(cfg, bos: int, eos: int):
    from transformers import Qwen3Config

    return Qwen3Config(hidden_size=cfg.d_model, intermediate_size=cfg.ffn_dim, num_hidden_layers=cfg.n_layer,
                       num_attention_heads=cfg.n_head, num_key_value_heads=cfg.kv_heads,
                       head_dim=cfg.d_model // cfg.n_head, hidden_act="silu", max_position_embeddings=cfg.seq_len,
                       rms_norm_eps=cfg.norm_eps, rope_parameters=rope_parameters(cfg), attention_bias=False,
                       use_sliding_window=False, attention_dropout=cfg.dropout, **common_config(cfg, bos, eos))


def from_config(hc: dict, refuse) -> dict:
    if hc.get("use_sliding_window") or "sliding_attention" in (hc.get("layer_types") or ()):
        refuse("use_sliding_window=true (sliding-window attention; this GPT attends to the whole context)")
    if hc.get("attention_bias"):
        refuse("attention_bias=true (Qwen3's MLP has no biases; this GPT has one bias switch)")
    return {**llama.llama_style(hc, refuse), "qk_norm": True}


SPEC = ArchSpec(name="qwen3",
                layout=dict(pos_encoding="rotary", norm="rmsnorm", mlp="swiglu", bias=False, qk_norm=True),
                options=frozenset({"qk_norm", "gqa", "rope_scaling"}), config=config, table=llama.table,
                legacy_keys=llama.legacy_keys, reads=("qwen3",), from_config=from_config)
