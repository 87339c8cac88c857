"""Encode JSONL documents into Megatron .bin/.idx token shards with a train/valid split.

    python data_prep/tokenize_corpus.py --input data/sample --tokenizer tokenizer.json \\
        --output-prefix data/tok/sample [--valid-fraction 0.01] [--workers N] [--seed 0] \\
        [--max-shard-tokens 1000000000] [--task-index I --num-tasks N] [--overwrite]
    python data_prep/tokenize_corpus.py --output-prefix data/tok/sample --merge   # after N tasks

writes PREFIX_train.bin/.idx, PREFIX_valid.bin/.idx (when --valid-fraction > 0) and, last,
PREFIX_manifest.json. Every document becomes one sequence with the end-of-document token
(<|endoftext|>) appended. A document goes to the valid split when a keyed hash of its id and
text falls below --valid-fraction: the split does not depend on the order, the number of
workers or tasks, or chance, and --seed picks a different (equally deterministic) split.

Shards: a split of more than --max-shard-tokens tokens is written as PREFIX_train_00000.bin/.idx,
PREFIX_train_00001..., each of at most that many tokens (a single longer document gets a shard
of its own); a split that fits is one PREFIX_train.bin/.idx as before. Either way the manifest
lists every shard under ``splits.<split>.shards`` as ``{"prefix", "documents", "tokens"}``,
``prefix`` relative to the manifest's folder.

Many machines: ``--task-index I --num-tasks N`` (default: SLURM_ARRAY_TASK_ID minus
SLURM_ARRAY_TASK_MIN, SLURM_ARRAY_TASK_COUNT) takes every N-th input file of the sorted list and
writes PREFIX.task-0000I_{train,valid}[_SSSSS].bin/.idx and PREFIX.task-0000I_manifest.json.
Rerunning a task whose manifest exists (same inputs, tokenizer and options) skips it; a task
killed half-way has no manifest and is done again. When all N have finished, ``--merge`` (or
python data_prep/merge_manifests.py PREFIX) writes PREFIX_manifest.json listing every task's
shards; no data is copied. On SLURM:

    sbatch --array=0-31 --cpus-per-task=32 --wrap "python data_prep/tokenize_corpus.py --input /shared/clean \
        --tokenizer tok.json --output-prefix /shared/tok/web --workers 31"
    python data_prep/tokenize_corpus.py --output-prefix /shared/tok/web --merge   # once all have finished

Documents are read and hashed by a reader thread while the previous batch is encoded, either
in this process (--workers 1: an encoder thread calls tokenizers' encode_batch_fast, which runs
on tokenizers' own thread pool, while the main thread turns the previous batch into arrays and
writes it) or by N worker processes (--workers N); a progress line with docs/s, tokens/s and an ETA is printed every
--progress-every seconds. Any error leaves the previous output as it was: the shards are
written under temporary names and renamed only when all documents are encoded, then the
manifest is written.
"""
from __future__ import annotations

import argparse
import collections
import datetime as _dt
import hashlib
import json
import os
import queue
import re
import struct
import sys
import threading
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python data_prep/tokenize_corpus.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from data_prep.readers import InputError, expand_inputs, iter_documents  # noqa: E402
from llmtrain.data.indexed import (  # noqa: E402
    IndexedDatasetWriter,
    dtype_for_vocab,
    manifest_path,
    write_manifest,
)
from llmtrain.utils import sha256_file  # noqa: E402

EOD_TOKEN = "<|endoftext|>"
DEFAULT_VALID_FRACTION = 0.01
DEFAULT_MAX_SHARD_TOKENS = 1_000_000_000  # 2 GB per .bin at uint16
BATCH_DOCS = 512  # documents per encode batch
BATCH_CHARS = 4_000_000  # ... or fewer when they are long
MANIFEST_FORMAT_VERSION = 2  # 2: splits.<split>.shards
SPLITS = ("train", "valid")
# Rough uncompressed-characters per on-disk byte, for the ETA until a file has been read.
_RATIO_GUESS = {".gz": 3.0, ".zst": 3.5}


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


def load_tokenizer(path: str):
    """(tokenizer, eod id); InputError naming the file when it is missing or unusable."""
    from tokenizers import Tokenizer

    if not os.path.isfile(path):
        raise InputError(f"{path}: tokenizer not found; train one with python data_prep/train_tokenizer.py "
                         f"--input CORPUS --vocab-size N --output {path}")
    try:
        tok = Tokenizer.from_file(path)
    except Exception as e:  # tokenizers raises a bare Exception on a bad file
        raise InputError(f"{path}: not a valid tokenizer.json ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                         f"re-train it with python data_prep/train_tokenizer.py") from None
    eod = tok.token_to_id(EOD_TOKEN)
    if eod is None:
        raise InputError(f"{path}: has no {EOD_TOKEN} token to end documents with; "
                         f"train the tokenizer with python data_prep/train_tokenizer.py")
    # A literal "<|endoftext|>" inside a document is text, not an end of document.
    tok.encode_special_tokens = True
    return tok, eod


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
    # encode_batch_fast: the same ids without computing character offsets (tokenizers >= 0.20).
    return getattr(tok, "encode_batch_fast", tok.encode_batch)


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


def _worker_init(tokenizer_path: str) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker process
    _W["tok"], _W["eod"] = load_tokenizer(tokenizer_path)


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


def _batches(files: list[str], progress: _Progress, per_file: list[dict], valid_fraction: float, key: bytes):
    """Yield (texts, is_valid) from all files, in order, BATCH_DOCS / BATCH_CHARS at a time;
    is_valid is a bool array of each document's split."""
    texts: list[str] = []
    valid: list[bool] = []
    chars = 0
    for path, info in zip(files, per_file):
        progress.cur_chars = 0
        progress.cur_suffix = os.path.splitext(path)[1].lower()
        for doc in iter_documents(path):
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


def shard_files_present(manifest: dict, manifest_file: str | os.PathLike) -> bool:
    """True when every shard the manifest lists has its .idx and a .bin of the listed size."""
    folder = os.path.dirname(os.path.abspath(manifest_file))
    item = np.dtype(manifest.get("dtype", "uint16")).itemsize
    for split in manifest.get("splits", {}).values():
        for sh in split.get("shards", []):
            p = os.path.join(folder, sh["prefix"])
            if not os.path.isfile(f"{p}.idx") or not os.path.isfile(f"{p}.bin"):
                return False
            if os.path.getsize(f"{p}.bin") != sh["tokens"] * item:
                return False
    return True


# ---- tasks ---------------------------------------------------------------------------------

def task_prefix(prefix: str, task_index: int) -> str:
    """The output prefix of one task: PREFIX.task-00003."""
    return f"{prefix}.task-{task_index:05d}"


def partition(files: list[str], task_index: int, num_tasks: int) -> list[str]:
    """The files task ``task_index`` of ``num_tasks`` owns: every num_tasks-th of the sorted list,
    so every file belongs to exactly one task."""
    if num_tasks < 1 or not 0 <= task_index < num_tasks:
        raise InputError(f"--task-index {task_index} is outside [0, --num-tasks {num_tasks}); indices start at 0")
    return [f for i, f in enumerate(files) if i % num_tasks == task_index]


def task_from_env(task_index: int | None, num_tasks: int | None) -> tuple[int, int]:
    """--task-index/--num-tasks, else SLURM_ARRAY_TASK_ID (minus SLURM_ARRAY_TASK_MIN) and
    SLURM_ARRAY_TASK_COUNT, else (0, 1)."""
    try:
        if task_index is None:
            task_index = int(os.environ.get("SLURM_ARRAY_TASK_ID", "0")) - int(os.environ.get("SLURM_ARRAY_TASK_MIN", "0"))
        if num_tasks is None:
            num_tasks = int(os.environ.get("SLURM_ARRAY_TASK_COUNT", "1"))
    except ValueError as e:
        raise InputError(f"SLURM_ARRAY_TASK_* is not an integer ({e}); pass --task-index and --num-tasks") from None
    if num_tasks < 1 or not 0 <= task_index < num_tasks:
        raise InputError(f"--task-index {task_index} is outside [0, --num-tasks {num_tasks}); indices start at 0")
    return task_index, num_tasks


def _inputs_digest(files: list[str]) -> str:
    return hashlib.sha256("\n".join(os.path.abspath(f) for f in files).encode("utf-8", "surrogatepass")).hexdigest()


def _finished_task(prefix: str, expect: dict) -> dict | None:
    """The manifest of a finished task at ``prefix`` when it was made from the same inputs,
    tokenizer and options (``expect``); None when there is none or its shards are gone;
    InputError when it was made differently."""
    path = manifest_path(prefix)
    if not path.is_file():
        return None
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None  # unreadable: do the task again (the manifest is replaced at the end)
    got = {
        "tokenizer_sha256": (old.get("tokenizer") or {}).get("sha256"),
        "inputs": [(i.get("path"), i.get("bytes")) for i in old.get("inputs", [])],
        "valid_fraction": (old.get("options") or {}).get("valid_fraction"),
        "seed": (old.get("options") or {}).get("seed"),
        "task": old.get("task"),
    }
    words = {"tokenizer_sha256": "tokenizer", "inputs": "input files", "valid_fraction": "--valid-fraction",
             "seed": "--seed", "task": "input list or --num-tasks"}
    diff = [words[k] for k in expect if got.get(k) != expect[k]]
    if diff:
        raise InputError(f"{path}: a finished task made with another {', '.join(diff)} than this run; "
                         f"pass --overwrite to redo it (or delete its files)")
    if not shard_files_present(old, path):
        return None
    return old


# ---- the whole job -------------------------------------------------------------------------

def tokenize_corpus(inputs, tokenizer_path: str, output_prefix: str, valid_fraction: float = DEFAULT_VALID_FRACTION,
                    workers: int | None = None, seed: int = 0, progress_every: float = 10.0, quiet: bool = False,
                    command: list[str] | None = None, max_shard_tokens: int = DEFAULT_MAX_SHARD_TOKENS,
                    task_index: int = 0, num_tasks: int = 1, overwrite: bool = False) -> dict:
    """Tokenise ``inputs`` (files or folders of .jsonl/.jsonl.gz/.jsonl.zst) with the tokenizer
    at ``tokenizer_path`` into OUTPUT_PREFIX_{train,valid}[_NNNNN].bin/.idx and
    OUTPUT_PREFIX_manifest.json.

    With ``num_tasks`` > 1 only the files of task ``task_index`` are read and the outputs are
    named OUTPUT_PREFIX.task-NNNNN_*; a task already finished with the same inputs, tokenizer
    and options is skipped (its manifest is returned) unless ``overwrite``.

    Returns the manifest (also written to disk). Raises InputError (one line naming the file,
    and the line for malformed input) before or while reading; nothing is half-written."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    inputs = [str(i) for i in inputs]
    if not 0 <= valid_fraction < 1:
        raise InputError(f"--valid-fraction {valid_fraction} must be in [0, 1)")
    if workers is not None and workers < 1:
        raise InputError(f"--workers {workers} must be >= 1")
    if max_shard_tokens < 1:
        raise InputError(f"--max-shard-tokens {max_shard_tokens} must be >= 1")
    task_index, num_tasks = task_from_env(task_index, num_tasks)
    all_files = expand_inputs(inputs)
    files = partition(all_files, task_index, num_tasks)
    tok, eod = load_tokenizer(tokenizer_path)
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    dtype = dtype_for_vocab(vocab_size)
    base_prefix = str(output_prefix)
    if Path(base_prefix).is_dir() or base_prefix.endswith(os.sep):
        raise InputError(f"--output-prefix {base_prefix} is a folder; give a prefix such as "
                         f"{os.path.join(base_prefix, 'corpus')}")
    tasked = num_tasks > 1
    prefix = task_prefix(base_prefix, task_index) if tasked else base_prefix
    tok_sha = sha256_file(tokenizer_path)
    per_file = [{"path": os.path.abspath(f), "bytes": os.path.getsize(f), "documents": 0} for f in files]
    task_info = ({"index": task_index, "count": num_tasks, "files": len(files), "inputs_total": len(all_files),
                  "inputs_sha256": _inputs_digest(all_files)} if tasked else None)
    if tasked and not overwrite:
        done = _finished_task(prefix, {"tokenizer_sha256": tok_sha,
                                       "inputs": [(f["path"], f["bytes"]) for f in per_file],
                                       "valid_fraction": valid_fraction, "seed": seed, "task": task_info})
        if done is not None:
            if not quiet:
                print(f"tokenize_corpus: task {task_index}/{num_tasks} already finished ({manifest_path(prefix)}: "
                      f"{done['documents']:,} docs, {done['tokens']:,} tokens); skipped", flush=True)
            return done
    n_workers = workers or default_workers()
    key = split_key(seed)
    progress = _Progress(progress_every, sum(f["bytes"] for f in per_file), quiet)
    if not quiet:
        who = f"task {task_index}/{num_tasks}: {len(files)} of {len(all_files)}" if tasked else f"{len(files)}"
        print(f"tokenize_corpus: {who} file(s), {progress.total_bytes / 1e6:.1f} MB, tokenizer {tokenizer_path} "
              f"(vocab {vocab_size}, {dtype}), {n_workers} worker(s) -> {prefix}_*", flush=True)

    split_names = SPLITS if valid_fraction > 0 else ("train",)
    writers = {s: _SplitWriter(f"{prefix}_{s}", dtype, max_shard_tokens) for s in split_names}
    # Wall seconds: encode_s in the encoder thread (0 with --workers > 1), the rest in this
    # thread (wait_s: waiting for the next batch from the stage before).
    timing = {"encode_s": 0.0, "wait_s": 0.0, "ids_to_array_s": 0.0, "write_s": 0.0}
    t0 = time.time()

    def write(valid: np.ndarray, flat: np.ndarray, lengths: np.ndarray) -> None:
        t = time.perf_counter()
        if valid.any():
            token_valid = np.repeat(valid, lengths)  # each token's split, from its document's
            writers["train"].add(flat[~token_valid], lengths[~valid])
            writers["valid"].add(flat[token_valid], lengths[valid])
        else:
            writers["train"].add(flat, lengths)
        progress.docs += len(lengths)
        progress.tokens += int(lengths.sum())
        timing["write_s"] += time.perf_counter() - t
        progress.maybe_print()

    def timed(it):
        while True:
            t = time.perf_counter()
            item = next(it, _END)
            timing["wait_s"] += time.perf_counter() - t
            if item is _END:
                return
            yield item

    try:
        batches = _prefetch(_batches(files, progress, per_file, valid_fraction, key))
        try:
            if n_workers == 1:
                # Three stages: a reader thread, an encoder thread, this thread (ids -> arrays, write).
                batches = _prefetch(_encoded(batches, tok, timing))
                for valid, encs in timed(batches):
                    t = time.perf_counter()
                    flat, lengths = _flatten(encs, eod, dtype)
                    timing["ids_to_array_s"] += time.perf_counter() - t
                    write(valid, flat, lengths)
            else:
                import multiprocessing as mp

                # spawn: safe from a parent with threads (tokenizers' pool, torch), same on every OS.
                with mp.get_context("spawn").Pool(n_workers, _worker_init, (tokenizer_path,)) as pool:
                    pending: collections.deque = collections.deque()
                    for texts, valid in timed(batches):
                        pending.append((valid, pool.apply_async(_worker_encode, (texts, dtype.str))))
                        while len(pending) > 2 * n_workers:  # bounded: never reads far ahead of the encoders
                            v, r = pending.popleft()
                            write(v, *r.get())
                    while pending:
                        v, r = pending.popleft()
                        write(v, *r.get())
        finally:
            batches.close()
        total_docs = sum(w.documents for w in writers.values())
        if total_docs == 0 and not tasked:
            raise InputError(f"no documents in {', '.join(files)}; nothing to tokenise")
        for w in writers.values():
            w.finish()
        # Everything is encoded: drop a previous manifest before the new shards replace the old
        # ones, so no manifest ever describes shards it did not make.
        _remove(manifest_path(prefix))
        if tasked and manifest_path(base_prefix).exists():
            # A merged manifest lists this task's old shards: it is stale once they are replaced.
            _remove(manifest_path(base_prefix))
            if not quiet:
                print(f"tokenize_corpus: removed {manifest_path(base_prefix)} (it listed this task's old shards); "
                      f"merge again when all tasks have finished", flush=True)
        published = {s: w.publish() for s, w in writers.items()}
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    elapsed = time.time() - t0
    progress.maybe_print(force=True)

    folder = os.path.dirname(os.path.abspath(prefix))
    splits = {}
    for s, shards in published.items():
        entry = {"documents": writers[s].documents, "tokens": writers[s].tokens,
                 "shards": [{"prefix": _rel(sh["prefix"], folder), "documents": sh["documents"],
                             "tokens": sh["tokens"]} for sh in shards]}
        if len(shards) == 1:
            entry["prefix"] = shards[0]["prefix"]  # the one file, as this run named it (format 1 readers)
        splits[s] = entry
    counts = {s: (writers[s].documents, writers[s].tokens) for s in SPLITS if s in writers}
    manifest = {
        "format": "megatron-indexed-dataset",
        "format_version": MANIFEST_FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "prefix": prefix,
        "splits": splits,
        "documents": sum(c[0] for c in counts.values()),
        "tokens": sum(c[1] for c in counts.values()),
        "dtype": str(dtype),
        "vocab_size": vocab_size,
        "eod_token": EOD_TOKEN,
        "eod_token_id": eod,
        "tokenizer": {"path": os.path.abspath(tokenizer_path), "sha256": tok_sha},
        "inputs": per_file,
        "options": {"valid_fraction": valid_fraction, "seed": seed, "workers": n_workers,
                    "max_shard_tokens": max_shard_tokens,
                    "split": "blake2b(id + NUL + text, key=seed) < valid_fraction"},
        "command": command,
        "elapsed_s": round(elapsed, 3),
        "timing": {k: round(v, 3) for k, v in timing.items()},
    }
    if tasked:
        manifest["task"] = task_info
    write_manifest(prefix, manifest)
    if not quiet:
        rate = manifest["tokens"] / max(elapsed, 1e-9)
        nsh = ", ".join(f"{s} {len(v['shards'])} shard(s)" for s, v in splits.items())
        tr, va = counts.get("train", (0, 0)), counts.get("valid", (0, 0))
        print(f"tokenize_corpus: done in {elapsed:.1f} s ({rate:,.0f} tokens/s): train {tr[0]:,} docs "
              f"{tr[1]:,} tokens, valid {va[0]:,} docs {va[1]:,} tokens ({nsh}) -> {prefix}_manifest.json", flush=True)
        if tasked:
            print(f"tokenize_corpus: when all {num_tasks} tasks have finished: python data_prep/tokenize_corpus.py "
                  f"--output-prefix {base_prefix} --merge", flush=True)
    return manifest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Encode JSONL documents into Megatron .bin/.idx shards with a "
                                             "deterministic train/valid split and a manifest.")
    ap.add_argument("--input", nargs="+", help="files or folders of .jsonl/.jsonl.gz/.jsonl.zst")
    ap.add_argument("--tokenizer", help="tokenizer.json from data_prep/train_tokenizer.py")
    ap.add_argument("--output-prefix", required=True, help="writes PREFIX_train.*, PREFIX_valid.*, PREFIX_manifest.json")
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
                    help="tasks sharing the input files (default: $SLURM_ARRAY_TASK_COUNT, or 1)")
    ap.add_argument("--overwrite", action="store_true", help="redo a task even when its manifest exists")
    ap.add_argument("--merge", action="store_true",
                    help="after all --num-tasks tasks: write PREFIX_manifest.json listing every task's shards")
    ap.add_argument("--progress-every", type=float, default=10.0, help="seconds between progress lines")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    args = ap.parse_args(argv)
    try:
        if args.merge:
            from data_prep.merge_manifests import merge_manifests

            merge_manifests(args.output_prefix, num_tasks=args.num_tasks, quiet=args.quiet)
            return 0
        if not args.input or not args.tokenizer:
            ap.error("--input and --tokenizer are required (except with --merge)")
        if args.max_shard_tokens != int(args.max_shard_tokens):
            raise InputError(f"--max-shard-tokens {args.max_shard_tokens} must be a whole number")
        tokenize_corpus(args.input, args.tokenizer, args.output_prefix, args.valid_fraction, args.workers, args.seed,
                        args.progress_every, args.quiet, command=[sys.executable] + sys.argv,
                        max_shard_tokens=int(args.max_shard_tokens), task_index=args.task_index,
                        num_tasks=args.num_tasks, overwrite=args.overwrite)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; the previous output (if any) is unchanged", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
