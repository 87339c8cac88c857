"""The .bin/.idx writer and reader: round trips, dtype boundary, Megatron compatibility, and
clear errors on damaged files."""
import os

import numpy as np
import pytest

from llmtrain.data.indexed import (
    DTYPE_CODES,
    DataFormatError,
    IndexedDataset,
    IndexedDatasetWriter,
    dtype_for_vocab,
)


def random_docs(rng, n, high, max_len=300):
    docs = [rng.integers(0, high, size=int(rng.integers(1, max_len)), dtype=np.int64) for _ in range(n)]
    docs.insert(3, np.zeros(0, dtype=np.int64))  # an empty document is legal
    docs.append(np.array([high - 1, 0, high - 1]))  # the largest id survives
    return docs


def write(prefix, docs, dtype):
    with IndexedDatasetWriter(prefix, dtype) as w:
        for d in docs:
            w.add_document(d)
    return str(prefix)


@pytest.mark.parametrize("dtype,high", [(np.uint16, 65536), (np.int32, 1_000_000)])
def test_round_trip(tmp_path, dtype, high):
    rng = np.random.default_rng(0)
    docs = random_docs(rng, 50, high)
    prefix = write(tmp_path / "ds", docs, dtype)
    ds = IndexedDataset(prefix)
    assert ds.dtype == np.dtype(dtype)
    assert len(ds) == len(docs)
    assert ds.num_tokens == sum(len(d) for d in docs)
    assert ds.sizes.dtype == np.int32 and list(ds.sizes) == [len(d) for d in docs]
    assert list(ds.doc_idx) == list(range(len(docs) + 1))
    for i, d in enumerate(docs):
        np.testing.assert_array_equal(ds[i], d)
    np.testing.assert_array_equal(ds[-1], docs[-1])
    np.testing.assert_array_equal(ds.tokens, np.concatenate(docs))
    assert isinstance(ds.tokens, np.memmap) and not ds.tokens.flags.writeable
    with pytest.raises(IndexError):
        ds[len(docs)]
    # file sizes are exactly what the format says
    n = len(docs)
    assert os.path.getsize(f"{prefix}.bin") == ds.num_tokens * np.dtype(dtype).itemsize
    assert os.path.getsize(f"{prefix}.idx") == 9 + 8 + 1 + 8 + 8 + 4 * n + 8 * n + 8 * (n + 1)


def test_vocab_boundary(tmp_path):
    assert dtype_for_vocab(65536) == np.uint16  # ids 0..65535 fit
    assert dtype_for_vocab(65537) == np.int32
    assert dtype_for_vocab(50257) == np.uint16
    assert DTYPE_CODES[8] is np.uint16 and DTYPE_CODES[4] is np.int32
    with IndexedDatasetWriter(tmp_path / "a", dtype_for_vocab(65536)) as w:
        w.add_document([65535])
        with pytest.raises(ValueError, match="65536 does not fit uint16"):
            w.add_document([1, 65536])
        with pytest.raises(ValueError, match="does not fit"):
            w.add_document([-1])
    assert IndexedDataset(tmp_path / "a")[0].tolist() == [65535]  # the rejected documents were not written
    write(tmp_path / "b", [[65536, 70000]], dtype_for_vocab(65537))
    assert IndexedDataset(tmp_path / "b")[0].tolist() == [65536, 70000]


@pytest.mark.slow
def test_megatron_core_reads_our_files(tmp_path):
    import megatron.core.datasets.indexed_dataset as mid
    rng = np.random.default_rng(1)
    for dtype, high in [(np.uint16, 65536), (np.int32, 100_000)]:
        docs = random_docs(rng, 40, high)
        prefix = write(tmp_path / f"m_{np.dtype(dtype).name}", docs, dtype)
        theirs = mid.IndexedDataset(prefix)
        ours = IndexedDataset(prefix)
        assert len(theirs) == len(ours) == len(docs)
        np.testing.assert_array_equal(theirs.sequence_lengths, ours.sizes)
        np.testing.assert_array_equal(theirs.document_indices, ours.doc_idx)
        for i, d in enumerate(docs):
            got = theirs[i]
            assert got.dtype == np.dtype(dtype)
            np.testing.assert_array_equal(got, d)


@pytest.mark.slow
def test_we_read_megatron_core_files(tmp_path):
    import megatron.core.datasets.indexed_dataset as mid
    import torch
    docs = [np.array([5, 6, 7]), np.array([1]), np.array([65535, 0])]
    builder = mid.IndexedDatasetBuilder(str(tmp_path / "theirs.bin"), dtype=np.uint16)
    for d in docs:
        builder.add_item(torch.tensor(d))
        builder.end_document()
    builder.finalize(str(tmp_path / "theirs.idx"))
    ours = IndexedDataset(tmp_path / "theirs")
    assert [ours[i].tolist() for i in range(len(ours))] == [d.tolist() for d in docs]


def test_missing_files_name_the_path_and_the_fix(tmp_path):
    with pytest.raises(DataFormatError) as e:
        IndexedDataset(tmp_path / "nothing")
    msg = str(e.value)
    assert str(tmp_path / "nothing.idx") in msg and "data_prep/tokenize_corpus.py" in msg and "\n" not in msg


@pytest.fixture
def good(tmp_path):
    rng = np.random.default_rng(2)
    return write(tmp_path / "good", random_docs(rng, 20, 1000), np.uint16)


def _damage(path, how):
    data = bytearray(open(path, "rb").read())
    if how == "magic":
        data[:9] = b"NOTMAGIC!"
    elif how == "truncate":
        data = data[:-5]
    elif how == "version":
        data[9] = 2
    elif how == "dtype":
        data[17] = 99
    elif how == "pointer":
        data[-8 * 22 - 8 * 3] ^= 0x40  # a byte of one of the pointers
    open(path, "wb").write(bytes(data))


@pytest.mark.parametrize("what,how,match", [
    ("idx", "magic", "bad magic"),
    ("idx", "truncate", "truncated"),
    ("idx", "version", "version 2"),
    ("idx", "dtype", "dtype code 99"),
    ("bin", "truncate", "truncated or mismatched"),
])
def test_damaged_files_give_one_line_naming_the_file(good, what, how, match):
    path = f"{good}.{what}"
    _damage(path, how)
    with pytest.raises(DataFormatError, match=match) as e:
        IndexedDataset(good)
    msg = str(e.value)
    assert msg.startswith(path) and "\n" not in msg and "tokenize_corpus.py" in msg


def test_opening_reads_no_document_list_and_verify_reads_all(good):
    """Opening maps the index (start-up does not grow with the corpus) and checks its ends; a
    damaged entry in the middle, which training never reads, is found by verify()."""
    ds = IndexedDataset(good)
    assert all(isinstance(a, np.memmap) for a in (ds.sizes, ds.pointers, ds.doc_idx))
    ds.verify()
    _damage(f"{good}.idx", "pointer")  # one pointer in the middle
    ds = IndexedDataset(good)
    with pytest.raises(DataFormatError, match="pointers do not match") as e:
        ds.verify()
    assert str(e.value).startswith(f"{good}.idx") and "tokenize_corpus.py" in str(e.value)


def test_a_damaged_last_pointer_is_found_on_opening(good):
    data = bytearray(open(f"{good}.idx", "rb").read())
    data[-8 * 23 - 8] ^= 0x40  # the last pointer (22 sequences, then 23 document indices)
    open(f"{good}.idx", "wb").write(bytes(data))
    with pytest.raises(DataFormatError, match="good.idx describes") as e:
        IndexedDataset(good)
    assert "\n" not in str(e.value)


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with IndexedDatasetWriter(tmp_path / "x", np.uint16) as w:
            w.add_document([1, 2, 3])
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_failed_rewrite_keeps_the_old_dataset(tmp_path):
    prefix = write(tmp_path / "x", [[1, 2, 3], [4]], np.uint16)
    before = {p: open(tmp_path / p, "rb").read() for p in os.listdir(tmp_path)}
    with pytest.raises(ValueError):
        with IndexedDatasetWriter(prefix, np.uint16) as w:
            w.add_document([9, 9])
            w.add_document([70000])  # does not fit: the writer aborts
    after = {p: open(tmp_path / p, "rb").read() for p in os.listdir(tmp_path)}
    assert after == before
    assert IndexedDataset(prefix)[0].tolist() == [1, 2, 3]


def test_empty_dataset(tmp_path):
    prefix = write(tmp_path / "e", [], np.uint16)
    ds = IndexedDataset(prefix)
    assert len(ds) == 0 and ds.num_tokens == 0 and len(ds.tokens) == 0


def test_a_shard_is_checked_against_its_manifest_counts(tmp_path):
    """Opening a split compares each shard's documents and tokens with what the manifest records
    (no document list is read): files swapped or re-written under the manifest are one line."""
    import json

    from llmtrain.data.dataset import open_shards
    from llmtrain.data.manifest import Manifest, Shard, Split

    write(tmp_path / "d_train", [[1, 2, 3], [4, 5]], np.uint16)
    m = Manifest(prefix=str(tmp_path / "d"), splits={"train": Split([Shard("d_train", 2, 5)])}, dtype="uint16",
                 vocab_size=10, eod_token=None, eod_token_id=None, tokenizer_path=None, tokenizer_sha256=None)
    manifest = json.loads(m.write().read_text())
    assert [len(ds) for ds in open_shards(str(tmp_path / "d"), manifest, "train")] == [2]
    write(tmp_path / "d_train", [[1, 2, 3], [4, 5], [6]], np.uint16)  # re-written under the same manifest
    with pytest.raises(DataFormatError) as e:
        open_shards(str(tmp_path / "d"), manifest, "train")
    msg = str(e.value)
    assert msg.startswith(str(tmp_path / "d_train.idx")) and "d_manifest.json records 2 and 5" in msg
    assert "\n" not in msg and "tokenize_corpus.py" in msg
