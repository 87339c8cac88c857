"""The Mixture-of-Experts model in one process: the MoE block computes the routed sum of its experts
(checked against a token-by-token reference, dropless and with a capacity), its router runs in
fp32, its losses and counts are what the docs say, bad settings are one-line errors, and every
MoE option maps onto Mixtral, Qwen2-MoE or Qwen3-MoE both ways, or is refused by name.
(Training on every layout: tests/test_moe_train.py.)"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from llmtrain.checkpoint.hf import ExportError, build_hf_model, choose_architecture, model_config_from_hf, specs
from llmtrain.checkpoint.hf.from_hf import our_state_dict
from llmtrain.checkpoint.hf.verify import logit_difference, random_ids
from llmtrain.config import ModelConfig
from llmtrain.core.errors import ConfigError
from llmtrain.model.gpt import GPT, count_params, flops_per_token
from llmtrain.model.moe import MoE

TINY = dict(n_layer=2, d_model=64, n_head=4, seq_len=32, vocab_size=128)
ROTARY = dict(pos_encoding="rotary", norm="rmsnorm", mlp="swiglu")


def moe_block(**kw) -> tuple[MoE, ModelConfig]:
    cfg = ModelConfig(**{**TINY, "moe_experts": 4, **kw})
    cfg.validate("test")
    model = GPT(cfg, seed=7)
    return model.blocks[0].mlp if cfg.is_moe_layer(0) else model.blocks[1].mlp, cfg


@torch.no_grad()
def reference(moe: MoE, cfg: ModelConfig, x: torch.Tensor, capacity: int | None = None) -> torch.Tensor:
    """Token by token: the top-k experts of the fp32 softmax router, each expert's MLP on its own,
    weighted; with a capacity, each expert keeps only its ``capacity`` assignments of highest
    router probability."""
    x = x.reshape(-1, cfg.d_model).detach()
    probs = (x.double() @ moe.router.weight.double().T).softmax(-1)
    top, idx = probs.topk(cfg.moe_top_k, dim=-1)
    w = top / top.sum(-1, keepdim=True) if cfg.moe_norm_topk else top
    kept = torch.ones_like(idx, dtype=torch.bool)
    if capacity is not None:
        for e in range(cfg.moe_experts):
            hits = [(float(probs[t, e]), t, j) for t in range(len(x)) for j in range(cfg.moe_top_k) if idx[t, j] == e]
            hits.sort(key=lambda h: (-h[0], h[1]))
            for _, t, j in hits[capacity:]:
                kept[t, j] = False
    out = torch.zeros_like(x, dtype=torch.float64)
    for t in range(len(x)):
        for j in range(cfg.moe_top_k):
            if kept[t, j]:
                e = int(idx[t, j])
                h = x[t].double() @ moe.experts.up[e].double().T
                if cfg.mlp == "swiglu":
                    g, v = h.chunk(2)
                    h = F.silu(g) * v
                else:
                    h = F.gelu(h, approximate="tanh")
                out[t] += w[t, j] * (h @ moe.experts.down[e].double().T)
    if moe.shared is not None:
        out += moe.shared(x).double()
    return out, kept


@pytest.mark.parametrize("kw", [
    dict(),
    dict(**ROTARY, moe_top_k=1, moe_norm_topk=False),
    dict(**ROTARY, moe_experts=8, moe_top_k=3, moe_granularity=2, moe_shared_experts=2, moe_shared_gate=True),
    dict(moe_shared_experts=1, moe_every=2),
])
def test_moe_block_is_the_routed_sum_of_its_experts(kw):
    moe, cfg = moe_block(**kw)
    x = torch.randn(3, 10, cfg.d_model)
    want, _ = reference(moe, cfg, x)
    for mode in (moe.train(), moe.eval()):  # dropless: the same in training and evaluation
        assert torch.allclose(mode(x).reshape(-1, cfg.d_model).double(), want, atol=1e-5)


def test_capacity_drops_the_lowest_probability_assignments_in_training_only():
    moe, cfg = moe_block(moe_capacity_factor=0.5)
    x = torch.randn(2, 16, cfg.d_model)
    C = math.ceil(0.5 * 32 * cfg.moe_top_k / cfg.moe_experts)
    want, kept = reference(moe, cfg, x, capacity=C)
    assert 0 < int((~kept).sum()) < kept.numel()  # some assignments were dropped
    moe.train()
    assert torch.allclose(moe(x).reshape(-1, cfg.d_model).double(), want, atol=1e-5)
    assert float(moe.record[3]) == int((~kept).sum())
    moe.eval()  # evaluation and inference are dropless
    assert torch.allclose(moe(x).reshape(-1, cfg.d_model).double(), reference(moe, cfg, x)[0], atol=1e-5)


def test_router_runs_in_fp32_and_its_losses_are_as_documented():
    moe, cfg = moe_block()
    moe.to(torch.bfloat16).train()
    x = torch.randn(4, 8, cfg.d_model, dtype=torch.bfloat16)
    seen = {}
    moe.router.register_forward_hook(lambda *a: seen.setdefault("called", True))  # fp32 casts, not the bf16 module
    y = moe(x)
    assert y.dtype == torch.bfloat16 and "called" not in seen
    counts, balance, z, dropped, assigned = moe.record
    logits = x.reshape(-1, cfg.d_model).float() @ moe.router.weight.float().T
    probs = logits.softmax(-1)
    share = counts.float() / assigned
    assert counts.sum() == assigned == 32 * cfg.moe_top_k
    assert float(balance) == pytest.approx(cfg.moe_experts * float((share * probs.mean(0)).sum()), rel=1e-5)
    assert float(z) == pytest.approx(float(torch.logsumexp(logits, -1).pow(2).mean()), rel=1e-5)
    assert float(moe.aux_loss) == pytest.approx(0.01 * float(balance) + 0.001 * float(z), rel=1e-5)
    # a router that sends every token everywhere alike scores exactly 1
    moe.float()
    with torch.no_grad():
        moe.router.weight.zero_()
    moe(torch.randn(2, 8, cfg.d_model))
    assert float(moe.record[1]) == pytest.approx(1.0)
    # under torch autocast (bf16 on ZeRO-0) the router still computes in fp32
    with torch.no_grad():
        moe.router.weight.normal_()
    x = torch.randn(2, 8, cfg.d_model)
    moe(x)
    z_fp32 = float(moe.record[2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        moe(x)
    assert float(moe.record[2]) == pytest.approx(z_fp32, rel=1e-6)


def test_training_loss_adds_router_losses_and_evaluation_does_not():
    cfg = ModelConfig(**TINY, moe_experts=4, moe_aux_loss=0.5, moe_z_loss=0.1)
    model = GPT(cfg, seed=1).train()
    x, y = torch.randint(0, 128, (2, 32)), torch.randint(0, 128, (2, 32))
    ce = F.cross_entropy(model(x).reshape(-1, 128).float(), y.reshape(-1))
    loss = model(x, y)
    aux = sum(m.aux_loss for m in model.moe_layers())
    assert float(loss) == pytest.approx(float(ce + aux), rel=1e-5) and float(aux) > 0.5
    with torch.no_grad():
        assert float(model(x, y)) == pytest.approx(float(ce), rel=1e-5)
    # statistics: three forwards in training mode above; per layer, tokens per expert sum to 3 x 64 x top_k
    sums = model.moe_layers()[0].stats.take("cpu")
    assert sums[:4].sum() == 3 * 64 * 2 and sums[-1] == 3
    model.eval()
    model(x)
    assert model.moe_layers()[0].stats.take("cpu").sum() == 0  # evaluation counts nothing


@pytest.mark.parametrize("kw", [dict(), dict(**ROTARY, moe_experts=8, moe_granularity=4, moe_shared_experts=1,
                                               moe_shared_gate=True, moe_every=2, tie_embeddings=False)])
def test_counts_total_and_active_parameters(kw):
    cfg = ModelConfig(**{**TINY, "moe_experts": 4, **kw})
    cfg.validate("test")
    model = GPT(cfg)
    c = count_params(cfg)
    assert c["n_params"] == sum(p.numel() for p in model.parameters())
    experts = sum(m.experts.up.numel() + m.experts.down.numel() for m in model.moe_layers())
    skipped = experts * (cfg.moe_experts - cfg.moe_top_k) // cfg.moe_experts
    assert c["n_params_active"] == c["n_params"] - skipped  # router and shared experts count as active
    emb = cfg.vocab_size * cfg.d_model + (cfg.seq_len * cfg.d_model if cfg.pos_encoding == "learned" else 0)
    assert c["n_params_active_non_embedding"] == c["n_params_active"] - emb
    head = cfg.vocab_size * cfg.d_model if cfg.tie_embeddings else 0
    assert flops_per_token(cfg) == 6 * (c["n_params_active_non_embedding"] + head) + 12 * 2 * 32 * 64
    dense = ModelConfig(**TINY)
    assert count_params(dense)["n_params_active"] == count_params(dense)["n_params"]


def test_granularity_keeps_the_active_mlp_of_the_dense_model():
    """8 experts, top-2, granularity 2: each token's experts hold as many MLP weights as the dense
    model's MLP (plus the router), the comparison the scaling study makes."""
    dense = ModelConfig(**TINY)
    moe = ModelConfig(**TINY, moe_experts=8, moe_top_k=2, moe_granularity=2)
    assert moe.expert_dim == dense.ffn_dim // 2
    router = 2 * 64 * 8
    assert count_params(moe)["n_params_active"] == count_params(dense)["n_params"] + router


@pytest.mark.parametrize("overrides,needle", [
    (["model.moe_experts=4", "model.moe_top_k=5"], "model.moe_top_k=5 must be in [1, model.moe_experts=4]"),
    (["model.moe_shared_experts=1"], "model.moe_shared_experts applies only with model.moe_experts > 0"),
    (["model.moe_experts=4", "model.moe_d_ff=64", "model.moe_granularity=2"], "not both"),
    (["model.moe_experts=4", "model.moe_granularity=3"], "model.moe_granularity=3 must be >= 1 and divide"),
    (["model.moe_experts=4", "model.moe_shared_gate=true"], "needs model.moe_shared_experts > 0"),
    (["model.moe_experts=4", "model.moe_every=5"], "model.moe_every=5 must be in [1, model.n_layer=4]"),
    (["model.moe_experts=4", "model.moe_capacity_factor=0"], "model.moe_capacity_factor must be > 0"),
    (["model.moe_experts=4", "model.bias=true"], "experts have no biases here"),
    (["model.moe_experts=4", "model.parametrization=mup", "model.mup_base_width=64"], "not supported"),
    (["model.moe_experts=6", "parallel.expert_parallel_size=4"], "does not divide model.moe_experts=6"),
    (["parallel.expert_parallel_size=2"], "needs experts"),
    (["model.moe_experts=4", "parallel.pipeline_stages=2"], "use data and expert parallelism"),
])
def test_bad_moe_settings_are_one_line_errors(overrides, needle):
    from llmtrain.config import load_config

    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert needle in str(e.value) and "\n" not in str(e.value) and "configs/tiny.yaml" in str(e.value)


def test_layouts_that_cannot_work_are_refused_before_start_up():
    from llmtrain.train.setup import check_layout

    def refused(overrides, ds, world):
        from llmtrain.config import load_config

        cfg = load_config(None, ["model.moe_experts=4", "model.vocab_size=128", *overrides])
        with pytest.raises(ConfigError) as e:
            check_layout(cfg, ds, "ds.json", "x.yaml", world)
        assert "\n" not in str(e.value)
        return str(e.value)

    assert "ZeRO stage 3 with experts" in refused([], {"zero_optimization": {"stage": 3}}, 2)
    assert "parallel.expert_parallel_size=4 does not divide the 2 processes" in refused(
        ["parallel.expert_parallel_size=4"], {"zero_optimization": {"stage": 2}}, 2)
    # ZeRO-0 in bf16 runs under autocast with the project's own clipping (experts counted): accepted;
    # with bf16 accumulation it is DeepSpeed's bf16 optimizer, whose norm leaves the experts out
    from llmtrain.config import load_config

    ok = check_layout(load_config(None, ["model.moe_experts=4", "train.precision=bf16"]), {}, "ds.json", "x.yaml", 1)
    assert ok["torch_autocast"]["enabled"] and not ok["bf16"]["enabled"]
    assert "train.precision=bf16 without ZeRO and with experts runs DeepSpeed's bf16 optimizer" in refused(
        ["train.precision=bf16", "train.grad_accum_dtype=bf16"], {}, 1)


# ------------------------------------------------------------------------------------------------ export


MOE_EXPORTS = [
    (dict(), "mixtral"),
    (dict(n_kv_head=2, moe_top_k=1, tie_embeddings=False), "mixtral"),
    (dict(moe_every=2, moe_norm_topk=False), "qwen2_moe"),
    (dict(moe_experts=8, moe_granularity=2, moe_shared_experts=2, moe_shared_gate=True), "qwen2_moe"),
    (dict(qk_norm=True, moe_every=2, moe_norm_topk=False, n_kv_head=2), "qwen3_moe"),
]


def test_the_package_finds_the_moe_specs():
    assert [s.name for s in specs()][:3] == ["mixtral", "qwen2_moe", "qwen3_moe"]  # the narrowest layouts first


@pytest.mark.slow  # builds transformers models: 2-18 s each
@pytest.mark.parametrize("kw,arch", MOE_EXPORTS)
def test_moe_exports_with_the_same_logits_and_imports_back(kw, arch):
    cfg = ModelConfig(**{**TINY, "n_layer": 4, **ROTARY, "moe_experts": 4, **kw})
    cfg.validate("test")
    assert choose_architecture(cfg) == arch
    model = GPT(cfg, seed=3).eval()
    sd = model.state_dict()
    hf = build_hf_model(sd, cfg, arch, 0, 0)
    assert type(hf).__name__.lower().startswith(arch.replace("_", ""))
    assert logit_difference(model, hf, random_ids(cfg.vocab_size, cfg.seq_len, 32)) <= 1e-5
    hc = hf.config.to_dict()
    back = ModelConfig(**model_config_from_hf(hc, "config.json"))
    back.validate("back")
    assert count_params(back) == count_params(cfg) and choose_architecture(back) == arch
    sd2 = our_state_dict(dict(hf.named_parameters(remove_duplicate=False)), back, hc["model_type"], "config.json")
    assert sd2.keys() == sd.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)


@pytest.mark.parametrize("kw,needle", [
    (dict(moe_shared_experts=1), "cannot export model exactly as mixtral: model.moe_shared_experts=1 without "
                                 "model.moe_shared_gate"),
    (dict(qk_norm=True, moe_shared_experts=1, moe_shared_gate=True), "as qwen3_moe: model.moe_shared_experts=1"),
    (dict(pos_encoding="learned", norm="layernorm", mlp="gelu"), "as gpt2: model.moe_experts=4: gpt2 has no experts"),
])
def test_moe_configs_no_architecture_represents_are_refused_by_name(kw, needle):
    cfg = ModelConfig(**{**TINY, **ROTARY, "moe_experts": 4, **kw})
    with pytest.raises(ExportError) as e:
        choose_architecture(cfg)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_imports_refuse_what_does_not_map():
    hc = build_hf_model(GPT(ModelConfig(**TINY, **ROTARY, moe_experts=4, moe_every=2)).state_dict(),
                        ModelConfig(**TINY, **ROTARY, moe_experts=4, moe_every=2), "qwen2_moe", 0, 0).config.to_dict()
    for change, needle in (({"mlp_only_layers": [0]}, "mlp_only_layers=[0]"), ({"qkv_bias": True}, "qkv_bias=true"),
                           ({"shared_expert_intermediate_size": 40}, "not a multiple of moe_intermediate_size")):
        with pytest.raises(ExportError) as e:
            model_config_from_hf({**hc, **change}, "config.json")
        assert needle in str(e.value) and "does not map onto this project's GPT" in str(e.value)


# ------------------------------------------------------------------------------------------------ scaling


def test_moe_ladder_plans_by_active_parameters(tmp_path):
    import yaml

    from llmtrain.scaling.plan import load_sweep, plan, seq_len_and_model

    sweep = {"name": "m", "base": "configs/tiny.yaml", "vocab_size": 512,
             "overrides": ["model.seq_len=64", "model.moe_experts=8", "model.moe_granularity=2"],
             "ladder": {"params": [3e4, 1e5], "aspect_ratio": 32, "head_dim": 16},
             "tokens": {"basis": "active_non_embedding", "tokens_per_param": [10]},
             "hparams": {"global_batch_size": 8, "schedule": "cosine", "branch": False}}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(sweep))
    sw = load_sweep(tmp_path / "m.yaml")
    seq_len, base, _ = seq_len_and_model(sw)
    runs = plan(sw, seq_len, 512, base)
    assert len(runs) == 2
    for r, target in zip(runs, (3e4, 1e5)):
        cfg = ModelConfig(**{**base.__dict__, "n_layer": r.n_layer, "d_model": r.d_model, "n_head": r.n_head,
                             "vocab_size": 512})
        c = count_params(cfg)
        assert r.n_basis == c["n_params_active_non_embedding"] < c["n_params_non_embedding"]
        assert abs(math.log(r.n_basis / target)) < 0.5  # the ladder is of active sizes
        assert r.n_params_active == c["n_params_active"]
        assert r.flops == pytest.approx(6 * c["n_params_active"] * r.tokens)  # compute: the active parameters
        assert r.tokens == pytest.approx(10 * r.n_basis, rel=0.05)


def test_fits_read_active_parameters_from_run_folders(tmp_path):
    """--params active takes summary.json n_params_active (a run written before the key existed is
    a dense run: its total); C stays 6 N_active D."""
    import json

    from llmtrain.scaling.sources import load

    for name, N, active, D in (("moe", 9e5, 3e5, 6e6), ("dense", 4e5, None, 8e6)):
        run = tmp_path / "sweep" / name
        run.mkdir(parents=True)
        s = {"status": "finished", "n_params": N, "n_params_non_embedding": N * 0.9, "tokens": D,
             "flops": 6 * (active or N) * D, "final_valid_loss": 3.0}
        if active:
            s.update(n_params_active=active, n_params_active_non_embedding=active * 0.8)
        (run / "summary.json").write_text(json.dumps(s))
    got = {lab: (n, c) for n, c, lab in zip(*[getattr(load(tmp_path / "sweep", basis="active").points, f)
                                             for f in ("N", "C", "labels")])}
    assert got["moe"] == (3e5, pytest.approx(6 * 3e5 * 6e6)) and got["dense"] == (4e5, pytest.approx(6 * 4e5 * 8e6))
    tot = load(tmp_path / "sweep", basis="total").points
    assert sorted(tot.N) == [4e5, 9e5] and sorted(tot.C) == pytest.approx(sorted([6 * 3e5 * 6e6, 6 * 4e5 * 8e6]))


def test_per_expert_fallback_equals_the_grouped_kernel(monkeypatch):
    """Where torch's grouped kernel does not serve (fp32 on a GPU, torch.compile), one matmul per
    expert computes the same, gradients included."""
    import llmtrain.model.moe as moe_mod

    moe, cfg = moe_block(**ROTARY)
    x = torch.randn(2, 12, cfg.d_model, requires_grad=True)
    runs = []
    for kernel in (True, False):
        monkeypatch.setattr(moe_mod, "grouped_kernel", lambda t, k=kernel: k)
        moe.zero_grad()
        x.grad = None
        y = moe(x)
        y.pow(2).sum().backward()
        runs.append((y.detach(), x.grad.clone(), moe.experts.up.grad.clone()))
    for a, b in zip(*runs):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.slow  # about 5 s
def test_one_expert_top_1_is_the_dense_model():
    """With one expert and top-1, the MoE block is the dense MLP it was copied from (the router's
    only choice weighs 1): the same logits, and the same gradient for the MLP weights."""
    dense_cfg = ModelConfig(**TINY, **ROTARY)
    moe_cfg = ModelConfig(**TINY, **ROTARY, moe_experts=1, moe_top_k=1, moe_aux_loss=0.0, moe_z_loss=0.0)
    dense, moe = GPT(dense_cfg, seed=5), GPT(moe_cfg, seed=5)
    sd = dense.state_dict()
    for i in range(dense_cfg.n_layer):
        sd[f"blocks.{i}.mlp.experts.up"] = sd.pop(f"blocks.{i}.mlp.up.weight")[None]
        sd[f"blocks.{i}.mlp.experts.down"] = sd.pop(f"blocks.{i}.mlp.down.weight")[None]
        sd[f"blocks.{i}.mlp.router.weight"] = torch.randn(1, dense_cfg.d_model)
    moe.load_state_dict(sd)
    x, y = torch.randint(0, 128, (2, 32)), torch.randint(0, 128, (2, 32))
    dense(x, y).backward()
    moe(x, y).backward()
    assert torch.allclose(moe(x), dense(x), atol=1e-5)
    assert torch.allclose(moe.blocks[0].mlp.experts.up.grad[0], dense.blocks[0].mlp.up.weight.grad, atol=1e-6)


@pytest.mark.slow  # about 5 s
def test_generation_with_experts_is_the_same_with_and_without_the_kv_cache():
    """Decoding one token at a time routes each new token alone: the same sampled tokens as
    re-running the whole context, past seq_len too (a capacity factor does not apply outside
    training). Random weights: sampled, not greedy (greedy repeats one token)."""
    from llmtrain.eval.generate import sample

    cfg = ModelConfig(**{**TINY, **ROTARY, "seq_len": 16, "moe_experts": 4, "moe_shared_experts": 1,
                         "moe_capacity_factor": 1.0})
    cfg.validate("test")
    model = GPT(cfg, seed=3).eval()
    a = sample(model, [1, 5, 9, 2], 16, temperature=1.0, seed=3, num_samples=2)
    assert a == sample(model, [1, 5, 9, 2], 16, temperature=1.0, seed=3, num_samples=2, kv_cache=False)
    assert len(a[0]) == 16 and len(set(a[0])) > 4
