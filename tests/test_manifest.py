"""The one Manifest type: written by tokenize_corpus, merged by merge_manifests, read by the
trainer's dataset helpers; older manifests (format 1: one file per split) still read; a
malformed one is a one-line error naming the file and the key."""
import json

import numpy as np
import pytest

from llmtrain.core.errors import ConfigError
from llmtrain.data.dataset import read_manifest, split_shards, tokenizer_of
from llmtrain.data.indexed import IndexedDatasetWriter
from llmtrain.data.manifest import Manifest, ManifestError, Shard, Split


def _shard(prefix, docs):
    with IndexedDatasetWriter(prefix, np.uint16) as w:
        for d in docs:
            w.add_document(np.array(d, dtype=np.uint16))


def test_write_read_round_trip_and_shards(tmp_path):
    _shard(tmp_path / "d_train_00000", [[1, 2, 0], [3, 0]])
    _shard(tmp_path / "d_train_00001", [[4, 0]])
    m = Manifest(prefix=str(tmp_path / "d"), splits={"train": Split([Shard("d_train_00000", 2, 5),
                                                                      Shard("d_train_00001", 1, 2)])},
                 dtype="uint16", vocab_size=5, eod_token="<|end_of_text|>", eod_token_id=0,
                 tokenizer_path="/t/tokenizer.json", tokenizer_sha256="ab" * 32, options={"seed": 0},
                 extra={"command": ["x"]})
    path = m.write()
    assert path == tmp_path / "d_manifest.json" and oct(path.stat().st_mode & 0o777) == "0o644"
    back = Manifest.read(tmp_path / "d")
    assert back.to_dict() | {"created": ""} == m.to_dict() | {"created": ""}
    assert (back.documents, back.tokens, back.splits["train"].tokens) == (3, 7, 7)
    assert back.shard_prefixes("train") == [str(tmp_path / "d_train_00000"), str(tmp_path / "d_train_00001")]
    assert back.shard_prefixes("valid") == [] and back.missing_shards() == []
    obj, _ = read_manifest(str(tmp_path / "d"))  # the trainer's reader
    assert split_shards(str(tmp_path / "d"), obj, "train") == back.shard_prefixes("train")
    assert tokenizer_of(obj) == ("/t/tokenizer.json", "ab" * 32)
    (tmp_path / "d_train_00001.bin").write_bytes(b"\0\0")  # a .bin of the wrong size
    assert back.missing_shards() == [str(tmp_path / "d_train_00001.bin")]


def test_format_1_manifest_reads(tmp_path):
    (tmp_path / "old_manifest.json").write_text(json.dumps({
        "splits": {"train": {"documents": 2, "tokens": 5, "prefix": "somewhere/else/old_train"},
                   "valid": {"documents": 1, "tokens": 2}},
        "dtype": "uint16", "tokenizer": "/t/tok.json", "tokenizer_sha256": "cd" * 32}))
    m = Manifest.read(tmp_path / "old")
    assert m.shard_prefixes("train") == [str(tmp_path / "old_train")]
    assert m.shard_prefixes("valid") == [str(tmp_path / "old_valid")]
    assert (m.tokenizer_path, m.tokenizer_sha256, m.eod_token_id) == ("/t/tok.json", "cd" * 32, None)


@pytest.mark.parametrize("body,needle", [
    ("{not json", ":1: malformed JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"dtype": "uint16"}', "no 'splits'"),
    ('{"splits": {"train": {"shards": [{"prefix": "a", "documents": "2", "tokens": 3}]}}}',
     "splits.train.shards[0].documents is missing or not a int"),
    ('{"splits": {"train": {"shards": []}}, "dtype": "uint17"}', "dtype 'uint17'"),
])
def test_malformed_manifest_is_one_line(tmp_path, body, needle):
    (tmp_path / "b_manifest.json").write_text(body)
    with pytest.raises(ManifestError) as e:
        Manifest.read(tmp_path / "b")
    assert str(e.value).startswith(str(tmp_path / "b_manifest.json")) and needle in str(e.value)
    assert "\n" not in str(e.value) and "tokenize_corpus.py" in str(e.value)
    with pytest.raises(ConfigError, match="b_manifest.json"):  # what the trainer reports
        read_manifest(str(tmp_path / "b"))
    with pytest.raises(ManifestError, match="manifest not found"):
        Manifest.read(tmp_path / "nothing")
