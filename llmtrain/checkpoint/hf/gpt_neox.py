"""GPT-NeoX / Pythia (GPTNeoXForCausalLM): rotary positions, LayerNorm, GELU MLP; the parallel
residual (use_parallel_residual), partial rotary (rotary_pct). Absent biases are written as zeros
(attention biases exist only with attention_bias, written so). Our fused qkv projection is
re-ordered per head ([q_h, k_h, v_h] for each head h). Imports GPT-NeoX with attention biases."""
from __future__ import annotations

from llmtrain.checkpoint.hf.spec import (ArchSpec, bias, common_config, common_from_hf, gelu_activation, gelu_from_hf,
                                         head, per_head_qkv, rope_from_hf, rope_parameters, rotary_from_hf, same)


def config(cfg, bos: int, eos: int):
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
                         intermediate_size=cfg.ffn_dim, hidden_act=gelu_activation(cfg),
                         max_position_embeddings=cfg.seq_len, layer_norm_eps=cfg.norm_eps,
                         use_parallel_residual=bool(cfg.parallel_residual),
                         rope_parameters={**rope_parameters(cfg), "partial_rotary_factor": float(cfg.rotary_pct)},
                         attention_bias=bool(cfg.bias), attention_dropout=cfg.dropout, hidden_dropout=cfg.dropout,
                         **common_config(cfg, bos, eos))


def legacy_keys(cfg) -> dict:
    return {"rotary_pct": float(cfg.rotary_pct), "rotary_emb_base": float(cfg.rope_theta)}


def table(cfg) -> list:
    d, H, f = cfg.d_model, cfg.n_head, cfg.ffn_dim
    t = []
    for i in range(cfg.n_layer):
        p, q = f"blocks.{i}.", f"gpt_neox.layers.{i}."
        t += [same(p + "norm1.weight", q + "input_layernorm.weight"),
              same(p + "norm2.weight", q + "post_attention_layernorm.weight"),
              per_head_qkv(p + "attn.qkv.weight", q + "attention.query_key_value.weight", H),
              same(p + "attn.proj.weight", q + "attention.dense.weight"),
              same(p + "mlp.up.weight", q + "mlp.dense_h_to_4h.weight"),
              same(p + "mlp.down.weight", q + "mlp.dense_4h_to_h.weight"),
              bias(cfg, p + "norm1.bias", q + "input_layernorm.bias", d),
              bias(cfg, p + "norm2.bias", q + "post_attention_layernorm.bias", d)]
        if cfg.bias:
            t += [per_head_qkv(p + "attn.qkv.bias", q + "attention.query_key_value.bias", H),
                  same(p + "attn.proj.bias", q + "attention.dense.bias")]
        t += [bias(cfg, p + "mlp.up.bias", q + "mlp.dense_h_to_4h.bias", f),
              bias(cfg, p + "mlp.down.bias", q + "mlp.dense_4h_to_h.bias", d)]
    return t + head(cfg, "gpt_neox.embed_in.weight", "gpt_neox.final_layer_norm.", norm_bias=True)


def from_config(hc: dict, refuse) -> dict:
    d, H = int(hc["hidden_size"]), int(hc["num_attention_heads"])
    rope = rope_from_hf(hc)
    rot = rotary_from_hf(rope, refuse, types=("default",))
    if not hc.get("attention_bias", True):
        refuse("GPT-NeoX with attention_bias=false (its MLP keeps biases; this GPT has one bias switch)")
    return dict(n_layer=int(hc["num_hidden_layers"]), d_model=d, n_head=H,
                seq_len=int(hc.get("max_position_embeddings", 2048)), norm="layernorm",
                norm_eps=float(hc.get("layer_norm_eps", 1e-5)), mlp="gelu",
                gelu=gelu_from_hf(hc.get("hidden_act", "gelu"), refuse), d_ff=int(hc["intermediate_size"]), bias=True,
                parallel_residual=bool(hc.get("use_parallel_residual", True)),
                rotary_pct=float(rope.get("partial_rotary_factor", 1.0)), **rot,
                **common_from_hf(hc, tie_default=False))


SPEC = ArchSpec(name="gpt_neox", layout=dict(pos_encoding="rotary", norm="layernorm", mlp="gelu"),
                options=frozenset({"parallel_residual", "partial_rotary", "exact_gelu"}), config=config, table=table,
                legacy_keys=legacy_keys, reads=("gpt_neox",), from_config=from_config)
