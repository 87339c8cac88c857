"""Writing one split (e.g. PREFIX_train) as Megatron .bin/.idx shards, with an optional loss-mask
side file beside each shard.

A split of more than ``max_tokens`` tokens is written as PREFIX_train_00000, PREFIX_train_00001,
... (a single longer document gets a shard of its own); a split that fits is one PREFIX_train.
With a loss mask, beside each token shard P lies P_mask (the same documents and lengths, one
uint8 per token), cut at the same documents. Shards are written under staging names
(PREFIX_train_00000.tmp<pid>) and `SplitWriter.publish` renames them into place only when every
document is in (.bin before .idx: a shard is finished only once its .idx has its final name),
removing the shards of an earlier run of the same prefix that this one does not replace.
"""
from __future__ import annotations

import os
import re

import numpy as np

from llmtrain.data.indexed import IndexedDatasetWriter

MASK_SUFFIX = "_mask"


def remove(*paths) -> None:
    for p in paths:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


def existing_shard_files(base: str) -> list[str]:
    """The .bin/.idx files of the split ``base`` on disk: one file or numbered shards, with their masks."""
    folder, name = os.path.split(base)
    pat = re.compile(re.escape(name) + r"(_\d{5})?(" + MASK_SUFFIX + r")?\.(bin|idx)$")
    try:
        return [os.path.join(folder, f) for f in os.listdir(folder or ".") if pat.fullmatch(f)]
    except FileNotFoundError:
        return []


class _Staged:
    """One open shard under its staging name: the token file and, with a mask, the mask file."""

    def __init__(self, staging: str, dtype, masked: bool):
        self.tokens = IndexedDatasetWriter(staging, dtype).__enter__()
        self.mask = IndexedDatasetWriter(staging + MASK_SUFFIX, np.uint8).__enter__() if masked else None

    def writers(self) -> list[IndexedDatasetWriter]:
        return [self.tokens] + ([self.mask] if self.mask is not None else [])

    def close(self) -> None:
        for w in self.writers():
            w.__exit__(None, None, None)

    def abort(self) -> None:
        for w in self.writers():
            try:
                w.__exit__(RuntimeError, RuntimeError("aborted"), None)  # removes its temporaries
            except Exception:
                pass


class SplitWriter:
    """One split as shards of at most ``max_tokens`` tokens (see the module doc); ``masked``:
    a loss mask beside every shard."""

    def __init__(self, base: str, dtype, max_tokens: int, masked: bool = False):
        self.base, self.dtype, self.max_tokens, self.masked = base, np.dtype(dtype), max_tokens, masked
        self.staged: list[tuple[str, int, int]] = []  # (staging prefix, documents, tokens) of closed shards
        self._open: _Staged | None = None
        self.documents = self.tokens = 0

    def _start(self) -> None:
        self._open = _Staged(f"{self.base}_{len(self.staged):05d}.tmp{os.getpid()}", self.dtype, self.masked)

    def _close(self) -> None:
        shard, self._open = self._open, None
        shard.close()
        self.staged.append((shard.tokens.prefix, len(shard.tokens), shard.tokens.num_tokens))

    def add(self, flat: np.ndarray, lengths: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Append the documents whose tokens lie back to back in ``flat`` (``lengths`` each), and
        their loss mask (one value per token) when the split has one."""
        if not len(lengths):
            return
        ends = np.cumsum(lengths).tolist()
        start = 0
        for end in ends:
            n = end - start
            shard = self._open
            if shard is None:
                self._start()
            elif shard.tokens.num_tokens + n > self.max_tokens and len(shard.tokens):
                self._close()
                self._start()
            self._open.tokens.add_document(flat[start:end])
            if self.masked:
                self._open.mask.add_document(mask[start:end])
            start = end
        self.documents += len(ends)
        self.tokens += ends[-1]

    def finish(self) -> None:
        if self._open is None and not self.staged:
            self._start()  # an empty split is still one (empty) file
        if self._open is not None:
            self._close()

    def abort(self) -> None:
        if self._open is not None:
            shard, self._open = self._open, None
            shard.abort()
        for prefix, _, _ in self.staged:
            remove(f"{prefix}.bin", f"{prefix}.idx", f"{prefix}{MASK_SUFFIX}.bin", f"{prefix}{MASK_SUFFIX}.idx")
        self.staged = []

    def final_prefixes(self) -> list[str]:
        if len(self.staged) == 1:
            return [self.base]
        return [f"{self.base}_{i:05d}" for i in range(len(self.staged))]

    def publish(self) -> list[dict]:
        """Rename the staged shards into place; [{"prefix" (absolute), "documents", "tokens"}]."""
        finals = self.final_prefixes()
        suffixes = ("", MASK_SUFFIX) if self.masked else ("",)
        keep = {f"{p}{s}.{ext}" for p in finals for s in suffixes for ext in ("bin", "idx")}
        # Shards of an earlier run of this prefix that this run does not replace: drop them, .idx first.
        for old in sorted(existing_shard_files(self.base), key=lambda p: not p.endswith(".idx")):
            if old not in keep:
                remove(old)
        out = []
        for (staged, docs, toks), final in zip(self.staged, finals):
            for s in suffixes[::-1]:  # the mask first: the tokens' .idx, last, marks the shard finished
                os.replace(f"{staged}{s}.bin", f"{final}{s}.bin")
                os.replace(f"{staged}{s}.idx", f"{final}{s}.idx")
            out.append({"prefix": final, "documents": docs, "tokens": toks})
        self.staged = []
        return out
