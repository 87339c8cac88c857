"""Units in this process (one worker) or over local processes."""
from __future__ import annotations

import logging
import os
import time
from multiprocessing import get_context

log = logging.getLogger("llmtrain_prep.runner")

_WORKER: dict = {}  # the stage's worker in a pool process


def _init(stage) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    _WORKER["w"] = stage.worker()


def _run(unit):
    return unit, _WORKER["w"].run(unit)


class Progress:
    """A line per finished unit: how many, how many MB of their inputs, the rate and an ETA."""

    def __init__(self, tag: str, units: list):
        self.tag, self.n, self.t0 = tag, len(units), time.time()
        self.i = self.bytes = 0

    def done(self, unit) -> None:
        self.i += 1
        self.bytes += unit.size
        el = time.time() - self.t0
        rate = self.bytes / el / 1e6 if el > 0 else 0.0
        eta = el / self.i * (self.n - self.i)
        log.info(f"[{self.tag}] {self.i}/{self.n} done, {self.bytes / 1e6:.1f} MB in {el:.0f}s ({rate:.2f} MB/s), "
                 f"ETA {eta:.0f}s")


class LocalExecutor:
    """``workers`` <= 1 (or a single unit): every unit in this process, one after another;
    else a pool of ``workers`` processes (fork, each making the stage's worker once;
    ``CLEAN_SPAWN=1`` starts them with spawn instead)."""

    def __init__(self, workers: int = 1):
        self.workers = max(1, int(workers))

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def map(self, stage, units: list):
        progress = Progress(stage.name, units)
        if self.workers <= 1 or len(units) <= 1:
            w = stage.worker()
            for u in units:
                res = w.run(u)
                progress.done(u)
                yield res
            return
        method = "spawn" if os.environ.get("CLEAN_SPAWN") else "fork"
        with get_context(method).Pool(min(self.workers, len(units)), initializer=_init, initargs=(stage,),
                                      maxtasksperchild=50) as pool:
            for unit, res in pool.imap_unordered(_run, units):
                progress.done(unit)
                yield res
