"""Qwen3-MoE (Qwen3MoeForCausalLM): Qwen3's attention (per-head QK-norm, no biases) with experts in
every decoder_sparse_step-th layer (our model.moe_every) and dense MLPs elsewhere; top-k of a
softmax router, renormalised or not (norm_topk_prob); no shared experts. Imports Qwen3-MoE
configs without sliding windows, attention biases or mlp_only_layers."""
from __future__ import annotations

from llmtrain.checkpoint.hf import llama
from llmtrain.checkpoint.hf.mixtral import moe_config, moe_from_hf, moe_mlp
from llmtrain.checkpoint.hf.spec import ArchSpec, common_config, head, rope_parameters


def config(cfg, bos: int, eos: int):
    from transformers import Qwen3MoeConfig

    return Qwen3MoeConfig(hidden_size=cfg.d_model, intermediate_size=cfg.ffn_dim, num_hidden_layers=cfg.n_layer,
                          num_attention_heads=cfg.n_head, num_key_value_heads=cfg.kv_heads,
                          head_dim=cfg.d_model // cfg.n_head, hidden_act="silu", max_position_embeddings=cfg.seq_len,
                          rms_norm_eps=cfg.norm_eps, rope_parameters=rope_parameters(cfg), attention_bias=False,
                          use_sliding_window=False, attention_dropout=cfg.dropout, **moe_config(cfg),
                          **common_config(cfg, bos, eos))


def table(cfg) -> list:
    return llama.layers(cfg, mlp=moe_mlp) + head(cfg, "model.embed_tokens.weight", "model.norm.", norm_bias=False)


def from_config(hc: dict, refuse) -> dict:
    if hc.get("use_sliding_window"):
        refuse("use_sliding_window=true (sliding-window attention; this GPT attends to the whole context)")
    if hc.get("attention_bias"):
        refuse("attention_bias=true (this GPT has one bias switch, and experts without biases)")
    ours = llama.llama_style(hc, refuse)
    return {**ours, **moe_from_hf(hc, refuse), "moe_d_ff": int(hc["moe_intermediate_size"]), "qk_norm": True}


SPEC = ArchSpec(name="qwen3_moe",
                layout=dict(pos_encoding="rotary", norm="rmsnorm", mlp="swiglu", bias=False, qk_norm=True,
                            is_moe=True),
                options=frozenset({"moe", "qk_norm", "gqa", "moe_dense_layers", "moe_unnormalised"}),
                config=config, table=table, legacy_keys=llama.legacy_keys, reads=("qwen3_moe",),
                from_config=from_config)
