"""Mixtral (MixtralForCausalLM): Llama's attention and norms with an MoE block in every layer
(router ``mlp.gate``, experts ``mlp.experts.gate_up_proj`` (E, 2 ff, d) and ``down_proj`` (E, d,
ff), our batched expert tensors as they are), top-k of a softmax router, renormalised
(model.moe_norm_topk=true); no shared experts. Imports Mixtral configs without a sliding window
shorter than their context.

``moe_mlp`` gives the MoE rows the Qwen MoE specs share."""
from __future__ import annotations

from llmtrain.checkpoint.hf import llama
from llmtrain.checkpoint.hf.spec import ArchSpec, common_config, head, rope_parameters, same, split, zeros


def moe_mlp(cfg, i: int, p: str, q: str, shared_expert: bool = False) -> list:
    """Block i's MLP rows: the dense MLP, or the router and experts (and, for Qwen2-MoE, its shared
    expert and gate; zero-width when the model has none, which adds nothing)."""
    if not cfg.is_moe_layer(i):
        return llama.dense_mlp(cfg, i, p, q)
    t = [same(p + "mlp.router.weight", q + "mlp.gate.weight"),
         same(p + "mlp.experts.up", q + "mlp.experts.gate_up_proj"),
         same(p + "mlp.experts.down", q + "mlp.experts.down_proj")]
    if not shared_expert:
        return t
    d, s = cfg.d_model, cfg.moe_shared_experts * cfg.expert_dim
    names = [q + f"mlp.shared_expert.{n}_proj.weight" for n in ("gate", "up", "down")]
    if s:
        t += [split(p + "mlp.shared.mlp.up.weight", names[:2], [s, s]),
              same(p + "mlp.shared.mlp.down.weight", names[2]),
              same(p + "mlp.shared.gate.weight", q + "mlp.shared_expert_gate.weight")]
    else:
        t += [zeros(names[0], (0, d)), zeros(names[1], (0, d)), zeros(names[2], (d, 0)),
              zeros(q + "mlp.shared_expert_gate.weight", (1, d))]
    return t


def moe_config(cfg) -> dict:
    """The transformers config keys of the experts, as the Qwen MoE configs name them."""
    return dict(num_experts=cfg.moe_experts, num_experts_per_tok=cfg.moe_top_k, moe_intermediate_size=cfg.expert_dim,
                decoder_sparse_step=cfg.moe_every, mlp_only_layers=[], norm_topk_prob=bool(cfg.moe_norm_topk),
                router_aux_loss_coef=cfg.moe_aux_loss)


def moe_from_hf(hc: dict, refuse) -> dict:
    """Our expert fields from a transformers MoE config (Qwen's keys; the expert count as
    num_experts or, as Mixtral and transformers 5's Qwen3-MoE write it, num_local_experts)."""
    if hc.get("mlp_only_layers"):
        refuse(f"mlp_only_layers={hc['mlp_only_layers']} (dense layers here are every moe_every-th pattern only)")
    n = hc.get("num_experts", hc.get("num_local_experts"))
    if not n:
        refuse("a config without num_experts / num_local_experts")
    return dict(moe_experts=int(n), moe_top_k=int(hc.get("num_experts_per_tok", 2)),
                moe_every=int(hc.get("decoder_sparse_step", 1)), moe_norm_topk=bool(hc.get("norm_topk_prob", True)),
                moe_aux_loss=float(hc.get("router_aux_loss_coef", 0.01)))


def config(cfg, bos: int, eos: int):
    from transformers import MixtralConfig

    return MixtralConfig(hidden_size=cfg.d_model, intermediate_size=cfg.expert_dim, num_hidden_layers=cfg.n_layer,
                         num_attention_heads=cfg.n_head, num_key_value_heads=cfg.kv_heads,
                         head_dim=cfg.d_model // cfg.n_head, hidden_act="silu", max_position_embeddings=cfg.seq_len,
                         rms_norm_eps=cfg.norm_eps, rope_parameters=rope_parameters(cfg), sliding_window=None,
                         attention_dropout=cfg.dropout, num_local_experts=cfg.moe_experts,
                         num_experts_per_tok=cfg.moe_top_k, router_aux_loss_coef=cfg.moe_aux_loss,
                         router_jitter_noise=0.0, **common_config(cfg, bos, eos))


def table(cfg) -> list:
    return llama.layers(cfg, mlp=moe_mlp) + head(cfg, "model.embed_tokens.weight", "model.norm.", norm_bias=False)


def from_config(hc: dict, refuse) -> dict:
    seq_len = int(hc.get("max_position_embeddings", 2048))
    window = hc.get("sliding_window")
    if window is not None and int(window) < seq_len:
        refuse(f"sliding_window={window} (shorter than max_position_embeddings={seq_len}; set it to null for full "
               f"attention)")
    ours = llama.llama_style(hc, refuse)
    moe = moe_from_hf({**hc, "norm_topk_prob": True}, refuse)
    return {**ours, **moe, "moe_d_ff": ours["d_ff"]}  # Mixtral's intermediate_size is the experts' width


SPEC = ArchSpec(name="mixtral",
                layout=dict(pos_encoding="rotary", norm="rmsnorm", mlp="swiglu", bias=False, qk_norm=False,
                            is_moe=True),
                options=frozenset({"moe", "gqa"}), config=config, table=table, legacy_keys=llama.legacy_keys,
                reads=("mixtral",), from_config=from_config)
