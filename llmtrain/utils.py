"""Small shared helpers, one per job: atomic file writes (readable by the team), file hashes,
the Slurm/array task partition, a free local port."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path in ``path``'s folder to write the file to; on success it becomes
    ``path`` through a rename, so a reader never sees a half-written file and an interrupted
    write leaves the old one intact. The file gets the mode a plain ``open(path, "w")`` would
    (0644 under the usual umask), not mkstemp's 0600: teammates on a cluster must be able to
    read run records, fits and plots."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through ``atomic_path`` (synced before the rename)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8", "surrogatepass"))


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def replace_folder(tmp: str | os.PathLike, output: str | os.PathLike) -> None:
    """Publish the finished folder ``tmp`` (written beside ``output``) as ``output``. An existing
    ``output`` is swapped out first and removed after, so a reader sees the old folder or the new
    one, never a mix."""
    tmp, output = Path(tmp), Path(output)
    if output.exists():
        old = output.parent / f".{output.name}.old-{os.getpid()}"
        os.replace(output, old)
        os.replace(tmp, output)
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
    else:
        os.replace(tmp, output)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
