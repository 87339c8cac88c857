"""Stages 2 and 3, buckets and clusters (datatrove's four-stage MinHash is the reference
design; the maths is in dedup.py).

buckets   unit t of N: the exact-key groups and MinHash band buckets of the keys k with
          ``k % N == t``, over every shard (OUT/work/buckets/part-T-of-N.npz)
clusters  unit t of N: joins every buckets part into duplicate clusters (small: only documents
          that share a bucket) and writes the removal lists of the shards t owns
          (OUT/work/clusters/<shard>.npz)

N is the number of tasks of the stage; any N gives the same duplicates.
"""
from __future__ import annotations

import glob
import logging
import os
import re
import time

import numpy as np

from llmtrain.core.files import atomic_write_json
from llmtrain.core.tasks import partition
from llmtrain_prep.runner import NotReady, Stage, Unit

from .config import dedup_hash, filter_hash
from .layout import bucket_part, piece, read_done, read_manifest, save_npz, shard_done

log = logging.getLogger("llmtrain_prep.clean")


def filtered_shards(out: str, cfg) -> tuple[dict, list[int]]:
    """The manifest and each shard's kept-document count; NotReady when a filter unit is missing."""
    man = read_manifest(out)
    h = filter_hash(cfg)
    counts, missing = [], []
    for f, s in zip(man["inputs"], man["shards"]):
        d = shard_done(out, s, h)
        if d is None:
            missing.append(f)
        else:
            counts.append(int(d["kept"]))
    if missing:
        raise NotReady(f"{len(missing)} of {len(man['shards'])} shards have not finished the filter stage "
                       f"(first: {missing[0]}); run the missing filter tasks first (a rerun skips finished shards)")
    return man, counts


class _DedupStage(Stage):
    """Buckets and clusters: N units, one per task of the stage."""

    def __init__(self, out: str, cfg, parts: int = 1):
        self.out, self.cfg, self.parts = out, cfg, parts
        self.hash = dedup_hash(cfg)

    def check_ready(self, todo) -> None:
        filtered_shards(self.out, self.cfg)

    def worker(self):
        return self


class BucketsStage(_DedupStage):
    name, unit_name = "buckets", "key range"

    def units(self) -> list[Unit]:
        return [Unit(f"part-{t:05d}-of-{self.parts:05d}", (t,)) for t in range(self.parts)]

    def is_done(self, unit: Unit) -> bool:
        return read_done(bucket_part(self.out, unit.args[0], self.parts) + ".done", self.hash) is not None

    def before(self, mine, task) -> None:
        os.makedirs(os.path.join(self.out, "work", "buckets"), exist_ok=True)

    def run(self, unit: Unit) -> dict:
        from .dedup import bucket_task

        t, n = unit.args[0], self.parts
        man, counts = filtered_shards(self.out, self.cfg)
        start = time.time()
        key_files = [piece(self.out, "filter", s, ".keys.npy") for s in man["shards"]]
        res = bucket_task(key_files, counts, t, n, self.cfg.dedup.exact, self.cfg.dedup.near)
        base = bucket_part(self.out, t, n)
        save_npz(base + ".npz", **res)
        atomic_write_json(base + ".done", {"config_hash": self.hash, "documents": int(sum(counts))})
        log.info(f"buckets: task {t}/{n}: {sum(counts)} documents, {len(res['exact_dups'])} exact duplicates, "
                 f"{len(res['members'])} documents in shared buckets, {time.time() - start:.1f}s")
        return {"part": t}


def bucket_parts(out: str, h: str) -> list[str]:
    """The parts of one complete buckets run with these settings (any task count); NotReady otherwise."""
    found: dict[int, set] = {}
    for p in glob.glob(os.path.join(out, "work", "buckets", "part-*-of-*.done")):
        m = re.search(r"part-(\d+)-of-(\d+)\.done$", p)
        if m and read_done(p, h):
            found.setdefault(int(m.group(2)), set()).add(int(m.group(1)))
    for n, got in sorted(found.items()):
        if len(got) == n:
            return [bucket_part(out, t, n) + ".npz" for t in range(n)]
    if not found:
        raise NotReady(f"{os.path.join(out, 'work', 'buckets')}: no finished buckets task with these settings; "
                       "run --stage buckets first")
    n, got = max(found.items(), key=lambda kv: len(kv[1]))
    missing = sorted(set(range(n)) - got)
    raise NotReady(f"buckets: {len(missing)} of {n} tasks have not finished (first: --task-index {missing[0]} "
                   f"--num-tasks {n}); run them first")


def _local(ids: np.ndarray, a: int, b: int) -> np.ndarray:
    """The global ids in [a, b), as positions from a."""
    return ids[(ids >= a) & (ids < b)] - a


class ClustersStage(_DedupStage):
    """Unit t of N: the shards task t owns (every N-th), written when not done yet; the
    clusters are computed once per unit."""

    name, unit_name = "clusters", "shard group"

    def units(self) -> list[Unit]:
        shards = read_manifest(self.out)["shards"]
        return [Unit(f"group-{t}-of-{self.parts}", (t, partition(list(range(len(shards))), t, self.parts)))
                for t in range(self.parts)]

    def _todo(self, unit: Unit, shards: list[str]) -> list[int]:
        return [i for i in unit.args[1] if not shard_done(self.out, shards[i], self.hash, "clusters")]

    def is_done(self, unit: Unit) -> bool:
        return not self._todo(unit, read_manifest(self.out)["shards"])

    def check_ready(self, todo) -> None:
        super().check_ready(todo)
        bucket_parts(self.out, self.hash)

    def before(self, mine, task) -> None:
        os.makedirs(os.path.join(self.out, "work", "clusters"), exist_ok=True)

    def run(self, unit: Unit) -> dict:
        from .dedup import find_clusters

        man, counts = filtered_shards(self.out, self.cfg)
        todo = self._todo(unit, man["shards"])
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        start = time.time()
        exact, members, groups, off = [], [], [], 0
        for p in bucket_parts(self.out, self.hash):
            with np.load(p) as z:
                exact.append(z["exact_dups"])
                members.append(z["members"])
                groups.append(z["groups"] + off)
                off += int(z["groups"].max()) + 1 if len(z["groups"]) else 0
        exact_ids = np.sort(np.concatenate(exact))
        near_ids = (find_clusters(exact_ids, np.concatenate(members), np.concatenate(groups)) if self.cfg.dedup.near
                    else np.zeros(0, np.int64))
        log.info(f"clusters: {len(exact_ids)} exact and {len(near_ids)} near duplicates, {time.time() - start:.1f}s")
        for i in todo:
            a, b = offsets[i], offsets[i + 1]
            s = man["shards"][i]
            save_npz(piece(self.out, "clusters", s, ".npz"), exact=_local(exact_ids, a, b),
                     near=_local(near_ids, a, b))
            atomic_write_json(piece(self.out, "clusters", s, ".done"), {"config_hash": self.hash})
        return {"shards": len(todo)}
