"""Helpers for the tests that run the project's Slurm scripts under a real Slurm: a one-node
cluster on this machine (tests/slurm/start_slurm.sh, started once per session), sbatch as a
user types it, and reading a job's state from scontrol."""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from trainutil import REPO, env, wait_for  # noqa: F401  (wait_for: re-exported for the Slurm tests)

START_SLURM = REPO / "tests" / "slurm" / "start_slurm.sh"
SBATCH_SCRIPT = REPO / "launcher" / "slurm" / "pretrain.sbatch"
# This machine has no GPUs: the job asks for none and says how many ranks a node runs, as the
# README tells CPU users to.
CPU_JOB = ["--nodes=1", "--gpus-per-node=0", "--cpus-per-task=2"]


@pytest.fixture(scope="session")
def slurm() -> dict:
    """The environment for sbatch/srun/scontrol against the test cluster (started if needed).
    Fails, never skips, when Slurm cannot start, with the reason."""
    r = subprocess.run(["bash", str(START_SLURM)], capture_output=True, text=True, timeout=180)
    if r.returncode != 0:
        pytest.fail(f"the test Slurm did not start ({START_SLURM}): {(r.stderr or r.stdout).strip()}")
    conf = r.stdout.strip().splitlines()[-1].split("=", 1)[1]
    e = env()
    # the jobs run the python of this test session (sbatch passes the environment on)
    e.update(SLURM_CONF=conf, DS_ACCELERATOR="cpu", PATH=f"{Path(sys.executable).parent}:{e['PATH']}")
    return e


def sbatch(e: dict, options: list, script: Path, args: list, ranks: int = 2, extra_env: str = "") -> str:
    """Submit ``script args`` with ``sbatch options`` (from the project's folder, as the README
    says); the job id."""
    export = f"--export=ALL,SLURM_GPUS_ON_NODE={ranks}" + (f",{extra_env}" if extra_env else "")
    cmd = ["sbatch", "--parsable", *CPU_JOB, export, *map(str, options), str(script), *map(str, args)]
    r = subprocess.run(cmd, cwd=REPO, env=e, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"{shlex.join(cmd)}: {r.stderr}"
    return r.stdout.strip().split(";")[0]


def job(e: dict, job_id: str) -> dict:
    """scontrol show job's fields (JobState, Restarts, ExitCode, ...)."""
    r = subprocess.run(["scontrol", "show", "job", "-o", job_id], env=e, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    fields = {}
    for tok in r.stdout.split():
        if "=" in tok:
            k, v = tok.split("=", 1)
            fields.setdefault(k, v)
    return fields


def scontrol(e: dict, *args: str) -> None:
    r = subprocess.run(["scontrol", *args], env=e, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


def scancel(e: dict, job_id: str) -> None:
    """End the job now (at a test's end): SIGKILL to every process, then cancel."""
    subprocess.run(["scancel", "--full", "--signal=KILL", job_id], env=e, capture_output=True, text=True, timeout=30)
    subprocess.run(["scancel", job_id], env=e, capture_output=True, text=True, timeout=30)


def preempt(e: dict, job_id: str) -> None:
    """SIGTERM to the batch shell only: what Slurm sends before the time limit (--signal=B:TERM@N)
    or on preemption."""
    r = subprocess.run(["scancel", "--signal=TERM", "--batch", job_id], env=e, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr


def attempts(run: Path) -> list[str]:
    """RUN/slurm_requeue.log: one line per attempt of the job."""
    try:
        return (run / "slurm_requeue.log").read_text().splitlines()
    except FileNotFoundError:
        return []


def last_step(run: Path) -> int:
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [json.loads(ln).get("step", 0) for ln in lines if ln.strip().endswith("}")]
    return max(steps, default=0)


def saved_step(run: Path) -> int:
    try:
        return int((run / "checkpoints" / "latest").read_text().strip().replace("global_step", ""))
    except (FileNotFoundError, ValueError):
        return 0


def output(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""
