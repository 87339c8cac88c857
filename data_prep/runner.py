"""The task runner: one place for "take my share, skip what is done, refuse an incomplete
previous stage, run the rest" for every stage of data prep (cleaning's filter, buckets,
clusters and write; tokenising and merging).

A `Stage` lists its units of work (an input file, a key range, a shard, a tokenising task),
the same list on every task, and says when a unit is done (a marker written last, holding the
hash of every setting the unit depends on, so a unit made with other settings is redone) and
whether the stage before it is complete. `run_stage` runs one task's share:

1. ``mine``: the units task ``index`` of ``count`` owns (every count-th, `llmtrain.core.tasks.partition`);
2. ``todo``: those not done yet (a rerun, or a requeued task, resumes here);
3. if anything is left, `Stage.check_ready` raises `NotReady` naming what the stage before has
   not finished;
4. the executor runs ``todo`` (`executors/`: in this process or local processes, a Slurm array
   task, Ray), each unit through the stage's worker (`Stage.worker`: made once per process);
5. `Stage.finish` sees every result (a report, a merged manifest).

`run_all` runs every task of a stage at once: what a Ray cluster does for a whole array.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from llmtrain.core.tasks import partition, task_from_env

log = logging.getLogger("llmtrain_prep.runner")


class NotReady(RuntimeError):
    """The stage before this one has not finished (the message names what is missing and how to
    finish it)."""


@dataclass(frozen=True)
class Task:
    """Which share of a stage this process runs: task ``index`` of ``count``."""
    index: int = 0
    count: int = 1

    @classmethod
    def from_args(cls, index: int | None, count: int | None) -> Task:
        """--task-index/--num-tasks when given, else the Slurm array's (SLURM_ARRAY_TASK_ID minus
        SLURM_ARRAY_TASK_MIN, SLURM_ARRAY_TASK_COUNT), else task 0 of 1; ValueError when out of range."""
        return cls(*task_from_env(index, count))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass
class Unit:
    """One unit of work: ``key`` names it (a file, a shard, a key range), ``size`` orders the
    work (biggest first) and weighs the progress line; ``args`` is what the worker needs."""
    key: str
    args: tuple = ()
    size: int = 0


@dataclass
class StageResult:
    stage: str
    task: Task
    owned: int
    skipped: int
    processed: int
    results: list = field(default_factory=list)  # the workers' results, in the order they finished
    finished: object = None  # what Stage.finish returned


class Stage:
    """One stage of data prep. A subclass names itself (``name``, and ``unit_name`` for the log)
    and implements `units`, `is_done`, `worker`; it may refine `share`, `check_ready`,
    `before` and `finish`. A stage must pickle: local processes and Ray receive it."""

    name = "stage"
    unit_name = "unit"
    verb = "do"

    def units(self) -> list[Unit]:  # pragma: no cover
        """Every unit of the stage, in an order that is the same on every task."""
        raise NotImplementedError

    def share(self, units: list[Unit], task: Task) -> list[Unit]:
        """The units ``task`` owns: every count-th."""
        return partition(units, task.index, task.count)

    def is_done(self, unit: Unit) -> bool:  # pragma: no cover
        raise NotImplementedError

    def check_ready(self, todo: list[Unit]) -> None:
        """Raise NotReady when the stage before has not finished what ``todo`` reads."""

    def before(self, mine: list[Unit], task: Task) -> None:
        """Checks and set-up before this task's share runs (inputs checked, folders made)."""

    def worker(self):  # pragma: no cover
        """What runs units in a process: an object with ``run(unit) -> result``, made once per
        process (it may hold a model or open files)."""
        raise NotImplementedError

    def order(self, todo: list[Unit]) -> list[Unit]:
        """The order to run them in: the biggest first, so the last one to finish is small."""
        return sorted(todo, key=lambda u: -u.size)

    def finish(self, result: StageResult):
        """After this task's share: e.g. the report, once every unit of the stage is done."""
        return None


def run_stage(stage: Stage, task: Task, executor) -> StageResult:
    """Run task ``task``'s share of ``stage`` with ``executor`` (see the module doc)."""
    return _run(stage, [task], executor)


def run_all(stage: Stage, count: int, executor) -> StageResult:
    """Every task of ``stage`` (0 .. count-1) at once through one executor, as ``count`` tasks of
    an array would run it: what a Ray cluster does. The shares of all the tasks are checked,
    skipped or run together, and ``finish`` sees them as one."""
    return _run(stage, [Task(i, count) for i in range(count)], executor)


def _run(stage: Stage, tasks: list[Task], executor) -> StageResult:
    units = stage.units()
    shares = [stage.share(units, t) for t in tasks]
    mine = [u for share in shares for u in share]
    todo = [u for u in mine if not stage.is_done(u)]
    if todo:
        stage.check_ready(todo)
    for t, share in zip(tasks, shares):
        stage.before(share, t)
    who = f"task {tasks[0]}" if len(tasks) == 1 else f"{len(tasks)} tasks"
    log.info(f"{stage.name}: {who} owns {len(mine)} of {len(units)} {stage.unit_name}s; "
             f"{len(mine) - len(todo)} already done, {len(todo)} to {stage.verb}")
    result = StageResult(stage.name, tasks[0] if len(tasks) == 1 else Task(0, 1), len(mine), len(mine) - len(todo),
                         len(todo))
    if todo:
        result.results = list(executor.map(stage, stage.order(todo)))
    result.finished = stage.finish(result)
    return result
