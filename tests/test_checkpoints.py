"""Checkpoints on a shared filesystem, on every layout: saves every checkpoint.interval_minutes
(rank 0's clock: every rank saves the same step), checkpoint.keep_last, and a resume that rank 0
decides when another node's view of the run folder lags behind."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from trainutil import REPO, SMALL, env, free_port, run_deepspeed, train_losses

PRETRAIN = REPO / "launcher" / "pretrain.py"
LAYOUTS = {
    "zero0_x2": ["--deepspeed_config", REPO / "ds_configs/zero0.json"],
    "zero2_x2": ["--deepspeed_config", REPO / "ds_configs/zero2.json"],
    "zero3_x2": ["--deepspeed_config", REPO / "ds_configs/zero3.json"],
    "pipe_x2": ["--deepspeed_config", REPO / "ds_configs/zero1.json", "parallel.pipeline_stages=2"],
}


def saved_steps(ckpt) -> list[int]:
    return sorted(int(p.name.replace("global_step", "")) for p in ckpt.glob("global_step*"))


def launch_two_ranks_one_lagging(run_dir, stale_latest, args) -> list[subprocess.CompletedProcess]:
    """Two ranks started as torchrun starts them (RANK, WORLD_SIZE, ... in the environment); rank 1
    in a mount namespace of its own where RUN/checkpoints/latest shows ``stale_latest``: what a
    node whose cache of a shared filesystem lags behind sees."""
    port = str(free_port())
    cmd = [sys.executable, str(PRETRAIN), "--run-dir", str(run_dir), *map(str, args)]
    procs = []
    for rank in (0, 1):
        e = {**env(), "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2",
             "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        if rank == 1:
            latest = run_dir / "checkpoints" / "latest"
            cmd_1 = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                     f'mount --bind "{stale_latest}" "{latest}" && exec "$@"', "sh", *cmd]
            procs.append(subprocess.Popen(cmd_1, cwd=REPO, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
        else:
            procs.append(subprocess.Popen(cmd, cwd=REPO, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
    results = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError("the ranks hung: they did not resume from the same step") from None
        results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return results


@pytest.fixture(scope="module")
def mount_namespaces():
    r = subprocess.run(["unshare", "-m", "true"], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"this test needs mount namespaces (root, unshare -m) to show one rank an older file: "
                    f"{r.stderr.strip()}")


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_periodic_saves_keep_last_and_rank_0_decides_the_resume(token_data, tmp_path, layout, mount_namespaces):
    args = [*LAYOUTS[layout], f"data.prefix={token_data}", *SMALL, "train.max_steps=6", "model.dropout=0.1",
            "checkpoint.interval_minutes=1e-9", "checkpoint.keep_last=2", "checkpoint.save_steps=[2]"]
    ref = tmp_path / "ref"
    r = run_deepspeed(2, "--run-dir", ref, *args)
    assert r.returncode == 0, r.stderr[-3000:]
    # a checkpoint is due by time before every step, so every rank saves each step after the
    # first (rank 0 asks, all save one step later); only step 2 (save_steps) and the newest two stay
    ckpt = ref / "checkpoints"
    assert saved_steps(ckpt) == [2, 5, 6] and (ckpt / "latest").read_text() == "global_step6"
    for step in (2, 5, 6):  # each rank wrote its part of the same step
        files = sorted(p.name for p in (ckpt / f"global_step{step}").iterdir())
        assert {"layout.json", "layout_free"} <= set(files), files  # the layout-free state, every rank's part
        free = sorted(p.name for p in (ckpt / f"global_step{step}" / "layout_free").iterdir())
        assert {"rank00000.safetensors", "rank00001.safetensors"} <= set(free), free
        files = [f for f in files if f not in ("layout.json", "layout_free")]
        if layout == "pipe_x2":
            assert sum(f.startswith("layer_") for f in files) >= 2 and "mp_rank_00_model_states.pt" in files
        elif layout == "zero0_x2":
            assert files == ["mp_rank_00_model_states.pt"], files
        else:  # each rank's shard of the optimizer state
            assert sum("optim_states" in f for f in files) == 2, files

    # the run stopped after step 5; one node still sees the `latest` of step 2
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    (run / "summary.json").unlink()
    shutil.rmtree(run / "checkpoints" / "global_step6")
    (run / "checkpoints" / "latest").write_text("global_step5")
    stale = tmp_path / "stale_latest"
    stale.write_text("global_step2")
    ranks = launch_two_ranks_one_lagging(run, stale, args)
    for rank, p in enumerate(ranks):
        assert p.returncode == 0, (rank, p.stderr[-3000:])
    assert f"resumed from {run / 'checkpoints' / 'global_step5'} at step 5" in ranks[0].stdout
    a, b = train_losses(ref), train_losses(run)
    assert sorted(b) == [1, 2, 3, 4, 5, 6]
    assert b[6] == pytest.approx(a[6], abs=1e-6), "both ranks resumed at step 5 with the same state"
    assert json.loads((run / "summary.json").read_text())["steps"] == 6
    assert os.path.isdir(run / "checkpoints" / "global_step2")
