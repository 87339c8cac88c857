"""Megatron's indexed dataset (.bin/.idx): the one module that writes and reads it.

``PREFIX.bin`` holds every sequence's tokens back to back. ``PREFIX.idx`` holds:

    magic  b"MMIDIDX\\x00\\x00"  (9 bytes)
    version <Q  = 1
    dtype code <B  (Megatron's codes below)
    sequence count <Q, document count <Q
    sizes    int32[sequence count]    tokens per sequence
    pointers int64[sequence count]    byte offset of each sequence in .bin
    doc_idx  int64[document count]    sequence index where each document starts (0 ... n)

Here one sequence is one document, so doc_idx = 0, 1, ..., n. megatron-core's
``IndexedDataset`` reads these files as they are (tests/test_indexed.py checks it).

A tokenised dataset also has ``PREFIX_manifest.json`` (written by data_prep/tokenize_corpus.py
for the common prefix of its ``_train``/``_valid`` splits); ``llmtrain.data.manifest.Manifest``
reads and writes it.
"""
from __future__ import annotations

import os
import struct
from array import array
from pathlib import Path

import numpy as np


MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
# Megatron's codes (megatron.core.datasets.indexed_dataset.DType).
DTYPE_CODES = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float64,
    7: np.float32,
    8: np.uint16,
}
CODE_OF = {np.dtype(v): k for k, v in DTYPE_CODES.items()}
HEADER = struct.Struct("<9sQBQQ")
MAX_SEQUENCE_LEN = np.iinfo(np.int32).max
FIX = "re-create it with python data_prep/tokenize_corpus.py"


class DataFormatError(ValueError):
    """A .bin/.idx/manifest problem; the message is one line naming the file and the fix."""


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """uint16 when every token id fits (vocab_size <= 65536), int32 otherwise."""
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    return np.dtype(np.uint16 if vocab_size <= 65536 else np.int32)


def _remove(*paths: str) -> None:
    for p in paths:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


def write_index(path: str | os.PathLike, sizes: np.ndarray, dtype) -> None:
    """Write an .idx for sequences of ``sizes`` tokens of ``dtype`` laid back to back in the .bin,
    one sequence per document (pointers and the document index follow from the sizes, so the
    index is valid by construction). The caller renames it into place."""
    dtype = np.dtype(dtype)
    sizes = np.asarray(sizes, dtype="<i4")
    pointers = np.zeros(len(sizes), dtype="<i8")
    if len(sizes) > 1:
        np.cumsum(sizes[:-1], dtype=np.int64, out=pointers[1:])
        pointers *= dtype.itemsize
    with open(path, "wb") as fh:
        fh.write(HEADER.pack(MAGIC, VERSION, CODE_OF[dtype], len(sizes), len(sizes) + 1))
        fh.write(sizes.tobytes())
        fh.write(pointers.tobytes())
        fh.write(np.arange(len(sizes) + 1, dtype="<i8").tobytes())
        fh.flush()
        os.fsync(fh.fileno())


class IndexedDatasetWriter:
    """Streams documents to PREFIX.bin and writes PREFIX.idx on a clean exit.

    Tokens go straight to a temporary .bin as they are added (only the per-document sizes stay
    in memory). On a clean exit the .idx is written under a temporary name too, then both are
    renamed (.bin first, .idx last, so a reader never finds a new .idx beside an old .bin); on
    an exception the temporaries are removed and nothing half-written remains.
    """

    def __init__(self, prefix: str | os.PathLike, dtype):
        self.prefix = str(prefix)
        self.dtype = np.dtype(dtype)
        if self.dtype not in CODE_OF:
            raise ValueError(f"dtype {self.dtype} has no Megatron dtype code; use one of "
                             f"{', '.join(str(np.dtype(t)) for t in DTYPE_CODES.values())}")
        integer = self.dtype.kind in "ui"
        self._min = int(np.iinfo(self.dtype).min) if integer else None
        self._max = int(np.iinfo(self.dtype).max) if integer else None
        self._sizes = array("i")
        self.num_tokens = 0
        self._tmp_bin = f"{self.prefix}.bin.tmp{os.getpid()}"
        self._tmp_idx = f"{self.prefix}.idx.tmp{os.getpid()}"
        self._fh = None

    @property
    def sizes(self) -> np.ndarray:
        return np.frombuffer(self._sizes, dtype=np.int32) if len(self._sizes) else np.zeros(0, np.int32)

    def __len__(self) -> int:
        return len(self._sizes)

    def __enter__(self) -> IndexedDatasetWriter:
        Path(self.prefix).parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self._tmp_bin, "wb")
        return self

    def add_document(self, tokens) -> None:
        """Append one document (a 1-D array of integer token ids) as one sequence."""
        if self._fh is None:
            raise RuntimeError("use IndexedDatasetWriter as a context manager: with IndexedDatasetWriter(...) as w:")
        arr = np.asarray(tokens)
        if arr.ndim != 1:
            raise ValueError(f"a document is a 1-D array of token ids, got shape {arr.shape}")
        if arr.size and self._max is not None:
            if arr.dtype.kind not in "uib":
                raise ValueError(f"token ids must be integers, got {arr.dtype}")
            lo, hi = int(arr.min()), int(arr.max())
            if lo < self._min or hi > self._max:
                bad = hi if hi > self._max else lo
                raise ValueError(f"token id {bad} does not fit {self.dtype} (range {self._min}..{self._max}); "
                                 f"use a wider dtype (dtype_for_vocab)")
        if arr.size > MAX_SEQUENCE_LEN:
            raise ValueError(f"a document of {arr.size} tokens is longer than the format's int32 size limit")
        self._fh.write(arr.astype(self.dtype, copy=False).tobytes())
        self._sizes.append(int(arr.size))
        self.num_tokens += int(arr.size)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._fh.flush()
            if exc_type is None:
                os.fsync(self._fh.fileno())
        finally:
            self._fh.close()
        if exc_type is not None:
            _remove(self._tmp_bin, self._tmp_idx)
            return
        try:
            write_index(self._tmp_idx, self.sizes, self.dtype)
            os.replace(self._tmp_bin, f"{self.prefix}.bin")
            os.replace(self._tmp_idx, f"{self.prefix}.idx")
        except BaseException:
            _remove(self._tmp_bin, self._tmp_idx)
            raise


def _map(path: str, dtype: str, offset: int, count: int) -> np.ndarray:
    """A read-only array of ``count`` items of ``dtype`` at byte ``offset`` of ``path``, mapped, not read."""
    if count == 0:
        empty = np.zeros(0, dtype=dtype)
        empty.flags.writeable = False
        return empty
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(count,))


class IndexedDataset:
    """Read-only view of PREFIX.bin/.idx, memory-mapped: opening it costs the same for ten
    documents or ten million.

    prefix, dtype, sizes (int32 tokens per document), pointers (int64 byte offsets), doc_idx
    (each a read-only np.memmap over the .idx), tokens (a read-only np.memmap over the whole
    .bin), num_tokens; len() is the number of documents and ds[i] the tokens of document i.

    Opening checks what is cheap and what training relies on: the header, the .idx size against
    it, the first and last pointers and document indices, and the .bin size against the last
    document's end. The document lists themselves are valid by construction (IndexedDatasetWriter
    derives them from the sizes at data-prep time); ``verify()`` checks every entry.
    """

    def __init__(self, prefix: str | os.PathLike):
        self.prefix = str(prefix)
        idx_path, bin_path = f"{self.prefix}.idx", f"{self.prefix}.bin"
        for p in (idx_path, bin_path):
            if not os.path.isfile(p):
                raise DataFormatError(f"{p}: not found; create the dataset with python data_prep/tokenize_corpus.py "
                                      f"--input CORPUS --tokenizer tokenizer.json --output-prefix PREFIX")
        idx_size = os.path.getsize(idx_path)
        with open(idx_path, "rb") as fh:
            head = fh.read(HEADER.size)
        if len(head) < 9 or head[:9] != MAGIC:
            raise DataFormatError(f"{idx_path}: not a Megatron .idx file (bad magic); {FIX}")
        if len(head) < HEADER.size:
            raise DataFormatError(f"{idx_path}: truncated header ({idx_size} bytes); {FIX}")
        _, version, code, n_seq, n_doc = HEADER.unpack(head)
        if version != VERSION:
            raise DataFormatError(f"{idx_path}: index version {version} is not supported (expected {VERSION}); {FIX}")
        if code not in DTYPE_CODES:
            raise DataFormatError(f"{idx_path}: unknown dtype code {code}; the file is corrupt, {FIX}")
        expected = HEADER.size + n_seq * 4 + n_seq * 8 + n_doc * 8
        if idx_size != expected:
            raise DataFormatError(f"{idx_path}: {idx_size} bytes where its header promises {expected} "
                                  f"(truncated or corrupt); {FIX}")
        self.dtype = np.dtype(DTYPE_CODES[code])
        off = HEADER.size
        self.sizes = _map(idx_path, "<i4", off, n_seq)
        self.pointers = _map(idx_path, "<i8", off + 4 * n_seq, n_seq)
        self.doc_idx = _map(idx_path, "<i8", off + 12 * n_seq, n_doc)
        item = self.dtype.itemsize
        if n_seq and (int(self.pointers[0]) != 0 or int(self.sizes[-1]) < 0 or int(self.pointers[-1]) < 0
                      or int(self.pointers[-1]) % item):
            raise DataFormatError(f"{idx_path}: sequence pointers do not match the sizes; the index is corrupt, {FIX}")
        if n_doc < 1 or int(self.doc_idx[0]) != 0 or int(self.doc_idx[-1]) != n_seq:
            raise DataFormatError(f"{idx_path}: document index is not 0..{n_seq} in order; the index is corrupt, {FIX}")
        # the last sequence ends where the tokens end (pointers are in bytes)
        self.num_tokens = int(self.pointers[-1]) // item + int(self.sizes[-1]) if n_seq else 0
        bin_size = os.path.getsize(bin_path)
        if bin_size != self.num_tokens * item:
            raise DataFormatError(
                f"{bin_path}: {bin_size} bytes but {os.path.basename(idx_path)} describes {self.num_tokens} tokens of "
                f"{self.dtype} ({self.num_tokens * item} bytes); the pair is truncated or mismatched, {FIX}")
        if self.num_tokens:
            self.tokens = np.memmap(bin_path, dtype=self.dtype, mode="r", shape=(self.num_tokens,))
        else:  # an empty file cannot be memory-mapped
            self.tokens = np.zeros(0, dtype=self.dtype)
            self.tokens.flags.writeable = False

    def verify(self) -> None:
        """Check every entry of the index (reads it whole: data-prep and repair tools, not start-up):
        no negative size, each pointer where the previous sequence ends, the document index
        non-decreasing. DataFormatError naming the file otherwise."""
        idx_path, item, chunk = f"{self.prefix}.idx", self.dtype.itemsize, 1 << 22
        n = len(self.sizes)
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            sizes = np.asarray(self.sizes[lo:hi], dtype=np.int64)
            if (sizes < 0).any():
                raise DataFormatError(f"{idx_path}: negative sequence size; the index is corrupt, {FIX}")
            ptr = np.asarray(self.pointers[lo:min(n, hi + 1)])
            if (np.diff(ptr) != sizes[:len(ptr) - 1] * item).any():
                raise DataFormatError(f"{idx_path}: sequence pointers do not match the sizes; the index is corrupt, "
                                      f"{FIX}")
        for lo in range(0, len(self.doc_idx), chunk):
            if (np.diff(np.asarray(self.doc_idx[lo:lo + chunk + 1])) < 0).any():
                raise DataFormatError(f"{idx_path}: document index is not 0..{n} in order; the index is corrupt, "
                                      f"{FIX}")

    @property
    def num_documents(self) -> int:
        return len(self.sizes)

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int) -> np.ndarray:
        n = len(self.sizes)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"document {i} out of range for {self.prefix} ({n} documents)")
        start = int(self.pointers[i]) // self.dtype.itemsize
        return np.asarray(self.tokens[start : start + int(self.sizes[i])])

    def __repr__(self) -> str:
        return f"IndexedDataset({self.prefix!r}: {len(self)} documents, {self.num_tokens} tokens of {self.dtype})"
