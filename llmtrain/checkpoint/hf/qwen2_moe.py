"""Qwen2-MoE (Qwen2MoeForCausalLM): Llama's attention (qkv_bias false) and norms; experts in every
decoder_sparse_step-th layer (our model.moe_every), dense MLPs of intermediate_size elsewhere;
top-k of a softmax router, renormalised or not (norm_topk_prob); a shared expert of
shared_expert_intermediate_size (our moe_shared_experts x expert width) scaled by
sigmoid(shared_expert_gate . x) (our model.moe_shared_gate). A model without shared experts is
written with a zero-width shared expert, which adds nothing. Imports Qwen2-MoE configs without
sliding windows, qkv biases or mlp_only_layers, whose shared expert width is a multiple of the
expert width."""
from __future__ import annotations

from functools import partial

from llmtrain.checkpoint.hf import llama
from llmtrain.checkpoint.hf.mixtral import moe_config, moe_from_hf, moe_mlp
from llmtrain.checkpoint.hf.spec import ArchSpec, common_config, head, rope_parameters


def config(cfg, bos: int, eos: int):
    from transformers import Qwen2MoeConfig

    return Qwen2MoeConfig(hidden_size=cfg.d_model, intermediate_size=cfg.ffn_dim, num_hidden_layers=cfg.n_layer,
                          num_attention_heads=cfg.n_head, num_key_value_heads=cfg.kv_heads, hidden_act="silu",
                          max_position_embeddings=cfg.seq_len, rms_norm_eps=cfg.norm_eps,
                          rope_parameters=rope_parameters(cfg), use_sliding_window=False, qkv_bias=False,
                          attention_dropout=cfg.dropout,
                          shared_expert_intermediate_size=cfg.moe_shared_experts * cfg.expert_dim,
                          **moe_config(cfg), **common_config(cfg, bos, eos))


def table(cfg) -> list:
    return (llama.layers(cfg, mlp=partial(moe_mlp, shared_expert=True))
            + head(cfg, "model.embed_tokens.weight", "model.norm.", norm_bias=False))


def from_config(hc: dict, refuse) -> dict:
    if hc.get("use_sliding_window"):
        refuse("use_sliding_window=true (sliding-window attention; this GPT attends to the whole context)")
    if hc.get("qkv_bias", True):
        refuse("qkv_bias=true (this GPT has one bias switch, and experts without biases)")
    ours = llama.llama_style({**hc, "attention_bias": False}, refuse)
    moe = moe_from_hf(hc, refuse)
    width, shared = int(hc["moe_intermediate_size"]), int(hc.get("shared_expert_intermediate_size", 0))
    if shared % width:
        refuse(f"shared_expert_intermediate_size={shared}, not a multiple of moe_intermediate_size={width}")
    return {**ours, **moe, "moe_d_ff": width, "moe_shared_experts": shared // width, "moe_shared_gate": shared > 0}


SPEC = ArchSpec(name="qwen2_moe",
                layout=dict(pos_encoding="rotary", norm="rmsnorm", mlp="swiglu", bias=False, qk_norm=False,
                            is_moe=True),
                options=frozenset({"moe", "gqa", "moe_shared", "moe_dense_layers", "moe_unnormalised"}),
                config=config, table=table, legacy_keys=llama.legacy_keys, reads=("qwen2_moe",),
                from_config=from_config)
