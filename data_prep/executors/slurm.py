"""Slurm arrays: each array task is one task of the runner. Its index and the task count come
from the array's environment (SLURM_ARRAY_TASK_ID minus SLURM_ARRAY_TASK_MIN, since arrays need
not start at 0, and SLURM_ARRAY_TASK_COUNT) unless --task-index/--num-tasks say otherwise; it runs
its share of the stage with a `LocalExecutor` over the task's cores. A stage's array starts when
every task of the array before has finished (``afterok``); a requeued or rerun task skips the
units it finished. ``data_prep/slurm/clean.sbatch`` submits the four cleaning stages this way;
tokenising is one array (``sbatch --array=0-31 ... tokenize_corpus.py``) then ``--merge``."""
from __future__ import annotations

from llmtrain_prep.runner import Task


def array_task(task_index: int | None = None, num_tasks: int | None = None) -> Task:
    """This process's task: the flags when given, else the Slurm array's, else task 0 of 1."""
    return Task.from_args(task_index, num_tasks)
