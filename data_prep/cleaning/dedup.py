"""Exact and near-duplicate (MinHash LSH) deduplication across all shards of a corpus.

Pass 1 (per shard, in the filter workers): for each kept document, an exact key
(64-bit xxh3 of its normalised text, see `text.normalize_for_hash`) and its LSH band keys
(FineWeb's parameters: word 5-gram shingles, 14 bands x 8 rows = 112 MinHash values, each
band folded to one 64-bit key) are written to ``<shard>.keys.npy`` beside the shard.
The text is not needed again until the last pass.

Buckets (`bucket_task`, split into tasks like datatrove's MinHash stage 2): task t of N
owns every key k with ``k % N == t``, the exact keys and each band's keys alike. It reads the
keys of every shard (memory-mapped, one row at a time), keeps its own, and sorts them: the
exact duplicates are every member of an exact-key group but the first in input order; each
band bucket with two or more documents is written as a group of member ids. Its memory is
~16 bytes per document per band in flight, divided by N; never the text.

Clusters (`find_clusters`, datatrove's stage 3): the groups of every task, less the exact
duplicates, joined into connected components (documents that share a bucket in any band
fall in one cluster); the first document of each cluster in input order is kept, the
others are near duplicates. Its memory grows with the number of bucketed documents, not
with the corpus.

The final write (the pipeline's last stage) rewrites each shard without the removed ones.
Global document ids are positions in the corpus: shards in manifest order, documents in
shard order, so every task numbers them alike.
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


def _own(keys: np.ndarray, task_index: int, num_tasks: int) -> np.ndarray:
    """Positions of the keys task ``task_index`` of ``num_tasks`` owns."""
    if num_tasks == 1:
        return np.arange(len(keys))
    return np.flatnonzero(keys % np.uint64(num_tasks) == np.uint64(task_index))


def _gather(arrays: list, offsets: np.ndarray, row: int, task_index: int, num_tasks: int):
    """(keys, global ids) of one key row over every shard, only the keys this task owns;
    ids ascending, so a stable sort by key keeps input order inside a group."""
    ks, ids = [], []
    for a, off in zip(arrays, offsets):
        r = np.asarray(a[row])
        sel = _own(r, task_index, num_tasks)
        ks.append(r[sel])
        ids.append(sel.astype(np.int64) + int(off))
    if not ks:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    return np.concatenate(ks), np.concatenate(ids)


def _groups(keys: np.ndarray, ids: np.ndarray):
    """Sorted by key (stable): (ids in order, start of each group of >= 2 equal keys, sizes)."""
    order = np.argsort(keys, kind="stable")
    k, members = keys[order], ids[order]
    if len(k) == 0:
        return members, np.zeros(0, np.int64), np.zeros(0, np.int64)
    new = np.empty(len(k), dtype=bool)
    new[0] = True
    np.not_equal(k[1:], k[:-1], out=new[1:])
    starts = np.flatnonzero(new)
    sizes = np.diff(np.append(starts, len(k)))
    multi = sizes > 1
    return members, starts[multi], sizes[multi]


def bucket_task(key_files: list[str], counts: list[int], task_index: int = 0, num_tasks: int = 1,
                exact: bool = True, near: bool = True) -> dict[str, np.ndarray]:
    """This task's share of the buckets. ``key_files[i]`` holds shard i's keys, shape
    (1 + bands, counts[i]) uint64 (row 0: exact key; rows 1..: band keys).

    Returns ``exact_dups`` (global ids removed as exact duplicates, sorted) and the near
    groups as two aligned arrays, ``members`` (global ids) and ``groups`` (a group number
    per member, 0.. within this task)."""
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)[:-1]
    arrays = [np.load(f, mmap_mode="r") for f in key_files]
    n_bands = arrays[0].shape[0] - 1 if arrays else 0
    exact_dups = np.zeros(0, np.int64)
    if exact:
        keys, ids = _gather(arrays, offsets, 0, task_index, num_tasks)
        members, starts, sizes = _groups(keys, ids)
        dup = np.zeros(len(members), dtype=bool)
        dup[np.repeat(starts, sizes) + _ranks(sizes)] = True  # every member of a group of equal keys ...
        dup[starts] = False  # ... but its first in input order
        exact_dups = np.sort(members[dup])
    all_members, all_groups = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    n_groups = 0
    if near:
        for b in range(n_bands):
            keys, ids = _gather(arrays, offsets, 1 + b, task_index, num_tasks)
            members, starts, sizes = _groups(keys, ids)
            if len(starts) == 0:
                continue
            pos = np.repeat(starts, sizes) + _ranks(sizes)
            all_members.append(members[pos])
            all_groups.append(np.repeat(np.arange(n_groups, n_groups + len(starts), dtype=np.int64), sizes))
            n_groups += len(starts)
    return {"exact_dups": exact_dups, "members": np.concatenate(all_members), "groups": np.concatenate(all_groups)}


def _ranks(sizes: np.ndarray) -> np.ndarray:
    """0, 1, .., size-1 for each size, concatenated."""
    if len(sizes) == 0:
        return np.zeros(0, np.int64)
    ends = np.cumsum(sizes)
    return np.arange(int(ends[-1]), dtype=np.int64) - np.repeat(ends - sizes, sizes)


def find_clusters(exact_dups: np.ndarray, members: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Near duplicates (sorted global ids): every document sharing a bucket, directly or through
    others, with an earlier document that is not an exact duplicate. ``groups`` must number
    the groups of every task apart (the caller offsets each task's numbers)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    keep = ~np.isin(members, exact_dups)
    members, groups = members[keep], groups[keep]
    if len(members) == 0:
        return np.zeros(0, np.int64)
    docs, doc_idx = np.unique(members, return_inverse=True)
    grps, grp_idx = np.unique(groups, return_inverse=True)
    n = len(docs) + len(grps)
    graph = coo_matrix((np.ones(len(members), dtype=np.int8), (doc_idx, len(docs) + grp_idx)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    comp = comp[: len(docs)]
    first = np.full(comp.max() + 1, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, comp, docs)
    return docs[docs != first[comp]]


def find_duplicates(key_files: list[str], counts: list[int], exact: bool = True, near: bool = True,
                    num_tasks: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Every stage in one process (the buckets as ``num_tasks`` parts): boolean arrays over the
    global document index marking the documents removed as exact and as near duplicates."""
    total = int(sum(counts))
    parts = [bucket_task(key_files, counts, t, num_tasks, exact, near) for t in range(num_tasks)]
    exact_ids = np.sort(np.concatenate([p["exact_dups"] for p in parts]))
    members, groups, off = [], [], 0
    for p in parts:
        members.append(p["members"])
        groups.append(p["groups"] + off)
        off += int(p["groups"].max()) + 1 if len(p["groups"]) else 0
    near_ids = find_clusters(exact_ids, np.concatenate(members), np.concatenate(groups)) if near else []
    exact_dup = np.zeros(total, dtype=bool)
    near_dup = np.zeros(total, dtype=bool)
    exact_dup[exact_ids] = True
    near_dup[near_ids] = True
    return exact_dup, near_dup
