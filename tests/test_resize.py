"""Resume on another number of ranks or another layout, optimizer state included.

One run folder is relaunched again and again, each time on another layout, each relaunch
resuming from the checkpoint the previous one wrote one step after it started (the same command
but for the rank count and the DeepSpeed config, as on a cluster that grants another allocation;
two ranks are started with torchrun, which runs the same DeepSpeed job with less start-up):

    ZeRO-0 x2 -> ZeRO-0 x1 -> ZeRO-1 x2 -> ZeRO-1 x1 -> ZeRO-2 x2 -> ZeRO-2 x1 -> ZeRO-3 x2
    -> ZeRO-3 x1 -> pipeline x2 -> one process -> ZeRO-0 x2

Every ZeRO stage saves on 2 ranks and loads on 1, and saves on 1 rank and loads on 2 (ZeRO-0
from x1 to x2 in the same stage, the others into the next stage); the pipeline goes to one
process and back. The first launch runs uninterrupted to the end: after each relaunch, its
losses equal the uninterrupted ones to fp32 reduction-order tolerance, while a run that restarts
Adam's moments at the same point (the consolidate-then-init_from way round) is off by far more.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from trainutil import REPO, SMALL, assert_one_line_error, run_python, run_torchrun, train_losses

PRETRAIN = REPO / "launcher" / "pretrain.py"

CHAIN = [  # (name, processes, DeepSpeed config, overrides)
    ("zero0_x2", 2, "zero0.json", []),
    ("zero0_x1", 1, "zero0.json", []),
    ("zero1_x2", 2, "zero1.json", []),
    ("zero1_x1", 1, "zero1.json", []),
    ("zero2_x2", 2, "zero2.json", []),
    ("zero2_x1", 1, "zero2.json", []),
    ("zero3_x2", 2, "zero3.json", []),
    ("zero3_x1", 1, "zero3.json", []),
    ("pipe_x2", 2, "zero1.json", ["parallel.pipeline_stages=2"]),
    ("one_process", 1, "zero0.json", []),
    ("zero0_x2_again", 2, "zero0.json", []),
]
STEPS = len(CHAIN) + 1  # the last relaunch resumes at step len(CHAIN) - 1 and trains two steps
TOL = 2e-5  # fp32, another reduction order (tests/test_train.py: the layouts agree to this)
FAST = ["train.peak_flops=1e12"]  # no matmul measurement for MFU at each start


def launch(nproc: int, ds: str, *args):
    args = ["--deepspeed_config", REPO / "ds_configs" / ds, *args]
    return run_python([PRETRAIN, *args]) if nproc == 1 else run_torchrun(nproc, *args)


def rewind(run: Path, step: int) -> None:
    """The run folder as a run killed right after its checkpoint at ``step`` leaves it."""
    ckpts = run / "checkpoints"
    for d in ckpts.glob("global_step*"):
        if int(d.name.removeprefix("global_step")) > step:
            shutil.rmtree(d)
    (ckpts / "latest").write_text(f"global_step{step}")
    (run / "summary.json").unlink(missing_ok=True)


@pytest.fixture(scope="module")
def chain(token_data, tmp_path_factory):
    """Run the chain; returns (run folder, uninterrupted losses, [(name, start step, launch, losses)],
    the uninterrupted run's final step folder, its weights at step 1 as a consolidated file)."""
    from llmtrain.checkpoint.consolidate import consolidated_state, save_consolidated

    tmp = tmp_path_factory.mktemp("resize")
    run = tmp / "run"
    common = ["--run-dir", run, f"data.prefix={token_data}", *SMALL, *FAST, f"train.max_steps={STEPS}"]
    name, nproc, ds, extra = CHAIN[0]
    r = launch(nproc, ds, *common, "checkpoint.save_steps=[1]", *extra)
    assert r.returncode == 0, (name, r.stdout[-3000:], r.stderr[-3000:])
    reference = train_losses(run)
    assert sorted(reference) == list(range(1, STEPS + 1))
    final = tmp / "reference_final"
    shutil.copytree(run / "checkpoints" / f"global_step{STEPS}", final)
    rec = consolidated_state(run / "checkpoints" / "global_step1")
    weights = tmp / "weights_step1.pt"
    save_consolidated(rec["state_dict"], rec, weights)
    hops = []
    for start, (name, nproc, ds, extra) in enumerate(CHAIN[1:], start=1):
        rewind(run, start)
        r = launch(nproc, ds, *common, f"checkpoint.save_steps=[{start + 1}]", *extra)
        assert r.returncode == 0, (name, r.stdout[-3000:], r.stderr[-3000:])
        hops.append((name, start, r, train_losses(run)))
    return run, reference, hops, final, weights


@pytest.mark.slow
def test_every_relaunch_on_another_layout_continues_the_run(chain):
    run, reference, hops, *_ = chain
    for (name, start, r, losses), (before, *_) in zip(hops, CHAIN):
        line = next((ln for ln in r.stdout.splitlines() if ln.startswith("resumed from")), "")
        assert f"global_step{start} at step {start} (saved on " in line and "layout-free state" in line, (name, line)
        assert sorted(losses) == list(range(1, STEPS + 1)), "metrics.jsonl reads as one run"
        for step in range(start + 1, STEPS + 1):
            assert losses[step] == pytest.approx(reference[step], abs=TOL), (before, "->", name, step)


@pytest.mark.slow
def test_the_optimizer_state_goes_with_the_weights(chain, token_data, tmp_path):
    """After all the relaunches, the weights, both Adam moments and Adam's step match the
    uninterrupted run's; a run that starts from the same weights with fresh moments (a consolidated
    file as checkpoint.init_from) loses by far more than the tolerance."""
    from llmtrain.checkpoint.layout_free import read_state

    run, reference, _, final, weights = chain

    ours, step = read_state(run / "checkpoints" / f"global_step{STEPS}", world=2)
    theirs, ref_step = read_state(final, world=2)
    assert step == ref_step == STEPS and ours.keys() == theirs.keys()
    for name in theirs:
        for field, t in theirs[name].items():
            torch.testing.assert_close(ours[name][field], t, rtol=1e-3, atol=1e-3 * float(t.abs().max()),
                                       msg=f"{name} {field}")

    fresh = tmp_path / "fresh_moments"
    r = run_python([PRETRAIN, "--run-dir", fresh, f"data.prefix={token_data}", *SMALL, *FAST,
                    f"train.max_steps={STEPS}", f"checkpoint.init_from={weights}"])
    assert r.returncode == 0, r.stderr[-3000:]
    reset = train_losses(fresh)
    assert min(reset) == 2 and reset[2] == pytest.approx(reference[2], abs=TOL), "the same weights at step 1"
    gap = max(abs(reset[s] - reference[s]) for s in reset)
    assert gap > 100 * TOL, gap


@pytest.mark.slow
def test_a_branch_from_another_layout(chain, token_data, tmp_path):
    """checkpoint.init_from=.../global_stepN of a run saved on 2 ranks, started on 1 rank with
    another ZeRO stage (a WSD cooldown branch on another allocation): weights, moments, step and
    data position carry over, so with the same schedule it trains on like the run itself."""
    run, reference, *_ = chain
    branch = tmp_path / "branch"
    r = launch(1, "zero2.json", "--run-dir", branch, f"data.prefix={token_data}", *SMALL, *FAST,
               f"train.max_steps={STEPS}", f"checkpoint.init_from={run / 'checkpoints' / f'global_step{STEPS - 1}'}")
    assert r.returncode == 0, r.stderr[-3000:]
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("started from")), "")
    assert f"at step {STEPS - 1} (saved on 2 ranks, ZeRO-0, fp32, now 1 rank, ZeRO-2, fp32" in line, line
    assert train_losses(branch)[STEPS] == pytest.approx(reference[STEPS], abs=TOL)


@pytest.mark.slow
def test_another_layout_without_a_layout_free_state_is_refused(token_data, tmp_path):
    """A checkpoint saved with checkpoint.layout_free=false resumes only on its own layout: another
    one is refused with one line naming the layout that can, before the engine is built, and the
    run folder is left as it was."""
    run = tmp_path / "run"
    common = ["--run-dir", run, f"data.prefix={token_data}", *SMALL, *FAST, "train.max_steps=3"]
    r = launch(1, "zero0.json", *common, "checkpoint.save_steps=[1]", "checkpoint.layout_free=false")
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (run / "checkpoints" / "global_step1" / "layout_free").exists()
    rewind(run, 1)
    before = {f: f.read_bytes() for f in sorted(run.rglob("*")) if f.is_file()}
    r = launch(1, "zero2.json", *common)
    assert_one_line_error(r, "global_step1", "saved on 1 rank, ZeRO-0, fp32", "this launch is on 1 rank, ZeRO-2, fp32",
                          "relaunch on 1 rank, ZeRO-0, fp32")
    assert "run folder:" not in r.stdout
    assert {f: f.read_bytes() for f in sorted(run.rglob("*")) if f.is_file()} == before


def layout(world: int, stage: int, *overrides: str) -> dict:
    from llmtrain.config import load_config
    from llmtrain.train.ds_config import build_ds_config, layout_of

    cfg = load_config(None, list(overrides))
    ds = build_ds_config(cfg, {"zero_optimization": {"stage": stage}}, "z.json", "c.yaml",
                         world // cfg.parallel.pipeline_stages)
    return layout_of(cfg, ds, world)


def test_which_loader_a_resume_takes(tmp_path):
    """DeepSpeed's own loader on the same layout; the layout-free state on another; a checkpoint
    from before layout.json is judged by its run folder's files, so a bf16 ZeRO-2 run of an earlier
    version resumes as before while a change of optimizer (ZeRO-1 with fp32 accumulation, now the
    default) is refused with the setting that restores it."""
    import json

    from llmtrain.checkpoint.ds import resume_route
    from llmtrain.core.errors import ConfigError

    step = tmp_path / "run" / "checkpoints" / "global_step5"
    step.mkdir(parents=True)
    saved = {**layout(2, 2), "step": 5, "layout_free": True}
    (step / "layout.json").write_text(json.dumps(saved))
    assert resume_route(step, layout(2, 2)) == ("deepspeed", saved)
    with pytest.raises(ConfigError, match="saved on 2 ranks, ZeRO-2, fp32 and this launch is on 1 rank, ZeRO-3"):
        resume_route(step, layout(1, 3))  # layout.json promises a layout-free state the folder lacks
    (step / "layout_free").mkdir()
    assert resume_route(step, layout(1, 3)) == ("layout_free", saved)
    assert resume_route(step, layout(2, 0, "parallel.pipeline_stages=2"))[0] == "layout_free"

    (step / "layout.json").unlink()  # an earlier version's checkpoint: the run folder tells its layout
    run = step.parent.parent
    (run / "config.yaml").write_text("train:\n  precision: bf16\n")
    (run / "env.json").write_text(json.dumps({"world_size": 2, "zero_stage": 2, "pipeline_stages": 1}))
    (run / "ds_config.json").write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    assert resume_route(step, layout(2, 2, "train.precision=bf16"))[0] == "deepspeed"
    (run / "env.json").write_text(json.dumps({"world_size": 2, "zero_stage": 1, "pipeline_stages": 1}))
    (run / "ds_config.json").write_text(json.dumps({"zero_optimization": {"stage": 1}}))
    with pytest.raises(ConfigError, match="relaunch on 2 ranks, ZeRO-1, bf16 with bf16 gradient accumulation"):
        resume_route(step, layout(2, 1, "train.precision=bf16"))
    assert resume_route(step, layout(2, 1, "train.precision=bf16", "train.grad_accum_dtype=bf16"))[0] == "deepspeed"
