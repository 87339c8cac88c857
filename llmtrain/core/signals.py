"""Stop requests: SIGTERM and SIGINT (what a scheduler sends before a time limit or on
preemption, and Ctrl-C), recorded from the first moments of a process so that one arriving
during a slow start-up (imports, data, engine) is not lost. The trainer reads it before every
step (train/callbacks/guards.py: StopOnSignal) and stops after saving a checkpoint."""
from __future__ import annotations

import signal

_received: list[str] = []


def catch_stop_signals() -> None:
    """From now on SIGTERM and SIGINT are recorded instead of ending the process."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _record)


def _record(signum, frame) -> None:
    _received.append(signal.Signals(signum).name)


def stop_signal() -> str | None:
    """The first stop signal this process received since catch_stop_signals, or None."""
    return _received[0] if _received else None
