"""Typed results of the scaling-law fits, written to fit.json and read back from it.

Every estimate is an ``Estimate`` {value, ci_low, ci_high, se} (the interval and se are null
without a bootstrap, unless the law has a closed-form interval). Each law's result (one class
per law: ``ChinchillaFit``, ``IsoflopFit``, ``KaplanFit``, ``TaskFit``) has ``to_json()``, the
dict fit.json holds (plain numbers, non-finite values as null), and ``from_json(d)``, the result
back: ``R.from_json(d).to_json() == d``. ``read_fit(doc)`` reads any fit.json by its ``method``.

What the plots need beyond the numbers is here too, so a fit read back from fit.json plots and
predicts like a fresh one: the fitted parameters in the form the law computes with (``theta``)
and which of fit.json's ``points`` each part of the fit used (``point_indices``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np


def jsonable(o):
    """A JSON-ready copy: numpy to Python, non-finite floats to None."""
    if isinstance(o, dict):
        return {k: jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return jsonable(o.tolist())
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


@dataclass
class Estimate:
    """A fitted or predicted quantity: its value and, with a bootstrap (or a closed-form interval),
    the interval at the fit's level and the standard error."""
    value: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    se: float | None = None

    @classmethod
    def from_samples(cls, value, samples=None, level: float = 0.95) -> Estimate:
        """The percentile interval and standard deviation of bootstrap samples (the finite ones;
        none with fewer than two)."""
        est = cls(float(value))
        if samples is not None:
            s = np.asarray(samples, float)
            s = s[np.isfinite(s)]
            if s.size >= 2:
                lo, hi = np.percentile(s, [50 * (1 - level), 50 * (1 + level)])
                est.ci_low, est.ci_high, est.se = float(lo), float(hi), float(s.std(ddof=1))
        return est

    def to_json(self) -> dict:
        return jsonable({"value": self.value, "ci_low": self.ci_low, "ci_high": self.ci_high, "se": self.se})

    @classmethod
    def from_json(cls, d: dict) -> Estimate:
        return cls(d["value"], d.get("ci_low"), d.get("ci_high"), d.get("se"))


def _estimates_json(est: dict[str, Estimate]) -> dict:
    return {k: e.to_json() for k, e in est.items()}


def _estimates_from(d: dict) -> dict[str, Estimate]:
    return {k: Estimate.from_json(v) for k, v in d.items()}


@dataclass
class BootstrapInfo:
    """How the intervals were made: n resamples at seed, percentile intervals at level."""
    n: int
    seed: int
    level: float
    resampling: str
    n_valid: int | None = None  # resamples that could be refitted, when some cannot
    starts_per_refit: str | None = None
    time_s: float | None = None

    def to_json(self) -> dict:
        out = {"n": self.n}
        if self.n_valid is not None:
            out["n_valid"] = self.n_valid
        out.update(seed=self.seed, level=self.level, resampling=self.resampling)
        if self.starts_per_refit is not None:
            out["starts_per_refit"] = self.starts_per_refit
        if self.time_s is not None:
            out["time_s"] = self.time_s
        return jsonable(out)

    @classmethod
    def from_json(cls, d: dict | None) -> BootstrapInfo | None:
        return None if d is None else cls(**d)


@dataclass
class ComputeOptimal:
    """The compute-optimal model for a budget: N, D, tokens_per_param (and the loss where the law
    predicts one)."""
    flops: float
    rule: str
    estimates: dict[str, Estimate]

    def __getitem__(self, key: str) -> Estimate:
        return self.estimates[key]

    def to_json(self) -> dict:
        return jsonable({"flops": self.flops, "rule": self.rule, **_estimates_json(self.estimates)})

    @classmethod
    def from_json(cls, d: dict | None) -> ComputeOptimal | None:
        if d is None:
            return None
        return cls(d["flops"], d["rule"], _estimates_from({k: v for k, v in d.items() if k not in ("flops", "rule")}))


@dataclass
class Prediction:
    """What a law predicts for a model of N parameters trained on D tokens (``how``: given on the
    command line, or the compute-optimal model of a budget)."""
    N: float
    D: float
    flops: float
    how: str
    estimates: dict[str, Estimate]

    KEYS: ClassVar[tuple] = ("N", "D", "flops", "how")

    def __getitem__(self, key: str) -> Estimate:
        return self.estimates[key]

    def to_json(self) -> dict:
        return jsonable({"N": self.N, "D": self.D, "flops": self.flops, "how": self.how,
                         **_estimates_json(self.estimates)})

    @classmethod
    def from_json(cls, d: dict) -> Prediction:
        return cls(d["N"], d["D"], d["flops"], d["how"],
                   _estimates_from({k: v for k, v in d.items() if k not in cls.KEYS}))


def _predictions_from(d: dict) -> list[Prediction]:
    return [Prediction.from_json(p) for p in d.get("predictions", [])]


def _add_tail(out: dict, bootstrap=None, compute_optimal=None, predictions=()) -> None:
    if bootstrap is not None:
        out["bootstrap"] = bootstrap.to_json()
    if compute_optimal is not None:
        out["compute_optimal"] = compute_optimal.to_json()
    if predictions:
        out["predictions"] = [p.to_json() for p in predictions]


# --------------------------------------------------------------------------------------------
# approach 3


@dataclass
class ChinchillaFit:
    """L = E + A / N^alpha + B / D^beta (approach 3)."""
    theta: np.ndarray  # [log A, log B, log E, alpha, beta], the log-sum-exp form fitted
    parameters: dict[str, Estimate]  # E, A, B, alpha, beta, a = beta/(alpha+beta), b = alpha/(alpha+beta)
    fit: dict  # how it was fitted: objective, solver statistics, grid
    residuals_log: list[float]  # predicted - observed log loss per point
    bootstrap: BootstrapInfo | None = None
    compute_optimal: ComputeOptimal | None = None
    predictions: list[Prediction] = field(default_factory=list)

    method: ClassVar[str] = "chinchilla"
    LAW: ClassVar[str] = "L = E + A / N^alpha + B / D^beta"

    @property
    def a(self) -> float:
        return self.parameters["a"].value

    @property
    def b(self) -> float:
        return self.parameters["b"].value

    def to_json(self) -> dict:
        out = {"law": self.LAW, "parameters": _estimates_json(self.parameters), "a": self.a, "b": self.b,
               "log_parameters": {"a_logA": float(self.theta[0]), "b_logB": float(self.theta[1]),
                                  "e_logE": float(self.theta[2])},
               "fit": self.fit, "residuals_log": list(self.residuals_log)}
        _add_tail(out, self.bootstrap, self.compute_optimal, self.predictions)
        return jsonable(out)

    @classmethod
    def from_json(cls, d: dict) -> ChinchillaFit:
        lp, par = d["log_parameters"], d["parameters"]
        theta = np.array([lp["a_logA"], lp["b_logB"], lp["e_logE"], par["alpha"]["value"], par["beta"]["value"]],
                         float)
        return cls(theta, _estimates_from(par), d["fit"], d["residuals_log"],
                   BootstrapInfo.from_json(d.get("bootstrap")), ComputeOptimal.from_json(d.get("compute_optimal")),
                   _predictions_from(d))


# --------------------------------------------------------------------------------------------
# approach 2


@dataclass
class Budget:
    """One compute budget of an IsoFLOP fit: its loss-minimising N from a parabola in log10 N."""
    flops: float
    n_points: int
    N_opt: float
    D_opt: float
    loss_opt: float
    n_used: int
    coef_log10N: list[float]  # the parabola (highest power first, for np.polyval)
    point_indices: list[int]  # the budget's points (positions in fit.json "points")
    used_indices: list[int]  # those the parabola was fitted on

    def to_json(self) -> dict:
        return jsonable(self.__dict__)

    @classmethod
    def from_json(cls, d: dict) -> Budget:
        return cls(**d)


@dataclass
class IsoflopFit:
    """N_opt = k_N C^a, D_opt = k_D C^b from the minima of IsoFLOP profiles (approach 2)."""
    parameters: dict[str, Estimate]  # a, b, k_N, k_D
    budgets: list[Budget]
    budgets_dropped: list[dict]  # {"flops", "n_points", "reason"}
    fit: dict
    bootstrap: BootstrapInfo | None = None
    regression: dict[str, Estimate] | None = None  # with a bootstrap: the regression's t-intervals of a, b
    compute_optimal: ComputeOptimal | None = None
    predictions: list[Prediction] = field(default_factory=list)

    method: ClassVar[str] = "isoflop"
    LAW: ClassVar[str] = "N_opt = k_N C^a, D_opt = k_D C^b (D_opt = C / (6 N_opt) per budget)"

    @property
    def a(self) -> float:
        return self.parameters["a"].value

    @property
    def b(self) -> float:
        return self.parameters["b"].value

    def to_json(self) -> dict:
        out = {"law": self.LAW, "parameters": _estimates_json(self.parameters), "a": self.a, "b": self.b,
               "budgets": [b.to_json() for b in self.budgets], "budgets_dropped": self.budgets_dropped,
               "fit": self.fit}
        if self.bootstrap is not None:
            out["bootstrap"] = self.bootstrap.to_json()
        if self.regression is not None:
            out["regression"] = _estimates_json(self.regression)
        _add_tail(out, None, self.compute_optimal, self.predictions)
        return jsonable(out)

    @classmethod
    def from_json(cls, d: dict) -> IsoflopFit:
        reg = d.get("regression")
        return cls(_estimates_from(d["parameters"]), [Budget.from_json(b) for b in d["budgets"]], d["budgets_dropped"],
                   d["fit"], BootstrapInfo.from_json(d.get("bootstrap")), None if reg is None else _estimates_from(reg),
                   ComputeOptimal.from_json(d.get("compute_optimal")), _predictions_from(d))


# --------------------------------------------------------------------------------------------
# Kaplan


@dataclass
class KaplanLaw:
    """L(X) = E + (X_c / X)^alpha on one frontier, X one of N, D, C."""
    name: str  # "N", "D" or "C"
    points: str  # which points form the frontier
    n_points: int
    objective_value: float
    residuals_log: list[float]
    theta: np.ndarray  # [c, e, alpha]: log L = LSE(c - alpha log X, e), c = alpha log X_c, e = log E
    point_indices: list[int]  # the frontier's points (positions in fit.json "points")

    @property
    def law(self) -> str:
        X = self.name
        return f"L({X}) = E + ({X}_c / {X})^alpha_{X}"

    def to_json(self) -> dict:
        c, e, al = (float(v) for v in self.theta)
        return jsonable({"law": self.law, "points": self.points, "n_points": self.n_points,
                         "objective_value": self.objective_value, "residuals_log": list(self.residuals_log),
                         "lse_parameters": {"c": c, "e": e, "alpha": al}, "point_indices": list(self.point_indices)})

    @classmethod
    def from_json(cls, name: str, d: dict) -> KaplanLaw:
        lp = d["lse_parameters"]
        return cls(name, d["points"], d["n_points"], d["objective_value"], d["residuals_log"],
                   np.array([lp["c"], lp["e"], lp["alpha"]], float), d["point_indices"])


@dataclass
class KaplanFit:
    """L(N), L(D), L(C), each E + (X_c / X)^alpha_X on its frontier; a, b of the compute frontier."""
    parameters: dict[str, Estimate]  # E_X, X_c, alpha_X per law; a, b when the frontier allows
    laws: dict[str, KaplanLaw]
    laws_skipped: dict[str, str]
    fit: dict
    a_b_note: str | None = None  # set with a, b
    compute_optimal: ComputeOptimal | None = None
    bootstrap: BootstrapInfo | None = None
    predictions: list[Prediction] = field(default_factory=list)

    method: ClassVar[str] = "kaplan"
    LAW: ClassVar[str] = "L(X) = E_X + (X_c / X)^alpha_X for X in N, D, C"

    @property
    def a(self) -> float | None:
        return self.parameters["a"].value if "a" in self.parameters else None

    @property
    def b(self) -> float | None:
        return self.parameters["b"].value if "b" in self.parameters else None

    def to_json(self) -> dict:
        out = {"law": self.LAW, "parameters": _estimates_json(self.parameters),
               "laws": {k: v.to_json() for k, v in self.laws.items()}, "laws_skipped": self.laws_skipped,
               "fit": self.fit, "a": self.a, "b": self.b}
        if self.a_b_note is not None:
            out["a_b_note"] = self.a_b_note
        if self.compute_optimal is not None:
            out["compute_optimal"] = self.compute_optimal.to_json()
        _add_tail(out, self.bootstrap, None, self.predictions)
        return jsonable(out)

    @classmethod
    def from_json(cls, d: dict) -> KaplanFit:
        return cls(_estimates_from(d["parameters"]), {k: KaplanLaw.from_json(k, v) for k, v in d["laws"].items()},
                   d["laws_skipped"], d["fit"], d.get("a_b_note"), ComputeOptimal.from_json(d.get("compute_optimal")),
                   BootstrapInfo.from_json(d.get("bootstrap")), _predictions_from(d))


# --------------------------------------------------------------------------------------------
# a downstream metric in two steps


@dataclass
class MetricLaw:
    """The metric against the loss under one form; its parameters are the fit's ``FORM.NAME``."""
    form: str  # "sigmoid" or "exponential"
    law: str
    rmse: float
    residuals: list[float]  # predicted - observed metric per point
    theta: np.ndarray  # the form's parameters, in the order of the fit's FORM.NAME entries
    two_step_rmse: float | None = None  # the metric predicted from N and D through the loss law

    def to_json(self) -> dict:
        out = {"law": self.law, "rmse": self.rmse, "residuals": list(self.residuals)}
        if self.two_step_rmse is not None:
            out["two_step_rmse"] = self.two_step_rmse
        return jsonable(out)

    @classmethod
    def from_json(cls, form: str, d: dict, parameters: dict) -> MetricLaw:
        theta = np.array([e["value"] for k, e in parameters.items() if k.split(".", 1)[0] == form], float)
        return cls(form, d["law"], d["rmse"], d["residuals"], theta, d.get("two_step_rmse"))


@dataclass
class TaskFit:
    """A downstream metric from N and D in two steps: the loss law, then the metric from the loss."""
    forms: list[str]
    metric_laws: dict[str, MetricLaw]
    parameters: dict[str, Estimate]  # FORM.NAME of each form; loss.E, loss.A, ... of the loss law
    fit: dict
    loss_law: ChinchillaFit | None = None
    loss_law_skipped: str | None = None  # why there is no loss law (too few points)
    bootstrap: BootstrapInfo | None = None
    predictions: list[Prediction] = field(default_factory=list)

    method: ClassVar[str] = "task"
    LAW: ClassVar[str] = "two steps: L(N, D) = E + A/N^alpha + B/D^beta, then the metric from L"

    def to_json(self) -> dict:
        out = {"law": self.LAW, "forms": list(self.forms),
               "metric_laws": {k: v.to_json() for k, v in self.metric_laws.items()},
               "parameters": _estimates_json(self.parameters)}
        if self.loss_law is not None:
            out["loss_law"] = self.loss_law.to_json()
        if self.loss_law_skipped is not None:
            out["loss_law_skipped"] = self.loss_law_skipped
        _add_tail(out, self.bootstrap, None, self.predictions)
        out["fit"] = self.fit
        return jsonable(out)

    @classmethod
    def from_json(cls, d: dict) -> TaskFit:
        par = d["parameters"]
        return cls(d["forms"], {k: MetricLaw.from_json(k, v, par) for k, v in d["metric_laws"].items()},
                   _estimates_from(par), d["fit"], ChinchillaFit.from_json(d["loss_law"]) if "loss_law" in d else None,
                   d.get("loss_law_skipped"), BootstrapInfo.from_json(d.get("bootstrap")), _predictions_from(d))


RESULTS = {r.method: r for r in (ChinchillaFit, IsoflopFit, KaplanFit, TaskFit)}
FitResult = ChinchillaFit | IsoflopFit | KaplanFit | TaskFit


def read_fit(doc: dict) -> FitResult:
    """The typed result of a fit.json document (its ``method`` names the law)."""
    return RESULTS[doc["method"]].from_json(doc)
