"""lm-evaluation-harness on the project's own model: no export, any checkpoint, and in the loop.

``HarnessLM`` is an ``lm_eval.api.model.LM`` (through lm-eval's ``TemplateLM``, which turns
requests into token ids) over a ``Forward``: how to get logits for a batch of token ids. Offline
(``HarnessLM.from_checkpoint``, ``launcher/evaluate.py --harness-tasks``) that is the plain GPT of
any checkpoint the other tools read (ZeRO 0-3, offload, pipeline, consolidated files, imported
folders; every model option, also those export_hf.py refuses), with its KV cache for generation.
In the loop (``llmtrain/train/callbacks/harness.py``) it is the trainer's ``module.logits`` on
every rank, whatever the layout.

It computes what lm-eval's ``hf`` backend (HFLM) computes on the folder export_hf.py writes:

- tokens: the run's tokenizer.json (the exported folder holds the same file). A string is encoded
  with the tokenizer's special tokens unless it starts with the prefix token's text (HFLM's
  ``tok_encode``). The run's end-of-document token is lm-eval's end-of-text and prefix token (the
  export makes it both bos and eos). ``max_length`` is model.seq_len (the export's
  n_positions / max_position_embeddings).
- loglikelihood: context + continuation cut from the left to max_length + 1 tokens; the last
  len(continuation) positions summed after a log-softmax over the model's whole vocabulary;
  ``is_greedy`` when the argmax at each of them is the continuation's token.
- loglikelihood_rolling: lm-eval's own windows (``get_rolling_token_windows`` from the prefix
  token, context 1, made disjoint), scored as loglikelihood rows and summed per document.
- generate_until: the context (no prefix token) cut from the left to max_length - max_gen_toks
  tokens; up to max_gen_toks new tokens, greedy unless ``do_sample`` (then temperature, top_k,
  top_p and a generator seeded with ``seed``); a row stops at the end-of-text token or once a stop
  string appears in its decoded text; the text, decoded without special tokens, is cut at the
  first stop string (lm-eval's ``postprocess_generated_text``).

Batches: loglikelihood rows sorted longest first, right-padded (attention is causal: padding
after a row never reaches it) and packed by ``make_batches`` of llmtrain/eval/tasks.py. Across
data-parallel ranks, rows are dealt round-robin in that order; every rank makes as many forward
calls (ZeRO-3 and the pipeline need it: ranks with fewer batches add padding batches), writes its
rows' results into one tensor of all rows, and one all-reduce (sum) gives every rank every result
(pipeline stages without the logits add zeros). Generation goes the same way, one token at a time:
a round of requests is dealt out, and after each forward one all-reduce gives every rank every
request's next token, so every rank takes the same stop decisions. With the KV cache (offline, one
process) each context is run once and each step runs one token per row (see ``_generate_cached``
for how rows of different lengths share a batch without a padding mask).

Tasks come from lm-eval's TaskManager; ``load_tasks`` reads only ``include_path`` when it holds
every named task (indexing lm-eval's thousands of built-in tasks takes about 20 s) and turns a bad
name, a missing folder or a missing data file into one ConfigError line.
"""
from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmtrain.core.errors import ConfigError
from llmtrain.eval.tasks import SHAPES, Row, batch_scores, make_batches, padding_batch

try:
    from lm_eval.api.model import TemplateLM
except ImportError:  # the optional extra is missing: a clear error when it is used (require_lm_eval)
    TemplateLM = object

INSTALL = "pip install -e '.[harness]' in the project folder (or pip install 'lm_eval>=0.4.13,<0.5')"
GEN_KEYS = {"until", "max_gen_toks", "do_sample", "temperature", "top_k", "top_p"}


def require_lm_eval(where: str) -> None:
    if TemplateLM is object:
        raise ConfigError(f"{where}: lm-evaluation-harness is not installed; {INSTALL}")


@dataclass
class Forward:
    """How HarnessLM reaches a model.

    ``logits(x)``: logits (B, T, V) of token ids x (B, T) on ``device``, or None on a rank that
    does not hold them (a pipeline stage before the last). Every scoring batch holds batch_size x
    seq_len tokens: with ``width`` (the pipeline's buffers) exactly batch_size x width, else in at
    most ``SHAPES`` shapes (seq_len and its halvings, more rows when narrower; see make_batches).
    ``dp_rank``/``dp_world``: this rank's share of the rows; ``reduce(t, op)`` sums ("sum") or
    maxes ("max") a device tensor over every rank, in place (None: one process). ``model``: the
    GPT itself, for generation with a KV cache (None: each generated token re-runs the whole
    sequence through ``logits``)."""

    logits: Callable[[torch.Tensor], torch.Tensor | None]
    device: torch.device
    seq_len: int
    batch_size: int
    width: int | None = None
    dp_rank: int = 0
    dp_world: int = 1
    reduce: Callable[..., Any] | None = None
    model: Any = None

    def padding(self, pad_id: int):
        return padding_batch(self.batch_size, self.width or self.seq_len, pad_id)

    def calls(self, n_local: int) -> int:
        """The forward calls every rank makes: the most batches any rank has."""
        if self.reduce is None:
            return n_local
        n = torch.tensor([float(n_local)], device=self.device)
        self.reduce(n, "max")
        return int(n.item())


def greedy_flags(logits: torch.Tensor, batch) -> torch.Tensor:
    """Whether each real row's scored targets are all the argmax of their logits."""
    y = batch.y.to(logits.device, non_blocking=True)
    mask = batch.mask.to(logits.device, non_blocking=True)
    return ((logits.argmax(dim=-1) == y) | ~mask).all(dim=1)[:len(batch.rows)]


@torch.no_grad()
def score_rows(fwd: Forward, rows: list[tuple[list[int], int]], pad_id: int,
               progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(summed log-likelihood of each row's last n tokens, whether they are the greedy tokens)
    for rows (tokens, n) of at most seq_len + 1 tokens, on every rank."""
    order = sorted(range(len(rows)), key=lambda i: (-len(rows[i][0]), i))
    local = [Row(0, i, 0, rows[i][0], rows[i][1]) for i in order[fwd.dp_rank::fwd.dp_world]]  # example: row index
    shapes = 1 if fwd.width else SHAPES
    batches = make_batches(local, fwd.batch_size, fwd.width or fwd.seq_len, pad_id, shapes)
    out = torch.zeros((2, len(rows)), dtype=torch.float64, device=fwd.device)
    n_calls = fwd.calls(len(batches))
    for k in range(n_calls):
        b = batches[k] if k < len(batches) else fwd.padding(pad_id)
        logits = fwd.logits(b.x.to(fwd.device, non_blocking=True))
        if logits is not None and b.rows:
            idx = torch.tensor([local[j].example for j in b.rows], device=fwd.device)
            out[0, idx] = batch_scores(logits, b).double()
            out[1, idx] = greedy_flags(logits, b).double()
        if progress is not None:
            progress(k + 1, n_calls)
    if fwd.reduce is not None:
        fwd.reduce(out, "sum")
    res = out.cpu().numpy()  # the one host read of these rows
    return res[0], res[1] > 0.5


class Progress:
    """A line on stderr every ``every`` seconds: calls done, rate and ETA (None: silent)."""

    def __init__(self, what: str, every: float | None):
        self.what, self.every = what, every
        self.t0 = self.last = time.time()

    def __call__(self, done: int, total: int) -> None:
        now = time.time()
        if self.every is None or now - self.last < self.every or done == total:
            return
        rate = done / max(now - self.t0, 1e-9)
        print(f"harness {self.what}: {done}/{total} forward calls, {rate:.1f}/s, ETA {(total - done) / rate:.0f} s",
              file=sys.stderr, flush=True)
        self.last = now


class HarnessLM(TemplateLM):
    """lm-eval's LM over a ``Forward``; see the module's docstring for what it computes.
    ``tokenizer``: a tokenizers.Tokenizer (llmtrain.tokenizer.load_tokenizer); ``eod_id``: the
    run's end-of-document id. ``quiet``: no progress bars or lines (the training loop)."""

    def __init__(self, fwd: Forward, tokenizer, eod_id: int, *, max_length: int | None = None,
                 max_gen_toks: int = 256, seed: int = 1234, quiet: bool = False, info: dict | None = None):
        require_lm_eval("HarnessLM")
        super().__init__()
        self.fwd, self.tok, self.eod = fwd, tokenizer, int(eod_id)
        self.max_length = int(max_length or fwd.seq_len)
        if not 1 <= self.max_length <= fwd.seq_len:
            raise ConfigError(f"max_length={self.max_length} must be in 1..{fwd.seq_len} (the model's context)")
        self.max_gen_toks = max_gen_toks
        self.quiet = quiet
        self.info = dict(info or {})
        self.cut_continuations = 0
        self._prefix_text = tokenizer.decode([self.eod], skip_special_tokens=False)
        self._sampler = torch.Generator().manual_seed(seed)
        self._device = fwd.device

    @classmethod
    def from_checkpoint(cls, checkpoint, *, batch_size: int = 8, device: str | None = None,
                        tokenizer: str | None = None, kv_cache: bool = True, **kwargs) -> HarnessLM:
        """Over the plain GPT of any checkpoint (a run folder, checkpoints/global_stepN of any layout,
        a consolidated file, an imported folder), with the run's tokenizer and end-of-document token."""
        from llmtrain.checkpoint.load import (ExportError, eod_token_id, load_model, load_tokenizer, run_info,
                                              tokenizer_path)

        require_lm_eval(str(checkpoint))
        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1 (got {batch_size})")
        info = run_info(checkpoint)
        tok_file = tokenizer_path(info, tokenizer)
        tok = load_tokenizer(tok_file)
        eod = eod_token_id(info, tok)
        model, rec = load_model(checkpoint)
        if tok.get_vocab_size() > model.cfg.vocab_size:
            raise ExportError(f"{tok_file}: vocabulary of {tok.get_vocab_size()} is larger than the model's "
                              f"{model.cfg.vocab_size}; pass --tokenizer PATH to the run's own tokenizer")
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model.to(dev)
        seq_len = model.cfg.seq_len
        fwd = Forward(logits=model, device=dev, seq_len=seq_len, batch_size=batch_size,
                      model=model if kv_cache else None)
        n_params = sum(p.numel() for p in model.parameters())
        meta = {"checkpoint": rec["source"], "step": rec["step"], "tokens": rec.get("tokens"),
                "tokenizer": str(tok_file), "model_num_parameters": n_params, "model_dtype": "torch.float32",
                "kv_cache": kv_cache}
        return cls(fwd, tok, eod, info=meta, **kwargs)

    # --- what TemplateLM asks of a model

    @property
    def eot_token_id(self) -> int:
        return self.eod

    @property
    def prefix_token_id(self) -> int:
        return self.eod

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs) -> list[int]:
        if add_special_tokens is None:  # as HFLM: no special tokens added to a string that starts with the prefix
            add_special_tokens = not string.startswith(self._prefix_text)
        ids = self.tok.encode(string, add_special_tokens=add_special_tokens).ids
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
        tokens = [tokens] if isinstance(tokens, int) else list(tokens)
        return self.tok.decode(tokens, skip_special_tokens=skip_special_tokens)

    def get_model_info(self) -> dict:
        return {**self.info, "max_length": self.max_length}

    # --- loglikelihood

    def loglikelihood(self, requests, disable_tqdm: bool | None = None):
        return super().loglikelihood(requests, disable_tqdm=self.quiet if disable_tqdm is None else disable_tqdm)

    def _row(self, context: list[int], continuation: list[int]) -> tuple[list[int], int]:
        """Context + continuation cut from the left to max_length + 1 tokens. A continuation longer
        than max_length (which HFLM refuses) is scored on its last max_length tokens, as
        train.eval_tasks scores it; ``cut_continuations`` counts them."""
        if len(continuation) > self.max_length:
            self.cut_continuations += 1
        tokens = (context + continuation)[-(self.max_length + 1):]
        return tokens, min(len(continuation), len(tokens) - 1)

    def _score(self, rows: list[tuple[list[int], int]], what: str) -> tuple[np.ndarray, np.ndarray]:
        progress = Progress(what, None if self.quiet else 10.0)
        return score_rows(self.fwd, rows, self.eod, progress)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        lp, greedy = self._score([self._row(ctx, cont) for _, ctx, cont in requests], "loglikelihood")
        out = [(float(a), bool(g)) for a, g in zip(lp, greedy)]
        for (key, _, _), answer in zip(requests, out):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, answer)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        rows, owner = [], []
        for i, req in enumerate(requests):
            windows = get_rolling_token_windows(token_list=self.tok_encode(req.args[0]),
                                                prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
                                                context_len=1)
            for ctx, pred in map(make_disjoint_window, windows):
                rows.append(self._row(ctx, pred))
                owner.append(i)
        lp, _ = self._score(rows, "loglikelihood_rolling")
        totals = [0.0] * len(requests)
        for i, v in zip(owner, lp):
            totals[i] += float(v)
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", (req.args[0],), total)
        return totals

    # --- generation

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text

        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
        eos_text = self.tok_decode(self.eod, skip_special_tokens=False)
        out: list[str] = [""] * len(requests)
        for idxs in groups.values():
            req = requests[idxs[0]]
            kwargs = normalize_gen_kwargs(req.args[1], self.max_gen_toks)
            unknown = sorted(set(kwargs) - GEN_KEYS)
            if unknown:
                raise ConfigError(f"task {req.task_name}: generation_kwargs {', '.join(unknown)} are not supported "
                                  f"(supported: {', '.join(sorted(GEN_KEYS))}); remove them from the task's YAML")
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text)
            n_new = int(kwargs.pop("max_gen_toks"))
            room = self.max_length - n_new
            if room < 1:
                raise ConfigError(f"task {req.task_name}: max_gen_toks={n_new} leaves no room for a context in the "
                                  f"model's {self.max_length} tokens; lower max_gen_toks in the task's YAML")
            contexts = [self.tok_encode(requests[i].args[0], left_truncate_len=room) for i in idxs]
            gen = self._generate_cached if self.fwd.model is not None and self.fwd.reduce is None \
                else self._generate_stepwise
            for i, ids in zip(idxs, gen(contexts, n_new, until, kwargs)):
                text = postprocess_generated_text(self.tok_decode(ids), until, None)
                out[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out

    def _next_tokens(self, logits: torch.Tensor, kwargs: dict) -> torch.Tensor:
        """(B,) next ids from last-position logits (B, V): the argmax, or a draw under do_sample."""
        if not kwargs.get("do_sample"):
            return logits.argmax(dim=-1)
        from llmtrain.eval.generate import filter_logits

        temperature = float(kwargs.get("temperature") or 1.0)
        probs = torch.softmax(filter_logits(logits.float() / temperature, kwargs.get("top_k"), kwargs.get("top_p")),
                              dim=-1)
        return torch.multinomial(probs.cpu(), 1, generator=self._sampler).squeeze(1).to(logits.device)

    def _stopped(self, ids: list[int], until: list[str]) -> bool:
        if ids and ids[-1] == self.eod:
            return True
        text = self.tok_decode(ids, skip_special_tokens=False)
        return any(s and s in text for s in until)

    @torch.no_grad()
    def _generate_cached(self, contexts: list[list[int]], n_new: int, until: list[str],
                         kwargs: dict) -> list[list[int]]:
        """With the model's KV cache, batch_size requests at a time (longest first). The model has
        no padding mask, so the rows of a batch advance together one position per step: the cache
        is filled with the first m tokens of every context (m: the batch's shortest), then each step
        feeds each row its next context token while it has one, else the token it generated last.
        Every row sees exactly its own tokens at its own positions."""
        from llmtrain.model.gpt import KVCache

        model, dev, B = self.fwd.model, self.fwd.device, self.fwd.batch_size
        out: list[list[int]] = [[] for _ in contexts]
        order = sorted(range(len(contexts)), key=lambda i: (-len(contexts[i]), i))
        for s in range(0, len(order), B):
            chunk = order[s:s + B]
            ctx = [contexts[i] for i in chunk]
            pos = min(len(c) for c in ctx)
            cache = KVCache(model.cfg.n_layer)
            logits = model(torch.tensor([c[:pos] for c in ctx], device=dev), cache=cache)[:, -1, :]
            done = [False] * len(chunk)
            while True:  # logits predict position pos of every row
                nxt = self._next_tokens(logits, kwargs).tolist()  # read each step: stops need the text
                feed = []
                for j, i in enumerate(chunk):
                    if pos < len(ctx[j]):
                        feed.append(ctx[j][pos])
                        continue
                    if not done[j]:
                        out[i].append(nxt[j])
                        done[j] = self._stopped(out[i], until) or len(out[i]) == n_new
                    feed.append(nxt[j])
                if all(done):
                    break
                logits = model(torch.tensor(feed, device=dev)[:, None], cache=cache)[:, -1, :]
                pos += 1
        return out

    @torch.no_grad()
    def _generate_stepwise(self, contexts: list[list[int]], n_new: int, until: list[str],
                           kwargs: dict) -> list[list[int]]:
        """Through ``fwd.logits`` on every rank, without a cache: rounds of batch_size requests per
        data-parallel rank; each step every rank runs its requests' whole sequences and one
        all-reduce gives every rank every request's next token."""
        fwd = self.fwd
        B, W = fwd.batch_size, fwd.dp_world
        order = sorted(range(len(contexts)), key=lambda i: (-len(contexts[i]), i))
        out: list[list[int]] = [[] for _ in contexts]
        done = [False] * len(contexts)
        for r0 in range(0, len(order), B * W):
            rnd = order[r0:r0 + B * W]
            mine = list(range(fwd.dp_rank, len(rnd), W))  # this rank's slots of the round
            for _ in range(n_new):
                if all(done[i] for i in rnd):
                    break
                picked = torch.zeros(len(rnd), dtype=torch.float64, device=fwd.device)
                seqs = [contexts[rnd[k]] + out[rnd[k]] for k in mine]
                width = fwd.width or max([len(s) for s in seqs] + [1])
                x = torch.full((B if fwd.width else max(1, len(seqs)), width), self.eod, dtype=torch.long)
                for r, s in enumerate(seqs):
                    x[r, :len(s)] = torch.tensor(s)
                logits = fwd.logits(x.to(fwd.device, non_blocking=True))
                if logits is not None and seqs:
                    last = torch.tensor([len(s) - 1 for s in seqs], device=fwd.device)
                    nxt = self._next_tokens(logits[torch.arange(len(seqs), device=fwd.device), last], kwargs)
                    picked[torch.tensor(mine, device=fwd.device)] = nxt.double()
                if fwd.reduce is not None:
                    fwd.reduce(picked, "sum")
                for i, tok_id in zip(rnd, picked.long().tolist()):
                    if not done[i]:
                        out[i].append(tok_id)
                        done[i] = self._stopped(out[i], until) or len(out[i]) == n_new
        return out


# ----------------------------------------------------------------------------- tasks and results


def load_tasks(names: list[str], include_path: str | list[str] | None = None, where: str = "--harness-tasks",
               quiet: bool = False):
    """(TaskManager, lm-eval's loaded tasks {"tasks", "groups", "group_map"}) for ``names``, found in
    the folders of ``include_path`` (one or several) or among lm-eval's own tasks; ConfigError naming
    ``where`` and the fix when lm-eval is missing, a name is unknown, or a task's data cannot be read."""
    require_lm_eval(where)
    if not names:
        raise ConfigError(f"{where}: no task named; give lm-eval task names, e.g. python_docs_cloze")
    paths = [include_path] if isinstance(include_path, (str, Path)) else list(include_path or [])
    for p in paths:
        if not Path(p).is_dir():
            raise ConfigError(f"{p}: include path is not a folder (named by {where}); give the folder of your task "
                              f"YAMLs, e.g. data/tasks/harness")
    import logging

    from lm_eval.tasks import TaskManager

    if quiet:
        import datasets

        datasets.disable_progress_bars()
        logging.getLogger("lm_eval").setLevel(logging.ERROR)
    tm = TaskManager(include_path=paths, include_defaults=False) if paths else None
    if tm is None or any(n not in tm.all_tasks for n in names):  # a built-in task: index lm-eval's own too
        tm = TaskManager(include_path=paths or None)
    unknown = [n for n in names if n not in tm.all_tasks]
    if unknown:
        where_looked = f"{', '.join(map(str, paths))} and lm-eval's built-in tasks" if paths else \
            "lm-eval's built-in tasks"
        raise ConfigError(f"{where}: no task named {', '.join(unknown)} in {where_looked}; name a task of lm-eval "
                          f"(lm_eval ls tasks) or give the folder of its YAML as the include path")
    try:
        return tm, tm.load(list(names))
    except (OSError, ValueError, KeyError) as e:  # a missing data file, the Hub unreachable offline, a bad YAML
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{where}: task {', '.join(names)} could not be loaded ({msg}); a task YAML's "
                          f"dataset_kwargs.data_files are relative to the current folder (run from the project "
                          f"folder or make them absolute), and offline only local data files can be read") from None


def prepare_tasks(loaded: dict, num_fewshot: int | None = None, fewshot_seed: int = 1234) -> None:
    """What lm-eval's simple_evaluate sets on each task before evaluating: the few-shot count
    (the task's own, else 0) and the few-shot sampler's seed (so each evaluation draws the same shots)."""
    for task in loaded["tasks"].values():
        if num_fewshot is not None and task.get_config("num_fewshot") != 0:
            task.set_config(key="num_fewshot", value=num_fewshot)
        elif task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=fewshot_seed)


def evaluate_loaded(lm: HarnessLM, loaded: dict) -> dict:
    """lm-eval's ``evaluate`` of the loaded tasks, as in the training loop: zero-shot unless a task
    sets its shots, no stderr (no bootstrap), no samples kept. Every rank gets the results (lm-eval
    sees one process; HarnessLM spreads the rows over the ranks itself)."""
    import functools

    import lm_eval.api.task as task_module
    from lm_eval.evaluator import evaluate

    prepare_tasks(loaded)
    bar = getattr(task_module, "tqdm", None)
    if lm.quiet and bar is not None:  # lm-eval shows a progress bar per task while it builds the requests
        task_module.tqdm = functools.partial(bar, disable=True)
    try:
        return evaluate(lm, loaded, bootstrap_iters=0, log_samples=False)
    finally:
        if bar is not None:
            task_module.tqdm = bar


def task_metrics(results: dict) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} from lm-eval's results: ``"acc,none"`` becomes ``acc``; a metric of
    another filter keeps lm-eval's full key (``exact_match,strict-match``); stderrs, aliases and
    values that are not numbers are left out."""
    out: dict[str, dict[str, float]] = {}
    for task, d in (results.get("results") or {}).items():
        m = {}
        for key, v in d.items():
            metric, _, filt = key.partition(",")
            if metric.endswith("_stderr") or isinstance(v, bool) or not isinstance(v, (int, float)) \
                    or not math.isfinite(v) or not filt:
                continue
            m[metric if filt == "none" else key] = float(v)
        if m:
            out[task] = m
    return out


def evaluate_checkpoint(checkpoint, tasks: list[str], include_path: str | list[str] | None = None, *,
                        batch_size: int = 8, num_fewshot: int | None = None, limit: int | float | None = None,
                        bootstrap_iters: int = 100000, device: str | None = None, tokenizer: str | None = None,
                        kv_cache: bool = True, log_samples: bool = False) -> dict:
    """lm-eval's results (``simple_evaluate``'s dict: results, versions, n-shot, configs, config, ...)
    of ``tasks`` on the plain GPT of ``checkpoint``."""
    from lm_eval.evaluator import simple_evaluate

    tm, _ = load_tasks(tasks, include_path)
    lm = HarnessLM.from_checkpoint(checkpoint, batch_size=batch_size, device=device, tokenizer=tokenizer,
                                   kv_cache=kv_cache)
    return simple_evaluate(model=lm, tasks=list(tasks), task_manager=tm, num_fewshot=num_fewshot, limit=limit,
                           bootstrap_iters=bootstrap_iters, log_samples=log_samples)


def results_json(results: dict) -> str:
    """lm-eval's results as the JSON its own CLI writes (samples left out)."""
    from lm_eval.utils import handle_non_serializable

    return json.dumps({k: v for k, v in results.items() if k != "samples"}, indent=2, default=handle_non_serializable,
                      ensure_ascii=False) + "\n"
