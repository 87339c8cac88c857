"""Helpers for the training tests (imported by them): a small real token dataset made from the
bundled corpus with the project's own data_prep scripts, and helpers that launch training for
real (DeepSpeed on CPU with gloo)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmtrain.core.tasks import free_port  # noqa: F401  (re-exported for the tests)

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"

# A model small enough that a DeepSpeed launch is dominated by start-up, not training.
SMALL = [
    "model.n_layer=2", "model.d_model=64", "model.n_head=4", "model.seq_len=64",
    "train.global_batch_size=8", "train.warmup_steps=2", "train.eval_interval=0",
    "train.eval_batches=2", "train.log_interval=1", "train.lr=3e-3",
]


def env() -> dict:
    e = dict(os.environ)
    e.setdefault("DS_ACCELERATOR", "cpu")
    e["PYTHONUNBUFFERED"] = "1"
    return e


def run_python(args, timeout=600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], cwd=REPO, env=env(), capture_output=True, text=True,
                          timeout=timeout, **kw)


def deepspeed_cmd(nproc: int, *args, port: int | None = None) -> list[str]:
    return ["deepspeed", "--num_gpus", str(nproc), "--master_port", str(port or free_port()),
            str(REPO / "launcher" / "pretrain.py"), *map(str, args)]


def run_deepspeed(nproc: int, *args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(deepspeed_cmd(nproc, *args), cwd=REPO, env=env(), capture_output=True, text=True,
                          timeout=timeout)


def torchrun_cmd(nproc: int, *args, port: int | None = None) -> list[str]:
    """launcher/pretrain.py under torchrun: the same DeepSpeed run as under the deepspeed launcher
    (tests/test_launchers.py), started with less overhead."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
            str(port or free_port()), str(REPO / "launcher" / "pretrain.py"), *map(str, args)]


def run_torchrun(nproc: int, *args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(torchrun_cmd(nproc, *args), cwd=REPO, env=env(), capture_output=True, text=True,
                          timeout=timeout)


def rewind(run: Path, step: int) -> None:
    """The run folder as a run killed right after its checkpoint at ``step`` leaves it."""
    ckpts = run / "checkpoints"
    for d in ckpts.glob("global_step*"):
        if int(d.name.removeprefix("global_step")) > step:
            shutil.rmtree(d)
    (ckpts / "latest").write_text(f"global_step{step}")
    (run / "summary.json").unlink(missing_ok=True)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if ln.strip()]


def steps_logged(run: Path) -> int:
    """Records in RUN/metrics.jsonl so far (0 while the run has not written one)."""
    try:
        return len(read_metrics(run))
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def wait_for(pred, timeout: float, what: str, every: float = 0.5):
    """``pred()``'s first true value, polled every ``every`` seconds; fails naming ``what``
    after ``timeout`` seconds."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        got = pred()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def train_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if r.get("split") is None and r.get("loss") is not None}


@pytest.fixture(scope="session")
def token_data(tmp_path_factory) -> str:
    """PREFIX of a real dataset: a BPE tokenizer (vocab 512) trained on part of the bundled
    corpus by data_prep/train_tokenizer.py, and the corpus tokenised by tokenize_corpus.py."""
    out = tmp_path_factory.mktemp("tokens")
    tok = out / "tokenizer.json"
    r = run_python([REPO / "data_prep" / "train_tokenizer.py", "--input", SAMPLE, "--vocab-size", "512",
                    "--output", tok])
    assert r.returncode == 0, r.stderr
    r = run_python([REPO / "data_prep" / "tokenize_corpus.py", "--input", SAMPLE, "--tokenizer", tok,
                    "--output-prefix", out / "sample", "--valid-fraction", "0.05"])
    assert r.returncode == 0, r.stderr
    return str(out / "sample")


def assert_one_line_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    """The command failed with exit code 2 and exactly one 'error:' line containing needles."""
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]
