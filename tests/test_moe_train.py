"""Mixture of Experts trained for real (DeepSpeed on CPU, gloo): one process and expert parallelism
over two ranks (ZeRO-0, ZeRO-1, ZeRO-2) give the same losses, gradient norms and routing, dropless
and with a capacity; MoE metrics reach metrics.jsonl, TensorBoard and summary.json; an expert-
parallel checkpoint consolidates, evaluates and exports; a rank killed with SIGKILL resumes
exactly, expert weights and Adam moments included; a checkpoint resumes on another expert-parallel
layout from its layout-free state; layouts that cannot work are refused. Two ranks are started
with torchrun (the same DeepSpeed job as under the deepspeed launcher, half the start-up)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import psutil
import pytest
import torch

from trainutil import (REPO, SMALL, assert_one_line_error, env, read_metrics, run_python, run_torchrun, torchrun_cmd,
                       train_losses)

pytestmark = pytest.mark.slow  # every test here launches training processes

PRETRAIN = REPO / "launcher" / "pretrain.py"
# 4 experts, top-2, a gated shared expert (exports as Qwen2-MoE); clipping at 0.2 is active from the
# first step, so a wrong global gradient norm under expert parallelism would change the losses
MOE = ["model.moe_experts=4", "model.moe_shared_experts=1", "model.moe_shared_gate=true", "model.pos_encoding=rotary",
       "model.norm=rmsnorm", "model.mlp=swiglu", "train.grad_clip=0.2", "train.micro_batch_size=4",
       "train.peak_flops=1e12"]  # no matmul measurement for MFU at each start


def ds(name: str) -> list:
    return ["--deepspeed_config", REPO / "ds_configs" / f"{name}.json"]


def records(run: Path, split: str | None) -> list[dict]:
    return [r for r in read_metrics(run) if r.get("split") == split]


@pytest.fixture(scope="module")
def layouts(token_data, tmp_path_factory):
    """The same MoE model for 4 steps on 1 process and on 2 ranks: experts split over both (ZeRO-0 with
    activation checkpointing, whose recomputed blocks must not count their routing twice, and
    ZeRO-2) or each rank holding all of them (ZeRO-1). Each checkpoints steps 1-3 too (for the
    resumes on other layouts)."""
    tmp = tmp_path_factory.mktemp("moe_layouts")
    common = [f"data.prefix={token_data}", *SMALL, *MOE, "train.max_steps=4", "checkpoint.save_steps=[1,2,3]"]
    runs = {
        "single": run_python([PRETRAIN, "--run-dir", tmp / "single", *common]),
        "ep2_zero0": run_torchrun(2, *ds("zero0"), "--run-dir", tmp / "ep2_zero0", *common,
                                  "parallel.expert_parallel_size=2", "train.activation_checkpointing=true"),
        "ep2_zero2": run_torchrun(2, *ds("zero2"), "--run-dir", tmp / "ep2_zero2", *common,
                                  "parallel.expert_parallel_size=2"),
        "dp2_zero1": run_torchrun(2, *ds("zero1"), "--run-dir", tmp / "dp2_zero1", *common),
    }
    for name, r in runs.items():
        assert r.returncode == 0, (name, r.stdout[-3000:], r.stderr[-3000:])
    return {name: tmp / name for name in runs}


def test_one_process_and_expert_parallel_ranks_agree(layouts):
    ref = {r["step"]: r for r in records(layouts["single"], None)}
    ref_moe = records(layouts["single"], "moe")
    assert len(ref) == 4 and all(r["grad_norm"] > 0.2 for r in ref.values())  # clipping is active
    for name in ("ep2_zero0", "ep2_zero2", "dp2_zero1"):
        got = {r["step"]: r for r in records(layouts[name], None)}
        for step in ref:
            assert got[step]["loss"] == pytest.approx(ref[step]["loss"], abs=2e-5), (name, step)
            assert got[step]["grad_norm"] == pytest.approx(ref[step]["grad_norm"], rel=1e-4), (name, step)
        # the same tokens went to the same experts, summed over both ranks
        moe = records(layouts[name], "moe")
        assert [r["tokens_per_expert/layer1"] for r in moe] == [r["tokens_per_expert/layer1"] for r in ref_moe], name
        assert [r["balance_loss"] for r in moe] == pytest.approx([r["balance_loss"] for r in ref_moe], rel=1e-4)
        env_ = json.loads((layouts[name] / "env.json").read_text())
        assert env_["world_size"] == 2
    # every layout's checkpoint consolidates to the same weights
    from llmtrain.checkpoint.consolidate import consolidated_state

    sd = {name: consolidated_state(run)["state_dict"] for name, run in layouts.items()}
    assert sd["single"]["blocks.0.mlp.experts.up"].shape == (4, 2 * 192, 64)  # SwiGLU: gate and value of 192
    for name in ("ep2_zero0", "ep2_zero2", "dp2_zero1"):
        assert sd[name].keys() == sd["single"].keys()
        for k, v in sd["single"].items():
            assert torch.allclose(sd[name][k], v, atol=1e-5), (name, k)


def test_moe_metrics_summary_and_tensorboard(layouts):
    run = layouts["ep2_zero2"]
    s = json.loads((run / "summary.json").read_text())
    from llmtrain.config import ModelConfig
    from llmtrain.model.gpt import count_params, flops_per_token

    import yaml

    cfg = ModelConfig(**yaml.safe_load((run / "config.yaml").read_text())["model"])
    counts = count_params(cfg)
    assert s["n_params"] == counts["n_params"] > s["n_params_active"] == counts["n_params_active"]
    assert s["flops"] == pytest.approx(6 * s["n_params_active"] * s["tokens"])  # compute is the active parameters'
    assert s["flops_per_token"] == pytest.approx(flops_per_token(cfg))
    train = records(run, None)
    assert all(r["tflops_per_device"] == pytest.approx(r["tokens_per_s"] * s["flops_per_token"] / 2 / 1e12, rel=1e-6)
               for r in train)
    moe = records(run, "moe")
    assert [r["step"] for r in moe] == [1, 2, 3, 4]
    for r in moe:
        assert sum(r["tokens_per_expert/layer0"]) == 8 * 64 * 2  # every token of the global batch, top-2
        assert r["load_min"] <= 1.0 <= r["load_max"] and r["dropped_frac"] == 0.0
        assert r["balance_loss"] >= 0.99 and r["z_loss"] > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    assert {"moe/balance_loss", "moe/z_loss", "moe/load_max", "moe/load_max/layer1"} <= set(acc.Tags()["scalars"])
    assert "moe/tokens_per_expert/layer0" in acc.Tags()["histograms"]


def test_expert_parallel_checkpoint_evaluates_and_exports(layouts, tmp_path):
    run = layouts["ep2_zero2"]
    s = json.loads((run / "summary.json").read_text())
    r = run_python([REPO / "launcher" / "evaluate.py", run, "--batches", "2", "--out", tmp_path / "eval.json"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / "eval.json").read_text())["loss"] == pytest.approx(s["final_valid_loss"], abs=1e-4)
    r = run_python([REPO / "launcher" / "export_hf.py", run, "--output", tmp_path / "hf"])
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.loads((tmp_path / "hf" / "llmtrain_export.json").read_text())
    assert rec["architecture"] == "Qwen2MoeForCausalLM" and rec["max_abs_logit_diff"] <= 1e-4
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    assert hf.config.num_experts == 4 and hf.config.shared_expert_intermediate_size > 0


def rewind(run: Path, step: int) -> None:
    """The run folder as a run killed right after its checkpoint at ``step`` leaves it."""
    for d in (run / "checkpoints").glob("global_step*"):
        if int(d.name.removeprefix("global_step")) > step:
            shutil.rmtree(d)
    (run / "checkpoints" / "latest").write_text(f"global_step{step}")
    (run / "summary.json").unlink(missing_ok=True)


def test_resume_on_another_expert_parallel_layout(layouts, token_data, tmp_path):
    """The expert-parallel ZeRO-2 run, relaunched from its step-1 checkpoint on one process, that
    one's step-2 checkpoint on expert parallel x2 without ZeRO, and that one's step-3 checkpoint on
    data parallel x2 (ZeRO-1, every rank holding every expert): each goes on with the uninterrupted
    run's losses, and the end state (every expert's weights and Adam moments) is the uninterrupted
    run's, from the layout-free state (experts by the GPT's names, each rank writing its own)."""
    from llmtrain.checkpoint.layout_free import read_state

    run = tmp_path / "run"
    shutil.copytree(layouts["ep2_zero2"], run)
    reference = train_losses(run)
    ref_state, ref_step = read_state(run / "checkpoints" / "global_step4", 2)
    chain = [(1, lambda *a: run_python([PRETRAIN, *ds("zero0"), *a])),
             (2, lambda *a: run_torchrun(2, *ds("zero0"), *a, "parallel.expert_parallel_size=2")),
             (3, lambda *a: run_torchrun(2, *ds("zero1"), *a))]
    common = ["--run-dir", run, f"data.prefix={token_data}", *SMALL, *MOE, "train.max_steps=4",
              "checkpoint.save_steps=[1,2,3]"]
    for start, launch in chain:
        rewind(run, start)
        r = launch(*common)
        assert r.returncode == 0, (start, r.stdout[-3000:], r.stderr[-3000:])
        assert "from its layout-free state" in r.stdout + r.stderr, start
        losses = train_losses(run)
        for step in range(start + 1, 5):
            assert losses[step] == pytest.approx(reference[step], abs=2e-5), (start, step)
    state, step = read_state(run / "checkpoints" / "global_step4", 2)
    assert step == ref_step == 4 and state.keys() == ref_state.keys()
    assert ref_state["blocks.1.mlp.experts.up"]["weight"].shape == (4, 2 * 192, 64)
    for name, fields in ref_state.items():
        for f, t in fields.items():
            assert torch.allclose(state[name][f], t, atol=1e-5, rtol=1e-4), (name, f)


def test_capacity_factor_drops_the_same_tokens_on_every_layout(token_data, tmp_path):
    common = [f"data.prefix={token_data}", *SMALL, *MOE, "train.max_steps=3", "model.moe_capacity_factor=1.0"]
    a = run_python([PRETRAIN, "--run-dir", tmp_path / "single", *common])
    b = run_torchrun(2, *ds("zero2"), "--run-dir", tmp_path / "ep2", *common, "parallel.expert_parallel_size=2")
    assert a.returncode == 0 and b.returncode == 0, (a.stderr[-2000:], b.stderr[-2000:])
    ra, rb = records(tmp_path / "single", "moe"), records(tmp_path / "ep2", "moe")
    assert any(r["dropped_frac"] > 0 for r in ra)
    assert [r["dropped_frac"] for r in rb] == [r["dropped_frac"] for r in ra]
    la, lb = train_losses(tmp_path / "single"), train_losses(tmp_path / "ep2")
    assert all(lb[s] == pytest.approx(la[s], abs=2e-5) for s in la)


def wait_for_steps(run: Path, n: int, timeout: float = 300.0) -> bool:
    import time

    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            if len(records(run, None)) >= n:
                return True
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.2)
    return False


def optimizer_tensors(step_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint's optimizer files, by file and path (moments, fp32 weights)."""
    out = {}

    def walk(prefix, obj):
        if torch.is_tensor(obj):
            out[prefix] = obj.float()
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}/{k}", v)
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(f"{prefix}/{i}", v)

    for f in sorted(step_dir.glob("*optim_states.pt")):
        walk(f.name, torch.load(f, map_location="cpu", weights_only=False))
    return out


def expert_moments(step_dir: Path) -> list[torch.Tensor]:
    """The Adam moments of the experts' optimizer group in each rank's optimizer file."""
    found = []
    for f in sorted(step_dir.glob("*optim_states.pt")):
        sd = torch.load(f, map_location="cpu", weights_only=False)
        opt = sd["optimizer_state_dict"]["base_optimizer_state"] if "optimizer_state_dict" in sd else sd["optimizer"]
        for g in opt["param_groups"]:
            if g.get("moe"):
                for p in g["params"]:
                    found += [opt["state"][p]["exp_avg"], opt["state"][p]["exp_avg_sq"]]
    return found


@pytest.mark.parametrize("zero", ["zero0", "zero2"])
def test_resume_after_a_rank_is_killed_restores_the_experts_exactly(token_data, tmp_path, zero):
    common = [*ds(zero), f"data.prefix={token_data}", *SMALL, *MOE, "train.max_steps=10", "checkpoint.interval=3",
              "model.dropout=0.1", "parallel.expert_parallel_size=2"]
    ref = run_torchrun(2, "--run-dir", tmp_path / "ref", *common)
    assert ref.returncode == 0, ref.stderr[-3000:]

    run = tmp_path / "crash"
    p = subprocess.Popen(torchrun_cmd(2, "--run-dir", run, *common), cwd=REPO, env=env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert wait_for_steps(run, 5), "run did not reach step 5"
        victims = [c for c in psutil.Process(p.pid).children(recursive=True) if c.environ().get("LOCAL_RANK") == "1"]
        assert victims
        victims[0].send_signal(signal.SIGKILL)
        p.wait(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    tag = (run / "checkpoints" / "latest").read_text().strip()
    killed_at = int(tag.replace("global_step", ""))
    assert 3 <= killed_at < 10 and not (run / "summary.json").exists(), "the run must have died mid-way"
    step_dir = run / "checkpoints" / tag
    assert len(list(step_dir.glob("layer_*_expert_*_model_states.pt"))) == 2 * 4  # every layer's every expert
    moments = expert_moments(step_dir)
    assert len(moments) >= 4 and all(float(m.abs().sum()) > 0 for m in moments)  # both ranks' expert moments

    again = run_torchrun(2, "--run-dir", run, *common)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stdout
    a, b = train_losses(tmp_path / "ref"), train_losses(run)
    assert sorted(b) == list(range(1, 11))
    for step in a:
        assert b[step] == pytest.approx(a[step], abs=1e-6), step
    # the end state is the uninterrupted run's: expert weights, and every optimizer tensor (the
    # experts' Adam moments included), so nothing of the experts was lost or reset on resume
    final_a, final_b = tmp_path / "ref" / "checkpoints" / "global_step10", run / "checkpoints" / "global_step10"
    for f in sorted(final_a.glob("layer_*_expert_*_model_states.pt")):
        wa, wb = torch.load(f, weights_only=True), torch.load(final_b / f.name, weights_only=True)
        assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa), f.name
    oa, ob = optimizer_tensors(final_a), optimizer_tensors(final_b)
    assert oa.keys() == ob.keys() and oa
    for k in oa:
        assert torch.allclose(oa[k], ob[k], atol=1e-6), k


def test_expert_layouts_that_cannot_work_are_refused_in_one_line(token_data, tmp_path):
    common = [f"data.prefix={token_data}", *SMALL, "model.moe_experts=4", "train.max_steps=2"]
    r = run_python([PRETRAIN, *ds("zero3"), "--run-dir", tmp_path / "z3", *common])
    assert_one_line_error(r, "zero3.json: ZeRO stage 3 with experts", "ds_configs/zero2.json")
    r = run_python([PRETRAIN, "--run-dir", tmp_path / "pipe", *common, "parallel.pipeline_stages=2"])
    assert_one_line_error(r, "parallel.pipeline_stages=2", "use data and expert parallelism")
    r = run_python([PRETRAIN, "--run-dir", tmp_path / "ep", *common, "parallel.expert_parallel_size=2"])
    assert_one_line_error(r, "parallel.expert_parallel_size=2 does not divide the 1 processes")
    assert not any((tmp_path / d).exists() for d in ("z3", "pipe", "ep")), "nothing is written before the refusal"


def test_bf16_experts_resume_from_expert_parallel_zero2_on_one_process(token_data, tmp_path):
    """bf16 with experts: DeepSpeed's bf16 on expert parallel x2 with ZeRO-2 (bf16 weights, fp32
    masters), and its step-2 checkpoint resumed on one process without ZeRO, where bf16 runs under
    autocast on fp32 weights: the experts' fp32 masters and moments carry over by the GPT's names,
    and the resumed step's loss is the uninterrupted run's to bf16 precision."""
    run = tmp_path / "run"
    common = ["--run-dir", run, f"data.prefix={token_data}", *SMALL, *MOE, "train.precision=bf16", "train.max_steps=3",
              "checkpoint.save_steps=[2]"]
    r = run_torchrun(2, *ds("zero2"), *common, "parallel.expert_parallel_size=2")
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    reference = train_losses(run)
    env_ = json.loads((run / "env.json").read_text())
    assert env_["precision"]["model_dtype"] == "bfloat16" and env_["precision"]["grad_accum_dtype"] == "float32"
    rewind(run, 2)
    r = run_python([PRETRAIN, *ds("zero0"), *common])
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    assert "from its layout-free state" in r.stdout + r.stderr
    assert json.loads((run / "env.json").read_text())["precision"]["autocast"] == "bfloat16"
    assert train_losses(run)[3] == pytest.approx(reference[3], abs=3e-3)  # measured 3e-4; one step moves it 0.13
