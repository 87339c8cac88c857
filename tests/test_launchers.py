"""Other launchers people use (torchrun, accelerate) give the deepspeed launcher's losses (srun
and the Slurm batch script: tests/test_slurm.py, under a real Slurm)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from trainutil import REPO, SMALL, env, free_port, run_deepspeed, train_losses

PRETRAIN = REPO / "launcher" / "pretrain.py"


def run_cmd(cmd, timeout=600):
    return subprocess.run([str(c) for c in cmd], cwd=REPO, env=env(), capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_torchrun_and_accelerate_match_the_deepspeed_launcher(token_data, tmp_path):
    common = [f"data.prefix={token_data}", *SMALL, "train.max_steps=3", "model.dropout=0.1"]
    ds = run_deepspeed(2, "--run-dir", tmp_path / "ds", *common)
    assert ds.returncode == 0, ds.stderr[-3000:]
    tr = run_cmd(["torchrun", "--nproc_per_node", "2", "--master_port", free_port(), PRETRAIN,
                  "--run-dir", tmp_path / "torchrun", *common])
    assert tr.returncode == 0, tr.stderr[-3000:]
    if shutil.which("accelerate") is None:
        pytest.fail("accelerate is a dependency (setup.py); reinstall with pip install -e .")
    ac = run_cmd(["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                  "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", free_port(),
                  PRETRAIN, "--run-dir", tmp_path / "accelerate", *common])
    assert ac.returncode == 0, ac.stderr[-3000:]
    ref = train_losses(tmp_path / "ds")
    assert sorted(ref) == [1, 2, 3]
    for name in ("torchrun", "accelerate"):
        got = train_losses(tmp_path / name)
        assert sorted(got) == [1, 2, 3], name
        for step in ref:
            assert got[step] == pytest.approx(ref[step], abs=1e-6), (name, step)


@pytest.mark.slow
def test_pretrain_script_runs_from_another_folder(token_data, tmp_path):
    """The launcher finds configs/ and ds_configs/ beside itself, wherever it is started from."""
    r = subprocess.run([sys.executable, str(PRETRAIN), "--run-dir", str(tmp_path / "run"), f"data.prefix={token_data}",
                        *SMALL, "train.max_steps=1"], cwd=tmp_path,
                       env={k: v for k, v in env().items() if k != "LLMTRAIN_HOME"},
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert os.path.isfile(tmp_path / "run" / "summary.json")
