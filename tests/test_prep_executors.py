"""The executors of data prep give the same bytes: every task of every cleaning stage and every
tokenising task on a real local Ray cluster (2 CPUs, started once for this module) write what
one process (cleaning) or the same tasks run one by one (tokenising) write; all the tasks of a
stage run at once through local processes do too; the command line starts its own Ray cluster
when it is given no address."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import ray
from test_clean import english, make_corpus, read_output

from llmtrain_prep import clean
from llmtrain_prep.cleaning.config import load_config
from llmtrain_prep.cleaning.pipeline import expand, run_every_task
from llmtrain_prep.executors import LocalExecutor, RayExecutor
from llmtrain_prep.tokens import merge_manifests, tokenize_corpus, tokenize_every_task
from llmtrain_prep.train_tokenizer import train_tokenizer

REPO = Path(__file__).resolve().parent.parent
VOLATILE = {"seconds", "created", "elapsed_s", "timing", "command", "prefix"}


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=100 * 2**20)
    yield
    ray.shutdown()


def _json(path: Path):
    def drop(o):
        if isinstance(o, dict):
            return {k: drop(v) for k, v in o.items() if k not in VOLATILE}
        if isinstance(o, list):
            return [drop(v) for v in o]
        return o

    return drop(json.loads(path.read_text()))


def same_files(a: Path, b: Path, pattern: str = "*") -> int:
    """Every file matching ``pattern`` under ``a`` is under ``b`` with the same bytes (JSON: the
    same content but for times, commands and the output prefix); returns how many."""
    names = sorted(p.relative_to(a) for p in a.rglob(pattern) if p.is_file())
    assert names == sorted(p.relative_to(b) for p in b.rglob(pattern) if p.is_file())
    for n in names:
        if n.suffix in (".json", ".done"):
            assert _json(a / n) == _json(b / n), n
        else:
            assert (a / n).read_bytes() == (b / n).read_bytes(), n
    return len(names)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    src = tmp_path_factory.mktemp("corpus") / "in"
    return str(src), make_corpus(str(src), random.Random(7))


def _clean_one_process(src: str, out: Path) -> None:
    assert clean.main([src, "--output", str(out), "--workers", "1", "--quiet"]) == 0


@pytest.mark.slow
def test_clean_on_ray_equals_one_process(ray_cluster, corpus, tmp_path):
    src, expected = corpus
    one, on_ray = tmp_path / "one", tmp_path / "ray"
    _clean_one_process(src, one)
    assert clean.main([src, "--output", str(on_ray), "--executor", "ray", "--num-tasks", "3", "--quiet"]) == 0
    assert {d["id"] for d in read_output(str(on_ray))} == expected
    n = sum(same_files(one / sub, on_ray / sub) for sub in ("data", "removed", "work/filter", "work/clusters",
                                                            "work/final"))
    assert n > 40
    assert same_files(one, on_ray, "stats.json") == 1
    assert len(list((on_ray / "work" / "buckets").glob("part-*-of-00003.done"))) == 3  # three key ranges
    # a rerun on Ray finds every unit done and writes the same report
    assert clean.main([src, "--output", str(on_ray), "--executor", "ray", "--num-tasks", "3", "--quiet"]) == 0
    assert same_files(one, on_ray, "stats.json") == 1


@pytest.mark.slow
def test_every_task_at_once_through_local_processes(corpus, tmp_path):
    """What Ray does, through the local executor: each stage's 3 tasks at once, 2 processes."""
    src, _ = corpus
    one, three = tmp_path / "one", tmp_path / "three"
    _clean_one_process(src, one)
    cfg = load_config(None)
    res = run_every_task(["filter", "buckets", "clusters", "write"], str(three), cfg, LocalExecutor(2), expand([src]),
                         parts=3)
    assert res["buckets"].processed == 3 and res["write"].finished["documents_out"] > 0
    assert same_files(one / "data", three / "data") == 5


@pytest.fixture(scope="module")
def tok_inputs(tmp_path_factory):
    """Four JSONL files of generated English and a tokenizer trained on them; and prompt/response pairs."""
    root = tmp_path_factory.mktemp("tok")
    rng = random.Random(3)
    docs = [{"id": f"d{i}", "text": english(rng, 2, 3)} for i in range(120)]
    for k in range(4):
        (root / "in").mkdir(exist_ok=True)
        (root / "in" / f"p{k}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs[k::4]))
    tok = train_tokenizer([root / "in"], 400, str(root / "tok.json"), quiet=True)
    with open(root / "pairs.jsonl", "w") as fh:
        for d in docs[:60]:
            fh.write(json.dumps({"id": d["id"], "prompt": d["text"][:80], "response": d["text"][80:160]}) + "\n")
    return root, tok


@pytest.mark.slow
def test_tokenize_on_ray_equals_the_same_tasks_one_by_one(ray_cluster, tok_inputs, tmp_path):
    root, tok = tok_inputs
    kw = dict(valid_fraction=0.2, max_shard_tokens=2000, quiet=True)
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    for i in range(3):
        tokenize_corpus([root / "in"], tok, str(local / "c"), task_index=i, num_tasks=3, **kw)
    merge_manifests(str(local / "c"), quiet=True)
    m = tokenize_every_task([root / "in"], tok, str(on_ray / "c"), RayExecutor(), 3, **kw)
    assert m["merged_from"]["num_tasks"] == 3 and m["documents"] == 120
    assert same_files(local, on_ray, "*.bin") > 6 and same_files(local, on_ray, "*.idx") > 6
    assert same_files(local, on_ray, "*.json") == 4
    # one task on Ray writes what one process writes, prompt/response with its loss mask too
    one = tokenize_corpus([root / "pairs.jsonl"], tok, str(tmp_path / "one" / "p"), format="prompt-response", **kw)
    got = tokenize_every_task([root / "pairs.jsonl"], tok, str(tmp_path / "ray1" / "p"), RayExecutor(), 1,
                              format="prompt-response", **kw)
    assert got["loss_mask"] == one["loss_mask"] and len(list((tmp_path / "one").glob("p_*_mask.bin"))) > 2
    assert same_files(tmp_path / "one", tmp_path / "ray1") > 8


@pytest.mark.slow
def test_cli_starts_its_own_ray_cluster(tok_inputs, tmp_path):
    """No address: tokenize_corpus.py --executor ray starts a local cluster, runs both tasks and
    merges; the shards are those of the tasks run one by one. --task-index is refused."""
    root, tok = tok_inputs
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_ARRAY", "RAY_ADDRESS"))}
    args = ["--input", root / "in", "--tokenizer", tok, "--valid-fraction", "0.2", "--quiet"]
    r = subprocess.run([sys.executable, REPO / "data_prep" / "tokenize_corpus.py", *args, "--output-prefix",
                        tmp_path / "ray" / "c", "--executor", "ray", "--workers", "2", "--num-tasks", "2"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    for i in range(2):
        tokenize_corpus([root / "in"], tok, str(tmp_path / "local" / "c"), task_index=i, num_tasks=2,
                        valid_fraction=0.2, quiet=True)
    assert same_files(tmp_path / "local", tmp_path / "ray", "*.bin") == 4
    assert (tmp_path / "ray" / "c_manifest.json").is_file()
    r = subprocess.run([sys.executable, REPO / "data_prep" / "tokenize_corpus.py", *args, "--output-prefix",
                        tmp_path / "x" / "c", "--executor", "ray", "--task-index", "1", "--num-tasks", "2"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2
    assert r.stderr.strip() == "error: --executor ray runs every task itself; leave out --task-index"
