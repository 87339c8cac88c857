"""GPT-2 (GPT2LMHeadModel): learned positions, LayerNorm, GELU MLP. Absent biases are written as
zeros; the attention and MLP weights are Conv1D, stored transposed (in, out)."""
from __future__ import annotations

from llmtrain.checkpoint.hf.spec import (ArchSpec, bias, common_config, common_from_hf, gelu_activation, gelu_from_hf,
                                         head, same, transposed)


def config(cfg, bos: int, eos: int):
    from transformers import GPT2Config

    return GPT2Config(n_positions=cfg.seq_len, n_embd=cfg.d_model, n_layer=cfg.n_layer, n_head=cfg.n_head,
                      n_inner=cfg.ffn_dim, activation_function=gelu_activation(cfg), resid_pdrop=cfg.dropout,
                      embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout, layer_norm_epsilon=cfg.norm_eps,
                      scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False,
                      **common_config(cfg, bos, eos))


def table(cfg) -> list:
    d, f = cfg.d_model, cfg.ffn_dim
    t = []
    for i in range(cfg.n_layer):
        p, q = f"blocks.{i}.", f"transformer.h.{i}."
        t += [same(p + "norm1.weight", q + "ln_1.weight"), same(p + "norm2.weight", q + "ln_2.weight"),
              bias(cfg, p + "norm1.bias", q + "ln_1.bias", d), bias(cfg, p + "norm2.bias", q + "ln_2.bias", d),
              transposed(p + "attn.qkv.weight", q + "attn.c_attn.weight"),
              transposed(p + "attn.proj.weight", q + "attn.c_proj.weight"),
              transposed(p + "mlp.up.weight", q + "mlp.c_fc.weight"),
              transposed(p + "mlp.down.weight", q + "mlp.c_proj.weight"),
              bias(cfg, p + "attn.qkv.bias", q + "attn.c_attn.bias", 3 * d),
              bias(cfg, p + "attn.proj.bias", q + "attn.c_proj.bias", d),
              bias(cfg, p + "mlp.up.bias", q + "mlp.c_fc.bias", f),
              bias(cfg, p + "mlp.down.bias", q + "mlp.c_proj.bias", d)]
    t.append(same("embed.wpe.weight", "transformer.wpe.weight"))
    return t + head(cfg, "transformer.wte.weight", "transformer.ln_f.", norm_bias=True)


def from_config(hc: dict, refuse) -> dict:
    if not hc.get("scale_attn_weights", True) or hc.get("scale_attn_by_inverse_layer_idx"):
        refuse("GPT-2 attention scaling other than 1/sqrt(head_dim) (scale_attn_weights / "
               "scale_attn_by_inverse_layer_idx)")
    d = int(hc["n_embd"])
    return dict(n_layer=int(hc["n_layer"]), d_model=d, n_head=int(hc["n_head"]), seq_len=int(hc["n_positions"]),
                pos_encoding="learned", norm="layernorm", norm_eps=float(hc.get("layer_norm_epsilon", 1e-5)),
                mlp="gelu", gelu=gelu_from_hf(hc.get("activation_function", "gelu_new"), refuse),
                d_ff=int(hc.get("n_inner") or 4 * d), bias=True, **common_from_hf(hc, tie_default=True))


SPEC = ArchSpec(name="gpt2", layout=dict(pos_encoding="learned", norm="layernorm", mlp="gelu"),
                options=frozenset({"exact_gelu"}), config=config, table=table, reads=("gpt2",),
                from_config=from_config)
