"""The write step of a tokenising task: every batch into its split's shards (staged), then
published in place of the old ones, then the manifest (llmtrain.data.manifest.Manifest), last."""
from __future__ import annotations

import os
import time
from collections.abc import Iterable

import numpy as np

from llmtrain.data.manifest import Manifest, Shard, Split, manifest_file
from llmtrain_prep.readers import InputError

from .encode import Batch
from .plan import Job
from .shards import MASK_SUFFIX, SplitWriter, remove


def write_splits(job: Job, batches: Iterable[Batch], progress, timing: dict) -> dict[str, SplitWriter]:
    """Append every `Batch` to its split's shards (staged under temporary names); returns the
    finished (not yet published) writers. On an error every staged file is removed."""
    writers = {s: SplitWriter(f"{job.prefix}_{s}", job.dtype, int(job.options.max_shard_tokens), job.options.masked)
               for s in job.split_names}
    try:
        for b in batches:
            t = time.perf_counter()
            if b.valid.any():
                token_valid = np.repeat(b.valid, b.lengths)  # each token's split, from its document's
                for name, docs, toks in (("train", ~b.valid, ~token_valid), ("valid", b.valid, token_valid)):
                    writers[name].add(b.tokens[toks], b.lengths[docs], None if b.mask is None else b.mask[toks])
            else:
                writers["train"].add(b.tokens, b.lengths, b.mask)
            progress.docs += len(b.lengths)
            progress.tokens += int(b.lengths.sum())
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


def publish(job: Job, writers: dict[str, SplitWriter], quiet: bool) -> dict[str, list[dict]]:
    """Rename the staged shards into place, after dropping the manifests that would describe
    the old ones (this task's, and a merged one listing this task's shards)."""
    try:
        remove(manifest_file(job.prefix))
        if job.tasked and manifest_file(job.base_prefix).exists():
            remove(manifest_file(job.base_prefix))
            if not quiet:
                print(f"tokenize_corpus: removed {manifest_file(job.base_prefix)} (it listed this task's old shards); "
                      f"merge again when all tasks have finished", flush=True)
        return {s: w.publish() for s, w in writers.items()}
    except BaseException:
        for w in writers.values():
            w.abort()
        raise


def _rel(path: str, folder: str) -> str:
    return os.path.relpath(os.path.abspath(path), os.path.abspath(folder))


def build_manifest(job: Job, published: dict[str, list[dict]], n_workers: int, elapsed: float, timing: dict,
                   command: list[str] | None) -> Manifest:
    folder = os.path.dirname(os.path.abspath(job.prefix))
    splits = {s: Split([Shard(_rel(sh["prefix"], folder), sh["documents"], sh["tokens"]) for sh in shards])
              for s, shards in published.items()}
    extra = {"command": command, "elapsed_s": round(elapsed, 3), "timing": {k: round(v, 3) for k, v in timing.items()}}
    if job.tasked:
        extra["task"] = job.task_record()
    if job.options.masked:
        extra["loss_mask"] = {"suffix": MASK_SUFFIX, "dtype": "uint8",
                              "counts": "1: a response token or the end of document (in the loss); 0: a prompt token"}
    return Manifest(prefix=job.prefix, splits=splits, dtype=job.dtype.name, vocab_size=job.vocab_size,
                    eod_token=job.options.eod_token, eod_token_id=job.eod, tokenizer_path=job.tokenizer_path,
                    tokenizer_sha256=job.tokenizer_sha256, inputs=job.per_input, options=job.options.record(n_workers),
                    extra=extra)
