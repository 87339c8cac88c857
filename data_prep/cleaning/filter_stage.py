"""Stage 1, filter: one unit per input file. Read → HTML to text → unicode repair → the
registered filters; writes the kept documents (OUT/work/filter/<shard>.jsonl.zst) and, for each,
its exact key and MinHash band keys (<shard>.keys.npy), then its stats, samples of what each step
removed, and its done marker."""
from __future__ import annotations

import io
import logging
import os
import time

import numpy as np

from llmtrain.core.files import atomic_write_bytes, atomic_write_json
from llmtrain_prep.readers import check_input, input_bytes, read_documents
from llmtrain_prep.runner import Stage, Unit
from llmtrain_prep.writers import ZstJsonlWriter

from .config import filter_hash
from .fixed_steps import ReadCheck, UnicodeFix
from .layout import piece, shard_done, shard_name, write_manifest
from .stats import WarningCollector, collect, merge_stats, new_stats
from .steps import FILTERS, PipelineStep, chain

log = logging.getLogger("llmtrain_prep.clean")


def filter_steps(cfg) -> list[PipelineStep]:
    """The filter pass's steps, built from the config's sections: the fixed ones, then every
    enabled filter of the registry, in order."""
    from .html import HtmlExtract

    n = cfg.output.removed_samples
    steps: list[PipelineStep] = [ReadCheck(cfg.read, n), HtmlExtract(cfg.html, n), UnicodeFix(cfg.unicode, n)]
    for name, fcfg in cfg.filter_configs():
        if fcfg.enabled:
            steps.append(FILTERS[name](fcfg, n))
    return steps


class ShardFilter:
    """The worker of the filter stage: runs one input file through the filter pass."""

    def __init__(self, cfg, out: str):
        from .dedup import MinHasher

        self.cfg, self.out = cfg, out
        d = cfg.dedup
        self.minhash = MinHasher(d.ngram, d.bands, d.rows, d.seed) if d.near else None
        self.n_bands = d.bands if d.near else 0
        self.hash = filter_hash(cfg)

    def _documents(self, path: str, errors: dict):
        t0 = t_last = time.time()
        docs = read_documents(path, strict=False, errors=errors, max_doc_bytes=self.cfg.read.max_doc_bytes,
                              **self.cfg.reader_options())
        for i, d in enumerate(docs, 1):
            if i % 1000 == 0 and time.time() - t_last > 60:  # a big file: say how it goes
                t_last = time.time()
                log.info(f"[filter] {os.path.basename(path)}: {i} documents read, {t_last - t0:.0f}s")
            yield d

    def run(self, unit: Unit) -> dict:
        from .dedup import exact_key

        path, shard = unit.args
        stats = new_stats()
        stats["files"] = 1
        stats["bytes_in"] = input_bytes(path)
        errors: dict = {}
        steps = filter_steps(self.cfg)
        collector = WarningCollector()
        rlog = logging.getLogger("llmtrain_prep.readers")
        rlog.addHandler(collector)
        writer = ZstJsonlWriter(piece(self.out, "filter", shard, ".jsonl.zst"), self.cfg.output.zstd_level)
        keys: list[np.ndarray] = []
        try:
            for doc in chain(self._documents(path, errors), steps):
                writer.write(doc.to_json())
                k = np.empty(1 + self.n_bands, dtype=np.uint64)
                k[0] = exact_key(doc.text)
                if self.minhash is not None:
                    k[1:] = self.minhash.band_keys(doc.text)
                keys.append(k)
            # keys: row 0 the exact key, rows 1.. band keys; one column per kept document
            karr = np.stack(keys, axis=1) if keys else np.zeros((1 + self.n_bands, 0), dtype=np.uint64)
            buf = io.BytesIO()
            np.save(buf, karr)
            atomic_write_bytes(piece(self.out, "filter", shard, ".keys.npy"), buf.getvalue())
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        finally:
            rlog.removeHandler(collector)
        samples: dict = {}
        stats["bad_input"] = errors
        collect(steps, stats, samples)
        stats["warnings"] = collector.messages
        atomic_write_json(piece(self.out, "filter", shard, ".removed.json"), samples)
        atomic_write_json(piece(self.out, "filter", shard, ".stats.json"), stats)
        atomic_write_json(piece(self.out, "filter", shard, ".done"),
                          {"config_hash": self.hash, "source": path, "kept": int(karr.shape[1])})
        return stats


class FilterStage(Stage):
    """Units: the input files, one shard each. Every task records the whole input list in
    OUT/work/manifest.json (a different list in the same folder is refused) and checks its own
    inputs' columns before anything is written."""

    name, unit_name = "filter", "file"

    def __init__(self, files: list[str], out: str, cfg):
        self.files, self.out, self.cfg = files, out, cfg
        self.hash = filter_hash(cfg)

    def units(self) -> list[Unit]:
        return [Unit(shard_name(f), (f, shard_name(f))) for f in self.files]

    def is_done(self, unit: Unit) -> bool:
        return shard_done(self.out, unit.key, self.hash) is not None

    def before(self, mine: list[Unit], task) -> None:
        for u in mine:  # a missing or non-text column: one line naming the input, before anything is written
            check_input(u.args[0], **self.cfg.reader_options())
        os.makedirs(os.path.join(self.out, "work", "filter"), exist_ok=True)
        write_manifest(self.out, self.files)

    def order(self, todo: list[Unit]) -> list[Unit]:
        for u in todo:
            u.size = input_bytes(u.args[0])
        return super().order(todo)  # big files first: better packing over workers

    def worker(self) -> ShardFilter:
        return ShardFilter(self.cfg, self.out)

    def finish(self, result) -> dict:
        total = new_stats()
        for st in result.results:
            merge_stats(total, st)
        return total
