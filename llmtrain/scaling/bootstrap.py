"""Bootstrap intervals, the same way for every law.

A law's uncertainty is the spread of its refits on resamples of its points (rows drawn with
replacement). Every quantity a law reports (a parameter, the compute-optimal N and D, a predicted
loss at a target) is a function of the law's parameters, so it is computed once at the fitted
parameters and once per replicate's parameters, and ``estimates`` turns the two into
``Estimate``s (percentile interval, standard deviation). ``compute_optimal`` and ``predictions``
are the two such reports every law makes.

Resamples are drawn in one of two ways, each seeded: ``resample_counts`` gives each replicate's
row counts (multinomial), which the batched solver takes as weights (``optim.refit_lse``: all
replicates in one solve); ``resample_rows`` gives row indices, for the closed-form line fits of
the compute-optimal power laws (``laws.allocation``).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from llmtrain.scaling.results import ComputeOptimal, Estimate, Prediction


def resample_counts(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) row counts of n rows drawn with replacement, per replicate (float)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)


def resample_rows(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """n_boot arrays of n row indices drawn with replacement."""
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        yield rng.integers(0, n, n)


def estimates(values: dict, samples: dict | None, level: float) -> dict[str, Estimate]:
    """{name: Estimate} from the values at the fitted parameters and, with a bootstrap, the same
    quantities at every replicate's parameters (arrays, one entry per replicate)."""
    return {k: Estimate.from_samples(v, None if samples is None else samples[k], level) for k, v in values.items()}


def compute_optimal(flops: float, rule: str, optimum: Callable, params, replicates, level: float) -> ComputeOptimal:
    """The compute-optimal model for budget ``flops``: ``optimum(params, C)`` -> {"N", "D", ...}
    (vectorised over rows of parameters) at the fit and at every replicate; tokens per parameter
    D / N is added after N and D."""

    def at(p):
        q = dict(optimum(p, flops))
        N, D = q.pop("N"), q.pop("D")
        return {"N": N, "D": D, "tokens_per_param": D / N, **q}

    return ComputeOptimal(float(flops), rule, estimates(at(params), None if replicates is None else at(replicates),
                                                         level))


def predictions(targets, quantities: Callable, params, replicates, level: float) -> list[Prediction]:
    """What the law predicts at each target (N, D, how): ``quantities(params, N, D)`` -> {name:
    value} (vectorised over rows of parameters), at the fit and at every replicate."""
    out = []
    for N, D, how in targets:
        N, D = float(N), float(D)
        samples = None if replicates is None else quantities(replicates, N, D)
        out.append(Prediction(N, D, 6 * N * D, how, estimates(quantities(params, N, D), samples, level)))
    return out
