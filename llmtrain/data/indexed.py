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
``IndexedDataset`` reads these files as they are.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
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


class DataFormatError(ValueError):
    """A .bin/.idx problem; the message is one line naming the file and the fix."""


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """uint16 when every token id fits (vocab_size <= 65536), int32 otherwise."""
    return np.dtype(np.uint16 if vocab_size <= 65536 else np.int32)


class IndexedDatasetWriter:
    """Streams documents to PREFIX.bin and writes PREFIX.idx on a clean exit.

    Both files are written under temporary names and renamed at the end (.bin first, .idx
    last); on an exception the temporaries are removed and nothing half-written remains.
    """

    def __init__(self, prefix: str | os.PathLike, dtype):
        self.prefix = str(prefix)
        self.dtype = np.dtype(dtype)
        if self.dtype not in CODE_OF:
            raise ValueError(f"dtype {self.dtype} has no Megatron dtype code")
        self._max = np.iinfo(self.dtype).max if self.dtype.kind in "ui" else None
        self._min = np.iinfo(self.dtype).min if self.dtype.kind in "ui" else None
        self.sizes: list[int] = []
        self._tmp_bin = f"{self.prefix}.bin.tmp{os.getpid()}"
        self._tmp_idx = f"{self.prefix}.idx.tmp{os.getpid()}"
        self._fh = None

    def __enter__(self) -> "IndexedDatasetWriter":
        Path(self.prefix).parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self._tmp_bin, "wb")
        return self

    def add_document(self, tokens) -> None:
        arr = np.asarray(tokens)
        if arr.ndim != 1:
            raise ValueError("a document is a 1-D array of token ids")
        if arr.size and self._max is not None:
            lo, hi = int(arr.min()), int(arr.max())
            if lo < self._min or hi > self._max:
                raise ValueError(f"token id {hi if hi > self._max else lo} does not fit {self.dtype}; use a wider dtype")
        self._fh.write(arr.astype(self.dtype, copy=False).tobytes())
        self.sizes.append(int(arr.size))

    def __exit__(self, exc_type, exc, tb) -> None:
        self._fh.close()
        if exc_type is not None:
            for p in (self._tmp_bin, self._tmp_idx):
                if os.path.exists(p):
                    os.unlink(p)
            return
        try:
            sizes = np.asarray(self.sizes, dtype=np.int32)
            pointers = np.zeros(len(sizes), dtype=np.int64)
            if len(sizes) > 1:
                np.cumsum(sizes[:-1].astype(np.int64) * self.dtype.itemsize, out=pointers[1:])
            doc_idx = np.arange(len(sizes) + 1, dtype=np.int64)
            with open(self._tmp_idx, "wb") as fh:
                fh.write(HEADER.pack(MAGIC, VERSION, CODE_OF[self.dtype], len(sizes), len(doc_idx)))
                fh.write(sizes.tobytes())
                fh.write(pointers.tobytes())
                fh.write(doc_idx.tobytes())
            os.replace(self._tmp_bin, f"{self.prefix}.bin")
            os.replace(self._tmp_idx, f"{self.prefix}.idx")
        except BaseException:
            for p in (self._tmp_bin, self._tmp_idx):
                if os.path.exists(p):
                    os.unlink(p)
            raise


class IndexedDataset:
    """Read-only view of PREFIX.bin/.idx, validated when opened."""

    def __init__(self, prefix: str | os.PathLike):
        self.prefix = str(prefix)
        idx_path, bin_path = f"{self.prefix}.idx", f"{self.prefix}.bin"
        for p in (idx_path, bin_path):
            if not os.path.isfile(p):
                raise DataFormatError(f"{p}: not found; create it with python data_prep/tokenize_corpus.py --output-prefix ...")
        idx_size = os.path.getsize(idx_path)
        with open(idx_path, "rb") as fh:
            head = fh.read(HEADER.size)
        if len(head) < HEADER.size or head[:9] != MAGIC:
            raise DataFormatError(f"{idx_path}: not a Megatron .idx file (bad header); re-run tokenize_corpus.py")
        _, version, code, n_seq, n_doc = HEADER.unpack(head)
        if version != VERSION:
            raise DataFormatError(f"{idx_path}: index version {version} is not supported (expected {VERSION})")
        if code not in DTYPE_CODES:
            raise DataFormatError(f"{idx_path}: unknown dtype code {code}; the file is corrupt, re-run tokenize_corpus.py")
        expected = HEADER.size + n_seq * 4 + n_seq * 8 + n_doc * 8
        if idx_size != expected:
            raise DataFormatError(
                f"{idx_path}: {idx_size} bytes where the header promises {expected} (truncated or corrupt); "
                f"re-run tokenize_corpus.py"
            )
        self.dtype = np.dtype(DTYPE_CODES[code])
        off = HEADER.size
        self.sizes = np.fromfile(idx_path, dtype=np.int32, count=n_seq, offset=off)
        self.pointers = np.fromfile(idx_path, dtype=np.int64, count=n_seq, offset=off + 4 * n_seq)
        self.doc_idx = np.fromfile(idx_path, dtype=np.int64, count=n_doc, offset=off + 12 * n_seq)
        self.num_tokens = int(self.sizes.sum(dtype=np.int64))
        bin_size = os.path.getsize(bin_path)
        if bin_size != self.num_tokens * self.dtype.itemsize:
            raise DataFormatError(
                f"{bin_path}: {bin_size} bytes but {idx_path} describes {self.num_tokens} tokens of {self.dtype} "
                f"({self.num_tokens * self.dtype.itemsize} bytes); the pair is truncated or mismatched, re-run tokenize_corpus.py"
            )
        if n_seq and (self.pointers[0] != 0 or (np.diff(self.pointers) != self.sizes[:-1].astype(np.int64) * self.dtype.itemsize).any()):
            raise DataFormatError(f"{idx_path}: sequence pointers do not match the sizes; the index is corrupt, re-run tokenize_corpus.py")
        if self.num_tokens:
            self.tokens = np.memmap(bin_path, dtype=self.dtype, mode="r")
        else:
            self.tokens = np.zeros(0, dtype=self.dtype)

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int) -> np.ndarray:
        start = int(self.pointers[i]) // self.dtype.itemsize
        return np.asarray(self.tokens[start : start + int(self.sizes[i])])
