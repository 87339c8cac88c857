"""The points a scaling-law fit takes, the error for points that cannot be fitted, and the one
rule that groups nearly equal values (compute budgets, model sizes) in log space."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class FitError(ValueError):
    """Input that cannot be fitted (too few points, nothing left after dropping)."""


@dataclass
class Points:
    """The (N, D, C, L) points a fit uses, with labels for messages and plots."""
    N: np.ndarray
    D: np.ndarray
    C: np.ndarray
    L: np.ndarray
    labels: list = field(default_factory=list)
    M: np.ndarray | None = None  # a downstream metric per point (the task method), or None

    def __len__(self):
        return len(self.L)


def group_close(values: np.ndarray, tol_dex: float = 0.05) -> np.ndarray:
    """Group labels for positive values (log-space bins centred on the densest values).

    Repeatedly: among the values not yet grouped, take the one with the most ungrouped values
    within +-tol_dex (log10) of it (ties: the smaller value), and make those values a group. Exact
    repeats always share a group; a dense IsoFLOP budget is not chained to its neighbours through
    scattered points in between (as splitting sorted values at gaps would). Groups are numbered
    in order of their mean value.
    """
    lc = np.log10(np.asarray(values, float))
    labels = np.full(len(lc), -1)
    near = np.abs(lc[:, None] - lc[None, :]) <= tol_dex + 1e-12
    g = 0
    while (labels < 0).any():
        free = labels < 0
        counts = (near & free[None, :]).sum(1)
        counts[~free] = -1
        best = np.flatnonzero(counts == counts.max())
        c = best[np.argmin(lc[best])]
        labels[near[c] & free] = g
        g += 1
    order = np.argsort([lc[labels == k].mean() for k in range(g)])
    remap = np.empty(g, dtype=int)
    remap[order] = np.arange(g)
    return remap[labels]
