"""The cleaning pipeline: four stages on the task runner (data_prep/runner.py).

=========  ============================================  ===================================
stage      one unit does                                 units
=========  ============================================  ===================================
filter     read → HTML → unicode → filters, per input;    input files (one file, one shard)
           writes the kept text and its dedup keys       (filter_stage.py)
buckets    exact-key groups and MinHash band buckets of  key ranges ``key % N`` (dedup_stages.py)
           the keys it owns, over every shard
clusters   joins every buckets part into duplicate       shard groups: every N-th shard
           clusters; writes its shards' removal lists    (dedup_stages.py)
write      rewrites a shard without its duplicates,      shards (write_stage.py)
           masks PII; the last task writes stats.json
=========  ============================================  ===================================

Task I of N runs its share of a stage's units (N = 1: all of them), skips those already done
with the same settings, and refuses to start while the stage it reads is incomplete, naming
what is missing. The union of N tasks of a stage is exactly what one task writes, whichever
executor runs them (local processes, a Slurm array, Ray). The files are described in
layout.py.
"""
from __future__ import annotations

from llmtrain.core.tasks import partition  # noqa: F401  (the share of a task, as the tests and scripts know it)
from llmtrain_prep.executors import LocalExecutor
from llmtrain_prep.readers import ALL_SUFFIXES, expand_inputs
from llmtrain_prep.runner import Task, run_all, run_stage
from llmtrain_prep.writers import iter_zst_jsonl  # noqa: F401

from .dedup_stages import BucketsStage, ClustersStage
from .filter_stage import FilterStage, filter_steps  # noqa: F401
from .layout import canonical, read_manifest, shard_name  # noqa: F401
from .stats import STAGES, merge_stats, new_stats  # noqa: F401
from .write_stage import WriteStage

# The command line's stages, in the order they run.
TASK_STAGES = ("filter", "buckets", "clusters", "write")
FILTER_PASS_STAGES = STAGES[:-3]


def expand(inputs: list[str]) -> list[str]:
    return expand_inputs(inputs, suffixes=ALL_SUFFIXES)


def make_stage(name: str, out: str, cfg, files: list[str] | None = None, parts: int = 1):
    """The stage called ``name`` on the output folder ``out``; ``parts``: the number of key
    ranges of buckets and of shard groups of clusters (their number of tasks)."""
    if name == "filter":
        return FilterStage(files or [], out, cfg)
    if name == "buckets":
        return BucketsStage(out, cfg, parts)
    if name == "clusters":
        return ClustersStage(out, cfg, parts)
    if name == "write":
        return WriteStage(out, cfg)
    raise ValueError(f"no stage {name!r}; the stages are {', '.join(TASK_STAGES)}")


def _run(stage, task_index: int, num_tasks: int, executor):
    return run_stage(stage, Task(task_index, num_tasks), executor or LocalExecutor(1))


def run_filter(files: list[str], out: str, cfg, workers: int = 1, task_index: int = 0, num_tasks: int = 1,
               executor=None) -> dict:
    """Stage 1 over this task's share of ``files``. Returns the merged stats of its shards."""
    r = _run(FilterStage(files, out, cfg), task_index, num_tasks, executor or LocalExecutor(workers))
    return {"owned": r.owned, "skipped": r.skipped, "processed": r.processed, "stats": r.finished}


def run_buckets(out: str, cfg, task_index: int = 0, num_tasks: int = 1, executor=None) -> dict:
    """Stage 2: this task's key range of the exact keys and of every band's keys."""
    r = _run(BucketsStage(out, cfg, num_tasks), task_index, num_tasks, executor)
    return {"processed": r.processed, "skipped": r.skipped}


def run_clusters(out: str, cfg, task_index: int = 0, num_tasks: int = 1, executor=None) -> dict:
    """Stage 3: join every buckets part into clusters; write the removal lists of this task's shards."""
    r = _run(ClustersStage(out, cfg, num_tasks), task_index, num_tasks, executor)
    return {"processed": r.processed, "skipped": r.skipped}


def run_write(out: str, cfg, task_index: int = 0, num_tasks: int = 1, workers: int = 1, executor=None) -> dict | None:
    """Stage 4 over this task's shards; then, if every shard is written (by any task),
    stats.json and removed/. Returns the report when it wrote one."""
    return _run(WriteStage(out, cfg), task_index, num_tasks, executor or LocalExecutor(workers)).finished


def run_dedup(out: str, cfg, workers: int = 1) -> dict:
    """Stages 2-4 in one process (after the filter stage): buckets, clusters, write."""
    run_buckets(out, cfg)
    run_clusters(out, cfg)
    return run_write(out, cfg, workers=workers)


def run_every_task(stages: list[str], out: str, cfg, executor, files: list[str] | None = None,
                   parts: int = 1) -> dict:
    """``stages`` in order, each as all its tasks at once through ``executor`` (Ray): what a
    Slurm array of ``parts`` tasks per stage writes. Returns {stage: its StageResult}."""
    results = {}
    for name in stages:
        stage = make_stage(name, out, cfg, files, parts)
        results[name] = run_all(stage, parts if name in ("buckets", "clusters") else 1, executor)
    return results
