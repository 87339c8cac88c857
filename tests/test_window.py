"""train.seq_len, the window trained and evaluated, apart from the model's positions (model.seq_len):
shorter windows on every layout, a long-context model trained on a short window, a longer window
refused in one line."""
from __future__ import annotations

import json

import pytest
import torch

from trainutil import REPO, SMALL, assert_one_line_error, run_python, run_torchrun, train_losses

PRETRAIN = REPO / "launcher" / "pretrain.py"


@pytest.mark.slow
def test_shorter_window_on_every_layout(token_data, tmp_path):
    """Windows of 32 tokens on a model of 64 positions: ZeRO-0 x1, ZeRO-2 x2, ZeRO-3 x2 (built
    partitioned) and pipeline x2 give the same losses; the first is the initial model's loss on the
    first batch of 32-token windows; tokens, FLOPs and summary.json count the window; evaluation
    reads the same windows."""
    from llmtrain.config import load_config
    from llmtrain.data.dataset import load_data
    from llmtrain.data.sampler import batch
    from llmtrain.model.gpt import GPT, flops_per_token, lm_loss

    common = [f"data.prefix={token_data}", *SMALL, "train.seq_len=32", "train.max_steps=3"]
    runs = {
        "zero0": run_python([PRETRAIN, "--run-dir", tmp_path / "zero0", *common]),
        **{z: run_torchrun(2, "--deepspeed_config", REPO / f"ds_configs/{z}.json", "--run-dir", tmp_path / z, *common)
           for z in ("zero2", "zero3")},
        "pipe": run_torchrun(2, "--deepspeed_config", REPO / "ds_configs/zero1.json", "--run-dir", tmp_path / "pipe",
                              *common, "parallel.pipeline_stages=2"),
    }
    for name, r in runs.items():
        assert r.returncode == 0, (name, r.stdout[-3000:], r.stderr[-3000:])

    cfg = load_config(None, [*common, "model.vocab_size=512"])
    x, y = batch(load_data(cfg, token_data, "test").train, 0, 8)
    assert x.shape == (8, 32)
    with torch.no_grad():
        first = float(lm_loss(GPT(cfg.model, seed=cfg.train.seed)(x), y))
    ref = train_losses(tmp_path / "zero0")
    assert ref[1] == pytest.approx(first, abs=2e-5)
    for name in ("zero2", "zero3", "pipe"):
        got = train_losses(tmp_path / name)
        assert [got[s] for s in ref] == pytest.approx([ref[s] for s in ref], abs=2e-5), name

    s = json.loads((tmp_path / "zero0" / "summary.json").read_text())
    assert (s["seq_len"], s["positions"], s["tokens"]) == (32, 64, 3 * 8 * 32)
    assert s["flops_per_token"] == flops_per_token(cfg.model, 32) < flops_per_token(cfg.model, 64)
    assert "T32 (of 64 positions)" in runs["zero0"].stdout
    ev = json.loads(run_python([REPO / "launcher" / "evaluate.py", tmp_path / "zero0", "--batches", "2"])
                    .stdout.splitlines()[-1])
    assert ev["seq_len"] == 32 and ev["loss"] == pytest.approx(s["final_valid_loss"], abs=1e-5)


@pytest.mark.slow
def test_window_longer_than_the_positions_is_refused(token_data, tmp_path):
    r = run_python([PRETRAIN, "--run-dir", tmp_path / "run", f"data.prefix={token_data}", *SMALL, "train.seq_len=65"])
    assert_one_line_error(r, "train.seq_len=65", "64 positions (model.seq_len)")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_long_context_model_on_a_short_window(token_data, tmp_path):
    """A Llama-3.1-style model (rotary with llama3 scaling, 131072 positions, grouped-query heads)
    trains on 32-token windows: nothing is sized by the positions but a learned table."""
    llama = ["model.pos_encoding=rotary", "model.rope_scaling=llama3", "model.rope_theta=500000",
             "model.seq_len=131072", "model.norm=rmsnorm", "model.mlp=swiglu", "model.n_kv_head=2",
             "model.tie_embeddings=false"]
    run = tmp_path / "run"
    r = run_python([PRETRAIN, "--run-dir", run, f"data.prefix={token_data}", *SMALL, *llama, "train.seq_len=32",
                    "train.max_steps=2"])
    assert r.returncode == 0, r.stderr[-3000:]
    losses = train_losses(run)
    assert sorted(losses) == [1, 2] and all(0 < v < 10 for v in losses.values())
    assert json.loads((run / "summary.json").read_text())["positions"] == 131072


@pytest.mark.parametrize("pos", ["rotary", "sinusoidal", "learned"])
def test_only_a_learned_table_grows_with_the_positions(pos):
    from llmtrain.config import ModelConfig
    from llmtrain.model.gpt import GPT

    def size(positions: int) -> int:
        m = GPT(ModelConfig(n_layer=1, d_model=32, n_head=4, vocab_size=64, seq_len=positions, pos_encoding=pos))
        return sum(t.numel() for t in [*m.parameters(), *m.buffers()])

    assert size(131072) - size(64) == (32 * (131072 - 64) if pos == "learned" else 0)


def test_a_bf16_piece_is_initialised_as_an_fp32_one_cast():
    """ZeRO-3 under zero.Init holds bf16 parameters: each piece is initialised on fp32 stand-ins
    (llmtrain.train.engine.init_in_fp32), so it gets the fp32 draw cast to bf16, as every other
    layout does; a draw straight into bf16 gives other weights (for tensors of sizes that are not
    multiples of 16, torch's vectorised bf16 draw)."""
    from llmtrain.config import ModelConfig
    from llmtrain.model.gpt import GPT, init_weights
    from llmtrain.train.engine import init_in_fp32

    cfg = ModelConfig(n_layer=1, d_model=40, n_head=4, vocab_size=509, seq_len=16)  # sizes not multiples of 16
    ref = GPT(cfg, seed=0)
    init_weights(ref, cfg, 7)
    want = {k: v.detach().bfloat16() for k, v in ref.named_parameters()}
    piece = GPT(cfg, seed=0).bfloat16()
    init_weights(piece, cfg, 7)
    assert any(not torch.equal(v, want[k]) for k, v in piece.named_parameters())
    init_in_fp32(piece, cfg, 7)
    got = dict(piece.named_parameters())
    assert all(got[k].dtype == torch.bfloat16 and torch.equal(got[k], want[k]) for k in want)


@pytest.mark.slow
def test_zero3_built_partitioned_in_bf16_starts_from_the_same_weights(token_data, tmp_path):
    """bf16: ZeRO-3 x2 (built under zero.Init) and ZeRO-2 x2 (built whole, then cast) log the same
    first-step loss: the same bf16 weights on the same batch."""
    odd = ["model.d_model=36", "model.d_ff=99"]  # MLP weights of 3,564 elements: a bf16 draw differs from fp32's
    common = [f"data.prefix={token_data}", *SMALL, *odd, "train.precision=bf16", "train.max_steps=1"]
    for z in ("zero2", "zero3"):
        r = run_torchrun(2, "--deepspeed_config", REPO / f"ds_configs/{z}.json", "--run-dir", tmp_path / z, *common)
        assert r.returncode == 0, (z, r.stderr[-3000:])
    assert train_losses(tmp_path / "zero3") == train_losses(tmp_path / "zero2")
