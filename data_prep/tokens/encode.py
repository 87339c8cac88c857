"""The encode step: documents → batches of token ids in input order, each document followed by
the end-of-document token, each with its split; for prompt/response records also the loss mask.

Three stages overlap: a reader thread reads, parses and hashes each document for its split
(`read_batches`); then either an encoder thread calls ``encode_batch`` (which releases the GIL
and runs on tokenizers' own thread pool) while this thread turns the previous batch's ids into
arrays (``workers`` == 1), or ``workers`` processes encode whole batches. How a document becomes
ids is an `Encoding`: `TextEncoding` (the text) or `PromptResponseEncoding` (prompt + response,
the mask 1 on the response and the end of document).
"""
from __future__ import annotations

import collections
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from llmtrain_prep.document import Document
from llmtrain_prep.readers import read_documents

from .prefetch import END, prefetch
from .split import is_valid_doc, split_key

BATCH_DOCS = 1024  # documents per encode batch
BATCH_CHARS = 8_000_000  # ... or fewer when they are long


@dataclass
class Batch:
    """Encoded documents, in input order."""
    valid: np.ndarray  # bool per document: it belongs to the valid split
    tokens: np.ndarray  # every document's ids back to back, the end of document after each
    lengths: np.ndarray  # ids per document, the end of document included
    mask: np.ndarray | None = None  # uint8 per id: 1 where the loss counts (prompt/response records)


def _encode_batch(tok, texts: list[str]):
    # encode_batch, not encode_batch_fast: the same ids, and with tokenizers 0.23.3 on this 2-core
    # machine encode_batch took 0.85x the CPU time of encode_batch_fast (median of 6 alternating
    # rounds on 5 MB, load ~12; benchmarks/BENCHMARKS.md, tokenisation).
    return tok.encode_batch(texts, add_special_tokens=False)


def flatten(encs, eod: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Flat token array of a batch of encodings (EOD after each document) in ``dtype`` and
    per-document lengths (EOD included)."""
    ids = [e.ids for e in encs]
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)) + 1
    flat = np.empty(int(lengths.sum()), dtype=dtype)
    ends = np.cumsum(lengths)
    flat[ends - 1] = eod
    pos = 0
    for seq, end in zip(ids, ends.tolist()):
        flat[pos: end - 1] = seq
        pos = end
    return flat, lengths


class TextEncoding:
    """One document, one sequence: its text's ids, then the end of document."""

    name = "text"

    @staticmethod
    def payload(docs: list[Document]) -> list[str]:
        return [d.text for d in docs]

    @staticmethod
    def encode(tok, texts: list[str]):
        return _encode_batch(tok, texts)

    @staticmethod
    def arrays(encs, eod: int, dtype) -> tuple[np.ndarray, np.ndarray, None]:
        return (*flatten(encs, eod, dtype), None)


class PromptResponseEncoding:
    """One record, one sequence: prompt ids + response ids + end of document; the loss mask is
    0 on the prompt and 1 on the response and the end of document."""

    name = "prompt-response"

    @staticmethod
    def payload(docs: list[Document]) -> tuple[list[str], list[str]]:
        return [d.text for d in docs], [d.meta["response"] for d in docs]

    @staticmethod
    def encode(tok, payload):
        prompts, responses = payload
        return _encode_batch(tok, prompts), _encode_batch(tok, responses)

    @staticmethod
    def arrays(encs, eod: int, dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        prompts, responses = encs
        seqs = [np.concatenate([np.asarray(p.ids, np.int64), np.asarray(r.ids, np.int64), [eod]])
                for p, r in zip(prompts, responses)]
        masks = [np.concatenate([np.zeros(len(p.ids), np.uint8), np.ones(len(r.ids) + 1, np.uint8)])
                 for p, r in zip(prompts, responses)]
        return (np.concatenate(seqs).astype(dtype), np.array([len(q) for q in seqs], np.int64),
                np.concatenate(masks))


ENCODINGS = {e.name: e for e in (TextEncoding, PromptResponseEncoding)}


def read_batches(job, progress, encoding) -> Iterator[tuple[object, np.ndarray]]:
    """(payload, is_valid) from all of the job's inputs, in order, BATCH_DOCS / BATCH_CHARS
    documents at a time; is_valid is each document's split (hashed here, in the reader thread)."""
    opts = job.options
    key, fraction = split_key(opts.seed), opts.valid_fraction
    adapter = opts.adapter()
    reader = {k: job.reader[k] for k in ("hf_config", "hf_split", "hf_shard")}
    docs: list[Document] = []
    valid: list[bool] = []
    chars = 0
    for path, info in zip(job.inputs, job.per_input):
        progress.cur_chars = 0
        progress.cur_suffix = os.path.splitext(path)[1].lower()
        for doc in read_documents(path, adapter=adapter, **reader):
            docs.append(doc)
            valid.append(is_valid_doc(doc.id, doc.text, fraction, key))
            chars += len(doc.text)
            info["documents"] += 1
            progress.cur_chars += len(doc.text)
            if len(docs) >= BATCH_DOCS or chars >= BATCH_CHARS:
                yield encoding.payload(docs), np.array(valid, dtype=bool)
                docs, valid, chars = [], [], 0
        progress.file_done(info["bytes"])
    if docs:
        yield encoding.payload(docs), np.array(valid, dtype=bool)


def _encoded(batches, tok, encoding, timing: dict):
    """(is_valid, encodings) of each batch; meant to run in its own thread."""
    for payload, valid in batches:
        t = time.perf_counter()
        encs = encoding.encode(tok, payload)
        timing["encode_s"] += time.perf_counter() - t
        yield valid, encs


# ---- worker processes
_W: dict = {}


def _worker_init(tokenizer_path: str, eod_token: str) -> None:
    from .plan import load_tokenizer

    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker process
    _W["tok"], _W["eod"] = load_tokenizer(tokenizer_path, eod_token)


def _worker_encode(encoding: str, payload, dtype: str):
    enc = ENCODINGS[encoding]
    return enc.arrays(enc.encode(_W["tok"], payload), _W["eod"], np.dtype(dtype))


def default_workers() -> int:
    """Encoding processes when --workers is not given. On 2 cores in-process encode_batch (1,
    which already runs on tokenizers' thread pool) measured as fast as 2 processes and starts
    faster. With many cores the single Python thread that splits and writes becomes the limit
    of in-process encoding, so processes are used there (an estimate, not measured beyond 2
    cores)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 1 if n <= 4 else min(n - 1, 32)


def encoded_batches(job, n_workers: int, progress, timing: dict) -> Iterator[Batch]:
    """Every `Batch` of the job, in input order (see the module doc)."""
    encoding = ENCODINGS[job.options.format]
    batches = prefetch(read_batches(job, progress, encoding))

    def timed(it):
        while True:
            t = time.perf_counter()
            item = next(it, END)
            timing["wait_s"] += time.perf_counter() - t
            if item is END:
                return
            yield item

    try:
        if n_workers == 1:
            encoded = prefetch(_encoded(batches, job.encoder(), encoding, timing))
            try:
                for valid, encs in timed(encoded):
                    t = time.perf_counter()
                    flat, lengths, mask = encoding.arrays(encs, job.eod, job.dtype)
                    timing["ids_to_array_s"] += time.perf_counter() - t
                    yield Batch(valid, flat, lengths, mask)
            finally:
                encoded.close()
        else:
            import multiprocessing as mp

            # spawn: safe from a parent with threads (tokenizers' pool, torch), same on every OS.
            with mp.get_context("spawn").Pool(n_workers, _worker_init, (job.tokenizer_path, job.options.eod_token)
                                              ) as pool:
                pending: collections.deque = collections.deque()
                for payload, valid in timed(batches):
                    pending.append((valid, pool.apply_async(_worker_encode, (encoding.name, payload, job.dtype.str))))
                    while len(pending) > 2 * n_workers:  # bounded: never reads far ahead of the encoders
                        v, r = pending.popleft()
                        yield Batch(v, *r.get())
                while pending:
                    v, r = pending.popleft()
                    yield Batch(v, *r.get())
    finally:
        batches.close()
