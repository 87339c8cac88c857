"""A regular (non-editable) install: the launcher runs the default job from the repository
with the installed package, writes nothing into site-packages, and its run records are
readable by the team (0644)."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

from trainutil import REPO, env


def snapshot(folder):
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_regular_install_runs_the_default_job_and_leaves_site_packages_alone(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py = venv / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--quiet", str(REPO)],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    where = subprocess.run([str(py), "-c", "import llmtrain, data_prep; print(llmtrain.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path).stdout.strip()
    site = next(venv.glob("lib/python*/site-packages"))
    assert where.startswith(str(site)), where
    before = snapshot(site)

    e = {**env(), "LLMTRAIN_CACHE": str(tmp_path / "cache")}
    e.pop("PYTHONPATH", None)
    e.pop("LLMTRAIN_HOME", None)  # the launcher finds configs/ and the corpus beside itself
    run = tmp_path / "run"
    r = subprocess.run([str(py), "launcher/pretrain.py", "--run-dir", str(run), "train.max_steps=2",
                        "model.n_layer=1", "model.d_model=32", "model.n_head=2", "model.seq_len=32",
                        "train.global_batch_size=2", "train.eval_batches=1", "data.sample_vocab_size=512"],
                       cwd=REPO, env=e, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert snapshot(site) == before, "the run wrote into site-packages"
    assert any((tmp_path / "cache").glob("sample_v512_valid0.02_*/sample_manifest.json"))
    for f in ("summary.json", "config.yaml", "env.json", "metrics.jsonl"):
        mode = stat.S_IMODE(os.stat(run / f).st_mode)
        assert mode & 0o044 == 0o044, (f, oct(mode))
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
