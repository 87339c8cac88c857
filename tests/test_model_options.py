"""Model options of issue 12: sinusoidal positions, grouped/multi-query attention (n_kv_head),
parallel residual and partial rotary (GPT-NeoX/Pythia), Llama 3 rope scaling, QK-norm, exact
GELU and z-loss: parameter counts, FLOPs, behaviour, the pipeline pieces, the KV cache, and real
training runs (one process, and pipeline x2 under DeepSpeed)."""
from __future__ import annotations

import math
import subprocess

import pytest
import torch
import torch.nn.functional as F

from llmtrain.config import ModelConfig, load_config
from llmtrain.core.errors import ConfigError
from llmtrain.model.gpt import GPT, KVCache, apply_rotary, count_params, flops_per_token, lm_loss, sinusoidal_table
from trainutil import REPO, SMALL, env, read_metrics, run_python, torchrun_cmd


def small(**kw):
    base = dict(n_layer=2, d_model=32, n_head=4, seq_len=16, vocab_size=97)
    base.update(kw)
    return ModelConfig(**base)


OPTION_SETS = {
    "sinusoidal": dict(pos_encoding="sinusoidal"),
    "gqa": dict(pos_encoding="rotary", norm="rmsnorm", mlp="swiglu", n_kv_head=2),
    "mqa_bias": dict(pos_encoding="rotary", n_kv_head=1, bias=True),
    "pythia": dict(pos_encoding="rotary", parallel_residual=True, rotary_pct=0.25, bias=True, gelu="exact",
                   tie_embeddings=False),
    "qk_norm_rms": dict(pos_encoding="rotary", norm="rmsnorm", mlp="swiglu", qk_norm=True, n_kv_head=2),
    "qk_norm_ln_bias": dict(qk_norm=True, bias=True),
    "llama3_rope": dict(pos_encoding="rotary", norm="rmsnorm", mlp="swiglu", rope_scaling="llama3",
                        rope_scaling_factor=8.0, rope_original_seq_len=8),
    "z_loss": dict(z_loss=1e-3),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(OPTION_SETS))
def test_counts_flops_causality_and_cache(name):
    cfg = small(**OPTION_SETS[name])
    cfg.validate("test")
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    assert count_params(cfg)["n_params"] == sum(p.numel() for p in model.parameters())
    c = count_params(cfg)
    emb = cfg.vocab_size * cfg.d_model + (cfg.seq_len * cfg.d_model if cfg.pos_encoding == "learned" else 0)
    assert c["n_params"] - c["n_params_non_embedding"] == emb
    matmul = c["n_params_non_embedding"] + (cfg.vocab_size * cfg.d_model if cfg.tie_embeddings else 0)
    assert flops_per_token(cfg) == 6 * matmul + 12 * cfg.n_layer * cfg.seq_len * cfg.d_model
    idx = torch.randint(0, cfg.vocab_size, (2, cfg.seq_len))
    logits = model(idx)
    idx2 = idx.clone()
    idx2[:, 9] = (idx2[:, 9] + 1) % cfg.vocab_size
    logits2 = model(idx2)
    assert torch.allclose(logits[:, :9], logits2[:, :9], atol=1e-6)
    assert not torch.allclose(logits[:, 9:], logits2[:, 9:], atol=1e-6)
    # the same logits token by token through the KV cache (a prefill of 5, then chunks of 1 and 3)
    cache = KVCache(cfg.n_layer)
    parts = [model(idx[:, :5], cache=cache), model(idx[:, 5:6], cache=cache), model(idx[:, 6:9], cache=cache)]
    parts += [model(idx[:, t:t + 1], cache=cache) for t in range(9, cfg.seq_len)]
    assert cache.length == cfg.seq_len
    torch.testing.assert_close(torch.cat(parts, dim=1), logits, atol=1e-5, rtol=1e-5)
    # the pipeline pieces, applied in order, compute the same function
    x = model.embed(idx)
    for b in model.blocks:
        x = b(x)
    x = model.head(x)
    torch.testing.assert_close(model.embed.logits(x) if model.head.out is None else x, logits)


def test_sinusoidal_positions_are_fixed_and_not_parameters():
    cfg = small(pos_encoding="sinusoidal")
    model = GPT(cfg)
    assert model.embed.wpe is None and "embed.sin_pos" not in model.state_dict()
    assert count_params(cfg)["n_params"] == count_params(small(pos_encoding="rotary"))["n_params"]
    t = sinusoidal_table(16, 32)
    assert torch.allclose(t[5, 0], torch.tensor(math.sin(5.0))) and torch.allclose(t[5, 1], torch.tensor(math.cos(5.0)))
    assert torch.allclose(t[3, 6], torch.tensor(math.sin(3 / 10000 ** (6 / 32))))
    # positions matter: the same token at two positions embeds differently
    idx = torch.full((1, 4), 7)
    e = model.embed(idx)
    assert not torch.allclose(e[0, 0], e[0, 3])


@pytest.mark.parametrize("kv", [1, 2, 4])
def test_grouped_query_attention_matches_repeated_heads(kv):
    """n_kv_head key/value heads, each shared by n_head/n_kv_head query heads: the same output as
    plain attention with the key/value heads repeated."""
    cfg = small(pos_encoding="rotary", n_kv_head=kv)
    model = GPT(cfg).eval()
    attn = model.blocks[0].attn
    H, hd, d = cfg.n_head, cfg.d_model // cfg.n_head, cfg.d_model
    assert attn.qkv.weight.shape == (d + 2 * kv * hd, d)
    x = torch.randn(2, cfg.seq_len, d)
    q, k, v = attn.qkv(x).split([d, kv * hd, kv * hd], dim=-1)
    cos, sin = attn.rotary_angles(0, cfg.seq_len)
    q = apply_rotary(q.view(2, -1, H, hd).transpose(1, 2), cos, sin)
    k = apply_rotary(k.view(2, -1, kv, hd).transpose(1, 2), cos, sin)
    v = v.view(2, -1, kv, hd).transpose(1, 2)
    k, v = k.repeat_interleave(H // kv, dim=1), v.repeat_interleave(H // kv, dim=1)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(2, -1, d)
    torch.testing.assert_close(attn(x), attn.proj(y))


def test_partial_rotary_leaves_the_rest_of_each_head():
    cfg = small(pos_encoding="rotary", rotary_pct=0.25)
    attn = GPT(cfg).blocks[0].attn
    cos, sin = attn.rotary_angles(0, 16)
    assert cos.shape == (16, 1)  # 2 of 8 dims rotated: one pair
    x = torch.randn(1, 1, 16, 8)
    y = apply_rotary(x, cos, sin)
    assert torch.equal(y[..., 2:], x[..., 2:]) and not torch.allclose(y[..., :2], x[..., :2])


def test_parallel_residual_reads_the_block_input():
    cfg = small(parallel_residual=True)
    block = GPT(cfg).blocks[0]
    x = torch.randn(2, 16, 32)
    torch.testing.assert_close(block(x), x + block.attn(block.norm1(x)) + block.mlp(block.norm2(x)))


def test_qk_norm_makes_attention_blind_to_the_scale_of_queries_and_keys():
    for qk in (True, False):
        attn = GPT(small(norm="rmsnorm", qk_norm=qk)).blocks[0].attn
        if qk:
            assert attn.q_norm.weight.shape == (8,) and attn.k_norm.weight.shape == (8,)
        x = torch.randn(1, 16, 32)
        y1 = attn(x)
        with torch.no_grad():
            attn.qkv.weight[:64].mul_(10)  # queries and keys 10x larger
        assert torch.allclose(attn(x), y1, atol=1e-3) == qk


def test_z_loss_adds_logsumexp_squared_in_training_only():
    logits = torch.randn(2, 5, 11, requires_grad=True) * 3
    tgt = torch.randint(0, 11, (2, 5))
    ce = F.cross_entropy(logits.reshape(-1, 11), tgt.reshape(-1))
    z = torch.logsumexp(logits.reshape(-1, 11), -1).pow(2).mean()
    torch.testing.assert_close(lm_loss(logits, tgt, 1e-2), ce + 1e-2 * z)
    with torch.no_grad():  # evaluation reports the plain cross-entropy
        torch.testing.assert_close(lm_loss(logits, tgt, 1e-2), ce.detach())


def test_llama3_rope_scaling_matches_transformers():
    import transformers
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from llmtrain.model.gpt import rope_inv_freq

    cfg = small(d_model=256, n_head=2, pos_encoding="rotary", norm="rmsnorm", mlp="swiglu", rope_theta=500000.0,
                rope_scaling="llama3", rope_scaling_factor=8.0, rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
                rope_original_seq_len=8192)
    hf = transformers.LlamaConfig(hidden_size=256, num_attention_heads=2, max_position_embeddings=131072,
                                  rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                   "original_max_position_embeddings": 8192})
    inv_freq, scale = ROPE_INIT_FUNCTIONS["llama3"](hf, "cpu")
    assert scale == 1.0
    torch.testing.assert_close(rope_inv_freq(cfg), inv_freq.float())


@pytest.mark.parametrize("override,needle", [
    ("model.n_kv_head=3", "model.n_kv_head=3"),
    ("model.n_kv_head=0", "model.n_kv_head=0"),
    ("model.rotary_pct=0.25", "model.rotary_pct"),  # learned positions: nothing to rotate
    ("model.pos_encoding=alibi", "model.pos_encoding='alibi'"),
    ("model.z_loss=-1", "model.z_loss"),
    ("model.gelu=erf", "model.gelu='erf'"),
    ("model.rope_scaling=yarn", "model.rope_scaling='yarn'"),
])
def test_bad_option_is_one_line(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert needle in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.pos_encoding=rotary", "model.d_model=64", "model.n_head=4", "model.rotary_pct=0.1"])
    assert "even number" in str(e.value)


TRAIN_OPTIONS = {  # every new option, in two runs: one process, and pipeline x2 (ZeRO-1)
    "single": ["model.pos_encoding=sinusoidal", "model.qk_norm=true", "model.z_loss=1e-3", "model.bias=true"],
    "pipe": ["model.pos_encoding=rotary", "model.n_kv_head=2", "model.parallel_residual=true",
             "model.rotary_pct=0.5", "model.gelu=exact", "model.tie_embeddings=false"],
}


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(TRAIN_OPTIONS))
def test_new_options_train(layout, token_data, tmp_path):
    """A few real optimizer steps with the new options: the loss is finite and falls."""
    args = ["--run-dir", tmp_path / layout, f"data.prefix={token_data}", *SMALL, "train.max_steps=4",
            "checkpoint.save_final=false", *TRAIN_OPTIONS[layout]]
    if layout == "single":
        r = run_python([REPO / "launcher" / "pretrain.py", *args])
    else:
        r = subprocess.run(torchrun_cmd(2, "--deepspeed_config", REPO / "ds_configs" / "zero1.json", *args,
                                         "parallel.pipeline_stages=2"),
                           cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    losses = [m["loss"] for m in read_metrics(tmp_path / layout) if m.get("split") is None and m.get("loss")]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0]


EXPORTS = {  # option set → (transformers class, config values it must carry)
    "gqa": ("LlamaForCausalLM", {"num_key_value_heads": 2}),
    "mqa": ("LlamaForCausalLM", {"num_key_value_heads": 1}),
    "llama3_rope": ("LlamaForCausalLM", {"rope_type": "llama3"}),
    "pythia": ("GPTNeoXForCausalLM", {"use_parallel_residual": True, "partial_rotary_factor": 0.25}),
    "qk_norm_rms": ("Qwen3ForCausalLM", {"num_key_value_heads": 2}),
    "stablelm_partial": ("StableLmForCausalLM", {"partial_rotary_factor": 0.5}),
    "gpt2_exact_gelu": ("GPT2LMHeadModel", {"activation_function": "gelu"}),
}
EXPORT_OPTIONS = {**OPTION_SETS, "mqa": dict(pos_encoding="rotary", norm="rmsnorm", mlp="swiglu", n_kv_head=1),
                  "stablelm_partial": dict(pos_encoding="rotary", mlp="swiglu", rotary_pct=0.5, n_kv_head=2),
                  "gpt2_exact_gelu": dict(gelu="exact", bias=True)}


@pytest.mark.parametrize("name", list(EXPORTS))
def test_option_exports_with_the_same_logits(name, tmp_path):
    import transformers
    from llmtrain.checkpoint.hf import build_hf_model, choose_architecture, logit_difference, save_model

    cfg = small(d_model=64, n_head=8, **EXPORT_OPTIONS[name])
    model = GPT(cfg, seed=1).eval()
    with torch.no_grad():  # move every weight off its initial value (norm gains of 1, zero biases)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    arch = choose_architecture(cfg)
    save_model(build_hf_model(model.state_dict(), cfg, arch, 0, 0), cfg, arch, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    cls, want = EXPORTS[name]
    assert type(hf).__name__ == cls
    conf = {**hf.config.to_dict(), **(hf.config.to_dict().get("rope_parameters") or {})}
    for k, v in want.items():
        assert conf[k] == v, (k, conf.get(k))
    assert logit_difference(model, hf, torch.randint(0, cfg.vocab_size, (2, cfg.seq_len))) <= 1e-4


@pytest.mark.parametrize("opts,needle", [
    (dict(pos_encoding="sinusoidal"), "sinusoidal"),
    (dict(n_kv_head=2), "model.n_kv_head=2"),  # learned + layernorm + gelu is GPT-2: no GQA
    (dict(pos_encoding="rotary", norm="rmsnorm", mlp="swiglu", parallel_residual=True), "parallel_residual"),
    (dict(pos_encoding="rotary", norm="rmsnorm", mlp="swiglu", rotary_pct=0.5), "rotary_pct"),
    (dict(qk_norm=True), "qk_norm"),
])
def test_option_without_architecture_is_refused(opts, needle):
    from llmtrain.checkpoint.hf import ExportError, choose_architecture

    with pytest.raises(ExportError) as e:
        choose_architecture(small(**opts))
    assert needle in str(e.value) and "\n" not in str(e.value)

