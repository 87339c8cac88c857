"""Multiple-choice task metrics: load and check a task file, tokenize, batch, score from logits.

A task file is JSON Lines, one example a line::

    {"context": "The capital of France is", "choices": [" Paris", " Rome", " Berlin"], "label": 0}

Other keys on a line (an id, a source) are kept out of the way and ignored. The task's name is
the file's stem (``data/tasks/python_docs_cloze.jsonl`` → ``python_docs_cloze``).

Scoring follows lm-evaluation-harness's ``loglikelihood`` for causal models:

- each choice is appended to the context verbatim (write the separating space at the start of
  each choice, as lm-eval's ``target_delimiter=" "`` does); whitespace at the end of the context
  is moved to the start of the choice;
- the continuation's tokens are those of ``encode(context + choice)`` after the first
  ``len(encode(context))`` tokens (an empty context is the end-of-document token; when the
  tokenizer merges across the boundary, so that no such split exists, the choice is encoded on
  its own);
- a row is context + continuation tokens, cut from the left to ``seq_len + 1`` tokens (inputs
  are the first ``seq_len``, targets shifted by one), so long contexts lose their beginning;
- ``acc``: the choice with the highest summed log-likelihood of its tokens is the label;
- ``acc_norm``: the same with each sum divided by the choice's length in characters (Python
  ``len`` of the choice string as written in the file, leading space included) — lm-eval's
  ``acc_norm``. Ties go to the first choice.

Rows are packed longest first into batches of a few fixed shapes (the training micro-batch's,
micro x seq_len, and as many tokens in halved widths for short rows; right-padded), so a
compiled kernel compiles each once and never sees a new shape; the examples (all choices of an
example together) are split round-robin over data-parallel ranks, so each rank counts its own
correct answers and one all-reduce of the counts gives the totals.
"""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable

import numpy as np
import torch

from llmtrain.core.errors import ConfigError
from llmtrain.core.paths import REPO_ROOT

__all__ = ["Example", "Task", "Row", "Batch", "TaskScorer", "task_name", "resolve_task_path", "load_task",
           "load_tasks", "encode_pair", "build_rows", "make_batches", "batch_widths", "batch_scores", "count_correct",
           "local_examples", "FORMAT"]

FORMAT = '{"context": str, "choices": [str, ...], "label": int}'


@dataclass
class Example:
    context: str
    choices: list[str]
    label: int


@dataclass
class Task:
    name: str
    path: Path
    examples: list[Example] = field(default_factory=list)


# ----------------------------------------------------------------------------- loading


def task_name(path: str | Path) -> str:
    """The file's stem: data/tasks/a.jsonl → a (also .jsonl.gz, .json)."""
    name = Path(path).name
    for suffix in (".jsonl.gz", ".json.gz", ".jsonl", ".json"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def resolve_task_path(path: str | Path) -> Path:
    """``path`` as given (relative to the current folder), else relative to the project folder
    (so ``data/tasks/NAME.jsonl`` works from anywhere)."""
    p = Path(path).expanduser()
    if not p.is_absolute() and not p.exists() and (REPO_ROOT / p).exists():
        return REPO_ROOT / p
    return p


def _fail(where: str, msg: str) -> ConfigError:
    return ConfigError(f"{where}: {msg}")


def _check_line(obj, where: str) -> Example:
    if not isinstance(obj, dict):
        raise _fail(where, f"not a JSON object; each line must be {FORMAT}")
    for key in ("context", "choices", "label"):
        if key not in obj:
            raise _fail(where, f'missing "{key}"; each line must be {FORMAT}')
    context, choices, label = obj["context"], obj["choices"], obj["label"]
    if not isinstance(context, str):
        raise _fail(where, f'"context" is {type(context).__name__}, not a string; write the prompt text as a string')
    if not isinstance(choices, list) or not choices:
        raise _fail(where, '"choices" is empty or not a list; give a list of two or more answer strings')
    if len(choices) < 2:
        raise _fail(where, '"choices" has only one choice; a multiple-choice line needs two or more')
    for i, c in enumerate(choices):
        if not isinstance(c, str) or not c:
            raise _fail(where, f'choice {i} is {c!r}, not a non-empty string; every choice must be text')
    if isinstance(label, bool) or not isinstance(label, int):
        raise _fail(where, f'"label" {label!r} is not an integer; give the 0-based index of the correct choice')
    if not 0 <= label < len(choices):
        raise _fail(where, f'"label" {label} is out of range for {len(choices)} choices; give the 0-based index of '
                           f'the correct choice (0..{len(choices) - 1})')
    return Example(context, list(choices), label)


def load_task(path: str | Path) -> Task:
    """Read and check a task file; ConfigError naming the file, the line and the fix."""
    p = resolve_task_path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: task file not found (train.eval_tasks); give JSON Lines files of {FORMAT}, "
                          f"e.g. data/tasks/python_docs_cloze.jsonl")
    opener = gzip.open if p.name.endswith(".gz") else open
    task = Task(task_name(p), p)
    try:
        with opener(p, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{p}:{n}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise _fail(where, f"malformed JSON ({e.msg} at column {e.colno}); each line must be one "
                                       f"JSON object {FORMAT}") from None
                task.examples.append(_check_line(obj, where))
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not UTF-8 text; save the task file as UTF-8 JSON Lines") from None
    except (OSError, EOFError) as e:
        raise ConfigError(f"{p}: cannot be read ({e}); give an uncompressed or gzip JSON Lines file") from None
    if not task.examples:
        raise ConfigError(f"{p}: no examples; the file must hold one JSON object {FORMAT} a line")
    return task


def load_tasks(paths: list[str]) -> list[Task]:
    """Every file of train.eval_tasks, checked; two files with the same name are an error."""
    tasks = [load_task(p) for p in paths]
    seen: dict[str, Path] = {}
    for t in tasks:
        if t.name in seen:
            raise ConfigError(f"train.eval_tasks: {seen[t.name]} and {t.path} are both named '{t.name}' (the file "
                              f"stem names a task's metrics); rename one of them")
        seen[t.name] = t.path
    return tasks


# ----------------------------------------------------------------------------- rows and batches


@dataclass
class Row:
    task: int  # index into the task list
    example: int  # index into the task's examples
    choice: int
    tokens: list[int]  # context + continuation, at most seq_len + 1 tokens
    n_cont: int  # continuation tokens scored (the last n_cont targets)
    dropped: int = 0  # tokens cut from the left to fit seq_len + 1


def encode_pair(tokenizer, eod_id: int, context: str, choice: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lm-evaluation-harness forms them."""
    n_space = len(context) - len(context.rstrip())
    if n_space:
        context, choice = context[:-n_space], context[-n_space:] + choice
    if not context:
        return [eod_id], tokenizer.encode(choice).ids
    ctx = tokenizer.encode(context).ids
    whole = tokenizer.encode(context + choice).ids
    cont = whole[len(ctx):]
    if not cont or whole[:len(ctx)] != ctx:  # the merge crossed the boundary: encode the two apart
        cont = tokenizer.encode(choice).ids
    return ctx, cont


def local_examples(tasks: list[Task], dp_rank: int, dp_world: int) -> list[tuple[int, int]]:
    """(task, example) pairs this data-parallel rank scores: every dp_world-th of all examples."""
    pairs = [(ti, ei) for ti, t in enumerate(tasks) for ei in range(len(t.examples))]
    return pairs[dp_rank::dp_world]


def build_rows(tasks: list[Task], tokenizer, eod_id: int, seq_len: int,
               examples: list[tuple[int, int]] | None = None) -> list[Row]:
    """One row per (example, choice) of ``examples`` (default: all), cut from the left to
    seq_len + 1 tokens."""
    if examples is None:
        examples = local_examples(tasks, 0, 1)
    rows = []
    for ti, ei in examples:
        ex = tasks[ti].examples[ei]
        for ci, choice in enumerate(ex.choices):
            ctx, cont = encode_pair(tokenizer, eod_id, ex.context, choice)
            full = ctx + cont
            tokens = full[-(seq_len + 1):]
            rows.append(Row(ti, ei, ci, tokens, min(len(cont), len(tokens) - 1), len(full) - len(tokens)))
    return rows


@dataclass
class Batch:
    x: torch.Tensor  # (B, W) inputs
    y: torch.Tensor  # (B, W) targets
    mask: torch.Tensor  # (B, W) true at the scored (continuation) positions
    rows: list[int]  # the rows in this batch, in order (batch rows beyond them are padding)


SHAPES = 4  # at most this many batch shapes per task set (each is compiled once, then reused)


def batch_widths(width: int, shapes: int) -> list[int]:
    """The batch widths: ``width`` and its halvings, ``shapes`` of them at most, none under 16."""
    return [width >> k for k in range(shapes) if k == 0 or width >> k >= 16]


def make_batches(rows: list[Row], batch_size: int, width: int, pad_id: int = 0, shapes: int = 1) -> list[Batch]:
    """Rows packed longest first into batches of fixed shapes, right-padded: each batch is as
    wide as the smallest of ``batch_widths(width, shapes)`` that holds its longest row and holds
    batch_size x width / that width rows (the last one filled with padding rows), so every batch
    has one of at most ``shapes`` shapes, all of batch_size x width tokens, whatever the rows."""
    widths = sorted(batch_widths(width, shapes))
    order = sorted(range(len(rows)), key=lambda i: (-len(rows[i].tokens), i))
    out, s = [], 0
    while s < len(order):
        w = next(x for x in widths if x >= len(rows[order[s]].tokens) - 1)
        n = batch_size * width // w
        chunk = order[s:s + n]
        s += len(chunk)
        x = torch.full((n, w), pad_id, dtype=torch.long)
        y = torch.full((n, w), pad_id, dtype=torch.long)
        mask = torch.zeros((n, w), dtype=torch.bool)
        for b, i in enumerate(chunk):
            tok = rows[i].tokens
            k = len(tok) - 1
            x[b, :k] = torch.tensor(tok[:-1])
            y[b, :k] = torch.tensor(tok[1:])
            mask[b, k - rows[i].n_cont:k] = True
        out.append(Batch(x, y, mask, chunk))
    return out


def padding_batch(batch_size: int, width: int, pad_id: int = 0) -> Batch:
    z = torch.full((batch_size, width), pad_id, dtype=torch.long)
    return Batch(z, z, torch.zeros_like(z, dtype=torch.bool), [])


def batch_scores(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Summed log-likelihood of each real row's continuation tokens (a device tensor)."""
    y = batch.y.to(logits.device, non_blocking=True)
    mask = batch.mask.to(logits.device, non_blocking=True)
    logits = logits.float()
    token_lp = logits.gather(-1, y.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return (token_lp * mask).sum(dim=1)[:len(batch.rows)]


def count_correct(tasks: list[Task], rows: list[Row], scores) -> np.ndarray:
    """(n_tasks, 3): [correct by acc, correct by acc_norm, examples] from each row's score
    (rows hold every choice of their examples)."""
    scores = np.asarray(scores, dtype=np.float64)
    per_example: dict[tuple[int, int], dict[int, float]] = {}
    for r, s in zip(rows, scores):
        per_example.setdefault((r.task, r.example), {})[r.choice] = float(s)
    counts = np.zeros((len(tasks), 3), dtype=np.float64)
    for (ti, ei), by_choice in per_example.items():
        ex = tasks[ti].examples[ei]
        s = np.array([by_choice[c] for c in range(len(ex.choices))])
        norm = s / np.array([len(c) for c in ex.choices], dtype=np.float64)
        counts[ti] += (int(np.argmax(s)) == ex.label, int(np.argmax(norm)) == ex.label, 1)
    return counts


# ----------------------------------------------------------------------------- scoring


class TaskScorer:
    """This data-parallel rank's share of the tasks, tokenized and batched once; ``run`` scores
    them with a logits function and returns the counts (not yet reduced over ranks).

    Batches come in at most ``shapes`` fixed shapes (right-padded; causal attention keeps the
    padding out of every real row's scores): batch_size x seq_len, the training micro-batch's,
    and, for shorter rows, as many tokens in halved widths (``make_batches``). A compiled model or
    flex-attention kernel therefore compiles each shape once, at the first evaluation, and never
    again, whatever the examples' lengths; ``shapes=1`` keeps every call at batch_size x seq_len
    (the pipeline's buffers need that). Every rank must make the same number of ``logits_fn``
    calls (ZeRO-3, the pipeline): set ``n_calls`` to the most batches any rank has
    (``len(batches)`` by default); the ranks with fewer add padding batches."""

    def __init__(self, tasks: list[Task], tokenizer, eod_id: int, seq_len: int, batch_size: int, *,
                 shapes: int = SHAPES, dp_rank: int = 0, dp_world: int = 1):
        self.tasks = tasks
        self.batch_size, self.width, self.pad_id = batch_size, seq_len, eod_id
        self.rows = build_rows(tasks, tokenizer, eod_id, seq_len, local_examples(tasks, dp_rank, dp_world))
        self.batches = make_batches(self.rows, batch_size, seq_len, eod_id, shapes)
        self.n_calls = len(self.batches)
        self.truncated = sum(1 for r in self.rows if r.dropped)  # rows whose context lost its beginning

    def run(self, logits_fn: Callable[[torch.Tensor], torch.Tensor | None], device: torch.device) -> torch.Tensor:
        """(n_tasks, 3) float64 counts [acc correct, acc_norm correct, examples] on ``device``:
        zeros where ``logits_fn`` returns None (a pipeline stage without the logits)."""
        scores, held = [], False
        for i in range(self.n_calls):
            b = self.batches[i] if i < len(self.batches) else padding_batch(self.batch_size, self.width, self.pad_id)
            logits = logits_fn(b.x.to(device, non_blocking=True))
            if logits is None:
                continue
            held = True
            if b.rows:
                scores.append(batch_scores(logits, b))
        counts = np.zeros((len(self.tasks), 3))
        if held and scores:
            flat = torch.cat(scores).cpu().numpy()  # the one host read of this evaluation's scores
            order = [i for b in self.batches for i in b.rows]
            counts = count_correct(self.tasks, [self.rows[i] for i in order], flat)
        return torch.tensor(counts, dtype=torch.float64, device=device)
