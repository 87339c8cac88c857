"""How a compute budget splits into parameters and tokens: N_opt = k_N C^a and D_opt = k_D C^b,
fitted as straight lines in log-log by least squares. Approach 2 fits them to the IsoFLOP minima
(``isoflop``), Kaplan et al. (Fig. 14) to the points on the compute frontier (``kaplan``).

Parameters are rows [a, log k_N, b, log k_D]; the bootstrap resamples the (C, N, D) rows (pairs
bootstrap), skipping a replicate whose rows hold fewer than two distinct C.
"""
from __future__ import annotations

import math

import numpy as np

from llmtrain.scaling.bootstrap import resample_rows


def linfit(x, y):
    """OLS y = c0 + c1 x: (c1, c0, se1, se0)."""
    Xd = np.column_stack([np.ones_like(x), x])
    beta, *_ = np.linalg.lstsq(Xd, y, rcond=None)
    dof = len(x) - 2
    if dof > 0:
        s2 = float(((y - Xd @ beta) ** 2).sum() / dof)
        cov = s2 * np.linalg.inv(Xd.T @ Xd)
        se = np.sqrt(np.diag(cov))
    else:
        se = np.array([np.nan, np.nan])
    return beta[1], beta[0], se[1], se[0]


def bootstrap_lines(lC: np.ndarray, lN: np.ndarray, lD: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(B, 4) rows [a, log k_N, b, log k_D] refitted on resampled rows (the replicates that can be
    fitted: B <= n_boot)."""
    reps = []
    for i in resample_rows(len(lC), n_boot, seed):
        if len(np.unique(lC[i])) < 2:
            continue
        reps.append((*linfit(lC[i], lN[i])[:2], *linfit(lC[i], lD[i])[:2]))
    return np.array(reps).reshape(-1, 4)


def optimum(params, C) -> dict:
    """N_opt and D_opt at compute C for parameters [a, log k_N, b, log k_D] (one row or many)."""
    p = np.asarray(params, float)
    lt = math.log(C)
    with np.errstate(over="ignore"):
        return {"N": np.exp(p[..., 1] + p[..., 0] * lt), "D": np.exp(p[..., 3] + p[..., 2] * lt)}
