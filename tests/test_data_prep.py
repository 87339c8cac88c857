"""Tokenizer training and corpus tokenisation on a slice of the bundled sample corpus, with
real files: counts, end-of-document tokens, exact round trips, a deterministic split, and
one-line errors from the command line."""
import gzip
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zstandard
from tokenizers import Tokenizer

from llmtrain_prep.readers import InputError
from llmtrain_prep.tokenize_corpus import is_valid_doc, split_key, tokenize_corpus
from llmtrain_prep.train_tokenizer import train_tokenizer
from llmtrain.data.indexed import IndexedDataset
from llmtrain.data.manifest import manifest_file
from llmtrain.tokenizer import EOD_TOKEN

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "sample" / "corpus.jsonl.gz"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A folder with 240 sample documents spread over .jsonl.gz, .jsonl.zst and .jsonl files,
    plus a few awkward ones (non-ASCII, a literal end-of-text marker, whitespace)."""
    root = tmp_path_factory.mktemp("corpus")
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as fh:
        docs = [json.loads(line) for line in itertools.islice(fh, 240)]
    docs += [
        {"id": "odd-1", "text": "Naïve café — 日本語 🎉 and a literal <|endoftext|> inside the text."},
        {"id": "odd-2", "text": "  leading spaces,\ttabs\r\nand trailing newline\n"},
        {"id": "odd-3", "text": "x"},
    ]
    parts = [docs[:100], docs[100:200], docs[200:]]
    with gzip.open(root / "a.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(d) + "\n" for d in parts[0])
    with open(root / "b.jsonl.zst", "wb") as raw:
        raw.write(zstandard.ZstdCompressor().compress("".join(json.dumps(d) + "\n" for d in parts[1]).encode()))
    (root / "c.jsonl").write_text("".join(json.dumps(d) + "\n" for d in parts[2]), encoding="utf-8")
    (root / "README.txt").write_text("not a corpus file: ignored when the folder is expanded")
    return root, docs


@pytest.fixture(scope="module")
def tokenizer(corpus, tmp_path_factory):
    root, _ = corpus
    out = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    assert train_tokenizer([root], 600, str(out), quiet=True) == str(out)
    return str(out)


@pytest.fixture(scope="module")
def tokenized(corpus, tokenizer, tmp_path_factory):
    root, _ = corpus
    prefix = str(tmp_path_factory.mktemp("out") / "sample")
    manifest = tokenize_corpus([root], tokenizer, prefix, valid_fraction=0.1, workers=1, quiet=True)
    return prefix, manifest


def test_tokenizer_is_byte_level_with_eod(tokenizer, corpus):
    tok = Tokenizer.from_file(tokenizer)
    assert tok.get_vocab_size() == 600
    assert tok.token_to_id(EOD_TOKEN) == 0
    for text in ["Hello world", " leading space", "日本語 🎉\n\ttab", corpus[1][0]["text"]]:
        assert tok.decode(tok.encode(text).ids) == text
    assert tok.encode("a").tokens == ["a"]  # no prefix space is added


def test_tokenizer_training_is_reproducible(tokenizer, corpus, tmp_path):
    again = train_tokenizer([corpus[0]], 600, str(tmp_path / "again.json"), quiet=True)
    assert Path(again).read_bytes() == Path(tokenizer).read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["again.json"]  # no temporary file left


def test_manifest_counts_match_the_files(tokenized, tokenizer, corpus):
    prefix, manifest = tokenized
    _, docs = corpus
    assert json.loads(manifest_file(prefix).read_text()) == manifest
    tok = Tokenizer.from_file(tokenizer)
    assert manifest["vocab_size"] == 600 and manifest["dtype"] == "uint16" and manifest["eod_token_id"] == 0
    assert manifest["tokenizer"]["path"] == os.path.abspath(tokenizer) and len(manifest["tokenizer"]["sha256"]) == 64
    assert [os.path.basename(i["path"]) for i in manifest["inputs"]] == ["a.jsonl.gz", "b.jsonl.zst", "c.jsonl"]
    assert [i["documents"] for i in manifest["inputs"]] == [100, 100, len(docs) - 200]
    total_docs = total_tokens = 0
    for split in ("train", "valid"):
        ds = IndexedDataset(f"{prefix}_{split}")
        assert ds.dtype == np.uint16
        assert manifest["splits"][split]["documents"] == len(ds)
        assert manifest["splits"][split]["tokens"] == ds.num_tokens
        total_docs += len(ds)
        total_tokens += ds.num_tokens
        assert int(ds.tokens.max()) < tok.get_vocab_size()
    assert manifest["documents"] == total_docs == len(docs)
    assert manifest["tokens"] == total_tokens
    assert 5 <= manifest["splits"]["valid"]["documents"] <= 50  # ~10% of 243


def test_every_document_round_trips_with_one_eod(tokenized, tokenizer, corpus):
    prefix, manifest = tokenized
    _, docs = corpus
    tok = Tokenizer.from_file(tokenizer)
    eod = manifest["eod_token_id"]
    key = split_key(manifest["options"]["seed"])
    expected = {"train": [], "valid": []}
    for d in docs:
        expected["valid" if is_valid_doc(str(d["id"]), d["text"], 0.1, key) else "train"].append(d["text"])
    for split, texts in expected.items():
        ds = IndexedDataset(f"{prefix}_{split}")
        assert len(ds) == len(texts)
        for i, text in enumerate(texts):
            ids = ds[i]
            assert ids[-1] == eod and eod not in ids[:-1]  # exactly one EOD, at the end
            assert tok.decode(ids[:-1].tolist(), skip_special_tokens=False) == text
    assert int((IndexedDataset(f"{prefix}_train").tokens == eod).sum()) == len(expected["train"])


@pytest.mark.slow
def test_split_is_deterministic(tokenized, tokenizer, corpus, tmp_path):
    prefix, manifest = tokenized
    root, _ = corpus
    # Same input, other process layout (2 worker processes): byte-identical shards.
    again = str(tmp_path / "again")
    tokenize_corpus([root], tokenizer, again, valid_fraction=0.1, workers=2, quiet=True)
    for split in ("train", "valid"):
        for ext in ("bin", "idx"):
            assert Path(f"{again}_{split}.{ext}").read_bytes() == Path(f"{prefix}_{split}.{ext}").read_bytes()
    # Another seed: another split of the same documents.
    other = tokenize_corpus([root], tokenizer, str(tmp_path / "other"), valid_fraction=0.1, seed=1, workers=1,
                            quiet=True)
    assert other["documents"] == manifest["documents"] and other["tokens"] == manifest["tokens"]
    assert (Path(f"{tmp_path / 'other'}_valid.bin").read_bytes() != Path(f"{prefix}_valid.bin").read_bytes())


def test_no_valid_split(corpus, tokenizer, tmp_path):
    root, docs = corpus
    m = tokenize_corpus([root / "c.jsonl"], tokenizer, str(tmp_path / "t"), valid_fraction=0.0, quiet=True)
    assert list(m["splits"]) == ["train"] and m["documents"] == len(docs) - 200
    assert not Path(f"{tmp_path / 't'}_valid.idx").exists()


def test_function_errors_are_input_errors(corpus, tokenizer, tmp_path):
    root, _ = corpus
    with pytest.raises(InputError, match="tokenizer not found"):
        tokenize_corpus([root], str(tmp_path / "missing.json"), str(tmp_path / "x"))
    with pytest.raises(InputError, match="valid-fraction"):
        tokenize_corpus([root], tokenizer, str(tmp_path / "x"), valid_fraction=1.5)
    with pytest.raises(InputError, match="too small"):
        train_tokenizer([root], 100, str(tmp_path / "t.json"))
    assert os.listdir(tmp_path) == []


def run_cli(script, *args):
    return subprocess.run([sys.executable, str(REPO / "data_prep" / script), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_cli_end_to_end(corpus, tmp_path):
    root, docs = corpus
    r = run_cli("train_tokenizer.py", "--input", root / "c.jsonl", root / "a.jsonl.gz", "--vocab-size", 300,
                "--output", tmp_path / "tok.json")
    assert r.returncode == 0, r.stderr
    r = run_cli("tokenize_corpus.py", "--input", root / "a.jsonl.gz", "--tokenizer", tmp_path / "tok.json",
                "--output-prefix", tmp_path / "d", "--valid-fraction", 0.05, "--progress-every", 0.001)
    assert r.returncode == 0, r.stderr
    assert "docs/s" in r.stdout and "tokens/s" in r.stdout and r.stderr == ""
    m = json.loads(manifest_file(tmp_path / "d").read_text())
    assert m["documents"] == 100 and m["command"][1].endswith("tokenize_corpus.py")


def bad_line_corpus(tmp_path):
    good = json.dumps({"id": "ok", "text": "fine text"})
    p = tmp_path / "bad.jsonl"
    p.write_text(good + "\n" + good + "\n" + '{"id": "broken", "text": "no closing brace"\n')
    return p


@pytest.mark.slow
@pytest.mark.parametrize("case", ["malformed_line", "missing_input", "missing_tokenizer", "no_text_field"])
def test_cli_bad_input_is_one_line(case, corpus, tokenizer, tmp_path):
    root, _ = corpus
    out = tmp_path / "out"
    out.mkdir()
    inp, tok, expect = root, tokenizer, None
    if case == "malformed_line":
        inp = bad_line_corpus(tmp_path)
        expect = f"{inp}:3: malformed JSON"
    elif case == "missing_input":
        inp = tmp_path / "nowhere.jsonl"
        expect = f"{inp}: no such file"
    elif case == "missing_tokenizer":
        tok = tmp_path / "nope.json"
        expect = f"{tok}: tokenizer not found; train one with python data_prep/train_tokenizer.py"
    elif case == "no_text_field":
        inp = tmp_path / "notext.jsonl.gz"
        with gzip.open(inp, "wt") as fh:
            fh.write('{"id": 1, "text": "ok"}\n{"id": 2, "body": "wrong key"}\n')
        expect = f"{inp}:2: no string field 'text'"
    r = run_cli("tokenize_corpus.py", "--input", inp, "--tokenizer", tok, "--output-prefix", out / "x", "--quiet")
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("error: ") and expect in lines[0]
    assert os.listdir(out) == []  # nothing half-written

    if case in ("malformed_line", "missing_input", "no_text_field"):
        r = run_cli("train_tokenizer.py", "--input", inp, "--vocab-size", 300, "--output", out / "t.json")
        assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and expect in r.stderr
        assert os.listdir(out) == []


def test_failed_rerun_keeps_previous_output(corpus, tokenizer, tmp_path):
    root, _ = corpus
    prefix = tmp_path / "keep"
    tokenize_corpus([root / "c.jsonl"], tokenizer, str(prefix), valid_fraction=0.2, quiet=True)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    broken = tmp_path / "in" / "bad.jsonl"
    broken.parent.mkdir()
    broken.write_text('{"id": 1, "text": "a"}\n{oops\n')
    with pytest.raises(InputError, match=r"bad.jsonl:2"):
        tokenize_corpus([broken], tokenizer, str(prefix), quiet=True)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert after == before
