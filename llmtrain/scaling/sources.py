"""Read scaling-law points from a CSV, a run folder or a sweep folder (a folder of run folders).

A run folder holds summary.json (status "finished" when complete; n_params,
n_params_non_embedding, n_params_active, tokens, flops, final_valid_loss, final_train_loss, ...)
and metrics.jsonl. N is read by ``basis`` (``BASIS``): total, non_embedding, active (only the
experts a token uses: a Mixture of Experts' compute per token) or active_non_embedding; a summary
written before the active counts existed is a dense run's, whose active counts are its total ones.
A run with WSD cooldown branches may list several points in summary.json
``points``: [{"tokens", "flops", "valid_loss"}, ...]; each is one (N, D) point.

Logged metrics (``--metric`` for the task method, ``--loss-metric`` in place of the loss) are
named SPLIT/FIELD and read from metrics.jsonl records, one JSON object a line::

    {"step": S, "tokens": T, "split": "task:NAME", "acc": a, "acc_norm": b}     task:NAME/acc_norm
    {"step": S, "tokens": T, "split": "harness:TASK", "acc": a, ...}             harness:TASK/acc
    {"step": S, "tokens": T, "split": "valid", "loss": l}                        valid/loss

A run's value is summary.json ``tasks.NAME.FIELD`` (or ``harness.TASK.FIELD``, lm-evaluation-harness
tasks) when the summary carries it (``"tasks": {"NAME": {"acc": a, "acc_norm": b}}``), else the FIELD
of the last record of that split in metrics.jsonl. A point of summary.json ``points`` takes the
record of the split whose ``tokens`` equal the point's, else the point's own ``tasks.NAME.FIELD``.
Records cut short by an interrupted write are skipped.

A CSV names the metric by its column; ``where`` filters keep the rows that match
(``dataset=rpj``, ``params<1e9``).

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

from llmtrain.scaling.points import Points


# --params / basis -> the summary.json key of N
BASIS = {"total": "n_params", "non_embedding": "n_params_non_embedding", "active": "n_params_active",
         "active_non_embedding": "n_params_active_non_embedding"}


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


WHERE_OPS = ("!=", "<=", ">=", "==", "=", "<", ">")  # two-character operators first


def parse_where(expr: str) -> tuple[str, str, str]:
    """'COL<op>VALUE' -> (col, op, value) at the first operator in the string; '==' reads as '='."""
    for i in range(1, len(expr)):
        for op in WHERE_OPS:
            if expr.startswith(op, i):
                col, value = expr[:i].strip(), expr[i + len(op):].strip()
                if col and value:
                    return col, ("=" if op == "==" else op), value
                break
        else:
            continue
        break
    raise SourceError(f"--where {expr!r}: write COLUMN=VALUE, COLUMN!=VALUE or COLUMN<VALUE (<, <=, >, >=), "
                      "e.g. --where dataset=rpj --where params<1e9")


def _matches(cell: str, op: str, value: str) -> bool:
    try:
        a, b = float(cell), float(value)
    except ValueError:
        a, b = cell.strip(), value
        if op not in ("=", "!="):
            return False
    return {"=": a == b, "!=": a != b, "<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]


def _finite(value, where: str, what: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise SourceError(f"{where}: {what} is {value!r}, not a number") from None
    if not math.isfinite(v):
        raise SourceError(f"{where}: {what} is {value!r}; it must be a finite number")
    return v


def read_csv(path: Path, n_col: str = "params", d_col: str = "tokens", loss_col: str = "loss",
             c_col: str = "flops", metric_col: str | None = None, where: tuple = ()) -> Loaded:
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
        if metric_col is not None and metric_col not in col:
            missing.append(metric_col)
        filters = [parse_where(w) for w in where]
        missing += [c for c, _, _ in filters if c not in col and c not in missing]
        if missing:
            flags = {n_col: "--n-col", d_col: "--d-col", loss_col: "--loss-col", metric_col: "--metric"}
            flags.update({c: "--where" for c, _, _ in filters if c not in flags})
            raise SourceError(f"{path}: missing column(s) {', '.join(repr(m) for m in missing)}; columns present: "
                              f"{', '.join(header)} (name the right ones with "
                              f"{', '.join(flags[m] + ' NAME' for m in missing)})")
        N, D, C, L, M, labels = [], [], [], [], [], []
        n_filtered = 0
        for lineno, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise SourceError(f"{path}:{lineno}: {len(row)} fields, the header has {len(header)}")
            if not all(_matches(row[col[c]], op, v) for c, op, v in filters):
                n_filtered += 1
                continue
            at = f"{path}:{lineno}"
            if metric_col is not None:
                M.append(_finite(row[col[metric_col]], at, f"column {metric_col!r}"))
            n = _positive(row[col[n_col]], at, f"column {n_col!r}")
            lo = _positive(row[col[loss_col]], at, f"column {loss_col!r}")
            c = _positive(row[col[c_col]], at, f"column {c_col!r}") if has_c else None
            d = _positive(row[col[d_col]], at, f"column {d_col!r}") if has_d else c / (6 * n)
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
    if filters:
        notes.append(f"--where {' '.join(where)}: {len(L)} rows kept, {n_filtered} left out")
        if not L:
            raise SourceError(f"{path}: no row matches --where {' '.join(where)}")
    return Loaded(Points(np.array(N), np.array(D), np.array(C), np.array(L), labels,
                         np.array(M) if metric_col is not None else None), "csv", f"column {loss_col!r}",
                  notes=notes)


def _is_run_folder(p: Path) -> bool:
    return any((p / f).exists() for f in ("summary.json", "metrics.jsonl", "config.yaml", "checkpoints"))


def parse_metric(key: str, flag: str = "--metric") -> tuple[str, str]:
    """'task:NAME/acc_norm' -> ('task:NAME', 'acc_norm')."""
    split, sep, fld = key.rpartition("/")
    if not sep or not split or not fld:
        raise SourceError(f"{flag} {key!r}: name a logged metric as SPLIT/FIELD, e.g. task:NAME/acc_norm "
                          "or valid/loss")
    return split, fld


def _records(metrics: Path) -> list[dict]:
    """The records of metrics.jsonl that carry a split (evaluations); [] without the file."""
    out = []
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
                if isinstance(rec, dict) and rec.get("split") is not None:
                    out.append(rec)
    except OSError:
        return []
    return out


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


SUMMARY_SECTIONS = {"task:": "tasks", "harness:": "harness"}  # split prefix -> its summary.json section


def logged_keys(records: list[dict], summary: dict) -> set[str]:
    """Every SPLIT/FIELD with a number in the records or in summary.json tasks (and harness)."""
    keys = {f"{r['split']}/{k}" for r in records for k, v in r.items() if k not in ("split", "step", "tokens")
            and _number(v)}
    for prefix, section in SUMMARY_SECTIONS.items():
        tasks = summary.get(section)
        if isinstance(tasks, dict):
            keys |= {f"{prefix}{name}/{k}" for name, d in tasks.items() if isinstance(d, dict)
                     for k, v in d.items() if _number(v)}
    return keys


def _task_entry(d: dict, split: str, fld: str):
    for prefix, section in SUMMARY_SECTIONS.items():
        tasks = d.get(section) if isinstance(d, dict) else None
        name = split[len(prefix):]
        if split.startswith(prefix) and isinstance(tasks, dict) and isinstance(tasks.get(name), dict):
            v = tasks[name].get(fld)
            return v if _number(v) else None
    return None


def metric_value(records: list[dict], summary: dict, split: str, fld: str, tokens=None):
    """A run's value of SPLIT/FIELD (tokens=None) or a summary point's (tokens = its token count)."""
    if tokens is None:
        v = _task_entry(summary, split, fld)
        if v is not None:
            return float(v)
        last = None
        for r in records:
            if r.get("split") == split and _number(r.get(fld)):
                last = r[fld]
        return None if last is None else float(last)
    for r in reversed(records):
        if r.get("split") == split and _number(r.get(fld)) and r.get("tokens") == tokens:
            return float(r[fld])
    return None


def _last_valid_loss(metrics: Path):
    """The loss of the last eval record ("split": "valid") in metrics.jsonl, or None."""
    return metric_value(_records(metrics), {}, "valid", "loss")


def read_run(run: Path, basis: str = "total", metric: str | None = None, loss_metric: str | None = None):
    """(points, unfinished reason or None, dropped list, logged metric keys).
    points: [(N, D, C, L, label, loss source, metric value or None)]."""
    sp = run / "summary.json"
    if not sp.exists():
        return [], "no summary.json (not finished)", [], set()
    try:
        s = json.loads(sp.read_text())
    except json.JSONDecodeError as e:
        return [], f"summary.json unreadable ({e.msg} at line {e.lineno}); not finished?", [], set()
    if s.get("status") != "finished":
        return [], f"status {s.get('status')!r}", [], set()
    key = BASIS[basis]
    if key not in s and key.startswith("n_params_active"):  # an older dense run: active = all
        key = key.replace("_active", "")
    if key not in s:
        raise SourceError(f"{sp}: key {key!r} missing (keys present: {', '.join(s)})")
    N = _positive(s[key], str(sp), f"key {key!r}")
    # metrics.jsonl is read only when a metric is asked for or the summary has no validation loss
    need = metric or loss_metric or (not s.get("points") and s.get("final_valid_loss") is None)
    records = _records(run / "metrics.jsonl") if need else []
    logged = logged_keys(records, s)
    msplit = parse_metric(metric) if metric else None
    lsplit = parse_metric(loss_metric, "--loss-metric") if loss_metric else None
    pts, dropped = [], []
    if s.get("points"):
        for i, p in enumerate(s["points"]):
            where = f"{sp}: points[{i}]"
            for k in ("tokens", "valid_loss"):
                if k not in p:
                    raise SourceError(f"{where}: key {k!r} missing (each point needs tokens, flops, valid_loss)")
            D = _positive(p["tokens"], where, "key 'tokens'")
            logged |= logged_keys([], p)
            if lsplit:
                lo = metric_value(records, {}, *lsplit, tokens=p["tokens"])
                lo = _task_entry(p, *lsplit) if lo is None else lo
            else:
                lo = p["valid_loss"]
            label = f"{run.name}@{int(D)}"
            if lo is None or not isinstance(lo, (int, float)) or not math.isfinite(lo) or lo <= 0:
                why = f"no {loss_metric} at {int(D)} tokens" if lsplit else f"valid_loss is {lo!r}"
                dropped.append({"label": label, "reason": why})
                continue
            m = None
            if msplit:
                m = metric_value(records, {}, *msplit, tokens=p["tokens"])
                m = _task_entry(p, *msplit) if m is None else m
                if m is None:
                    dropped.append({"label": label, "reason": f"no {metric} logged at {int(D)} tokens"})
                    continue
            C = 6 * N * D if basis != "total" or "flops" not in p else _positive(p["flops"], where, "key 'flops'")
            pts.append((N, D, C, float(lo), label, loss_metric or "valid", m))
        return pts, None, dropped, logged
    for k in ("tokens",):
        if k not in s:
            raise SourceError(f"{sp}: key {k!r} missing (keys present: {', '.join(s)})")
    D = _positive(s["tokens"], str(sp), "key 'tokens'")
    C = 6 * N * D if basis != "total" or "flops" not in s else _positive(s["flops"], str(sp), "key 'flops'")
    if lsplit:
        lo, src = metric_value(records, s, *lsplit), loss_metric
        if lo is None or lo <= 0:
            return [], None, [{"label": run.name, "reason": f"no positive {loss_metric} logged ({lo!r})"}], logged
    else:
        lo, src = s.get("final_valid_loss"), "valid"
        if lo is None:
            lo = metric_value(records, {}, "valid", "loss")
        if lo is None:
            lo, src = s.get("final_train_loss"), "train"
    if lo is None or not isinstance(lo, (int, float)) or not math.isfinite(lo) or lo <= 0:
        return [], None, [{"label": run.name, "reason": f"no usable loss (final_valid_loss "
                                                         f"{s.get('final_valid_loss')!r}, final_train_loss "
                                                         f"{s.get('final_train_loss')!r})"}], logged
    m = None
    if msplit:
        m = metric_value(records, s, *msplit)
        if m is None:
            return [], None, [{"label": run.name, "reason": f"no {metric} logged"}], logged
    return [(N, D, C, float(lo), run.name, src, m)], None, dropped, logged


def _not_logged(source: Path, flag: str, key: str, logged: set[str]) -> SourceError:
    split, fld = parse_metric(key, flag)
    prefix = next((p for p in SUMMARY_SECTIONS if split.startswith(p)), None)
    how = (f'metrics.jsonl records with "split": "{split}" and a "{fld}" field'
           + (f", or summary.json {SUMMARY_SECTIONS[prefix]}.{split[len(prefix):]}.{fld}" if prefix else ""))
    have = ", ".join(sorted(logged)) if logged else "none"
    listed_in = {"task:": "train.eval_tasks", "harness:": "train.harness_tasks"}.get(prefix)
    fix = f"list the task in {listed_in} and rerun, or name a logged one" if listed_in else "name a logged one"
    return SourceError(f"{source}: no run logged {flag} {key} (looked for {how}); logged: {have}; {fix}")


def read_runs(source: Path, basis: str = "total", allow_unfinished: bool = False, metric: str | None = None,
              loss_metric: str | None = None) -> Loaded:
    """A run folder or a sweep folder. Planned runs (plan.json) without a folder count as unfinished."""
    if metric:
        parse_metric(metric)
    if loss_metric:
        parse_metric(loss_metric, "--loss-metric")
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
    rows, dropped, logged = [], [], set()
    for r in runs:
        pts, why, drop, keys = read_run(r, basis, metric, loss_metric)
        if why:
            unfinished.append({"run": r.name, "reason": why})
        rows += pts
        dropped += drop
        logged |= keys
    for flag, key in (("--loss-metric", loss_metric), ("--metric", metric)):
        if key and key not in logged and not rows:
            raise _not_logged(source, flag, key, logged)
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
    if loss_metric:
        loss_source = f"{loss_metric} (--loss-metric)"
    elif srcs == {"valid"}:
        loss_source = "validation loss"
    else:
        train = [r[4] for r in rows if r[5] == "train"]
        loss_source = ("final train loss (no validation loss recorded)" if srcs == {"train"} else
                       f"validation loss; final train loss for {len(train)} point(s) without one: {', '.join(train)}")
    if basis != "total":
        notes.append(f"N = {basis.replace('_', '-')} parameters; C = 6 N D with that N")
    arr = np.array([r[:4] for r in rows], float)
    M = np.array([r[6] for r in rows], float) if metric else None
    return Loaded(Points(arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3], [r[4] for r in rows], M), kind, loss_source,
                  dropped=dropped, unfinished=unfinished, notes=notes)


def load(source: str | Path, *, n_col="params", d_col="tokens", loss_col="loss", c_col="flops", basis="total",
         allow_unfinished=False, metric=None, loss_metric=None, where=()) -> Loaded:
    """metric: the task method's metric (SPLIT/FIELD for run folders, a column for a CSV);
    loss_metric: a logged SPLIT/FIELD read in place of the loss (run folders; a CSV has --loss-col);
    where: CSV row filters."""
    p = Path(source)
    if not p.exists():
        raise SourceError(f"{p}: no such file or folder")
    if p.is_dir():
        if where:
            raise SourceError(f"--where {' '.join(where)}: row filters apply to a CSV; {p} is a folder")
        return read_runs(p, basis, allow_unfinished, metric, loss_metric)
    if loss_metric:
        raise SourceError(f"--loss-metric {loss_metric}: reads run folders; for the CSV {p} name the loss column "
                          "with --loss-col")
    return read_csv(p, n_col, d_col, loss_col, c_col, metric, tuple(where))


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
    ld.points = Points(pts.N[keep], pts.D[keep], pts.C[keep], pts.L[keep], [pts.labels[i] for i in keep],
                       None if pts.M is None else pts.M[keep])
    return ld


def best_of_duplicates(ld: Loaded) -> Loaded:
    """Points with the same N and D (runs of a learning-rate grid) count once: the lowest loss,
    with that run's metric. The others are listed as dropped."""
    pts = ld.points
    groups: dict = {}
    for i, key in enumerate(zip(pts.N.tolist(), pts.D.tolist())):
        groups.setdefault(key, []).append(i)
    keep = []
    for idx in groups.values():
        best = min(idx, key=lambda i: pts.L[i])
        keep.append(best)
        ld.dropped += [{"label": pts.labels[i], "reason": f"same N and D as {pts.labels[best]}, whose loss "
                        f"{pts.L[best]:.4g} is lower than its {pts.L[i]:.4g} (--best-of-duplicates)"}
                       for i in idx if i != best]
    keep = np.array(sorted(keep), dtype=int)
    ld.points = Points(pts.N[keep], pts.D[keep], pts.C[keep], pts.L[keep], [pts.labels[i] for i in keep],
                       None if pts.M is None else pts.M[keep])
    return ld
