"""The architecture specs of llmtrain/checkpoint/hf, read both ways, on every option set: each
spec's table names every parameter of ours once and gives it back unchanged through to_hf then
from_hf; a spec that imports reads the config it writes back as the same model; the refusals
name the option. (tests/test_export.py and tests/test_import_hf.py check the logits against
transformers; this checks the specs themselves, fast.)"""
from __future__ import annotations

import itertools

import pytest
import torch

from llmtrain.checkpoint.hf import ExportError, choose_architecture, model_config_from_hf, spec_for, specs
from llmtrain.config import ModelConfig
from llmtrain.model.gpt import GPT

FIELDS = ("n_layer", "d_model", "n_head", "seq_len", "vocab_size", "pos_encoding", "norm", "mlp", "qk_norm", "kv_heads",
          "parallel_residual", "rotary_pct", "norm_eps", "tie_embeddings")
ROPE = ("rope_theta", "rope_scaling")
LLAMA3 = ("rope_scaling_factor", "rope_low_freq_factor", "rope_high_freq_factor", "rope_original_seq_len")


def option_sets():
    for pos, norm, mlp, bias, tie, qk, kv, par, pct, rs, gelu in itertools.product(
            ["learned", "rotary"], ["layernorm", "rmsnorm"], ["gelu", "swiglu"], [False, True], [True, False],
            [False, True], [None, 2], [False, True], [1.0, 0.5], [None, "llama3"], ["tanh", "exact"]):
        yield ModelConfig(n_layer=2, d_model=32, n_head=4, seq_len=16, vocab_size=97, pos_encoding=pos, norm=norm,
                          mlp=mlp, bias=bias, tie_embeddings=tie, qk_norm=qk, n_kv_head=kv, parallel_residual=par,
                          rotary_pct=pct, rope_scaling=rs, gelu=gelu, rope_theta=500.0, norm_eps=1e-6,
                          rope_original_seq_len=8)


def test_the_package_finds_every_spec():
    assert [s.name for s in specs()] == ["mixtral", "qwen2_moe", "qwen3_moe", "qwen3", "stablelm", "gpt2", "gpt_neox",
                                         "llama"]  # narrowest layout first
    assert sorted(t for s in specs() for t in s.reads) == ["gpt2", "gpt_neox", "llama", "mistral", "mixtral",
                                                           "qwen2_moe", "qwen3", "qwen3_moe"]


@pytest.mark.slow
def test_tables_and_configs_read_both_ways():
    seen = {}
    for cfg in option_sets():
        try:
            spec = spec_for(cfg)
        except ExportError as e:
            assert "cannot export" in str(e) and "\n" not in str(e)
            continue
        seen[spec.name] = seen.get(spec.name, 0) + 1
        sd = {k: torch.randn(v.shape) for k, v in GPT(cfg, seed=0).state_dict().items()
              if not k.endswith(("rope_cos", "rope_sin"))}
        table = spec.table(cfg)
        ours = [e.ours for e in table if e.ours is not None]
        theirs = [n for e in table for n in e.hf]
        assert sorted(ours) == sorted(sd) and len(set(theirs)) == len(theirs), spec.name
        for e in table:
            if e.ours is None:
                assert all(not t.any() for t in e.to_hf(None))
                continue
            assert torch.equal(e.from_hf(e.to_hf(sd[e.ours])), sd[e.ours]), (spec.name, e.ours)
        # the config.json it writes reads back as the same model (a bias-free GPT-NeoX is written with
        # attention_bias=false, which the import refuses: its MLP biases would need the same switch)
        if spec.reads and not (spec.name == "gpt_neox" and not cfg.bias):
            hc = {**spec.config(cfg, 0, 0).to_dict(), **spec.legacy_keys(cfg)}
            back = ModelConfig(**model_config_from_hf(hc, "config.json"))
            assert hc["model_type"] in spec.reads
            fields = FIELDS + (ROPE if cfg.pos_encoding == "rotary" else ()) + (LLAMA3 if cfg.rope_scaling else ())
            assert {f: getattr(back, f) for f in fields} == {f: getattr(cfg, f) for f in fields}, spec.name
            assert choose_architecture(back) == spec.name and (back.mlp != "gelu" or back.gelu == cfg.gelu)
    assert seen.keys() == {"gpt2", "llama", "qwen3", "gpt_neox", "stablelm"}


@pytest.mark.parametrize("opts,arch,needle", [
    (dict(pos_encoding="rotary", norm="rmsnorm", mlp="swiglu", bias=True, qk_norm=True), "llama", "model.qk_norm"),
    (dict(pos_encoding="rotary", norm="layernorm", mlp="gelu", n_kv_head=2), "gpt_neox", "model.n_kv_head=2"),
    (dict(pos_encoding="rotary", norm="layernorm", mlp="swiglu", rope_scaling="llama3"), "stablelm",
     "model.rope_scaling=llama3"),
    (dict(pos_encoding="rotary", norm="rmsnorm", mlp="swiglu", qk_norm=True, parallel_residual=True), "qwen3",
     "model.parallel_residual=true"),
])
def test_an_option_the_matching_spec_lacks_is_named(opts, arch, needle):
    cfg = ModelConfig(n_layer=2, d_model=32, n_head=4, seq_len=16, vocab_size=97, rope_original_seq_len=8, **opts)
    with pytest.raises(ExportError) as e:
        choose_architecture(cfg)
    assert str(e.value).startswith(f"cannot export model exactly as {arch}: {needle}")
