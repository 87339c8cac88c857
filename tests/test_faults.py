"""Fault paths on every layout, checked on the weights and the data position, not only the exit
code: non-finite steps, resumes that would break exactness, a finished run launched again."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from trainutil import (REPO, SMALL, assert_one_line_error, read_metrics, run_deepspeed, run_python, run_torchrun,
                       train_losses)

PRETRAIN = REPO / "launcher" / "pretrain.py"

LAYOUTS = {
    "zero0_x1": (1, "zero0.json", []),
    "zero2_x2": (2, "zero2.json", []),
    "zero3_x2": (2, "zero3.json", []),
    "pipe_x2": (2, "zero1.json", ["parallel.pipeline_stages=2"]),
    "pipe_zero0_x2": (2, "zero0.json", ["parallel.pipeline_stages=2"]),
}


def launch(layout: str, *args):
    nproc, ds, extra = LAYOUTS[layout]
    if nproc == 1:
        return run_python([PRETRAIN, "--deepspeed_config", REPO / "ds_configs" / ds, *args, *extra])
    return run_deepspeed(nproc, "--deepspeed_config", REPO / "ds_configs" / ds, *args, *extra)


def weights(step_dir: Path) -> dict[str, torch.Tensor]:
    from llmtrain.checkpoint.consolidate import consolidated_state

    return consolidated_state(step_dir)["state_dict"]


def schedule_position(step_dir: Path) -> int:
    f = sorted(step_dir.glob("*mp_rank_00_model_states.pt"))[0]
    return torch.load(f, map_location="cpu", weights_only=False)["lr_scheduler"]["last_epoch"]


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_non_finite_steps_never_move_the_weights(token_data, tmp_path, layout):
    """An absurd LR blows the model up. Each non-finite step is skipped: the weights after it are
    the weights before it, bit for bit, while the step counter, the data position and the LR
    schedule move on; after train.max_bad_steps in a row the run stops with one line naming the
    checkpoint saved before the streak, whose weights are finite."""
    run = tmp_path / "run"
    r = launch(layout, "--run-dir", run, f"data.prefix={token_data}", *SMALL, "train.max_steps=30", "train.lr=1e5",
               "train.warmup_steps=0", "train.grad_clip=0", "checkpoint.interval=1", "train.max_bad_steps=3")
    line = assert_one_line_error(r, "3 skipped steps", "last good checkpoint")
    events = [x for x in read_metrics(run) if x.get("skipped")]
    assert [e["bad_steps_in_a_row"] for e in events] == [1, 2, 3]
    first = events[0]["step"]
    assert [e["step"] for e in events] == [first, first + 1, first + 2]
    assert all(e["tokens"] == e["step"] * 8 * 64 for e in events), "the data position moves on"

    named = Path(line.split("last good checkpoint: ")[1].split(";")[0])
    assert named.name == f"global_step{first - 1}", "the last checkpoint saved before the streak"
    before = weights(named)
    assert all(torch.isfinite(v).all() for v in before.values())
    ckpts = run / "checkpoints"
    for step in (first, first + 1):  # checkpoints saved during the streak
        during = weights(ckpts / f"global_step{step}")
        assert before.keys() == during.keys()
        for k in before:
            assert torch.equal(before[k], during[k]), (step, k)
        assert schedule_position(ckpts / f"global_step{step}") == step, "the LR schedule follows the step"


@pytest.mark.slow
def test_resume_refuses_what_breaks_exactness(token_data, tmp_path):
    """A relaunch with another global batch size, seed or data prefix, or of a run whose samples
    were read in an earlier order, is refused with one line naming the field or file (nothing in
    the run folder changes); checkpoint.allow_data_change=true goes on, and extending
    train.max_steps is always allowed."""
    run = tmp_path / "run"
    common = ["--run-dir", run, f"data.prefix={token_data}", *SMALL]
    r = run_python([PRETRAIN, *common, "train.max_steps=4"])
    assert r.returncode == 0, r.stderr[-2000:]
    before = {f: (run / f).read_bytes() for f in ("config.yaml", "metrics.jsonl", "summary.json")}
    other = tmp_path / "copy" / Path(token_data).name  # the same tokens under another prefix
    other.parent.mkdir()
    for f in Path(token_data).parent.glob(Path(token_data).name + "_*"):
        shutil.copy(f, other.parent / f.name)
    for change, key in (("train.global_batch_size=16", "train.global_batch_size"), ("train.seed=7", "train.seed"),
                        (f"data.prefix={other}", "data.prefix"), ("train.seq_len=32", "train.seq_len")):
        r = run_python([PRETRAIN, *common, "train.max_steps=6", change])
        assert_one_line_error(r, key, "checkpoint.allow_data_change=true")
        assert {f: (run / f).read_bytes() for f in before} == before
    # a run made before the sample order changed (its data_manifest.json has no sample_order)
    manifest = json.loads((run / "data_manifest.json").read_text())
    assert manifest.pop("sample_order") == 2
    (run / "data_manifest.json").write_text(json.dumps(manifest))
    r = run_python([PRETRAIN, *common, "train.max_steps=6"])
    assert_one_line_error(r, "data_manifest.json", "in order 1", "checkpoint.allow_data_change=true")
    assert {f: (run / f).read_bytes() for f in before} == before
    r = run_python([PRETRAIN, *common, "train.max_steps=6", "train.seed=7", "checkpoint.allow_data_change=true"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed from" in r.stdout and sorted(train_losses(run)) == [1, 2, 3, 4, 5, 6]
    assert json.loads((run / "data_manifest.json").read_text())["sample_order"] == 2


@pytest.mark.slow
def test_a_finished_run_launched_again_is_left_untouched(token_data, tmp_path):
    """Running the same command twice: the second says so in one line, exits 0, and changes no
    file of the finished run; on 2 ranks too."""
    for nproc in (1, 2):
        run = tmp_path / f"run{nproc}"
        args = ["--run-dir", run, f"data.prefix={token_data}", *SMALL, "train.max_steps=3"]
        first = run_python([PRETRAIN, *args]) if nproc == 1 else run_torchrun(2, *args)
        assert first.returncode == 0, first.stderr[-2000:]
        files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
        again = run_python([PRETRAIN, *args]) if nproc == 1 else run_torchrun(2, *args)
        assert again.returncode == 0, again.stderr[-2000:]
        assert "already finished at step 3" in again.stdout
        assert "Traceback" not in again.stderr
        assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == files
        assert json.loads((run / "summary.json").read_text())["final_train_loss"] is not None
