"""Encode JSONL documents into Megatron .bin/.idx token shards with a train/valid split.

    python data_prep/tokenize_corpus.py --input data/sample --tokenizer tokenizer.json \\
        --output-prefix data/tok/sample [--valid-fraction 0.01] [--workers N] [--seed 0]

writes PREFIX_train.bin/.idx, PREFIX_valid.bin/.idx (when --valid-fraction > 0) and, last,
PREFIX_manifest.json. Every document becomes one sequence with the end-of-document token
(<|endoftext|>) appended. A document goes to the valid split when a keyed hash of its id and
text falls below --valid-fraction: the split does not depend on the order, the number of
workers or chance, and --seed picks a different (equally deterministic) split.

Documents are read as a stream and encoded in batches, either in this process (tokenizers'
encode_batch on its own thread pool, --workers 1) or by N worker processes (--workers N);
a progress line with docs/s, tokens/s and an ETA is printed every --progress-every seconds.
Any error leaves the previous output as it was: the shards are written under temporary names
and renamed only when all documents are encoded.
"""
from __future__ import annotations

import argparse
import collections
import datetime as _dt
import hashlib
import os
import struct
import sys
import time
from contextlib import ExitStack
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

EOD_TOKEN = "<|endoftext|>"
DEFAULT_VALID_FRACTION = 0.01
BATCH_DOCS = 512  # documents per encode batch
BATCH_CHARS = 4_000_000  # ... or fewer when they are long
# Rough uncompressed-characters per on-disk byte, for the ETA until a file has been read.
_RATIO_GUESS = {".gz": 3.0, ".zst": 3.5}


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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


def _encode(tok, texts: list[str], eod: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat int64 token array of the batch (EOD after each document) and per-document lengths."""
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    encs = encode(texts, add_special_tokens=False)
    lengths = np.fromiter((len(e.ids) + 1 for e in encs), dtype=np.int64, count=len(encs))
    flat = np.empty(int(lengths.sum()), dtype=np.int64)
    pos = 0
    for e, n in zip(encs, lengths):
        flat[pos : pos + n - 1] = e.ids
        flat[pos + n - 1] = eod
        pos += n
    return flat, lengths


# ---- worker processes ----------------------------------------------------------------------
_W: dict = {}


def _worker_init(tokenizer_path: str) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker process
    _W["tok"], _W["eod"] = load_tokenizer(tokenizer_path)


def _worker_encode(texts: list[str]):
    return _encode(_W["tok"], texts, _W["eod"])


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


def _batches(files: list[str], progress: _Progress, per_file: list[dict]):
    """Yield lists of (id, text) from all files, in order, BATCH_DOCS / BATCH_CHARS at a time."""
    batch: list[tuple[str, str]] = []
    chars = 0
    for path, info in zip(files, per_file):
        progress.cur_chars = 0
        progress.cur_suffix = os.path.splitext(path)[1].lower()
        for doc in iter_documents(path):
            batch.append((doc["id"], doc["text"]))
            chars += len(doc["text"])
            info["documents"] += 1
            progress.cur_chars += len(doc["text"])
            if len(batch) >= BATCH_DOCS or chars >= BATCH_CHARS:
                yield batch
                batch, chars = [], 0
        progress.done_bytes += info["bytes"]
        progress.done_chars += progress.cur_chars
        progress.cur_chars = 0
    if batch:
        yield batch


def default_workers() -> int:
    """Encoding processes when --workers is not given. On 2 cores in-process encode_batch (1,
    which already runs on tokenizers' thread pool) measured as fast as 2 processes and starts
    faster. With many cores the single Python thread that reads, splits and writes becomes the
    limit of in-process encoding (it costs ~1/10 of the encoding work per token), so processes
    are used there (an estimate from that ratio, not measured beyond 2 cores)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 1 if n <= 4 else min(n - 1, 32)


def tokenize_corpus(inputs, tokenizer_path: str, output_prefix: str, valid_fraction: float = DEFAULT_VALID_FRACTION,
                    workers: int | None = None, seed: int = 0, progress_every: float = 10.0, quiet: bool = False,
                    command: list[str] | None = None) -> dict:
    """Tokenise ``inputs`` (files or folders of .jsonl/.jsonl.gz/.jsonl.zst) with the tokenizer
    at ``tokenizer_path`` into OUTPUT_PREFIX_{train,valid}.bin/.idx and OUTPUT_PREFIX_manifest.json.

    Returns the manifest (also written to disk). Raises InputError (one line naming the file,
    and the line for malformed input) before or while reading; nothing is half-written."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    inputs = [str(i) for i in inputs]
    if not 0 <= valid_fraction < 1:
        raise InputError(f"--valid-fraction {valid_fraction} must be in [0, 1)")
    if workers is not None and workers < 1:
        raise InputError(f"--workers {workers} must be >= 1")
    files = expand_inputs(inputs)
    tok, eod = load_tokenizer(tokenizer_path)
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    dtype = dtype_for_vocab(vocab_size)
    prefix = str(output_prefix)
    if Path(prefix).is_dir() or prefix.endswith(os.sep):
        raise InputError(f"--output-prefix {prefix} is a folder; give a prefix such as {os.path.join(prefix, 'corpus')}")
    n_workers = workers or default_workers()
    key = split_key(seed)
    per_file = [{"path": os.path.abspath(f), "bytes": os.path.getsize(f), "documents": 0} for f in files]
    progress = _Progress(progress_every, sum(f["bytes"] for f in per_file), quiet)
    if not quiet:
        print(f"tokenize_corpus: {len(files)} file(s), {progress.total_bytes / 1e6:.1f} MB, tokenizer {tokenizer_path} "
              f"(vocab {vocab_size}, {dtype}), {n_workers} worker(s) -> {prefix}_*", flush=True)

    counts = {"train": [0, 0], "valid": [0, 0]}  # documents, tokens
    t0 = time.time()
    with ExitStack() as stack:
        writers = {"train": stack.enter_context(IndexedDatasetWriter(f"{prefix}_train", dtype))}
        if valid_fraction > 0:
            writers["valid"] = stack.enter_context(IndexedDatasetWriter(f"{prefix}_valid", dtype))

        def write(batch, flat, lengths):
            offsets = np.concatenate(([0], np.cumsum(lengths)))
            for j, (doc_id, text) in enumerate(batch):
                split = "valid" if is_valid_doc(doc_id, text, valid_fraction, key) else "train"
                writers[split].add_document(flat[offsets[j] : offsets[j + 1]])
                counts[split][0] += 1
                counts[split][1] += int(lengths[j])
            progress.docs += len(batch)
            progress.tokens += int(lengths.sum())
            progress.maybe_print()

        if n_workers == 1:
            for batch in _batches(files, progress, per_file):
                write(batch, *_encode(tok, [t for _, t in batch], eod))
        else:
            import multiprocessing as mp

            # spawn: safe from a parent with threads (tokenizers' pool, torch), same on every OS.
            pool = stack.enter_context(mp.get_context("spawn").Pool(n_workers, _worker_init, (tokenizer_path,)))
            pending: collections.deque = collections.deque()
            for batch in _batches(files, progress, per_file):
                pending.append((batch, pool.apply_async(_worker_encode, ([t for _, t in batch],))))
                while len(pending) > 2 * n_workers:  # bounded: never reads far ahead of the encoders
                    b, r = pending.popleft()
                    write(b, *r.get())
            while pending:
                b, r = pending.popleft()
                write(b, *r.get())
        if counts["train"][0] + counts["valid"][0] == 0:
            raise InputError(f"no documents in {', '.join(files)}; nothing to tokenise")
        # Everything is encoded: drop a previous manifest before the new shards replace the old
        # ones, so no manifest ever describes shards it did not make.
        old = manifest_path(prefix)
        if old.exists():
            old.unlink()
    elapsed = time.time() - t0
    progress.maybe_print(force=True)

    manifest = {
        "format": "megatron-indexed-dataset",
        "format_version": 1,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "prefix": prefix,
        "splits": {
            s: {"prefix": f"{prefix}_{s}", "documents": c[0], "tokens": c[1]}
            for s, c in counts.items() if s in writers
        },
        "documents": counts["train"][0] + counts["valid"][0],
        "tokens": counts["train"][1] + counts["valid"][1],
        "dtype": str(dtype),
        "vocab_size": vocab_size,
        "eod_token": EOD_TOKEN,
        "eod_token_id": eod,
        "tokenizer": {"path": os.path.abspath(tokenizer_path), "sha256": sha256_file(tokenizer_path)},
        "inputs": per_file,
        "options": {"valid_fraction": valid_fraction, "seed": seed, "workers": n_workers,
                    "split": "blake2b(id + NUL + text, key=seed) < valid_fraction"},
        "command": command,
        "elapsed_s": round(elapsed, 3),
    }
    write_manifest(prefix, manifest)
    if not quiet:
        rate = manifest["tokens"] / max(elapsed, 1e-9)
        print(f"tokenize_corpus: done in {elapsed:.1f} s ({rate:,.0f} tokens/s): train {counts['train'][0]:,} docs "
              f"{counts['train'][1]:,} tokens, valid {counts['valid'][0]:,} docs {counts['valid'][1]:,} tokens "
              f"-> {prefix}_manifest.json", flush=True)
    return manifest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Encode JSONL documents into Megatron .bin/.idx shards with a "
                                             "deterministic train/valid split and a manifest.")
    ap.add_argument("--input", nargs="+", required=True, help="files or folders of .jsonl/.jsonl.gz/.jsonl.zst")
    ap.add_argument("--tokenizer", required=True, help="tokenizer.json from data_prep/train_tokenizer.py")
    ap.add_argument("--output-prefix", required=True, help="writes PREFIX_train.*, PREFIX_valid.*, PREFIX_manifest.json")
    ap.add_argument("--valid-fraction", type=float, default=DEFAULT_VALID_FRACTION,
                    help=f"share of documents in the valid split (default {DEFAULT_VALID_FRACTION}; 0: none)")
    ap.add_argument("--workers", type=int, default=None,
                    help="encoding processes (default: 1 = in-process threads on <= 4 cores, else cores-1)")
    ap.add_argument("--seed", type=int, default=0, help="salt of the split hash (default 0)")
    ap.add_argument("--progress-every", type=float, default=10.0, help="seconds between progress lines")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    args = ap.parse_args(argv)
    try:
        tokenize_corpus(args.input, args.tokenizer, args.output_prefix, args.valid_fraction, args.workers, args.seed,
                        args.progress_every, args.quiet, command=[sys.executable] + sys.argv)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; the previous output (if any) is unchanged", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
