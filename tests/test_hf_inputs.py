"""Hugging Face `datasets` as inputs, with real data sets: a save_to_disk folder with columns
content/url and a Parquet file with a `body` column go through tokenizer training and
tokenising; a DatasetDict folder needs --hf-split when it has several splits; hf:NAME streams
through datasets.load_dataset(..., streaming=True), tested on a local folder laid out like
HuggingFaceFW/fineweb (a README whose YAML declares the config sample-10BT) since the Hub is
not reachable here; bad columns and data sets that cannot be opened are one-line errors before
anything is written."""
import gzip
import itertools
import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local data sets only; never wait for the network

import datasets  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

from llmtrain_prep.readers import (  # noqa: E402
    TOKENIZE_SUFFIXES,
    InputError,
    check_input,
    expand_inputs,
    iter_documents,
)
from llmtrain_prep.tokenize_corpus import is_valid_doc, split_key, tokenize_corpus  # noqa: E402
from llmtrain_prep.train_tokenizer import train_tokenizer  # noqa: E402
from llmtrain.data.indexed import IndexedDataset  # noqa: E402
from trainutil import REPO, assert_one_line_error, run_python  # noqa: E402

SAMPLE = REPO / "data" / "sample" / "corpus.jsonl.gz"
FINEWEB_README = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/*/*
- config_name: sample-10BT
  data_files:
  - split: train
    path: sample/10BT/*
---
# a two-file stand-in laid out like HuggingFaceFW/fineweb
"""


@pytest.fixture(scope="module")
def docs():
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in itertools.islice(fh, 60)]
    return [{"id": r["id"], "text": r["text"][:1000]} for r in rows]


@pytest.fixture(scope="module")
def data(docs, tmp_path_factory):
    """The same 60 documents as: a save_to_disk folder (content, url, n), a DatasetDict folder
    (train/test), a Parquet file (body, id), and a FineWeb-like folder for hf:."""
    root = tmp_path_factory.mktemp("hf")
    cols = {"content": [d["text"] for d in docs], "url": [f"https://x/{d['id']}" for d in docs],
            "n": list(range(len(docs)))}
    ds = datasets.Dataset.from_dict(cols)
    ds.save_to_disk(str(root / "corpus" / "saved"))  # inside a folder: found by expand_inputs
    datasets.DatasetDict({"train": ds.select(range(40)), "test": ds.select(range(40, 60))}).save_to_disk(
        str(root / "dict"))
    datasets.Dataset.from_dict({"body": cols["content"], "id": [d["id"] for d in docs]}).to_parquet(
        str(root / "body.parquet"))
    fw = root / "fineweb"
    (fw / "sample" / "10BT").mkdir(parents=True)
    (fw / "data" / "CC-MAIN-2024-10").mkdir(parents=True)
    part = datasets.Dataset.from_dict({"text": cols["content"], "id": [d["id"] for d in docs]})
    part.select(range(30)).to_parquet(str(fw / "sample" / "10BT" / "000_00000.parquet"))
    part.select(range(30, 60)).to_parquet(str(fw / "sample" / "10BT" / "001_00000.parquet"))
    part.select(range(5)).to_parquet(str(fw / "data" / "CC-MAIN-2024-10" / "000_00000.parquet"))
    (fw / "README.md").write_text(FINEWEB_README)
    return root


@pytest.fixture(scope="module")
def tokenizer(data, tmp_path_factory):
    """Trained on the save_to_disk folder's `content` column."""
    out = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    train_tokenizer([data / "corpus"], 400, str(out), quiet=True, reader={"text_key": "content"})
    return str(out)


def _texts(prefix, tok_path, split="train"):
    tok = Tokenizer.from_file(tok_path)
    ds = IndexedDataset(f"{prefix}_{split}")
    return [tok.decode(ds[i][:-1].tolist(), skip_special_tokens=False) for i in range(len(ds))]


def test_save_to_disk_folder_with_other_columns(data, docs, tokenizer, tmp_path):
    saved = data / "corpus" / "saved"
    assert expand_inputs([data / "corpus"]) == [str(saved)]  # one input, not its arrow files
    got = list(iter_documents(str(saved), text_key="content", id_key="url"))
    assert [d["text"] for d in got] == [d["text"] for d in docs]
    assert [d["id"] for d in got] == [f"https://x/{d['id']}" for d in docs]
    m = tokenize_corpus([data / "corpus"], tokenizer, str(tmp_path / "s"), valid_fraction=0.2, text_key="content",
                        id_key="url", quiet=True)
    assert m["options"]["text_key"] == "content" and m["options"]["id_key"] == "url"
    assert m["inputs"] == [{"path": str(saved), "bytes": m["inputs"][0]["bytes"], "documents": 60}]
    key = split_key(0)
    valid = [d["text"] for d in docs if is_valid_doc(f"https://x/{d['id']}", d["text"], 0.2, key)]
    assert _texts(tmp_path / "s", tokenizer, "valid") == valid  # the split hashes the --id-key column
    assert len(_texts(tmp_path / "s", tokenizer)) == 60 - len(valid)


def test_dataset_dict_split(data, docs):
    with pytest.raises(InputError, match=r"dict: has splits train, test; pick one with --hf-split"):
        check_input(str(data / "dict"), text_key="content")
    got = list(iter_documents(str(data / "dict"), text_key="content", hf_split="test"))
    assert [d["text"] for d in got] == [d["text"] for d in docs[40:]]
    with pytest.raises(InputError, match=r"no split 'valid' \(splits: train, test\)"):
        check_input(str(data / "dict"), text_key="content", hf_split="valid")


@pytest.mark.slow
def test_parquet_body_column_cli(data, docs, tmp_path):
    tok = tmp_path / "tok.json"
    r = run_python([REPO / "data_prep" / "train_tokenizer.py", "--input", data / "body.parquet", "--vocab-size", 300,
                    "--output", tok, "--text-key", "body", "--quiet"])
    assert r.returncode == 0, r.stderr
    r = run_python([REPO / "data_prep" / "tokenize_corpus.py", "--input", data / "body.parquet", "--tokenizer", tok,
                    "--output-prefix", tmp_path / "p", "--text-key", "body", "--valid-fraction", 0, "--quiet"])
    assert r.returncode == 0, r.stderr
    assert _texts(tmp_path / "p", str(tok)) == [d["text"] for d in docs]


def test_hf_streaming_fineweb_layout(data, docs, tokenizer, tmp_path):
    """hf:NAME with --hf-config: the code path of hf:HuggingFaceFW/fineweb --hf-config sample-10BT
    (load_dataset(NAME, CONFIG, split, streaming=True)), on a local folder with the same layout."""
    name = f"hf:{data / 'fineweb'}"
    got = list(iter_documents(name, hf_config="sample-10BT"))
    assert [d["text"] for d in got] == [d["text"] for d in docs] and [d["id"] for d in got] == [d["id"] for d in docs]
    assert expand_inputs([name, data / "body.parquet"], TOKENIZE_SUFFIXES) == [str(data / "body.parquet"), name]
    train_tokenizer([name], 300, str(tmp_path / "t.json"), quiet=True, reader={"hf_config": "sample-10BT"},
                    max_documents=10)  # a tokenizer on the first 10 streamed documents
    assert Tokenizer.from_file(str(tmp_path / "t.json")).get_vocab_size() <= 300
    tokenize_corpus([name], tokenizer, str(tmp_path / "fw"), hf_config="sample-10BT", hf_split="train",
                    valid_fraction=0.0, quiet=True)
    assert _texts(tmp_path / "fw", tokenizer) == [d["text"] for d in docs]
    m = json.loads((tmp_path / "fw_manifest.json").read_text())
    assert m["inputs"] == [{"path": name, "bytes": 0, "documents": 60}] and m["options"]["hf_config"] == "sample-10BT"


def test_tasks_share_datasets_inputs(data, docs, tokenizer, tmp_path):
    """With --num-tasks 3, every task reads its own part of an hf: stream (and of a save_to_disk
    folder); merged, the tasks hold exactly the documents of one run, in the same splits."""
    from collections import Counter

    from llmtrain_prep.merge_manifests import merge_manifests

    name = f"hf:{data / 'fineweb'}"
    kw = dict(hf_config="sample-10BT", valid_fraction=0.2, quiet=True)
    one = tokenize_corpus([name], tokenizer, str(tmp_path / "one"), **kw)
    for i in range(3):
        m = tokenize_corpus([name], tokenizer, str(tmp_path / "t"), task_index=i, num_tasks=3, **kw)
        assert 0 < m["documents"] < 60
    merged = merge_manifests(str(tmp_path / "t"), quiet=True)
    for split in ("train", "valid"):
        assert merged["splits"][split]["documents"] == one["splits"][split]["documents"]
        got = Counter(tuple(IndexedDataset(tmp_path / sh["prefix"])[i].tolist())
                      for sh in merged["splits"][split]["shards"]
                      for i in range(sh["documents"]))
        ref = IndexedDataset(tmp_path / f"one_{split}")
        assert got == Counter(tuple(ref[i].tolist()) for i in range(len(ref)))
    parts = [list(iter_documents(str(data / "corpus" / "saved"), text_key="content", hf_shard=(i, 3)))
             for i in range(3)]
    assert sorted(d["text"] for p in parts for d in p) == sorted(d["text"] for d in docs)


@pytest.mark.parametrize("case", ["missing_column", "non_text_column", "missing_id_column", "not_a_dataset",
                                  "unknown_config", "parquet_missing_column", "parquet_non_text_column"])
def test_bad_inputs_are_one_line_before_writing(case, data, tokenizer, tmp_path):
    saved = data / "corpus" / "saved"
    inputs, opts, needles = {
        "missing_column": ([saved], {}, [str(saved), "no column 'text'", "content, url, n", "--text-key"]),
        "non_text_column": ([saved], {"text_key": "n"}, [str(saved), "column 'n'", "not text", "--text-key"]),
        "missing_id_column": ([saved], {"text_key": "content", "id_key": "uid"}, ["no column 'uid'", "--id-key"]),
        "not_a_dataset": ([tmp_path / "broken"], {}, [str(tmp_path / "broken"), "cannot open", "save_to_disk"]),
        "unknown_config": ([f"hf:{data / 'fineweb'}"], {"hf_config": "sample-99BT"},
                           ["fineweb", "cannot open", "sample-99BT", "--hf-config"]),
        "parquet_missing_column": ([data / "body.parquet"], {}, ["body.parquet", "no column 'text'", "--text-key"]),
        "parquet_non_text_column": ([data / "body.parquet"], {"text_key": "id", "id_key": "body"},
                                    ["body.parquet", "column 'id'", "not text"]),
    }[case]
    if case == "parquet_non_text_column":  # a Parquet file whose 'id' column is a number
        datasets.Dataset.from_dict({"body": ["a b"], "id": [7]}).to_parquet(str(tmp_path / "body.parquet"))
        inputs, needles[0] = [tmp_path / "body.parquet"], str(tmp_path / "body.parquet")
    if case == "not_a_dataset":  # looks like a save_to_disk folder, but its files are not
        (tmp_path / "broken").mkdir()
        for f in ("state.json", "dataset_info.json"):
            (tmp_path / "broken" / f).write_text("{not json")
    out = tmp_path / "out"
    for run in (lambda: tokenize_corpus(inputs, tokenizer, str(out / "x"), quiet=True, **opts),
                lambda: train_tokenizer(inputs, 300, str(out / "t.json"), quiet=True, reader=opts)):
        with pytest.raises(InputError) as e:
            run()
        msg = str(e.value)
        assert "\n" not in msg and all(n in msg for n in needles), msg
        assert not out.exists()


@pytest.mark.slow
def test_bad_input_cli(data, tokenizer, tmp_path):
    saved = data / "corpus" / "saved"
    for script, extra in (("tokenize_corpus.py", ["--tokenizer", tokenizer, "--output-prefix", tmp_path / "o" / "x"]),
                          ("train_tokenizer.py", ["--vocab-size", 300, "--output", tmp_path / "o" / "t.json"])):
        r = run_python([REPO / "data_prep" / script, "--input", saved, "--text-key", "n", *extra])
        assert_one_line_error(r, str(saved), "column 'n'", "not text", "--text-key")
    assert not (tmp_path / "o").exists()
