"""Read scaling-law points from a CSV, a run folder or a sweep folder (a folder of run folders).

A run folder holds summary.json (status "finished" when complete; n_params,
n_params_non_embedding, tokens, flops, final_valid_loss, final_train_loss, ...) and
metrics.jsonl. A run with WSD cooldown branches may list several points in summary.json
``points``: [{"tokens", "flops", "valid_loss"}, ...]; each is one (N, D) point.

Every problem is raised as SourceError with a one-line message naming the file and the line or
key; the CLI prints it and exits with status 2.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmtrain.scaling.fit import Points


class SourceError(ValueError):
    """Unreadable or unusable input, with a message meant for the user."""


@dataclass
class Loaded:
    points: Points
    kind: str  # "csv", "run" or "sweep"
    loss_source: str  # what the loss column is
    dropped: list = field(default_factory=list)  # [{"label", "reason"}]
    unfinished: list = field(default_factory=list)  # [{"run", "reason"}]
    notes: list = field(default_factory=list)


def _positive(value, where: str, what: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise SourceError(f"{where}: {what} is {value!r}, not a number") from None
    if not math.isfinite(v) or v <= 0:
        raise SourceError(f"{where}: {what} is {value!r}; it must be a positive finite number")
    return v


def read_csv(path: Path, n_col: str = "params", d_col: str = "tokens", loss_col: str = "loss",
             c_col: str = "flops") -> Loaded:
    try:
        fh = open(path, newline="")
    except OSError as e:
        raise SourceError(f"{path}: cannot read: {e.strerror}") from None
    with fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise SourceError(f"{path}: empty file; expected a header line with columns {n_col}, {d_col}, "
                              f"{loss_col}") from None
        header = [h.strip() for h in header]
        col = {h: i for i, h in enumerate(header)}
        missing = [c for c in (n_col, loss_col) if c not in col]
        has_d, has_c = d_col in col, c_col in col
        if not has_d and not has_c:
            missing.append(d_col)
        if missing:
            flags = {n_col: "--n-col", d_col: "--d-col", loss_col: "--loss-col"}
            raise SourceError(f"{path}: missing column(s) {', '.join(repr(m) for m in missing)}; columns present: "
                              f"{', '.join(header)} (name the right ones with "
                              f"{', '.join(flags[m] + ' NAME' for m in missing)})")
        N, D, C, L, labels = [], [], [], [], []
        for lineno, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise SourceError(f"{path}:{lineno}: {len(row)} fields, the header has {len(header)}")
            where = f"{path}:{lineno}"
            n = _positive(row[col[n_col]], where, f"column {n_col!r}")
            lo = _positive(row[col[loss_col]], where, f"column {loss_col!r}")
            c = _positive(row[col[c_col]], where, f"column {c_col!r}") if has_c else None
            d = _positive(row[col[d_col]], where, f"column {d_col!r}") if has_d else c / (6 * n)
            N.append(n)
            D.append(d)
            L.append(lo)
            C.append(c if has_c else 6 * n * d)
            labels.append(f"line {lineno}")
    notes = []
    if not has_c:
        notes.append(f"no {c_col!r} column: C = 6 N D")
    if not has_d:
        notes.append(f"no {d_col!r} column: D = C / (6 N)")
    return Loaded(Points(np.array(N), np.array(D), np.array(C), np.array(L), labels), "csv",
                  f"column {loss_col!r}", notes=notes)


def _is_run_folder(p: Path) -> bool:
    return any((p / f).exists() for f in ("summary.json", "metrics.jsonl", "config.yaml", "checkpoints"))


def _last_valid_loss(metrics: Path):
    """The loss of the last eval record ("split": "valid") in metrics.jsonl, or None."""
    last = None
    try:
        with open(metrics) as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by an interrupted write
                if rec.get("split") == "valid" and rec.get("loss") is not None:
                    last = rec["loss"]
    except OSError:
        return None
    return last


def read_run(run: Path, basis: str = "total"):
    """(points, unfinished reason or None, dropped list). points: [(N, D, C, L, label, loss source)]."""
    sp = run / "summary.json"
    if not sp.exists():
        return [], "no summary.json (not finished)", []
    try:
        s = json.loads(sp.read_text())
    except json.JSONDecodeError as e:
        return [], f"summary.json unreadable ({e.msg} at line {e.lineno}); not finished?", []
    if s.get("status") != "finished":
        return [], f"status {s.get('status')!r}", []
    key = "n_params" if basis == "total" else "n_params_non_embedding"
    if key not in s:
        raise SourceError(f"{sp}: key {key!r} missing (keys present: {', '.join(s)})")
    N = _positive(s[key], str(sp), f"key {key!r}")
    pts, dropped = [], []
    if s.get("points"):
        for i, p in enumerate(s["points"]):
            where = f"{sp}: points[{i}]"
            for k in ("tokens", "valid_loss"):
                if k not in p:
                    raise SourceError(f"{where}: key {k!r} missing (each point needs tokens, flops, valid_loss)")
            D = _positive(p["tokens"], where, "key 'tokens'")
            lo = p["valid_loss"]
            label = f"{run.name}@{int(D)}"
            if lo is None or not isinstance(lo, (int, float)) or not math.isfinite(lo) or lo <= 0:
                dropped.append({"label": label, "reason": f"valid_loss is {lo!r}"})
                continue
            C = 6 * N * D if basis != "total" or "flops" not in p else _positive(p["flops"], where, "key 'flops'")
            pts.append((N, D, C, float(lo), label, "valid"))
        return pts, None, dropped
    for k in ("tokens",):
        if k not in s:
            raise SourceError(f"{sp}: key {k!r} missing (keys present: {', '.join(s)})")
    D = _positive(s["tokens"], str(sp), "key 'tokens'")
    C = 6 * N * D if basis != "total" or "flops" not in s else _positive(s["flops"], str(sp), "key 'flops'")
    lo, src = s.get("final_valid_loss"), "valid"
    if lo is None:
        lo = _last_valid_loss(run / "metrics.jsonl")
    if lo is None:
        lo, src = s.get("final_train_loss"), "train"
    if lo is None or not isinstance(lo, (int, float)) or not math.isfinite(lo) or lo <= 0:
        return [], None, [{"label": run.name, "reason": f"no usable loss (final_valid_loss "
                                                         f"{s.get('final_valid_loss')!r}, final_train_loss "
                                                         f"{s.get('final_train_loss')!r})"}]
    return [(N, D, C, float(lo), run.name, src)], None, dropped


def read_runs(source: Path, basis: str = "total", allow_unfinished: bool = False) -> Loaded:
    """A run folder or a sweep folder. Planned runs (plan.json) without a folder count as unfinished."""
    if (source / "summary.json").exists() or (_is_run_folder(source) and not any(
            _is_run_folder(p) for p in source.iterdir() if p.is_dir())):
        runs, kind = [source], "run"
    else:
        runs = sorted(p for p in source.iterdir() if p.is_dir() and _is_run_folder(p))
        kind = "sweep"
    unfinished = []
    plan = source / "plan.json"
    if kind == "sweep" and plan.exists():
        try:
            planned = [r["name"] for r in json.loads(plan.read_text()).get("runs", [])]
        except (json.JSONDecodeError, KeyError, TypeError):
            planned = []
        have = {p.name for p in runs}
        unfinished += [{"run": n, "reason": "not started"} for n in planned if n not in have]
    if not runs and not unfinished:
        raise SourceError(f"{source}: no run folders (a run folder holds summary.json and metrics.jsonl)")
    rows, dropped = [], []
    for r in runs:
        pts, why, drop = read_run(r, basis)
        if why:
            unfinished.append({"run": r.name, "reason": why})
        rows += pts
        dropped += drop
    notes = []
    if unfinished:
        listing = ", ".join(f"{u['run']} ({u['reason']})" for u in unfinished)
        total = len(runs) + sum(u["reason"] == "not started" for u in unfinished)
        msg = f"{len(unfinished)} of {total} runs are unfinished: {listing}"
        if not allow_unfinished:
            raise SourceError(f"{source}: {msg}; wait for them to finish, or pass --allow-unfinished to fit "
                              "without them")
        if not rows:
            raise SourceError(f"{source}: nothing usable: {msg}")
        notes.append(msg + "; not used (--allow-unfinished)")
    if not rows:
        raise SourceError(f"{source}: no usable points: " + "; ".join(f"{d['label']}: {d['reason']}" for d in dropped))
    srcs = {r[5] for r in rows}
    if srcs == {"valid"}:
        loss_source = "validation loss"
    else:
        train = [r[4] for r in rows if r[5] == "train"]
        loss_source = ("final train loss (no validation loss recorded)" if srcs == {"train"} else
                       f"validation loss; final train loss for {len(train)} point(s) without one: {', '.join(train)}")
    if basis != "total":
        notes.append("N = non-embedding parameters; C = 6 N D with that N")
    arr = np.array([r[:4] for r in rows], float)
    return Loaded(Points(arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3], [r[4] for r in rows]), kind, loss_source,
                  dropped=dropped, unfinished=unfinished, notes=notes)


def load(source: str | Path, *, n_col="params", d_col="tokens", loss_col="loss", c_col="flops", basis="total",
         allow_unfinished=False) -> Loaded:
    p = Path(source)
    if not p.exists():
        raise SourceError(f"{p}: no such file or folder")
    if p.is_dir():
        return read_runs(p, basis, allow_unfinished)
    return read_csv(p, n_col, d_col, loss_col, c_col)


def drop_highest_loss(ld: Loaded, k: int) -> Loaded:
    """Drop the k highest-loss points (Epoch AI drop the 5 highest on Hoffmann's data)."""
    if k <= 0:
        return ld
    pts = ld.points
    order = np.argsort(pts.L, kind="stable")
    keep = np.sort(order[:-k]) if k < len(order) else np.array([], int)
    gone = np.sort(order[-k:])
    ld.dropped += [{"label": pts.labels[i], "reason": f"among the {k} highest losses ({pts.L[i]:.4g}) "
                                                       "(--drop-highest-loss)"} for i in gone]
    ld.points = Points(pts.N[keep], pts.D[keep], pts.C[keep], pts.L[keep], [pts.labels[i] for i in keep])
    return ld
