"""Tokenising at scale, with real files: bounded shards (every document exactly once, each
shard readable by us and by megatron-core, manifest counts that add up), the per-task file
partition, merging task manifests, skipping finished tasks and never skipping half-written
ones, and the uint16/int32 boundary at a vocabulary of 65,536 end to end."""
import gzip
import itertools
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import zstandard

from llmtrain_prep.merge_manifests import merge_manifests
from llmtrain_prep.readers import InputError, expand_inputs
from llmtrain_prep.tokenize_corpus import task_prefix, tokenize_corpus
from llmtrain_prep.train_tokenizer import train_tokenizer
from llmtrain.data.indexed import IndexedDataset
from llmtrain.data.manifest import manifest_file
from llmtrain.tokenizer import EOD_TOKEN
from llmtrain.core.tasks import partition

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "sample" / "corpus.jsonl.gz"
N_DOCS = 150


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """150 sample documents (each cut to 1,500 characters) in 7 files of three formats."""
    root = tmp_path_factory.mktemp("corpus")
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as fh:
        docs = [json.loads(line) for line in itertools.islice(fh, N_DOCS)]
    docs = [{"id": d["id"], "text": d["text"][:1500]} for d in docs]
    for k in range(7):
        part = docs[k::7]
        body = "".join(json.dumps(d) + "\n" for d in part)
        if k % 3 == 0:
            (root / f"p{k}.jsonl").write_text(body, encoding="utf-8")
        elif k % 3 == 1:
            with gzip.open(root / f"p{k}.jsonl.gz", "wt", encoding="utf-8") as fh:
                fh.write(body)
        else:
            (root / f"p{k}.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(body.encode()))
    return root, docs


@pytest.fixture(scope="module")
def tokenizer(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    return train_tokenizer([corpus[0]], 400, str(out), quiet=True)


@pytest.fixture(scope="module")
def single(corpus, tokenizer, tmp_path_factory):
    """The reference: the whole corpus in one file per split."""
    prefix = str(tmp_path_factory.mktemp("single") / "ref")
    return prefix, tokenize_corpus([corpus[0]], tokenizer, prefix, valid_fraction=0.15, workers=1, quiet=True)


def shard_docs(manifest_file, split):
    """Every document of a split, reading the shards the manifest lists, in order; and the
    per-shard datasets."""
    m = json.loads(Path(manifest_file).read_text())
    folder = Path(manifest_file).parent
    out, datasets = [], []
    for sh in m["splits"][split]["shards"]:
        assert not os.path.isabs(sh["prefix"])  # relative to the manifest's folder
        ds = IndexedDataset(folder / sh["prefix"])
        assert len(ds) == sh["documents"] and ds.num_tokens == sh["tokens"]
        datasets.append(ds)
        out += [ds[i].tolist() for i in range(len(ds))]
    return out, datasets


def check_counts(m):
    for split in m["splits"].values():
        assert sum(s["documents"] for s in split["shards"]) == split["documents"]
        assert sum(s["tokens"] for s in split["shards"]) == split["tokens"]
    assert sum(s["documents"] for s in m["splits"].values()) == m["documents"]
    assert sum(s["tokens"] for s in m["splits"].values()) == m["tokens"]


def test_single_file_manifest_lists_one_shard(single):
    prefix, m = single
    check_counts(m)
    assert m["documents"] == N_DOCS and m["format_version"] == 2
    for split in ("train", "valid"):
        assert m["splits"][split]["shards"] == [{"prefix": f"ref_{split}", "documents": m["splits"][split]["documents"],
                                                "tokens": m["splits"][split]["tokens"]}]
        assert m["splits"][split]["prefix"] == f"{prefix}_{split}"  # the format-1 key, kept for one file
    assert not list(Path(prefix).parent.glob("ref_*_0*"))


def test_small_shards_hold_every_document_once(single, corpus, tokenizer, tmp_path):
    ref_prefix, ref = single
    max_tokens = 2500
    m = tokenize_corpus([corpus[0]], tokenizer, str(tmp_path / "sh"), valid_fraction=0.15, workers=1,
                        max_shard_tokens=max_tokens, quiet=True)
    check_counts(m)
    assert m["options"]["max_shard_tokens"] == max_tokens
    train = m["splits"]["train"]["shards"]
    assert len(train) >= 5 and [s["prefix"] for s in train] == [f"sh_train_{i:05d}" for i in range(len(train))]
    assert not (tmp_path / "sh_train.bin").exists() and not (tmp_path / "sh_train.idx").exists()
    assert not list(tmp_path.glob("*.tmp*"))  # no staging file left
    import megatron.core.datasets.indexed_dataset as mid
    for split in ("train", "valid"):
        docs, datasets = shard_docs(tmp_path / "sh_manifest.json", split)
        for ds in datasets:
            # bounded: only a shard of one document may exceed the limit
            assert ds.num_tokens <= max_tokens or len(ds) == 1
            theirs = mid.IndexedDataset(ds.prefix)
            assert len(theirs) == len(ds)
            for i in range(len(ds)):
                np.testing.assert_array_equal(theirs[i], ds[i])
        # the same documents, in the same order, as the one-file run: each exactly once
        ref_ds = IndexedDataset(f"{ref_prefix}_{split}")
        assert docs == [ref_ds[i].tolist() for i in range(len(ref_ds))]
        assert m["splits"][split]["tokens"] == ref["splits"][split]["tokens"]


@pytest.mark.slow
def test_resharding_replaces_the_old_layout(corpus, tokenizer, tmp_path):
    prefix = str(tmp_path / "r")
    small = tokenize_corpus([corpus[0]], tokenizer, prefix, valid_fraction=0.0, max_shard_tokens=3000, quiet=True)
    n = len(small["splits"]["train"]["shards"])
    names = sorted(p.name for p in tmp_path.glob("r_train_*.idx"))
    assert n > 2 and names == [f"r_train_{i:05d}.idx" for i in range(n)]
    big = tokenize_corpus([corpus[0]], tokenizer, prefix, valid_fraction=0.0, quiet=True)
    assert len(big["splits"]["train"]["shards"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r_manifest.json", "r_train.bin", "r_train.idx"]
    tokenize_corpus([corpus[0]], tokenizer, prefix, valid_fraction=0.0, max_shard_tokens=3000, quiet=True)
    assert not (tmp_path / "r_train.idx").exists() and len(list(tmp_path.glob("r_train_*.bin"))) == n


def test_task_partition_covers_each_file_once(corpus):
    files = expand_inputs([corpus[0]])
    assert len(files) == 7
    for n in (1, 2, 3, 7, 10):
        parts = [partition(files, i, n) for i in range(n)]
        assert Counter(f for p in parts for f in p) == Counter(files)  # every file, exactly once
    with pytest.raises(ValueError, match="outside"):
        partition(files, 3, 3)


def test_tasks_then_merge_equal_one_run(single, corpus, tokenizer, tmp_path):
    _, ref = single
    prefix = str(tmp_path / "out" / "corpus")
    n = 3
    for i in range(n):
        m = tokenize_corpus([corpus[0]], tokenizer, prefix, valid_fraction=0.15, workers=1, max_shard_tokens=4000,
                            task_index=i, num_tasks=n, quiet=True)
        assert m["task"]["index"] == i and m["task"]["count"] == n and m["prefix"] == task_prefix(prefix, i)
        assert Path(f"{prefix}.task-{i:05d}_manifest.json").is_file()
    assert not Path(f"{prefix}_manifest.json").exists()  # a task never writes the dataset's manifest
    merged = merge_manifests(prefix, quiet=True)
    assert json.loads(manifest_file(prefix).read_text()) == merged
    check_counts(merged)
    assert merged["merged_from"]["num_tasks"] == n and len(merged["inputs"]) == 7
    assert sorted(i["path"] for i in merged["inputs"]) == [os.path.abspath(f) for f in expand_inputs([corpus[0]])]
    for split in ("train", "valid"):
        assert merged["splits"][split]["documents"] == ref["splits"][split]["documents"]
        assert merged["splits"][split]["tokens"] == ref["splits"][split]["tokens"]
        assert all(s["prefix"].startswith("corpus.task-") for s in merged["splits"][split]["shards"])
        got, _ = shard_docs(f"{prefix}_manifest.json", split)
        ref_ds = IndexedDataset(f"{single[0]}_{split}")
        # the same documents in the same split (the split is by hash, not by task), other order
        assert Counter(map(tuple, got)) == Counter(tuple(ref_ds[i].tolist()) for i in range(len(ref_ds)))


def test_merge_names_missing_and_mismatched_tasks(corpus, tokenizer, tmp_path):
    prefix = str(tmp_path / "c")
    with pytest.raises(InputError, match="no finished task"):
        merge_manifests(prefix)
    for i in (0, 2):
        tokenize_corpus([corpus[0]], tokenizer, prefix, valid_fraction=0.1, task_index=i, num_tasks=4, quiet=True)
    with pytest.raises(InputError, match=r"2 of 4 tasks not finished \(task 1, 3"):
        merge_manifests(prefix)
    tokenize_corpus([corpus[0]], tokenizer, prefix, valid_fraction=0.1, seed=5, task_index=1, num_tasks=4, quiet=True)
    tokenize_corpus([corpus[0]], tokenizer, prefix, valid_fraction=0.1, task_index=3, num_tasks=4, quiet=True)
    with pytest.raises(InputError, match=r"task-00001_manifest.json: options.seed differs"):
        merge_manifests(prefix)
    tokenize_corpus([corpus[0]], tokenizer, prefix, valid_fraction=0.1, task_index=1, num_tasks=4, quiet=True,
                    overwrite=True)
    with pytest.raises(InputError, match="--num-tasks 3"):
        merge_manifests(prefix, num_tasks=3)
    assert merge_manifests(prefix, num_tasks=4, quiet=True)["documents"] == N_DOCS
    assert not list(tmp_path.glob("*.tmp*"))


def test_finished_task_is_skipped(corpus, tokenizer, tmp_path, capsys):
    prefix = str(tmp_path / "s")
    first = tokenize_corpus([corpus[0]], tokenizer, prefix, task_index=1, num_tasks=2, quiet=True)
    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    again = tokenize_corpus([corpus[0]], tokenizer, prefix, task_index=1, num_tasks=2)
    assert again == first
    assert "already finished" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == stamps  # nothing rewritten
    # The same task asked with other options: an error, not a silent mix; --overwrite redoes it.
    with pytest.raises(InputError, match="another --seed than this run; pass --overwrite"):
        tokenize_corpus([corpus[0]], tokenizer, prefix, seed=3, task_index=1, num_tasks=2, quiet=True)
    # A merged manifest survives a skipped rerun, but not a task that replaces its shards.
    tokenize_corpus([corpus[0]], tokenizer, prefix, task_index=0, num_tasks=2, quiet=True)
    merge_manifests(prefix, quiet=True)
    tokenize_corpus([corpus[0]], tokenizer, prefix, task_index=0, num_tasks=2, quiet=True)
    assert Path(f"{prefix}_manifest.json").exists()
    redone = tokenize_corpus([corpus[0]], tokenizer, prefix, seed=3, task_index=1, num_tasks=2, quiet=True,
                             overwrite=True)
    assert redone["options"]["seed"] == 3 and redone["documents"] == first["documents"]
    assert not Path(f"{prefix}_manifest.json").exists()


@pytest.mark.slow
def test_worker_processes_write_the_same_shards(corpus, tokenizer, tmp_path):
    kw = dict(valid_fraction=0.15, max_shard_tokens=6000, quiet=True)
    one = tokenize_corpus([corpus[0]], tokenizer, str(tmp_path / "one"), workers=1, **kw)
    two = tokenize_corpus([corpus[0]], tokenizer, str(tmp_path / "two"), workers=2, **kw)
    assert len(one["splits"]["train"]["shards"]) > 1
    for split in ("train", "valid"):
        for a, b in zip(one["splits"][split]["shards"], two["splits"][split]["shards"], strict=True):
            assert (a["documents"], a["tokens"]) == (b["documents"], b["tokens"])
            for ext in ("bin", "idx"):
                got = (tmp_path / f"{b['prefix']}.{ext}").read_bytes()
                assert (tmp_path / f"{a['prefix']}.{ext}").read_bytes() == got


def test_half_written_task_never_looks_finished(corpus, tokenizer, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for f in sorted(corpus[0].iterdir())[:4]:
        (inputs / f.name).write_bytes(f.read_bytes())
    # Task 1 of 2 owns files 1 and 3 of the sorted list; break file 3 at its last line.
    mine = partition(expand_inputs([inputs]), 1, 2)
    bad = Path(mine[-1])
    good_bytes = bad.read_bytes()
    if bad.name.endswith(".jsonl"):
        bad.write_text(bad.read_text() + "{broken\n")
    else:  # a truncated compressed file
        bad.write_bytes(good_bytes[: len(good_bytes) // 2])
    out = tmp_path / "out"
    prefix = str(out / "h")
    tokenize_corpus([inputs], tokenizer, prefix, task_index=0, num_tasks=2, max_shard_tokens=2000, quiet=True)
    with pytest.raises(InputError, match=bad.name):
        tokenize_corpus([inputs], tokenizer, prefix, task_index=1, num_tasks=2, max_shard_tokens=2000, quiet=True)
    assert not list(out.glob("h.task-00001*"))  # no manifest, no shard, no staging file of the failed task
    with pytest.raises(InputError, match=r"1 of 2 tasks not finished \(task 1"):
        merge_manifests(prefix)
    # A task killed after its shards but before its manifest (or with a shard since lost) is redone.
    bad.write_bytes(good_bytes)
    m1 = tokenize_corpus([inputs], tokenizer, prefix, task_index=1, num_tasks=2, max_shard_tokens=2000, quiet=True)
    Path(f"{prefix}.task-00001_manifest.json").unlink()
    stale_bin = out / f"{m1['splits']['train']['shards'][0]['prefix']}.bin"
    stale_bin.write_bytes(b"")  # what a kill mid-rename could leave
    m1b = tokenize_corpus([inputs], tokenizer, prefix, task_index=1, num_tasks=2, max_shard_tokens=2000, quiet=True)
    assert stale_bin.stat().st_size == m1b["splits"]["train"]["shards"][0]["tokens"] * 2
    (out / f"{m1b['splits']['train']['shards'][-1]['prefix']}.idx").unlink()
    m1c = tokenize_corpus([inputs], tokenizer, prefix, task_index=1, num_tasks=2, max_shard_tokens=2000, quiet=True)
    assert m1c["created"] >= m1b["created"] and (out / f"{m1c['splits']['train']['shards'][-1]['prefix']}.idx").exists()
    assert merge_manifests(prefix, quiet=True)["documents"] == sum(len(docs) for docs in _docs_per_file(inputs))


def _docs_per_file(folder):
    from llmtrain_prep.readers import iter_documents

    return [list(iter_documents(f)) for f in expand_inputs([folder])]


def wordlevel_tokenizer(path, vocab_size):
    """A tokenizer of exactly vocab_size tokens (w1 ... w{n-1} and <|endoftext|> = 0)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {EOD_TOKEN: 0, **{f"w{i}": i for i in range(1, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=EOD_TOKEN))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([EOD_TOKEN])
    tok.save(str(path))
    assert Tokenizer.from_file(str(path)).get_vocab_size() == vocab_size


@pytest.mark.parametrize("vocab,dtype", [(65536, np.uint16), (65537, np.int32)])
def test_dtype_boundary_end_to_end(vocab, dtype, tmp_path):
    tok = tmp_path / "tok.json"
    wordlevel_tokenizer(tok, vocab)
    top = vocab - 1  # the largest id must survive the round trip
    (tmp_path / "d.jsonl").write_text(json.dumps({"id": "a", "text": f"w{top} w1 w{top - 1}"}) + "\n"
                                      + json.dumps({"id": "b", "text": "w65535 w2"}) + "\n")
    m = tokenize_corpus([tmp_path / "d.jsonl"], str(tok), str(tmp_path / "o"), valid_fraction=0.0, quiet=True)
    assert m["dtype"] == np.dtype(dtype).name and m["vocab_size"] == vocab
    ds = IndexedDataset(tmp_path / "o_train")
    assert ds.dtype == dtype
    assert [ds[i].tolist() for i in range(len(ds))] == [[top, 1, top - 1, 0], [65535, 2, 0]]


def run_script(script, *args, env=None):
    e = {**os.environ, **(env or {})}
    for k in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN"):
        if env is None or k not in env:
            e.pop(k, None)
    return subprocess.run([sys.executable, str(REPO / "data_prep" / script), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env=e)


@pytest.mark.slow
def test_cli_slurm_array_merge_and_blend(single, corpus, tokenizer, tmp_path):
    prefix = tmp_path / "cli"
    for tid in (1, 2):  # an array --array=1-2: SLURM_ARRAY_TASK_MIN=1
        r = run_script("tokenize_corpus.py", "--input", corpus[0], "--tokenizer", tokenizer, "--output-prefix", prefix,
                       "--max-shard-tokens", "5e3", "--valid-fraction", 0.15,
                       env={"SLURM_ARRAY_TASK_ID": str(tid), "SLURM_ARRAY_TASK_COUNT": "2",
                            "SLURM_ARRAY_TASK_MIN": "1"})
        assert r.returncode == 0, r.stderr
        assert f"task {tid - 1}/2" in r.stdout and Path(f"{prefix}.task-{tid - 1:05d}_manifest.json").is_file()
    r = run_script("tokenize_corpus.py", "--output-prefix", prefix, "--merge", "--num-tasks", 5)
    assert r.returncode == 2 and r.stderr.startswith("error: --num-tasks 5") and len(r.stderr.splitlines()) == 1
    r = run_script("tokenize_corpus.py", "--output-prefix", prefix, "--merge")
    assert r.returncode == 0, r.stderr
    m = json.loads(manifest_file(prefix).read_text())
    assert m["documents"] == N_DOCS and m["tokens"] == single[1]["tokens"]
    r = run_script("merge_manifests.py", "--blend", prefix, single[0])
    assert r.returncode == 0, r.stderr
    w = r.stdout.split()
    assert w[1] == str(prefix) and w[3] == single[0] and abs(float(w[0]) - 0.5) < 1e-5 and abs(float(w[2]) - 0.5) < 1e-5
    r = run_script("tokenize_corpus.py", "--input", corpus[0], "--tokenizer", tokenizer, "--output-prefix", prefix,
                   "--task-index", 2, "--num-tasks", 2)
    assert r.returncode == 2 and "outside [0, --num-tasks 2)" in r.stderr and len(r.stderr.splitlines()) == 1
