"""Callbacks around the loop: the Weights & Biases sink (offline) continues one W&B run across a
resume; the profiler writes a trace of the steps asked for."""
from __future__ import annotations

import pytest
import json

from trainutil import REPO, SMALL, env, train_losses

PRETRAIN = REPO / "launcher" / "pretrain.py"


def run_with_env(args, extra_env):
    import subprocess
    import sys

    return subprocess.run([sys.executable, str(PRETRAIN), *map(str, args)], cwd=REPO, env={**env(), **extra_env},
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_wandb_offline_run_continues_after_a_resume(token_data, tmp_path):
    run = tmp_path / "run"
    args = ["--run-dir", run, f"data.prefix={token_data}", *SMALL, "log.wandb=true", "log.wandb_project=test"]
    wenv = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(tmp_path / "wandb_home")}
    r = run_with_env([*args, "train.max_steps=2"], wenv)
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_with_env([*args, "train.max_steps=4"], wenv)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout
    runs = sorted(p.name for p in (run / "wandb").glob("offline-run-*"))
    assert len(runs) == 2, runs
    ids = {name.rsplit("-", 1)[1] for name in runs}
    assert len(ids) == 1, f"a resumed run must continue the same W&B run: {runs}"
    for name in runs:  # what W&B recorded locally: the run's history file
        assert any((run / "wandb" / name).glob("run-*.wandb")), name
    assert sorted(train_losses(run)) == [1, 2, 3, 4]


@pytest.mark.slow
def test_profiler_traces_the_steps_asked_for(token_data, tmp_path):
    run = tmp_path / "run"
    r = run_with_env(["--run-dir", run, f"data.prefix={token_data}", *SMALL, "train.max_steps=4",
                      "train.profile_steps=[2,3]"], {})
    assert r.returncode == 0, r.stderr[-3000:]
    traces = list((run / "profile").glob("trace_rank0_steps2-3.json"))
    assert len(traces) == 1
    events = json.loads(traces[0].read_text())["traceEvents"]
    assert any("aten::mm" in e.get("name", "") or "aten::addmm" in e.get("name", "") for e in events)
