"""Encode documents into Megatron .bin/.idx token shards with a train/valid split: a library
(the pieces below) and a thin command line (`main`).

    python data_prep/tokenize_corpus.py --input data/sample --tokenizer tokenizer.json \\
        --output-prefix data/tok/sample [--valid-fraction 0.01] [--workers N] [--seed 0] \\
        [--eod-token '<|endoftext|>'] [--text-key text] [--id-key id] [--hf-config C] [--hf-split S] \\
        [--max-shard-tokens 1000000000] [--task-index I --num-tasks N] [--overwrite]
    python data_prep/tokenize_corpus.py --output-prefix data/tok/sample --merge   # after N tasks

Inputs: JSONL(.gz/.zst), Parquet, datasets ``save_to_disk`` folders and ``hf:NAME`` (streamed
with datasets.load_dataset; see data_prep/readers.py); --text-key/--id-key name the columns.
The tokenizer is a tokenizer.json or a transformers folder holding one (llmtrain.tokenizer).

writes PREFIX_train.bin/.idx, PREFIX_valid.bin/.idx (when --valid-fraction > 0) and, last,
PREFIX_manifest.json (llmtrain.data.manifest.Manifest). Every document becomes one sequence
with the end-of-document token (--eod-token, default <|endoftext|>; it must be in the
tokenizer's vocabulary) appended. A document goes to the valid split when a keyed hash of its
id and text falls below --valid-fraction: the split does not depend on the order, the number
of workers or tasks, or chance, and --seed picks a different (equally deterministic) split.

Prompt/response data (``--format prompt-response``): every record has a ``prompt`` and a
``response`` field (--prompt-key/--response-key; JSONL, Parquet or datasets inputs) and becomes
one sequence, prompt tokens + response tokens + end of document. Beside each token shard P.bin/.idx
a loss mask P_mask.bin/.idx (same layout, one uint8 per token) holds 1 on the response tokens and
the end of document, 0 on the prompt; the manifest records ``"loss_mask"``, and the trainer then
counts only the response tokens in the loss. The split hashes the id and the prompt.

Shards: a split of more than --max-shard-tokens tokens is written as PREFIX_train_00000.bin/.idx,
PREFIX_train_00001..., each of at most that many tokens (a single longer document gets a shard
of its own); a split that fits is one PREFIX_train.bin/.idx. Either way the manifest lists every
shard under ``splits.<split>.shards`` as ``{"prefix", "documents", "tokens"}``, ``prefix``
relative to the manifest's folder.

Many machines: ``--task-index I --num-tasks N`` (default: SLURM_ARRAY_TASK_ID minus
SLURM_ARRAY_TASK_MIN, SLURM_ARRAY_TASK_COUNT) takes every N-th input of the sorted list and
writes PREFIX.task-0000I_{train,valid}[_SSSSS].bin/.idx and PREFIX.task-0000I_manifest.json.
Rerunning a task whose manifest exists (same inputs, tokenizer and options) skips it; a task
killed half-way has no manifest and is done again. When all N have finished, ``--merge`` (or
python data_prep/merge_manifests.py PREFIX) writes PREFIX_manifest.json listing every task's
shards; no data is copied. On SLURM:

    sbatch --array=0-31 --cpus-per-task=32 --wrap "python data_prep/tokenize_corpus.py --input /shared/clean \
        --tokenizer tok.json --output-prefix /shared/tok/web --workers 31"
    python data_prep/tokenize_corpus.py --output-prefix /shared/tok/web --merge   # once all have finished

The pieces: `Job` (the checked plan: inputs, tokenizer, options, output names; `plan` makes
it and checks every input before anything is written), `is_valid_doc` (split hashing),
`encoded_batches` (reading + encoding: a reader thread reads and hashes while the previous
batch is encoded, in this process on tokenizers' thread pool with --workers 1, else in N
worker processes), `_SplitWriter` (shard writing), `build_manifest` (the manifest), and
`tokenize_corpus` which runs them. A progress line with docs/s, tokens/s and an ETA is printed
every --progress-every seconds. Any error leaves the previous output as it was: the shards are
written under temporary names and renamed only when all documents are encoded, then the
manifest is written.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import os
import queue
import re
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmtrain_prep.readers import (
    TOKENIZE_SUFFIXES,
    InputError,
    add_input_args,
    check_input,
    expand_inputs,
    input_bytes,
    is_hf_input,
    is_hf_name,
    iter_documents,
    reader_options,
)
from llmtrain.core.errors import ConfigError
from llmtrain.data.indexed import IndexedDatasetWriter, dtype_for_vocab
from llmtrain.data.manifest import Manifest, ManifestError, Shard, Split, manifest_file
from llmtrain.tokenizer import EOD_TOKEN, tokenizer_file
from llmtrain.tokenizer import load_tokenizer as _load_tokenizer
from llmtrain.core.files import sha256_file
from llmtrain.core.tasks import partition, task_from_env

DEFAULT_VALID_FRACTION = 0.01
DEFAULT_MAX_SHARD_TOKENS = 1_000_000_000  # 2 GB per .bin at uint16
BATCH_DOCS = 1024  # documents per encode batch
BATCH_CHARS = 8_000_000  # ... or fewer when they are long
SPLITS = ("train", "valid")
PROMPT_RESPONSE = "prompt-response"
FORMATS = ("text", PROMPT_RESPONSE)
READER_DEFAULTS = {"text_key": "text", "id_key": None, "hf_config": None, "hf_split": None}
# Rough uncompressed-characters per on-disk byte, for the ETA until a file has been read.
_RATIO_GUESS = {".gz": 3.0, ".zst": 3.5}

__all__ = ["EOD_TOKEN", "Job", "Options", "build_manifest", "is_valid_doc", "load_tokenizer", "main", "partition",
           "plan", "split_key", "task_prefix", "tokenize_corpus"]


# ---- split hashing -------------------------------------------------------------------------

def split_key(seed: int) -> bytes:
    return struct.pack("<Q", seed & 0xFFFFFFFFFFFFFFFF)


def is_valid_doc(doc_id: str, text: str, valid_fraction: float, key: bytes) -> bool:
    """True when the document belongs to the valid split: a keyed BLAKE2b hash of id and text,
    read as a number in [0, 1), is below valid_fraction."""
    if valid_fraction <= 0:
        return False
    h = hashlib.blake2b(doc_id.encode("utf-8", "surrogatepass") + b"\x00" + text.encode("utf-8", "surrogatepass"),
                        digest_size=8, key=key)
    return int.from_bytes(h.digest(), "little") / 2.0**64 < valid_fraction


# ---- encoding ------------------------------------------------------------------------------

def load_tokenizer(path: str, eod_token: str = EOD_TOKEN):
    """(tokenizer, eod id) through llmtrain.tokenizer.load_tokenizer (a tokenizer.json or a
    transformers folder); InputError naming the file and the fix when it is missing, unusable
    or lacks ``eod_token``."""
    try:
        return _load_tokenizer(path, eod_token)
    except ConfigError as e:
        raise InputError(str(e)) from None


def _flatten(encs, eod: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Flat token array of a batch of encodings (EOD after each document) in ``dtype`` and
    per-document lengths (EOD included)."""
    ids = [e.ids for e in encs]
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)) + 1
    flat = np.empty(int(lengths.sum()), dtype=dtype)
    ends = np.cumsum(lengths)
    flat[ends - 1] = eod
    pos = 0
    for seq, end in zip(ids, ends.tolist()):
        flat[pos : end - 1] = seq
        pos = end
    return flat, lengths


def _encoder(tok):
    # encode_batch, not encode_batch_fast: the same ids, and with tokenizers 0.23.3 on this 2-core
    # machine encode_batch took 0.85x the CPU time of encode_batch_fast (median of 6 alternating
    # rounds on 5 MB, load ~12; benchmarks/BENCHMARKS.md, tokenisation).
    return tok.encode_batch


def _encode(tok, texts: list[str], eod: int, dtype=np.int64) -> tuple[np.ndarray, np.ndarray]:
    return _flatten(_encoder(tok)(texts, add_special_tokens=False), eod, dtype)


def _encoded(batches, tok, timing: dict):
    """(is_valid, encodings) of each batch; meant to run in its own thread (tokenizers releases
    the GIL while encoding), so that the main thread turns batch k into arrays and writes it
    while batch k+1 is encoded."""
    encode = _encoder(tok)
    for texts, valid in batches:
        t = time.perf_counter()
        encs = encode(texts, add_special_tokens=False)
        timing["encode_s"] += time.perf_counter() - t
        yield valid, encs


# ---- worker processes ----------------------------------------------------------------------
_W: dict = {}


def _worker_init(tokenizer_path: str, eod_token: str) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker process
    _W["tok"], _W["eod"] = load_tokenizer(tokenizer_path, eod_token)


def _worker_encode(texts: list[str], dtype: str):
    return _encode(_W["tok"], texts, _W["eod"], np.dtype(dtype))


class _Progress:
    def __init__(self, every: float, total_bytes: int, quiet: bool):
        self.every, self.total_bytes, self.quiet = every, max(total_bytes, 1), quiet
        self.start = self.last = time.time()
        self.docs = self.tokens = 0
        self.done_bytes = 0  # on-disk bytes of finished files
        self.done_chars = 0  # characters read from finished files
        self.cur_chars = 0  # characters read from the current file
        self.cur_suffix = ""

    def _fraction(self) -> float:
        if self.done_bytes and self.done_chars:
            ratio = self.done_chars / self.done_bytes
        else:
            ratio = _RATIO_GUESS.get(self.cur_suffix, 1.0)
        return min(1.0, (self.done_bytes + self.cur_chars / ratio) / self.total_bytes)

    def maybe_print(self, force: bool = False) -> None:
        now = time.time()
        if self.quiet or not (force or (self.every and now - self.last >= self.every)):
            return
        self.last = now
        dt = max(now - self.start, 1e-9)
        frac = self._fraction()
        eta = f", ETA {dt * (1 - frac) / frac:.0f} s" if 0 < frac < 1 else ""
        print(f"tokenize_corpus: {self.docs:,} docs ({self.docs / dt:,.0f} docs/s), {self.tokens:,} tokens "
              f"({self.tokens / dt:,.0f} tokens/s), ~{100 * frac:.0f}% of input{eta}", flush=True)


def _batches(files: list[str], progress: _Progress, per_file: list[dict], valid_fraction: float, key: bytes,
             reader: dict):
    """Yield (texts, is_valid) from all inputs, in order, BATCH_DOCS / BATCH_CHARS at a time;
    is_valid is a bool array of each document's split (the split hashing happens here, in the
    reader thread)."""
    texts: list[str] = []
    valid: list[bool] = []
    chars = 0
    for path, info in zip(files, per_file):
        progress.cur_chars = 0
        progress.cur_suffix = os.path.splitext(path)[1].lower()
        for doc in iter_documents(path, **reader):
            text = doc["text"]
            texts.append(text)
            valid.append(is_valid_doc(doc["id"], text, valid_fraction, key))
            chars += len(text)
            info["documents"] += 1
            progress.cur_chars += len(text)
            if len(texts) >= BATCH_DOCS or chars >= BATCH_CHARS:
                yield texts, np.array(valid, dtype=bool)
                texts, valid, chars = [], [], 0
        progress.done_bytes += info["bytes"]
        progress.done_chars += progress.cur_chars
        progress.cur_chars = 0
    if texts:
        yield texts, np.array(valid, dtype=bool)


_END = object()


def _prefetch(gen, depth: int = 2):
    """Run the generator ``gen`` in a thread, ``depth`` items ahead of the consumer: reading,
    decompressing, JSON parsing and hashing overlap the encoding (tokenizers releases the GIL
    while it encodes). An exception in the thread is raised here, in the consumer."""
    q: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def run():
        try:
            for item in gen:
                if not put(item):
                    return
            put(_END)
        except BaseException as e:  # handed to the consumer
            put(e)
        finally:
            close = getattr(gen, "close", None)
            if close is not None:
                close()  # stops a _prefetch inside gen too

    t = threading.Thread(target=run, name="tokenize_corpus-reader", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        t.join()


def default_workers() -> int:
    """Encoding processes when --workers is not given. On 2 cores in-process encode_batch (1,
    which already runs on tokenizers' thread pool) measured as fast as 2 processes and starts
    faster. With many cores the single Python thread that splits and writes becomes the limit
    of in-process encoding, so processes are used there (an estimate, not measured beyond 2
    cores)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 1 if n <= 4 else min(n - 1, 32)


# ---- shards --------------------------------------------------------------------------------

def _remove(*paths) -> None:
    for p in paths:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


class _SplitWriter:
    """One split (e.g. PREFIX_train) as shards of at most ``max_tokens`` tokens.

    Each shard is written by an IndexedDatasetWriter under a staging prefix
    (PREFIX_train_00000.tmp<pid>); `publish` renames them into place when every document is
    in: PREFIX_train.bin/.idx when there is one shard, else PREFIX_train_00000.bin/.idx, ...
    (.bin before .idx: a shard is finished only once its .idx has its final name), and removes
    shards of an earlier run of the same prefix that are not part of this one."""

    def __init__(self, base: str, dtype, max_tokens: int):
        self.base, self.dtype, self.max_tokens = base, np.dtype(dtype), max_tokens
        self.staged: list[tuple[str, int, int]] = []  # (staging prefix, documents, tokens)
        self._w: IndexedDatasetWriter | None = None
        self.documents = self.tokens = 0

    def _open(self) -> None:
        w = IndexedDatasetWriter(f"{self.base}_{len(self.staged):05d}.tmp{os.getpid()}", self.dtype)
        w.__enter__()
        self._w = w

    def _close(self) -> None:
        w, self._w = self._w, None
        w.__exit__(None, None, None)
        self.staged.append((w.prefix, len(w), w.num_tokens))

    def add(self, flat: np.ndarray, lengths: np.ndarray) -> None:
        """Append the documents whose tokens lie back to back in ``flat`` (``lengths`` each)."""
        if not len(lengths):
            return
        ends = np.cumsum(lengths).tolist()
        start = 0
        for end in ends:
            n = end - start
            w = self._w
            if w is None:
                self._open()
                w = self._w
            elif w.num_tokens + n > self.max_tokens and len(w):
                self._close()
                self._open()
                w = self._w
            w.add_document(flat[start:end])
            start = end
        self.documents += len(ends)
        self.tokens += ends[-1]

    def finish(self) -> None:
        if self._w is None and not self.staged:
            self._open()  # an empty split is still one (empty) file
        if self._w is not None:
            self._close()

    def abort(self) -> None:
        if self._w is not None:
            w, self._w = self._w, None
            try:
                w.__exit__(RuntimeError, RuntimeError("aborted"), None)  # removes its temporaries
            except Exception:
                pass
        for prefix, _, _ in self.staged:
            _remove(f"{prefix}.bin", f"{prefix}.idx")
        self.staged = []

    def final_prefixes(self) -> list[str]:
        if len(self.staged) == 1:
            return [self.base]
        return [f"{self.base}_{i:05d}" for i in range(len(self.staged))]

    def publish(self) -> list[dict]:
        """Rename the staged shards into place; [{"prefix" (absolute), "documents", "tokens"}]."""
        finals = self.final_prefixes()
        keep = {f"{p}.{ext}" for p in finals for ext in ("bin", "idx")}
        # Shards of an earlier run of this prefix that this run does not replace: drop them, .idx first.
        for old in sorted(_existing_shard_files(self.base), key=lambda p: not p.endswith(".idx")):
            if old not in keep:
                _remove(old)
        out = []
        for (staged, docs, toks), final in zip(self.staged, finals):
            os.replace(f"{staged}.bin", f"{final}.bin")
            os.replace(f"{staged}.idx", f"{final}.idx")
            out.append({"prefix": final, "documents": docs, "tokens": toks})
        self.staged = []
        return out


def _existing_shard_files(base: str) -> list[str]:
    folder, name = os.path.split(base)
    folder = folder or "."
    pat = re.compile(re.escape(name) + r"(_\d{5})?\.(bin|idx)$")
    try:
        return [os.path.join(os.path.split(base)[0], f) for f in os.listdir(folder) if pat.fullmatch(f)]
    except FileNotFoundError:
        return []


def _rel(path: str, folder: str) -> str:
    return os.path.relpath(os.path.abspath(path), os.path.abspath(folder))


# ---- tasks ---------------------------------------------------------------------------------

def task_prefix(prefix: str, task_index: int) -> str:
    """The output prefix of one task: PREFIX.task-00003."""
    return f"{prefix}.task-{task_index:05d}"


def _inputs_digest(files: list[str]) -> str:
    names = [f if is_hf_name(f) else os.path.abspath(f) for f in files]
    return hashlib.sha256("\n".join(names).encode("utf-8", "surrogatepass")).hexdigest()


# ---- the plan ------------------------------------------------------------------------------

@dataclass
class Options:
    """What changes the output (recorded in the manifest; a finished task is reused only when
    they are the same), and how many encoding processes (which does not)."""
    valid_fraction: float = DEFAULT_VALID_FRACTION
    seed: int = 0
    max_shard_tokens: int = DEFAULT_MAX_SHARD_TOKENS
    eod_token: str = EOD_TOKEN
    reader: dict = field(default_factory=dict)  # data_prep.readers.reader_options: text_key, id_key, hf_*
    workers: int | None = None
    format: str = "text"  # text | prompt-response (a loss mask beside the tokens)
    prompt_key: str = "prompt"
    response_key: str = "response"

    def __post_init__(self) -> None:
        self.reader = {**READER_DEFAULTS, **{k: v for k, v in self.reader.items() if v is not None}}

    def check(self) -> None:
        if not 0 <= self.valid_fraction < 1:
            raise InputError(f"--valid-fraction {self.valid_fraction} must be in [0, 1)")
        if self.workers is not None and self.workers < 1:
            raise InputError(f"--workers {self.workers} must be >= 1")
        if self.max_shard_tokens < 1 or self.max_shard_tokens != int(self.max_shard_tokens):
            raise InputError(f"--max-shard-tokens {self.max_shard_tokens} must be a whole number >= 1")
        if not self.eod_token:
            raise InputError("--eod-token is empty; name the tokenizer's end-of-document token, e.g. '<|endoftext|>'")
        if self.format not in FORMATS:
            raise InputError(f"--format {self.format!r} is not one of {', '.join(FORMATS)}")

    def record(self, workers: int) -> dict:
        return {"valid_fraction": self.valid_fraction, "seed": self.seed, "workers": workers,
                "max_shard_tokens": int(self.max_shard_tokens),
                "split": "blake2b(id + NUL + text, key=seed) < valid_fraction",
                **{k: v for k, v in self.reader.items() if v is not None},
                **({"format": self.format, "prompt_key": self.prompt_key, "response_key": self.response_key}
                   if self.format == PROMPT_RESPONSE else {})}


@dataclass
class Job:
    """A checked tokenisation job: what to read, with which tokenizer, into which files."""
    all_inputs: list[str]
    inputs: list[str]  # this task's
    tokenizer: object
    eod: int
    tokenizer_path: str  # the tokenizer.json file (also when a transformers folder was given)
    tokenizer_sha256: str
    vocab_size: int
    dtype: np.dtype
    base_prefix: str
    prefix: str  # base_prefix, or this task's PREFIX.task-NNNNN
    options: Options
    task_index: int = 0
    num_tasks: int = 1
    reader: dict = field(default_factory=dict)  # options.reader + this task's hf_shard
    per_input: list[dict] = field(default_factory=list)

    @property
    def tasked(self) -> bool:
        return self.num_tasks > 1

    @property
    def split_names(self) -> tuple[str, ...]:
        return SPLITS if self.options.valid_fraction > 0 else ("train",)

    def task_record(self) -> dict | None:
        if not self.tasked:
            return None
        return {"index": self.task_index, "count": self.num_tasks, "files": len(self.inputs),
                "inputs_total": len(self.all_inputs), "inputs_sha256": _inputs_digest(self.all_inputs)}


def plan(inputs, tokenizer_path: str, output_prefix: str, options: Options, task_index: int | None = 0,
         num_tasks: int | None = 1) -> Job:
    """Check the options, the output prefix, the tokenizer (and its --eod-token) and every input
    of this task (opened, columns checked) before anything is written; InputError (one line)
    otherwise."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    options.check()
    try:
        task_index, num_tasks = task_from_env(task_index, num_tasks)
    except ValueError as e:
        raise InputError(str(e)) from None
    all_inputs = expand_inputs([str(i) for i in inputs], TOKENIZE_SUFFIXES)
    # Files are dealt out whole; a datasets input (hf:NAME, a save_to_disk folder) is read by
    # every task, each its own part of it (reader option hf_shard), so N tasks share one Hub data set.
    mine = (partition([p for p in all_inputs if not is_hf_input(p)], task_index, num_tasks)
            + [p for p in all_inputs if is_hf_input(p)])
    base_prefix = str(output_prefix)
    if Path(base_prefix).is_dir() or base_prefix.endswith(os.sep):
        raise InputError(f"--output-prefix {base_prefix} is a folder; give a prefix such as "
                         f"{os.path.join(base_prefix, 'corpus')}")
    tok, eod = load_tokenizer(tokenizer_path, options.eod_token)
    tok_file = str(tokenizer_file(tokenizer_path))
    reader = {**options.reader, "hf_shard": (task_index, num_tasks) if num_tasks > 1 else None}
    if options.format == PROMPT_RESPONSE and num_tasks > 1:
        raise InputError("--format prompt-response runs as one task; leave out --num-tasks")
    for path in mine:
        if options.format == PROMPT_RESPONSE:
            for key, flag in ((options.prompt_key, "--prompt-key"), (options.response_key, "--response-key")):
                try:
                    check_input(path, **{**reader, "text_key": key})
                except InputError as e:
                    raise InputError(_pr_message(e, flag)) from None
        else:
            check_input(path, **reader)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    return Job(all_inputs=all_inputs, inputs=mine, tokenizer=tok, eod=eod, tokenizer_path=os.path.abspath(tok_file),
               tokenizer_sha256=sha256_file(tok_file), vocab_size=vocab, dtype=np.dtype(dtype_for_vocab(vocab)),
               base_prefix=base_prefix,
               prefix=task_prefix(base_prefix, task_index) if num_tasks > 1 else base_prefix, options=options,
               task_index=task_index, num_tasks=num_tasks, reader=reader,
               per_input=[{"path": p if is_hf_name(p) else os.path.abspath(p), "bytes": input_bytes(p), "documents": 0}
                          for p in mine])


def _same_as(old: Manifest, job: Job) -> list[str]:
    """What a finished task's manifest was made with differently from ``job`` (words for the user)."""
    o = old.options
    diff = []
    if old.tokenizer_sha256 != job.tokenizer_sha256:
        diff.append("tokenizer")
    if [(i.get("path"), i.get("bytes")) for i in old.inputs] != [(i["path"], i["bytes"]) for i in job.per_input]:
        diff.append("input files")
    for key, flag in (("valid_fraction", "--valid-fraction"), ("seed", "--seed")):
        if o.get(key) != getattr(job.options, key):
            diff.append(flag)
    if (old.eod_token or EOD_TOKEN) != job.options.eod_token:
        diff.append("--eod-token")
    for key, default in READER_DEFAULTS.items():
        if o.get(key, default) != job.options.reader.get(key):
            diff.append("--" + key.replace("_", "-"))
    if old.extra.get("task") != job.task_record():
        diff.append("input list or --num-tasks")
    return diff


def finished_task(job: Job) -> Manifest | None:
    """The manifest of this task when it already finished with the same inputs, tokenizer and
    options; None when there is none (or its shards are gone); InputError when it was made
    differently."""
    path = manifest_file(job.prefix)
    if not path.is_file():
        return None
    try:
        old = Manifest.read(path)
    except ManifestError:
        return None  # unreadable: do the task again (the manifest is replaced at the end)
    diff = _same_as(old, job)
    if diff:
        raise InputError(f"{path}: a finished task made with another {', '.join(diff)} than this run; "
                         f"pass --overwrite to redo it (or delete its files)")
    return None if old.missing_shards() else old


# ---- reading and encoding ------------------------------------------------------------------

def encoded_batches(job: Job, n_workers: int, progress: _Progress, timing: dict):
    """(is_valid, flat tokens, lengths) per batch of documents, in input order: a reader thread
    reads and hashes, then either an encoder thread (n_workers == 1: tokenizers' own thread pool)
    while this thread turns ids into arrays, or n_workers processes."""
    opts = job.options
    batches = _prefetch(_batches(job.inputs, progress, job.per_input, opts.valid_fraction, split_key(opts.seed),
                                 job.reader))

    def timed(it):
        while True:
            t = time.perf_counter()
            item = next(it, _END)
            timing["wait_s"] += time.perf_counter() - t
            if item is _END:
                return
            yield item

    try:
        if n_workers == 1:
            encoded = _prefetch(_encoded(batches, job.tokenizer, timing))
            try:
                for valid, encs in timed(encoded):
                    t = time.perf_counter()
                    flat, lengths = _flatten(encs, job.eod, job.dtype)
                    timing["ids_to_array_s"] += time.perf_counter() - t
                    yield valid, flat, lengths
            finally:
                encoded.close()
        else:
            import multiprocessing as mp

            # spawn: safe from a parent with threads (tokenizers' pool, torch), same on every OS.
            with mp.get_context("spawn").Pool(n_workers, _worker_init, (job.tokenizer_path, opts.eod_token)) as pool:
                pending: collections.deque = collections.deque()
                for texts, valid in timed(batches):
                    pending.append((valid, pool.apply_async(_worker_encode, (texts, job.dtype.str))))
                    while len(pending) > 2 * n_workers:  # bounded: never reads far ahead of the encoders
                        v, r = pending.popleft()
                        yield (v, *r.get())
                while pending:
                    v, r = pending.popleft()
                    yield (v, *r.get())
    finally:
        batches.close()


# ---- prompt/response records ---------------------------------------------------------------

def _pr_message(e: InputError, flag: str) -> str:
    """A reader's message about its text field, with the flag that names the field here."""
    return str(e).replace("--text-key names the text field", f"{flag} names it").replace("--text-key", flag)


def _records(path: str, job: Job):
    """(id, prompt, response) of each record of one input: the reader run once per field, in
    step (a record without one of the fields raises InputError naming the file and line)."""
    opts = job.options
    readers = []
    for key, flag in ((opts.prompt_key, "--prompt-key"), (opts.response_key, "--response-key")):
        readers.append((iter_documents(path, **{**job.reader, "text_key": key}), flag))

    def step(it, flag):
        try:
            return next(it, None)
        except InputError as e:
            raise InputError(_pr_message(e, flag)) from None

    while True:
        p, r = step(*readers[0]), step(*readers[1])
        if p is None or r is None:
            if p is not None or r is not None:
                raise InputError(f"{path}: records end unevenly between '{opts.prompt_key}' and "
                                 f"'{opts.response_key}'; every record needs both fields")
            return
        if p["id"] != r["id"]:
            raise InputError(f"{path}: record {p['id']} has no string field '{opts.response_key}'; every record "
                             f"needs both fields (--response-key names it)")
        yield p["id"], p["text"], r["text"]


def _pr_batches(job: Job, progress: _Progress, timing: dict):
    """(is_valid, flat tokens, lengths, flat loss mask) per batch of prompt/response records:
    each record is prompt + response + end of document, the mask 1 on the response and the end
    of document. Encoded in this process (fine-tuning sets are small)."""
    key, encode = split_key(job.options.seed), _encoder(job.tokenizer)
    for path, info in zip(job.inputs, job.per_input):
        progress.cur_suffix = os.path.splitext(path)[1].lower()
        recs = list(_records(path, job))
        for i in range(0, len(recs), BATCH_DOCS):
            chunk = recs[i:i + BATCH_DOCS]
            valid = np.array([is_valid_doc(rid, p, job.options.valid_fraction, key) for rid, p, _ in chunk], bool)
            t = time.perf_counter()
            prompts = encode([p for _, p, _ in chunk], add_special_tokens=False)
            responses = encode([r for _, _, r in chunk], add_special_tokens=False)
            timing["encode_s"] += time.perf_counter() - t
            seqs = [np.concatenate([np.asarray(p.ids, np.int64), np.asarray(r.ids, np.int64), [job.eod]])
                    for p, r in zip(prompts, responses)]
            masks = [np.concatenate([np.zeros(len(p.ids), np.uint8), np.ones(len(r.ids) + 1, np.uint8)])
                     for p, r in zip(prompts, responses)]
            info["documents"] += len(chunk)
            yield (valid, np.concatenate(seqs).astype(job.dtype), np.array([len(q) for q in seqs], np.int64),
                   np.concatenate(masks))
        progress.done_bytes += info["bytes"]


class _MaskedSplitWriter(_SplitWriter):
    """A split's token shards and, beside each shard P, its loss mask P_mask (uint8, the same
    documents and lengths, so the two are cut into shards at the same places)."""

    def __init__(self, base: str, dtype, max_tokens: int):
        super().__init__(base, dtype, max_tokens)
        self.mask = _SplitWriter(f"{base}_mask", np.uint8, max_tokens)
        self.mask.final_prefixes = lambda: [f"{p}_mask" for p in self.final_prefixes()]

    def add(self, flat: np.ndarray, lengths: np.ndarray, mask: np.ndarray) -> None:
        super().add(flat, lengths)
        self.mask.add(mask, lengths)

    def finish(self) -> None:
        super().finish()
        self.mask.finish()

    def abort(self) -> None:
        super().abort()
        self.mask.abort()

    def publish(self) -> list[dict]:
        self.mask.publish()  # first: its names come from the token shards still staged
        return super().publish()


def write_splits(job: Job, stream, progress: _Progress, timing: dict) -> dict[str, _SplitWriter]:
    """Append every batch of ``stream`` to its split's shards (staged under temporary names);
    returns the finished (not yet published) writers. On an error every staged file is removed."""
    kind = _MaskedSplitWriter if job.options.format == PROMPT_RESPONSE else _SplitWriter
    writers = {s: kind(f"{job.prefix}_{s}", job.dtype, int(job.options.max_shard_tokens)) for s in job.split_names}
    try:
        for valid, flat, lengths, *mask in stream:  # mask: [the loss mask] for prompt/response records
            t = time.perf_counter()
            if valid.any():
                token_valid = np.repeat(valid, lengths)  # each token's split, from its document's
                writers["train"].add(flat[~token_valid], lengths[~valid], *(m[~token_valid] for m in mask))
                writers["valid"].add(flat[token_valid], lengths[valid], *(m[token_valid] for m in mask))
            else:
                writers["train"].add(flat, lengths, *mask)
            progress.docs += len(lengths)
            progress.tokens += int(lengths.sum())
            timing["write_s"] += time.perf_counter() - t
            progress.maybe_print()
        if sum(w.documents for w in writers.values()) == 0 and not job.tasked:
            raise InputError(f"no documents in {', '.join(job.inputs)}; nothing to tokenise")
        for w in writers.values():
            w.finish()
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    return writers


def publish(job: Job, writers: dict[str, _SplitWriter], quiet: bool) -> dict[str, list[dict]]:
    """Rename the staged shards into place, after dropping the manifests that would describe
    the old ones (this task's, and a merged one listing this task's shards)."""
    try:
        _remove(manifest_file(job.prefix))
        if job.tasked and manifest_file(job.base_prefix).exists():
            _remove(manifest_file(job.base_prefix))
            if not quiet:
                print(f"tokenize_corpus: removed {manifest_file(job.base_prefix)} (it listed this task's old shards); "
                      f"merge again when all tasks have finished", flush=True)
        return {s: w.publish() for s, w in writers.items()}
    except BaseException:
        for w in writers.values():
            w.abort()
        raise


def build_manifest(job: Job, published: dict[str, list[dict]], n_workers: int, elapsed: float, timing: dict,
                   command: list[str] | None) -> Manifest:
    folder = os.path.dirname(os.path.abspath(job.prefix))
    splits = {s: Split([Shard(_rel(sh["prefix"], folder), sh["documents"], sh["tokens"]) for sh in shards])
              for s, shards in published.items()}
    extra = {"command": command, "elapsed_s": round(elapsed, 3), "timing": {k: round(v, 3) for k, v in timing.items()}}
    if job.tasked:
        extra["task"] = job.task_record()
    if job.options.format == PROMPT_RESPONSE:
        extra["loss_mask"] = {"suffix": "_mask", "dtype": "uint8",
                              "counts": "1: a response token or the end of document (in the loss); 0: a prompt token"}
    return Manifest(prefix=job.prefix, splits=splits, dtype=job.dtype.name, vocab_size=job.vocab_size,
                    eod_token=job.options.eod_token, eod_token_id=job.eod, tokenizer_path=job.tokenizer_path,
                    tokenizer_sha256=job.tokenizer_sha256, inputs=job.per_input, options=job.options.record(n_workers),
                    extra=extra)


# ---- the whole job -------------------------------------------------------------------------

def tokenize_corpus(inputs, tokenizer_path: str, output_prefix: str, *, progress_every: float = 10.0,
                    quiet: bool = False, command: list[str] | None = None, task_index: int | None = 0,
                    num_tasks: int | None = 1, overwrite: bool = False, options: Options | None = None,
                    **option_values) -> dict:
    """Tokenise ``inputs`` (files, folders, save_to_disk folders, hf:NAMEs) with the tokenizer at
    ``tokenizer_path`` (tokenizer.json or a transformers folder) into
    OUTPUT_PREFIX_{train,valid}[_NNNNN].bin/.idx and OUTPUT_PREFIX_manifest.json.

    Options: an ``Options``, or its fields as keywords (valid_fraction, seed, max_shard_tokens,
    eod_token, workers; text_key, id_key, hf_config, hf_split go to the reader). With
    ``num_tasks`` > 1 only the inputs of task ``task_index`` are read and the outputs are named
    OUTPUT_PREFIX.task-NNNNN_*; a task already finished with the same inputs, tokenizer and
    options is skipped (its manifest is returned) unless ``overwrite``.

    Returns the manifest as a dict (also written to disk). Raises InputError (one line naming
    the input, and the line for malformed input); nothing is half-written."""
    reader = {k: option_values.pop(k) for k in ("text_key", "id_key", "hf_config", "hf_split") if k in option_values}
    if options is None:
        options = Options(**option_values)
    elif option_values:
        raise TypeError(f"tokenize_corpus: pass options= or keywords, not both ({', '.join(option_values)})")
    if reader:
        options.reader = {**options.reader, **{k: v for k, v in reader.items() if v is not None}}
    job = plan(inputs, tokenizer_path, output_prefix, options, task_index, num_tasks)
    if job.tasked and not overwrite:
        done = finished_task(job)
        if done is not None:
            if not quiet:
                print(f"tokenize_corpus: task {job.task_index}/{job.num_tasks} already finished ({done.path}: "
                      f"{done.documents:,} docs, {done.tokens:,} tokens); skipped", flush=True)
            return done.to_dict()
    n_workers = options.workers or default_workers()
    progress = _Progress(progress_every, sum(f["bytes"] for f in job.per_input), quiet)
    if not quiet:
        who = (f"task {job.task_index}/{job.num_tasks}: {len(job.inputs)} of {len(job.all_inputs)}" if job.tasked
               else f"{len(job.inputs)}")
        print(f"tokenize_corpus: {who} input(s), {progress.total_bytes / 1e6:.1f} MB, tokenizer {tokenizer_path} "
              f"(vocab {job.vocab_size}, {job.dtype}, end of document {options.eod_token!r} = {job.eod}), "
              f"{n_workers} worker(s) -> {job.prefix}_*", flush=True)
    # Wall seconds: encode_s in the encoder thread (0 with --workers > 1), the rest in this
    # thread (wait_s: waiting for the next batch from the stage before).
    timing = {"encode_s": 0.0, "wait_s": 0.0, "ids_to_array_s": 0.0, "write_s": 0.0}
    t0 = time.time()
    stream = (_pr_batches(job, progress, timing) if options.format == PROMPT_RESPONSE
              else encoded_batches(job, n_workers, progress, timing))
    try:
        writers = write_splits(job, stream, progress, timing)
    finally:
        stream.close()
    published = publish(job, writers, quiet)
    elapsed = time.time() - t0
    progress.maybe_print(force=True)
    manifest = build_manifest(job, published, n_workers, elapsed, timing, command)
    manifest.write(job.prefix)
    if not quiet:
        _report(job, manifest, elapsed)
    return manifest.to_dict()


def _report(job: Job, m: Manifest, elapsed: float) -> None:
    nsh = ", ".join(f"{s} {len(v.shards)} shard(s)" for s, v in m.splits.items())
    parts = ", ".join(f"{s} {v.documents:,} docs {v.tokens:,} tokens" for s, v in m.splits.items())
    print(f"tokenize_corpus: done in {elapsed:.1f} s ({m.tokens / max(elapsed, 1e-9):,.0f} tokens/s): {parts} "
          f"({nsh}) -> {m.path}", flush=True)
    if job.tasked:
        print(f"tokenize_corpus: when all {job.num_tasks} tasks have finished: python data_prep/tokenize_corpus.py "
              f"--output-prefix {job.base_prefix} --merge", flush=True)


# ---- command line --------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Encode documents into Megatron .bin/.idx shards with a "
                                             "deterministic train/valid split and a manifest.")
    ap.add_argument("--input", nargs="+", help="files or folders of .jsonl(.gz/.zst)/.parquet, datasets "
                                               "save_to_disk folders, or hf:NAME (streamed with datasets)")
    ap.add_argument("--tokenizer", help="tokenizer.json (data_prep/train_tokenizer.py) or a transformers folder")
    ap.add_argument("--output-prefix", required=True,
                    help="writes PREFIX_train.*, PREFIX_valid.*, PREFIX_manifest.json")
    ap.add_argument("--eod-token", default=EOD_TOKEN,
                    help=f"the end-of-document token appended to every document (default {EOD_TOKEN}); "
                         f"must be in the tokenizer's vocabulary, e.g. '<|end_of_text|>' for Llama 3, '</s>'")
    ap.add_argument("--valid-fraction", type=float, default=DEFAULT_VALID_FRACTION,
                    help=f"share of documents in the valid split (default {DEFAULT_VALID_FRACTION}; 0: none)")
    ap.add_argument("--workers", type=int, default=None,
                    help="encoding processes (default: 1 = in-process threads on <= 4 cores, else cores-1)")
    ap.add_argument("--seed", type=int, default=0, help="salt of the split hash (default 0)")
    ap.add_argument("--max-shard-tokens", type=float, default=DEFAULT_MAX_SHARD_TOKENS,
                    help=f"most tokens per .bin shard; a bigger split is written as PREFIX_train_00000, ... "
                         f"(default {DEFAULT_MAX_SHARD_TOKENS:.0e})")
    ap.add_argument("--task-index", type=int, default=None,
                    help="this task's index (default: $SLURM_ARRAY_TASK_ID - $SLURM_ARRAY_TASK_MIN, or 0)")
    ap.add_argument("--num-tasks", type=int, default=None,
                    help="tasks sharing the inputs (default: $SLURM_ARRAY_TASK_COUNT, or 1)")
    ap.add_argument("--overwrite", action="store_true", help="redo a task even when its manifest exists")
    ap.add_argument("--merge", action="store_true",
                    help="after all --num-tasks tasks: write PREFIX_manifest.json listing every task's shards")
    ap.add_argument("--progress-every", type=float, default=10.0, help="seconds between progress lines")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    ap.add_argument("--format", choices=FORMATS, default="text",
                    help="text: one document per record (--text-key); prompt-response: records with a prompt and "
                         "a response, written with a loss mask (only the response counts in the loss)")
    ap.add_argument("--prompt-key", default="prompt", help="the prompt field with --format prompt-response")
    ap.add_argument("--response-key", default="response", help="the response field with --format prompt-response")
    add_input_args(ap)
    args = ap.parse_args(argv)
    try:
        if args.merge:
            from llmtrain_prep.merge_manifests import merge_manifests

            merge_manifests(args.output_prefix, num_tasks=args.num_tasks, quiet=args.quiet)
            return 0
        if not args.input or not args.tokenizer:
            ap.error("--input and --tokenizer are required (except with --merge)")
        opts = Options(valid_fraction=args.valid_fraction, seed=args.seed, max_shard_tokens=args.max_shard_tokens,
                       eod_token=args.eod_token, reader=reader_options(args), workers=args.workers,
                       format=args.format, prompt_key=args.prompt_key, response_key=args.response_key)
        opts.check()
        opts.max_shard_tokens = int(opts.max_shard_tokens)
        tokenize_corpus(args.input, args.tokenizer, args.output_prefix, options=opts,
                        progress_every=args.progress_every, quiet=args.quiet, command=[sys.executable] + sys.argv,
                        task_index=args.task_index, num_tasks=args.num_tasks, overwrite=args.overwrite)
    except (InputError, ManifestError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; the previous output (if any) is unchanged", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
