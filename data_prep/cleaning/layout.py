"""The files of a cleaning output folder ``OUT`` and the markers that say a piece is done::

    OUT/data/<shard>.jsonl.zst      clean documents {"id", "text", "source", "language", "language_score"}
    OUT/stats.json                  per stage, in order: documents and characters in/out, why removed,
                                    seconds; counts of bad input; per-file warnings
    OUT/removed/<stage>.jsonl       the first N documents each stage removed, for a person to read
    OUT/work/manifest.json          the input files and their shard names (same for every task)
    OUT/work/filter/<shard>.*       kept text, dedup keys, stats, removed samples, a done marker
    OUT/work/buckets/part-T-of-N.*  one buckets task's exact duplicates and near groups
    OUT/work/clusters/<shard>.*     the positions of a shard's exact and near duplicates
    OUT/work/final/<shard>.*        the write stage's stats, samples and done markers

Every file is written under a temporary name and renamed when complete; each piece's ``.done``
marker is written last and holds the hash of the settings its stage depends on (config.py), so
a rerun skips exactly the finished pieces made with the same settings.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re

import numpy as np

from llmtrain.core.files import atomic_write_bytes, atomic_write_json
from llmtrain_prep.readers import is_hf_name

log = logging.getLogger("llmtrain_prep.clean")


def canonical(path: str) -> str:
    """An input as the manifest records it: an absolute path, or hf:NAME as given."""
    return path if is_hf_name(path) else os.path.abspath(path)


def shard_name(path: str) -> str:
    """Stable name of an input's shard: a short hash of its absolute path (or hf:NAME) + its name."""
    ap = canonical(path)
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(ap))[:80]
    return f"{hashlib.sha1(ap.encode()).hexdigest()[:10]}-{base}"


def workdir(out: str) -> str:
    return os.path.join(out, "work")


def piece(out: str, kind: str, shard: str, ext: str) -> str:
    """OUT/work/<kind>/<shard><ext>: a file of one shard's piece of a stage."""
    return os.path.join(out, "work", kind, shard + ext)


def bucket_part(out: str, t: int, n: int) -> str:
    """OUT/work/buckets/part-T-of-N: the prefix of buckets task t of n's files."""
    return os.path.join(out, "work", "buckets", f"part-{t:05d}-of-{n:05d}")


def read_done(path: str, cfg_hash: str) -> dict | None:
    """A done marker's content when it exists and was made with the settings ``cfg_hash``."""
    try:
        with open(path, encoding="utf-8") as fh:
            d = json.load(fh)
    except (OSError, ValueError):
        return None
    if d.get("config_hash") != cfg_hash:
        log.warning(f"{path}: made with different settings; this piece is redone")
        return None
    return d


def shard_done(out: str, shard: str, cfg_hash: str, kind: str = "filter") -> dict | None:
    return read_done(piece(out, kind, shard, ".done"), cfg_hash)


def write_manifest(out: str, files: list[str]) -> dict:
    """Record the full input list (every task computes the same); refuse a different one."""
    wd = workdir(out)
    os.makedirs(wd, exist_ok=True)
    man = {"inputs": [canonical(f) for f in files], "shards": [shard_name(f) for f in files]}
    p = os.path.join(wd, "manifest.json")
    if os.path.exists(p):
        with open(p, encoding="utf-8") as fh:
            old = json.load(fh)
        if old != man:
            raise RuntimeError(f"{p}: this output folder was made from a different list of inputs "
                               f"({len(old['inputs'])} files, now {len(files)}); use a new --output folder")
        return man
    if len(set(man["shards"])) != len(man["shards"]):
        raise RuntimeError("two input files map to one shard name; this should not happen, please report it")
    atomic_write_json(p, man)
    return man


def read_manifest(out: str) -> dict:
    p = os.path.join(workdir(out), "manifest.json")
    try:
        with open(p, encoding="utf-8") as fh:
            return json.load(fh)
    except OSError:
        raise RuntimeError(f"{p}: missing; run the filter stage (--stage filter) on this --output first") from None


def save_npz(path: str, **arrays) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())
