"""Shared by the benchmark scripts: a one-line description of the machine they ran on."""
from __future__ import annotations

import os
import platform


def cpu_description() -> str:
    """'<CPU model name>, <N> cores visible' (the cores this process may use)."""
    cpu = platform.processor() or platform.machine() or "?"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {cores} cores visible"
