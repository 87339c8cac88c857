"""Keeping only the newest checkpoints of a run (checkpoint.keep_last)."""
from __future__ import annotations

import re
import shutil
from collections.abc import Iterable
from pathlib import Path


def step_folders(ckpt_dir: Path) -> dict[int, Path]:
    """{step: folder} of the ``global_stepN`` folders in ``ckpt_dir``."""
    found = {}
    for p in ckpt_dir.glob("global_step*"):
        m = re.fullmatch(r"global_step(\d+)", p.name)
        if m and p.is_dir():
            found[int(m.group(1))] = p
    return found


def prune_checkpoints(ckpt_dir: Path, keep_last: int, save_steps: Iterable[int] = (),
                      keep: Iterable[str | Path] = ()) -> list[Path]:
    """Remove every step folder but the newest ``keep_last`` up to the one ``latest`` names; that
    one, those of ``save_steps`` and the folders in ``keep`` always stay, and so do folders past
    ``latest`` (an interrupted save, overwritten when the run gets there again). A folder is
    renamed before it is deleted, so a half-deleted one never looks like a checkpoint. Call it on
    one rank, after ``latest`` is written. Returns the removed folders."""
    latest_file = ckpt_dir / "latest"
    if keep_last <= 0 or not latest_file.is_file():
        return []
    folders = step_folders(ckpt_dir)
    latest = ckpt_dir / latest_file.read_text().strip()
    latest_step = next((s for s, p in folders.items() if p == latest), None)
    if latest_step is None:
        return []
    upto = sorted(s for s in folders if s <= latest_step)
    kept = {folders[s] for s in upto[-keep_last:]} | {folders[s] for s in save_steps if s in folders}
    kept |= {Path(k).resolve() for k in keep}
    removed = []
    for s in upto:
        p = folders[s]
        if p in kept or p.resolve() in kept:
            continue
        doomed = p.with_name(f".removing-{p.name}")
        p.rename(doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        removed.append(p)
    for left in ckpt_dir.glob(".removing-global_step*"):  # from a removal that was cut off
        shutil.rmtree(left, ignore_errors=True)
    return removed
