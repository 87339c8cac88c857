"""Work split over processes: the task index and count of an array job, the share of a list
each task owns, and a free local port for a process group."""
from __future__ import annotations

import os
import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def task_from_env(task_index: int | None, num_tasks: int | None) -> tuple[int, int]:
    """(task index, task count): --task-index/--num-tasks when given, else the Slurm array's
    SLURM_ARRAY_TASK_ID (minus SLURM_ARRAY_TASK_MIN: arrays need not start at 0) and
    SLURM_ARRAY_TASK_COUNT, else (0, 1). ValueError (one line) when out of range."""
    try:
        if task_index is None:
            first = int(os.environ.get("SLURM_ARRAY_TASK_MIN", "0"))  # arrays need not start at 0
            task_index = int(os.environ.get("SLURM_ARRAY_TASK_ID", "0")) - first
        if num_tasks is None:
            num_tasks = int(os.environ.get("SLURM_ARRAY_TASK_COUNT", "1"))
    except ValueError as e:
        raise ValueError(f"SLURM_ARRAY_TASK_* is not an integer ({e}); pass --task-index and --num-tasks") from None
    if num_tasks < 1 or not 0 <= task_index < num_tasks:
        raise ValueError(f"--task-index {task_index} is outside [0, --num-tasks {num_tasks}); indices start at 0")
    return task_index, num_tasks


def partition(items: list, task_index: int, num_tasks: int) -> list:
    """The items task ``task_index`` of ``num_tasks`` owns: every num_tasks-th of the list, so
    every item belongs to exactly one task."""
    if num_tasks < 1 or not 0 <= task_index < num_tasks:
        raise ValueError(f"--task-index {task_index} is outside [0, --num-tasks {num_tasks}); indices start at 0")
    return [x for i, x in enumerate(items) if i % num_tasks == task_index]
