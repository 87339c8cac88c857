"""A regular (non-editable) install: the launcher runs the default job from the repository
with the installed package, writes nothing into site-packages, and its run records are
readable by the team (0644)."""
from __future__ import annotations

import pytest
import json
import os
import site
import stat
import subprocess
import sys
import sysconfig

from trainutil import REPO, env


def snapshot(folder):
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def venv_over_this_environment(venv):
    """A new virtual environment that also sees the packages of the one running the tests (torch,
    deepspeed, ...), whether that is a venv or the system interpreter: ``--system-site-packages``
    alone would give a venv's base interpreter instead. The running environment's folders come
    after the new venv's own, so what is installed into the new venv wins."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    outer = [p for p in dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib"),
                                       *site.getsitepackages()]) if p and os.path.isdir(p)]
    site_dir = next(venv.glob("lib/python*/site-packages"))
    (site_dir / "zz_outer_environment.pth").write_text(
        "import site; " + "; ".join(f"site.addsitedir({p!r})" for p in outer) + "\n")
    return venv / "bin" / "python", site_dir


@pytest.mark.slow
def test_regular_install_runs_the_default_job_and_leaves_site_packages_alone(tmp_path):
    venv = tmp_path / "venv"
    py, site_dir = venv_over_this_environment(venv)
    r = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--quiet", str(REPO)],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    where = subprocess.run([str(py), "-c", "import llmtrain, llmtrain_prep; print(llmtrain.__file__); "
                                           "print(llmtrain_prep.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path).stdout.split()
    assert len(where) == 2 and all(w.startswith(str(site_dir)) for w in where), where
    # the data tools install under the project's name, not the generic name of their folder
    assert not (site_dir / "data_prep").exists()
    before = snapshot(site_dir)

    e = {**env(), "LLMTRAIN_CACHE": str(tmp_path / "cache")}
    e.pop("PYTHONPATH", None)
    e.pop("LLMTRAIN_HOME", None)  # the launcher finds configs/ and the corpus beside itself
    run = tmp_path / "run"
    r = subprocess.run([str(py), "launcher/pretrain.py", "--run-dir", str(run), "train.max_steps=2",
                        "model.n_layer=1", "model.d_model=32", "model.n_head=2", "model.seq_len=32",
                        "train.global_batch_size=2", "train.eval_batches=1", "data.sample_vocab_size=512"],
                       cwd=REPO, env=e, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert snapshot(site_dir) == before, "the run wrote into site-packages"
    assert any((tmp_path / "cache").glob("sample_v512_valid0.02_*/sample_manifest.json"))
    for f in ("summary.json", "config.yaml", "env.json", "metrics.jsonl"):
        mode = stat.S_IMODE(os.stat(run / f).st_mode)
        assert mode & 0o044 == 0o044, (f, oct(mode))
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
