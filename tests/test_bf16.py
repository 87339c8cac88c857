"""bf16 training on CPU (DeepSpeed's CPU accelerator runs it): gradients are accumulated and
reduced in fp32 on every layout unless train.grad_accum_dtype / train.grad_reduce_dtype say bf16,
and a run killed with SIGKILL resumes with losses identical to the ones it had logged, on ZeRO-0,
ZeRO-2 x2, ZeRO-3 x2 and pipeline x2 (which DeepSpeed's own bf16 loader cannot resume)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import torch
import pytest

from trainutil import (REPO, SMALL, env, run_python, run_torchrun, steps_logged, torchrun_cmd,
                       train_losses)

PRETRAIN = REPO / "launcher" / "pretrain.py"

LAYOUTS = {  # processes, DeepSpeed config, overrides
    "zero0": (1, "zero0.json", []),
    "zero2_x2": (2, "zero2.json", []),
    "zero3_x2": (2, "zero3.json", []),
    "pipe_x2": (2, "zero0.json", ["parallel.pipeline_stages=2"]),
    # bf16 accumulation asked for: DeepSpeed's bf16 optimizer without ZeRO, which its own loader
    # cannot resume (KeyError: 0); the layout-free state does
    "pipe_x2_bf16_accum": (2, "zero0.json", ["parallel.pipeline_stages=2", "train.grad_accum_dtype=bf16"]),
}
# Two micro-batches per rank, so that gradients are accumulated; dropout, so that the RNG of every
# rank counts; a constant LR after warm-up, so that the relaunch may stop at the step where the
# killed run was cut off (the schedule does not depend on train.max_steps).
BF16 = ["train.precision=bf16", "train.micro_batch_size=2", "model.dropout=0.1", "train.schedule=constant",
        "checkpoint.save_steps=[3]", "train.peak_flops=1e12"]


def kill_one_rank(p: subprocess.Popen, nproc: int) -> None:
    """SIGKILL one training process: the single one, or rank 1 under torchrun."""
    if nproc == 1:
        p.send_signal(signal.SIGKILL)
    else:
        ranks = [c for c in psutil.Process(p.pid).children(recursive=True) if c.environ().get("LOCAL_RANK") == "1"]
        assert ranks
        ranks[0].send_signal(signal.SIGKILL)
    p.wait(timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_bf16_killed_run_resumes_with_identical_losses(token_data, tmp_path, layout):
    nproc, ds, extra = LAYOUTS[layout]
    run = tmp_path / "run"
    args = ["--deepspeed_config", REPO / "ds_configs" / ds, "--run-dir", run, f"data.prefix={token_data}", *SMALL,
            *BF16, *extra]
    cmd = [sys.executable, PRETRAIN, *args] if nproc == 1 else torchrun_cmd(nproc, *args)
    p = subprocess.Popen([*map(str, cmd), "train.max_steps=100000"], cwd=REPO, env=env(), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        t0 = time.time()
        while steps_logged(run) < 6:
            assert time.time() - t0 < 300 and p.poll() is None, "the run did not reach step 6"
            time.sleep(0.1)
        kill_one_rank(p, nproc)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    killed = train_losses(run)  # the uninterrupted run, up to where it was cut off
    last = max(killed)
    assert (run / "checkpoints" / "latest").read_text().strip() == "global_step3" and last >= 6

    tail = [*args, f"train.max_steps={last}"]
    again = run_python([PRETRAIN, *tail]) if nproc == 1 else run_torchrun(nproc, *tail)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "at step 3" in next(ln for ln in again.stdout.splitlines() if ln.startswith("resumed from"))
    resumed = train_losses(run)
    assert sorted(resumed) == list(range(1, last + 1))
    assert {s: resumed[s] for s in killed} == killed, "bit for bit"

    # what DeepSpeed reports it used (env.json): gradients accumulated and reduced in fp32
    used = json.loads((run / "env.json").read_text())["precision"]
    if "train.grad_accum_dtype=bf16" in extra:
        assert used["grad_accum_dtype"] == "bfloat16" and used["optimizer"] == "BF16_Optimizer", used
        return
    assert used["grad_accum_dtype"] == used["grad_reduce_dtype"] == "float32", used
    if ds == "zero0.json":  # no ZeRO: fp32 weights and gradients, bf16 compute under autocast
        assert used["model_dtype"] == "float32" and used["autocast"] == "bfloat16", used
    else:  # bf16 weights, fp32 master weights in the optimizer
        assert used["model_dtype"] == "bfloat16" and used["autocast"] is None, used


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_bf16_deepspeed_config_accumulates_and_reduces_in_fp32(stage):
    """What the YAML gives DeepSpeed under bf16, per ZeRO stage, and the settings that say otherwise."""
    from llmtrain.config import load_config
    from llmtrain.core.errors import ConfigError
    from llmtrain.train.ds_config import build_ds_config

    user = {"zero_optimization": {"stage": stage}}
    ds = build_ds_config(load_config(None, ["train.precision=bf16"]), user, "z.json", "c.yaml", dp_world=2)
    assert ds["communication_data_type"] == "fp32"
    if stage == 0:
        assert not ds["bf16"]["enabled"] and ds["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}
    else:
        assert ds["bf16"]["enabled"] and ds["data_types"] == {"grad_accum_dtype": "fp32"}

    cfg = load_config(None, ["train.precision=bf16", "train.grad_accum_dtype=bf16", "train.grad_reduce_dtype=bf16"])
    ds = build_ds_config(cfg, user, "z.json", "c.yaml", dp_world=2)
    assert ds["bf16"]["enabled"] and "torch_autocast" not in ds
    assert ds["data_types"] == {"grad_accum_dtype": "bf16"} and ds["communication_data_type"] == "bf16"

    with pytest.raises(ConfigError, match=r"z\.json: 'communication_data_type'=\"bf16\" conflicts with c\.yaml "
                                          r"\(train\.grad_reduce_dtype=fp32"):
        build_ds_config(load_config(None, ["train.precision=bf16"]), {**user, "communication_data_type": "bf16"},
                        "z.json", "c.yaml", dp_world=2)
    with pytest.raises(ConfigError, match="train.grad_accum_dtype=bf16 needs train.precision=bf16"):
        load_config(None, ["train.grad_accum_dtype=bf16"])


ROUND_TRIP = r'''
import json, sys, torch
from pathlib import Path
from llmtrain.checkpoint import layout_free
from llmtrain.checkpoint.ds import save_checkpoint
from llmtrain.config import load_config
from llmtrain.train.dist import init_distributed
from llmtrain.train.ds_config import build_ds_config
from llmtrain.train.engine import build_engine

out = Path(sys.argv[1])
KINDS = {  # name: (ZeRO stage, overrides)
    "zero0_autocast": (0, []), "zero0_bf16_accum": (0, ["train.grad_accum_dtype=bf16"]),
    "zero1": (1, []), "zero2": (2, []), "zero3": (3, []),
}
init_distributed()

def engine_of(name):
    stage, extra = KINDS[name]
    cfg = load_config(None, ["model.n_layer=2", "model.d_model=64", "model.n_head=4", "model.seq_len=32",
                             "model.vocab_size=256", "train.global_batch_size=4", "train.precision=bf16", *extra])
    ds = build_ds_config(cfg, {"zero_optimization": {"stage": stage}}, "z.json", "c.yaml", dp_world=1)
    return build_engine(cfg, ds, total_steps=10)

def save(engine, folder):
    return Path(save_checkpoint(engine, folder, 1, {"step": 1, "tokens": 0, "rng": [], "callbacks": {}}, 0,
                                None, layout_free.gpt_names(False, 2)))

names = list(KINDS)
kinds = {}
for name in names:  # one optimizer step, then save
    engine = engine_of(name)
    kinds[name] = type(engine.optimizer).__name__
    x = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    engine.backward(engine(x, x))
    engine.step()
    save(engine, out / name)
for i, src in enumerate(names):  # load into another optimizer and save again at once: the same state
    dst = names[(i + 1) % len(names)]
    engine = engine_of(dst)
    layout_free.load(engine, out / src / "checkpoints" / "global_step1", 1, layout_free.gpt_names(False, 2))
    save(engine, out / f"{src}_in_{dst}")
print(json.dumps(kinds))
'''


@pytest.mark.slow
def test_the_layout_free_state_round_trips_through_every_optimizer(tmp_path):
    """Saved by one of the optimizers a run can have (torch's AdamW alone under autocast,
    DeepSpeed's bf16 one without ZeRO, its bf16 one on ZeRO-1, ZeRO-2, ZeRO-3) and loaded into the next, then saved at
    once: the same fp32 weights, moments and Adam step, bit for bit."""
    from llmtrain.checkpoint.layout_free import read_state

    r = run_python(["-c", ROUND_TRIP, tmp_path])
    assert r.returncode == 0, r.stderr[-3000:]
    kinds = json.loads(r.stdout.strip().splitlines()[-1])
    assert kinds == {"zero0_autocast": "SkipNonFiniteAdamW", "zero0_bf16_accum": "FP16_UnfusedOptimizer",
                     "zero1": "BF16_Optimizer", "zero2": "DeepSpeedZeroOptimizer",
                     "zero3": "DeepSpeedZeroOptimizer_Stage3"}
    names = list(kinds)
    for i, src in enumerate(names):
        dst = names[(i + 1) % len(names)]
        before, step = read_state(tmp_path / src / "checkpoints" / "global_step1", world=1)
        after, step_after = read_state(tmp_path / f"{src}_in_{dst}" / "checkpoints" / "global_step1", world=1)
        # Adam's step as the optimizer counts it (DeepSpeed's unfused one takes one step at start)
        assert step == step_after and before.keys() == after.keys()
        for name in before:
            for field in before[name]:
                assert torch.equal(before[name][field], after[name][field]), (src, dst, name, field)
