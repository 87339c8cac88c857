"""Units as Ray tasks (``pip install llmtrain[ray]``): on the cluster at ``address`` (or the one
``RAY_ADDRESS`` names), else on a local cluster of ``num_cpus`` CPUs started here and stopped
at the end. The same units as a local run or a Slurm array, run by a pool of actors (one per
CPU of the cluster, at most one per unit), each holding the stage's worker, so a worker's model
is loaded once per actor. Every unit writes its own files, on a file system all nodes share,
so the output is the same bytes as one process writes."""
from __future__ import annotations

import logging
import os

from .local import Progress

log = logging.getLogger("llmtrain_prep.runner")


def _ray():
    try:
        import ray
    except ImportError:
        raise RuntimeError("--executor ray needs Ray: pip install 'llmtrain[ray]' (or pip install ray)") from None
    return ray


class RayExecutor:
    """Use it as a context manager (``with RayExecutor() as ex:``) to keep one cluster for several
    stages; outside one, each `map` joins or starts a cluster and stops what it started. A Ray
    already initialised in this process (``ray.init`` by the caller) is used as it is."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None):
        self.address, self.num_cpus = address, num_cpus
        self._started = False

    def __enter__(self) -> RayExecutor:
        self._started = self._connect()
        return self

    def __exit__(self, *exc) -> None:
        if self._started:
            _ray().shutdown()
            self._started = False

    def _connect(self) -> bool:
        """Join or start a cluster; True when this call started Ray (and must stop it)."""
        ray = _ray()
        if ray.is_initialized():
            return False
        address = self.address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=self.num_cpus, include_dashboard=False, log_to_driver=False)
        return True

    def map(self, stage, units: list):
        ray = _ray()
        started = self._connect()
        try:
            cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
            n = min(cpus, len(units))
            actor = ray.remote(num_cpus=1)(_Worker)
            actors = [actor.remote(stage) for _ in range(n)]
            progress = Progress(stage.name, units)
            pending, queue = {}, list(enumerate(units))
            for a in actors:  # one unit per actor at a time: the biggest first, as ordered
                if queue:
                    i, u = queue.pop(0)
                    pending[a.run.remote(u)] = (a, i)
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                a, i = pending.pop(ready[0])
                try:
                    res = ray.get(ready[0])
                except ray.exceptions.RayTaskError as e:  # the unit's own error, as a local run raises it
                    raise (e.cause if isinstance(e.cause, BaseException) else e) from None
                progress.done(units[i])
                if queue:
                    j, u = queue.pop(0)
                    pending[a.run.remote(u)] = (a, j)
                yield res
        finally:
            if started:
                ray.shutdown()


class _Worker:
    """An actor: the stage's worker, made once, running one unit per call."""

    def __init__(self, stage):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        self.w = stage.worker()

    def run(self, unit):
        return self.w.run(unit)
