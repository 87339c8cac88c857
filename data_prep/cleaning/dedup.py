"""Exact and near-duplicate (MinHash LSH) deduplication across all shards of a corpus.

Pass 1 (per shard, in the filter workers): for each kept document, an exact key
(64-bit xxh3 of its normalised text, see `text.normalize_for_hash`) and its LSH band keys
(FineWeb's parameters: word 5-gram shingles, 14 bands x 8 rows = 112 MinHash values, each
band folded to one 64-bit key) are written to ``<shard>.keys.npy`` beside the shard.
The text is not needed again until the last pass.

Pass 2 (`find_duplicates`, one process): the keys of every shard are memory-mapped and
clustered one band at a time; memory is ~16 bytes per document per band in flight plus 8
bytes per document of labels, never the text. Documents whose exact keys are equal, or
that share a bucket in any band, fall in one cluster (connected components by min-label
propagation); the first document of each cluster, in input order, is kept.

Pass 3 (the removal pass in the pipeline) rewrites each shard without the removed ones.
"""
from __future__ import annotations

import numpy as np
import xxhash

from .text import normalize_for_hash

_M64 = (1 << 64) - 1


class MinHasher:
    """Vectorised MinHash over word n-gram shingles.

    Words are hashed with xxh3-64 (cached per process); an n-gram's hash is a fixed
    random linear combination of its words' hashes (mod 2^64); each of the bands*rows
    hash functions is a multiply-add-shift permutation ``(a*x + b) mod 2^64 >> 32`` with a
    random odd ``a``; a band's key folds its ``rows`` 32-bit minima into 64 bits.
    """

    def __init__(self, ngram: int = 5, bands: int = 14, rows: int = 8, seed: int = 1, cache_words: int = 500_000):
        self.n, self.bands, self.rows = int(ngram), int(bands), int(rows)
        rng = np.random.default_rng(seed)
        p = self.bands * self.rows
        self.a = rng.integers(0, 1 << 63, size=p, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self.b = rng.integers(0, 1 << 63, size=p, dtype=np.uint64)
        self.pos = rng.integers(0, 1 << 63, size=self.n, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self.fold = rng.integers(0, 1 << 63, size=self.rows, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self._cache: dict[str, int] = {}
        self._cache_max = cache_words

    def _word_hashes(self, words: list[str]) -> np.ndarray:
        c = self._cache
        if len(c) > self._cache_max:
            c.clear()
        out = np.empty(len(words), dtype=np.uint64)
        h = xxhash.xxh3_64_intdigest
        for i, w in enumerate(words):
            v = c.get(w)
            if v is None:
                v = c[w] = h(w.encode("utf-8"))
            out[i] = v
        return out

    def shingles(self, text: str) -> np.ndarray:
        """Unique 64-bit hashes of the word n-grams of the normalised text."""
        words = normalize_for_hash(text).split()
        wh = self._word_hashes(words)
        if len(wh) < self.n:  # a short text is one shingle
            return np.array([int((wh * self.pos[: len(wh)]).sum()) if len(wh) else 0], dtype=np.uint64)
        m = len(wh) - self.n + 1
        sh = wh[:m] * self.pos[0]
        for j in range(1, self.n):
            sh += wh[j:j + m] * self.pos[j]
        return np.unique(sh)

    def signature(self, text: str) -> np.ndarray:
        """bands*rows MinHash values (uint64 holding 32-bit minima)."""
        sh = self.shingles(text)
        sig = np.full(len(self.a), np.iinfo(np.uint64).max, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for s in range(0, len(sh), 4096):
                block = sh[s:s + 4096, None] * self.a[None, :] + self.b[None, :]
                np.minimum(sig, (block >> np.uint64(32)).min(axis=0), out=sig)
        return sig

    def band_keys(self, text: str) -> np.ndarray:
        """One 64-bit key per band (uint64[bands])."""
        sig = self.signature(text).reshape(self.bands, self.rows)
        with np.errstate(over="ignore"):
            return (sig * self.fold[None, :]).sum(axis=1, dtype=np.uint64) ^ (sig[:, 0] << np.uint64(32))


def exact_key(text: str) -> int:
    return xxhash.xxh3_64_intdigest(normalize_for_hash(text).encode("utf-8"))


def _propagate(labels: np.ndarray, keys: np.ndarray, idx: np.ndarray) -> bool:
    """Give every document of ``idx`` sharing a key the smallest label among them.
    Returns True if any label changed."""
    if len(idx) < 2:
        return False
    order = np.argsort(keys, kind="stable")
    k = keys[order]
    members = idx[order]
    new_group = np.empty(len(k), dtype=bool)
    new_group[0] = True
    np.not_equal(k[1:], k[:-1], out=new_group[1:])
    starts = np.flatnonzero(new_group)
    sizes = np.diff(np.append(starts, len(k)))
    multi = sizes > 1
    if not multi.any():
        return False
    lab = labels[members]
    gmin = np.minimum.reduceat(lab, starts)
    new = np.repeat(gmin, sizes)
    changed = new < lab
    if not changed.any():
        return False
    labels[members[changed]] = new[changed]
    return True


def find_duplicates(key_files: list[str], counts: list[int], exact: bool = True, near: bool = True,
                    max_rounds: int = 50, log=None) -> tuple[np.ndarray, np.ndarray]:
    """Cluster documents across shards. ``key_files[i]`` holds shard i's keys array of shape
    (1 + bands, n_i) uint64 (row 0: exact key; rows 1..: band keys) with n_i = counts[i].

    Returns (exact_dup, near_dup): boolean arrays over the global document index (shards
    concatenated in order) marking documents removed by each stage.
    """
    total = int(sum(counts))
    exact_dup = np.zeros(total, dtype=bool)
    near_dup = np.zeros(total, dtype=bool)
    if total == 0:
        return exact_dup, near_dup
    arrays = [np.load(f, mmap_mode="r") for f in key_files]
    n_bands = arrays[0].shape[0] - 1 if arrays else 0

    def row(r: int) -> np.ndarray:
        return np.concatenate([a[r] for a in arrays]) if arrays else np.zeros(0, np.uint64)

    if exact:
        k = row(0)
        order = np.argsort(k, kind="stable")  # stable: first in input order leads its group
        ks = k[order]
        first = np.empty(total, dtype=bool)
        first[0] = True
        np.not_equal(ks[1:], ks[:-1], out=first[1:])
        exact_dup[order[~first]] = True
        del k, order, ks, first
    if near and n_bands:
        alive = np.flatnonzero(~exact_dup)
        labels = np.arange(total, dtype=np.int64)
        for rnd in range(max_rounds):
            changed = False
            for b in range(n_bands):
                keys = row(1 + b)[alive]
                changed |= _propagate(labels, keys, alive)
            if log:
                log(f"near dedup: round {rnd + 1} over {n_bands} bands, labels changed: {changed}")
            if not changed:
                break
        near_dup[alive] = labels[alive] != alive
    return exact_dup, near_dup
