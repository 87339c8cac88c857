"""Other launchers people use (torchrun, accelerate) give the deepspeed launcher's losses, and
the Slurm script requeues a run that was stopped before its end."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import textwrap

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


FAKE_SCONTROL = """#!/bin/bash
if [ "$1 $2" = "show hostnames" ]; then echo node1; exit 0; fi
echo "$@" >> "$FAKE_LOG"
"""
FAKE_SRUN = """#!/bin/bash
# the last argument is the command line srun runs on each node (one node here)
SLURM_NODEID=0 exec bash -c "${@: -1}"
"""
# deepspeed on the "node": runs the real trainer as one process; with FAKE_PREEMPT=1 it sends the
# trainer SIGTERM once it has logged two steps, as Slurm does before the time limit
FAKE_DEEPSPEED = f"""#!/bin/bash
while [ $# -gt 0 ] && [ "$1" != "launcher/pretrain.py" ]; do shift; done
shift
{sys.executable} launcher/pretrain.py "$@" &
pid=$!
if [ "${{FAKE_PREEMPT:-0}}" = 1 ]; then
    run="${{FAKE_RUN_DIR}}"
    for i in $(seq 1 600); do
        n=$(cat "$run/metrics.jsonl" 2>/dev/null | wc -l)
        [ "$n" -ge 2 ] && break
        sleep 0.2
    done
    kill -TERM $pid
fi
wait $pid
"""


@pytest.mark.slow
def test_slurm_script_requeues_a_preempted_run_and_not_a_finished_one(token_data, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("scontrol", FAKE_SCONTROL), ("srun", FAKE_SRUN), ("deepspeed", FAKE_DEEPSPEED)):
        p = bin_dir / name
        p.write_text(textwrap.dedent(body))
        p.chmod(p.stat().st_mode | stat.S_IEXEC)
    run, log = tmp_path / "run", tmp_path / "scontrol.log"
    e = env()
    e.update(PATH=f"{bin_dir}:{e['PATH']}", SLURM_SUBMIT_DIR=str(REPO), SLURM_JOB_ID="4242",
             SLURM_JOB_NODELIST="node1", SLURM_GPUS_ON_NODE="1", FAKE_LOG=str(log), FAKE_RUN_DIR=str(run))
    args = ["bash", str(REPO / "launcher/slurm/pretrain.sbatch"), "--run-dir", str(run), f"data.prefix={token_data}",
            *SMALL, "train.max_steps=400"]

    r = subprocess.run(args, cwd=tmp_path, env={**e, "FAKE_PREEMPT": "1"}, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert log.read_text().split() == ["requeue", "4242"], "a preempted run requeues its job"
    assert (run / "checkpoints" / "latest").is_file() and not (run / "summary.json").exists()

    log.unlink()
    r = subprocess.run([*args[:-1], "train.max_steps=" + str(int(max(train_losses(run))) + 2)], cwd=tmp_path, env=e,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "resumed from" in r.stdout
    assert not log.exists(), "a finished run is not requeued"

    r = subprocess.run(args[:2] + [f"data.prefix={token_data}"], cwd=tmp_path, env=e, capture_output=True, text=True)
    assert r.returncode == 2 and "--run-dir" in r.stderr


@pytest.mark.slow
def test_pretrain_script_runs_from_another_folder(token_data, tmp_path):
    """The launcher finds configs/ and ds_configs/ beside itself, wherever it is started from."""
    r = subprocess.run([sys.executable, str(PRETRAIN), "--run-dir", str(tmp_path / "run"), f"data.prefix={token_data}",
                        *SMALL, "train.max_steps=1"], cwd=tmp_path,
                       env={k: v for k, v in env().items() if k != "LLMTRAIN_HOME"},
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert os.path.isfile(tmp_path / "run" / "summary.json")
