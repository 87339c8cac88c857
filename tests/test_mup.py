"""muP (llmtrain/model/mup.py): the standard model at the base width, the per-role init / LR /
multiplier rules away from it, the engine's parameter groups on ZeRO-3 and the pipeline, the
export's folding (GPT-2, Llama, Qwen3 logits in transformers) and the coordinate check."""
from __future__ import annotations

import dataclasses
import json
import subprocess

import pytest
import torch

from llmtrain.config import Config, ModelConfig, load_config
from llmtrain.core.errors import ConfigError
from llmtrain.model import mup
from llmtrain.model.gpt import GPT
from trainutil import REPO, SMALL, env, read_metrics, run_python, torchrun_cmd

BASE = ModelConfig(n_layer=2, d_model=32, n_head=4, seq_len=16, vocab_size=96)


def mup_cfg(model: ModelConfig, width: int, base: int = 32) -> ModelConfig:
    return dataclasses.replace(model, d_model=width, parametrization="mup", mup_base_width=base)


def full(model: ModelConfig) -> Config:
    cfg = Config()
    cfg.model = model
    return cfg


def lr_of(model, cfg: Config) -> dict[str, float]:
    """Each parameter's LR as the engine's optimizer groups give it."""
    by_id = {id(p): g["lr"] for g in mup.mup_param_groups(model, cfg) for p in g["params"]}
    return {n: by_id[id(p)] for n, p in model.named_parameters()}


def test_config_needs_the_base_width_and_only_with_mup():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.parametrization=mup"])
    assert "model.mup_base_width" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="model.parametrization"):
        load_config(None, ["model.parametrization=mu-p"])
    with pytest.raises(ConfigError, match="only with model.parametrization=mup"):
        load_config(None, ["model.mup_base_width=64"])
    cfg = load_config(None, ["model.parametrization=mup", "model.mup_base_width=64"])
    assert cfg.model.mup_base_width == 64


@pytest.mark.parametrize("opts", [{}, dict(pos_encoding="rotary", norm="rmsnorm", mlp="swiglu", tie_embeddings=False,
                                           bias=True, qk_norm=True)])
def test_mup_at_the_base_width_is_the_standard_model(opts):
    std = dataclasses.replace(BASE, **opts)
    mu = mup_cfg(std, std.d_model, base=std.d_model)
    a, b = GPT(std, seed=3), GPT(mu, seed=3)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n
    ids = torch.randint(0, std.vocab_size, (2, std.seq_len))
    assert torch.equal(a(ids), b(ids))
    assert lr_of(a, full(std)) == lr_of(b, full(mu))
    assert len(mup.mup_param_groups(b, full(mu))) == 2  # decay / no-decay only, as the standard engine


def test_rules_away_from_the_base_width():
    width = 128  # 4x the base width 32
    mu, std = mup_cfg(BASE, width), dataclasses.replace(BASE, d_model=width)
    a, b = GPT(std, seed=0), GPT(mu, seed=0)
    cfg = full(mu)
    lrs = lr_of(b, cfg)
    for name, p in b.named_parameters():
        ratio = float(p.detach().std() / dict(a.named_parameters())[name].detach().std()) if p.dim() == 2 else 1.0
        if mup.is_hidden(name):  # matrices: init variance and Adam LR ~ 1/fan_in
            assert lrs[name] == pytest.approx(cfg.train.lr / 4), name
            assert ratio == pytest.approx(0.5, rel=0.05), name
        else:  # embeddings, norms, biases and the (tied) readout: unchanged
            assert lrs[name] == cfg.train.lr, name
            assert ratio == 1.0, name
    assert b.head.out_mult == pytest.approx(32 / 128)
    assert b.blocks[0].attn.q_mult == pytest.approx((8 / 32) ** 0.5)  # 1/sqrt(8) -> sqrt(8)/32
    # the multipliers act as stated: folded into weights, a standard model gives the same logits
    folded = GPT(std)
    folded.load_state_dict(mup.standard_state_dict(b.state_dict(), mu))
    ids = torch.randint(0, BASE.vocab_size, (2, BASE.seq_len))
    torch.testing.assert_close(folded(ids), b(ids), rtol=1e-5, atol=1e-6)
    # an explicit base head size: a ladder that keeps head_dim fixed keeps standard attention
    fixed = dataclasses.replace(mu, n_head=16, mup_base_head_dim=8)
    assert mup.query_multiplier(fixed) == 1.0


@pytest.mark.parametrize("opts,arch", [
    ({}, "gpt2"),
    (dict(pos_encoding="rotary", norm="rmsnorm", mlp="swiglu", bias=True), "llama"),
    (dict(pos_encoding="rotary", norm="rmsnorm", mlp="swiglu", tie_embeddings=False), "llama"),
    (dict(pos_encoding="rotary", norm="rmsnorm", mlp="swiglu", qk_norm=True), "qwen3"),
])
def test_exported_mup_model_gives_our_logits(opts, arch):
    from llmtrain.checkpoint.hf import build_hf_model, choose_architecture, logit_difference

    cfg = mup_cfg(dataclasses.replace(BASE, **opts), 64)
    assert choose_architecture(cfg) == arch
    ours = GPT(cfg, seed=1).eval()
    with torch.no_grad():  # move every weight off its init, so that each fold is exercised
        for p in ours.parameters():
            p.add_(0.05 * torch.randn_like(p))
    hf = build_hf_model(ours.state_dict(), cfg, arch, 0, 0)
    ids = torch.randint(0, cfg.vocab_size, (2, cfg.seq_len))
    assert logit_difference(ours, hf, ids) < 1e-4
    assert bool(hf.config.tie_word_embeddings) == cfg.tie_embeddings  # the readout folded, ties kept


@pytest.mark.slow
def test_zero3_and_pipeline_train_with_mup_groups_and_export(token_data, tmp_path):
    """Two real 2-process launches (at once) of 2 steps each at twice the base width: ZeRO-3 and a 2-stage
    pipeline; both train (finite losses), and the ZeRO-3 run's checkpoint exports to GPT-2 with
    the same logits (the export verifies them itself)."""
    common = [f"data.prefix={token_data}", *SMALL, "train.max_steps=2", "log.tensorboard=false",
              "model.parametrization=mup", "model.mup_base_width=32"]
    launches = {"zero3": ["--deepspeed_config", REPO / "ds_configs/zero3.json"],
                "pipe": ["--deepspeed_config", REPO / "ds_configs/zero1.json", "parallel.pipeline_stages=2"]}
    procs, logs = {}, {}
    for name, launch in launches.items():
        logs[name] = open(tmp_path / f"{name}.log", "w")
        procs[name] = subprocess.Popen(torchrun_cmd(2, *launch[:2], "--run-dir", tmp_path / name, *common,
                                                     *launch[2:]),
                                       cwd=REPO, env=env(), stdout=logs[name], stderr=subprocess.STDOUT)
    for name, p in procs.items():
        assert p.wait(timeout=600) == 0, (name, (tmp_path / f"{name}.log").read_text()[-3000:])
        logs[name].close()
        losses = [r["loss"] for r in read_metrics(tmp_path / name) if r.get("split") is None and "loss" in r]
        assert len(losses) == 2 and all(0 < x < 10 for x in losses), (name, losses)
        resolved = (tmp_path / name / "config.yaml").read_text()
        assert "parametrization: mup" in resolved and "mup_base_width: 32" in resolved
    from llmtrain.checkpoint.hf import export  # in this process: transformers is already imported

    export(tmp_path / "zero3" / "checkpoints", tmp_path / "hf", log=lambda *_: None)
    rec = json.loads((tmp_path / "hf" / "llmtrain_export.json").read_text())
    assert rec["architecture"] == "GPT2LMHeadModel" and rec["max_abs_logit_diff"] < 1e-4


@pytest.mark.slow
def test_coord_check_mup_flat_standard_grows(tmp_path):
    r = run_python([REPO / "launcher" / "coord_check.py", "--widths", "32", "64", "128", "--steps", "5", "--seeds",
                    "1", "--synthetic", "--out", tmp_path, "model.n_layer=2"])
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "coord.json").read_text())
    assert res["widths"] == [32, 64, 128] and (tmp_path / "coord.png").stat().st_size > 10_000
    assert {"logits", "embed", "block0.attn", "block1.mlp"} <= set(res["mup"]) == set(res["standard"])
    for kind in ("mup", "standard"):  # the two coincide at the base width (the smallest)
        assert res[kind]["logits"][0] == pytest.approx(res["standard"]["logits"][0])

    def growth(kind, name):
        v = res[kind][name]
        return v[-1] / v[0]
    assert growth("standard", "logits") > 1.6
    assert 0.5 < growth("mup", "logits") < 1.25
    for name in ("block0.mlp", "block1.out"):  # hidden activations: grow x4+ under standard, flat-ish under muP
        assert growth("standard", name) > 2.0, name
        assert 0.5 < growth("mup", name) < 1.5, name


def test_branch_restart_keeps_the_per_group_factors():
    """restart_schedule_at (a WSD branch from another run's checkpoint) rebuilds every group's base
    LR as the new train.lr x the group's lr_scale, so muP's factors survive a branch."""
    from types import SimpleNamespace

    from llmtrain.train.start import restart_schedule_at

    cfg = full(mup_cfg(BASE, 128))
    model = GPT(cfg.model)
    opt = torch.optim.AdamW(mup.mup_param_groups(model, cfg), lr=cfg.train.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
    restart_schedule_at(SimpleNamespace(lr_scheduler=sched, optimizer=opt), 1e-2, 7)
    assert sorted(g["lr"] for g in opt.param_groups) == pytest.approx(sorted([0.5e-2 / 4, 0.5e-2, 0.5e-2]))
