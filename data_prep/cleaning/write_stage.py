"""Stage 4, write: one unit per shard. Rewrites the filtered shard without the duplicates the
clusters stage listed, masking PII, into OUT/data/<shard>.jsonl.zst; when every shard is written
(by any task), the task that sees it writes OUT/stats.json and OUT/removed/."""
from __future__ import annotations

import logging
import os

import numpy as np

from llmtrain.core.files import atomic_write_json
from llmtrain_prep.document import Document
from llmtrain_prep.runner import NotReady, Stage, Unit
from llmtrain_prep.writers import ZstJsonlWriter, iter_zst_jsonl

from .config import dedup_hash, final_hash
from .fixed_steps import DuplicateRemoval
from .layout import piece, read_manifest, shard_done
from .stats import collect, new_stats, write_report
from .steps import chain

log = logging.getLogger("llmtrain_prep.clean")


class ShardWrite:
    """The worker of the write stage: one filtered shard without its duplicates, PII masked."""

    def __init__(self, cfg, out: str):
        self.cfg, self.out = cfg, out
        self.hash = final_hash(cfg)

    def run(self, unit: Unit) -> dict:
        from .pii import PiiMask

        shard, out = unit.key, self.out
        with np.load(piece(out, "clusters", shard, ".npz")) as z:
            exact, near = z["exact"], z["near"]
        n = self.cfg.output.removed_samples
        pii = PiiMask(self.cfg.pii, n)
        steps = [DuplicateRemoval("exact_dedup", exact, n), DuplicateRemoval("near_dedup", near, n), pii]
        stats = new_stats()
        writer = ZstJsonlWriter(os.path.join(out, "data", shard + ".jsonl.zst"), self.cfg.output.zstd_level)

        def documents():
            for i, d in enumerate(iter_zst_jsonl(piece(out, "filter", shard, ".jsonl.zst"))):
                doc = Document.from_json(d)
                doc.pos = i
                yield doc

        try:
            for doc in chain(documents(), steps):
                writer.write(doc.to_json())
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        samples: dict = {}
        collect(steps, stats, samples)
        stats["stages"]["pii"]["masked"] = dict(pii.masked)
        atomic_write_json(piece(out, "final", shard, ".removed.json"), samples)
        atomic_write_json(piece(out, "final", shard, ".stats.json"), stats)
        atomic_write_json(piece(out, "final", shard, ".done"), {"config_hash": self.hash})
        return stats


class WriteStage(Stage):
    name, unit_name, verb = "write", "shard", "write"

    def __init__(self, out: str, cfg):
        self.out, self.cfg = out, cfg
        self.hash, self.dedup_hash = final_hash(cfg), dedup_hash(cfg)

    def units(self) -> list[Unit]:
        self.manifest = read_manifest(self.out)
        return [Unit(s) for s in self.manifest["shards"]]

    def is_done(self, unit: Unit) -> bool:
        return shard_done(self.out, unit.key, self.hash, "final") is not None

    def check_ready(self, todo: list[Unit]) -> None:
        missing = [u.key for u in todo if not shard_done(self.out, u.key, self.dedup_hash, "clusters")]
        if missing:
            raise NotReady(f"{len(missing)} of the {len(todo)} shards to write have no duplicate lists "
                           f"(first: {missing[0]}); run --stage clusters first")

    def before(self, mine, task) -> None:
        os.makedirs(os.path.join(self.out, "work", "final"), exist_ok=True)
        os.makedirs(os.path.join(self.out, "data"), exist_ok=True)

    def order(self, todo: list[Unit]) -> list[Unit]:
        for u in todo:
            u.size = os.path.getsize(piece(self.out, "filter", u.key, ".jsonl.zst"))
        return super().order(todo)

    def worker(self) -> ShardWrite:
        return ShardWrite(self.cfg, self.out)

    def finish(self, result) -> dict | None:
        """stats.json and removed/ once every shard is written, by whichever task sees it first."""
        if all(shard_done(self.out, s, self.hash, "final") for s in self.manifest["shards"]):
            return write_report(self.out, self.manifest, self.cfg)
        log.info("write: other tasks' shards are not written yet; the last task to finish writes stats.json")
        return None
