"""Learning-rate schedules as a multiplier of the peak LR at each optimizer step.

- cosine: linear warmup, then cosine decay to min_lr_ratio at the last step.
- wsd: linear warmup, constant ("stable"), then a (1 - sqrt) cooldown to min_lr_ratio over the
  last decay_fraction of the steps (Hägele et al. 2024).
- constant: linear warmup, then constant.
"""
from __future__ import annotations

import math


def lr_multiplier(step: int, total_steps: int, schedule: str, warmup_steps: int,
                  min_lr_ratio: float = 0.1, decay_fraction: float = 0.2) -> float:
    """Multiplier for optimizer step ``step`` (0-based) of ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        span = max(1, total_steps - warmup_steps - 1)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "wsd":
        decay_steps = int(round(decay_fraction * total_steps))
        decay_start = total_steps - decay_steps
        if decay_steps <= 0 or step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start + 1) / decay_steps)
        return min_lr_ratio + (1 - min_lr_ratio) * (1 - math.sqrt(progress))
    raise ValueError(f"unknown schedule {schedule!r}")
