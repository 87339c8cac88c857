"""Loss, perplexity and bits per byte of a checkpoint on a token dataset (.bin/.idx).

    python launcher/evaluate.py RUN_DIR_OR_CHECKPOINT [--data PREFIX] [--batches N] [--out FILE]

Data: a tokenised dataset PREFIX (its manifest, llmtrain.data.manifest.Manifest, lists the
valid split's shards: one file, several shards, or the shards of merged tasks) or one
PREFIX.bin/.idx file. Windows: each shard's tokens are one stream (documents end with the
end-of-document token); window j of a shard is tokens[j*T : j*T + T + 1] (T = train.seq_len),
inputs the first T, targets the last T; the windows of shard 0 come first, then shard 1's, ...
(windows never cross a shard boundary): the non-overlapping windows the trainer's validation
uses, in order. With --batches N only
the first N x batch_size windows are used (batch_size defaults to the run's
train.global_batch_size, so --batches train.eval_batches evaluates exactly the trainer's
validation windows); without it, every whole window.

loss: mean next-token cross-entropy in nats over every target token; perplexity = exp(loss).
Prompt/response data (a manifest with "loss_mask"): over the response tokens only, as the
trainer counts them (loss_tokens); bits per byte then counts the bytes of those tokens.

bits per byte = (sum of the targets' losses in nats) / (ln 2 x bytes), where bytes is the UTF-8
length of the evaluated target tokens decoded back to text with the run's tokenizer. The targets
of consecutive windows of a shard are one contiguous span of its stream, decoded document by
document (cut at end-of-document tokens); the end-of-document token itself stands for no text and counts 0
bytes (its loss still counts). A multi-byte character split at the two ends of the span may
decode as U+FFFD: at most a few bytes off in total.
"""
from __future__ import annotations

import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

BYTES_METHOD = ("UTF-8 bytes of the target tokens decoded with the run's tokenizer, document by document "
                "(end-of-document token = 0 bytes)")


def resolve_data(info, data: str | None) -> tuple[str, list]:
    """(what to call it, the IndexedDataset shards to evaluate, in order): --data PREFIX.bin/.idx
    (one file), --data PREFIX of a tokenised dataset (the valid split's shards its manifest
    lists, also for sharded and merged-task datasets), else the run's own valid split."""
    from pathlib import Path

    from llmtrain.data.indexed import IndexedDataset
    from llmtrain.data.manifest import Manifest, manifest_file
    from llmtrain.checkpoint.load import ExportError

    if data is None:
        spec = (info.config.get("data") or {}).get("prefix") or (info.prefixes[0] if len(info.prefixes) == 1 else None)
        if not spec or len(str(spec).split()) > 1:
            raise ExportError(f"{info.run_dir / 'config.yaml'}: data.prefix is "
                              f"{'a blend' if spec else 'not set'}; name the data to evaluate with --data PREFIX")
        data = str(spec)
    elif Path(f"{data}.idx").exists():
        return str(data), [IndexedDataset(data)]
    if not manifest_file(data).is_file() and Path(f"{data}_valid.idx").exists():
        return f"{data}_valid", [IndexedDataset(f"{data}_valid")]  # a dataset without its manifest
    m = Manifest.read(data)
    shards = m.shard_prefixes("valid")
    if not shards:
        raise ExportError(f"{m.path}: has no valid split (tokenised with --valid-fraction 0); pass --data with a "
                          f"PREFIX.bin/.idx file or a dataset that has one")
    return f"{data}_valid", [IndexedDataset(s) for s in shards]


def _loss_masks(label: str, shards: list) -> list | None:
    """The shards' loss masks when their dataset's manifest records one (prompt/response data,
    llmtrain.data.dataset.open_loss_masks); None otherwise."""
    import json
    from pathlib import Path

    from llmtrain.data.dataset import open_loss_masks

    base = label[: -len("_valid")] if label.endswith("_valid") else label
    path = Path(f"{base}_manifest.json")
    manifest = json.loads(path.read_text()) if path.is_file() else {}
    return open_loss_masks(manifest, shards)


def window_of(config: dict) -> int:
    """The window a run trained on: train.seq_len, or (runs from before it existed) model.seq_len."""
    return int((config.get("train") or {}).get("seq_len") or config["model"]["seq_len"])


def window_counts(shards: list, seq_len: int) -> np.ndarray:
    """Whole windows of each shard; window g overall is window g - starts[k] of shard k, shard
    by shard: the order of the trainer's validation (llmtrain.data.sampler.TokenWindows without
    shuffling)."""
    return np.array([max(0, (d.num_tokens - 1) // seq_len) for d in shards], dtype=np.int64)


def _locate(counts: np.ndarray, g: int) -> tuple[int, int]:
    starts = np.concatenate([[0], np.cumsum(counts)])
    k = int(np.searchsorted(starts, g, side="right")) - 1
    return k, g - int(starts[k])


def count_bytes(tok, ids: np.ndarray, eod: int) -> int:
    """UTF-8 bytes of ``ids`` decoded with ``tok``, cut into documents at ``eod`` (0 bytes each)."""
    cuts = np.flatnonzero(ids == eod)
    pieces, start = [], 0
    for c in list(cuts) + [len(ids)]:
        if c > start:
            pieces.append(ids[start:c].tolist())
        start = c + 1
    total = 0
    for i in range(0, len(pieces), 256):
        total += sum(len(t.encode("utf-8")) for t in tok.decode_batch(pieces[i:i + 256], skip_special_tokens=False))
    return total


@torch.no_grad()
def evaluate(checkpoint, data: str | None = None, batches: int | None = None, batch_size: int | None = None,
             micro_batch_size: int = 8, tokenizer: str | None = None, progress=True) -> dict:
    from llmtrain.checkpoint.load import (ExportError, eod_token_id, load_model, load_tokenizer, run_info,
                                          tokenizer_path)

    info = run_info(checkpoint)
    label, shards = resolve_data(info, data)
    tok = load_tokenizer(tokenizer_path(info, tokenizer))
    eod = eod_token_id(info, tok)
    T = window_of(info.config)
    B = batch_size or int((info.config.get("train") or {}).get("global_batch_size") or 8)
    if B < 1 or (batches is not None and batches < 1) or micro_batch_size < 1:
        raise ExportError("--batches, --batch-size and --micro-batch-size must be >= 1")
    counts = window_counts(shards, T)
    n_windows = int(counts.sum())
    if n_windows < 1:
        total = sum(d.num_tokens for d in shards)
        raise ExportError(f"{label}: {total} tokens are fewer than one window of seq_len+1={T + 1}")
    n = n_windows if batches is None else min(n_windows, batches * B)
    per_shard = np.minimum(counts, np.maximum(0, n - np.concatenate([[0], np.cumsum(counts)[:-1]])))  # used
    model, rec = load_model(checkpoint)
    for d, k in zip(shards, per_shard):
        if k and int(d.tokens[: k * T + 1].max()) >= model.cfg.vocab_size:
            raise ExportError(f"{d.prefix}.bin: token ids beyond the model's vocabulary ({model.cfg.vocab_size}); "
                              f"the data was made with another tokenizer")
    # prompt/response data: only the response tokens count (a lone .bin/.idx file has no manifest: every token)
    masks = None if data is not None and os.path.exists(f"{data}.idx") else _loss_masks(label, shards)
    loss_sum, n_counted, t0, last = 0.0, 0, time.time(), time.time()
    for s in range(0, n, micro_batch_size):
        where = [_locate(counts, g) for g in range(s, min(n, s + micro_batch_size))]
        rows = np.stack([shards[k].tokens[j * T: j * T + T + 1] for k, j in where])
        t = torch.from_numpy(rows.astype(np.int64))
        y = t[:, 1:]
        if masks is not None:
            keep = np.stack([masks[k].tokens[j * T + 1: j * T + T + 1] for k, j in where]) != 0
            y = torch.where(torch.from_numpy(keep), y, -100)
        n_counted += int((y != -100).sum())
        logits = model(t[:, :-1])
        loss_sum += float(F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1),
                                          reduction="sum", ignore_index=-100).double())
        done = min(n, s + micro_batch_size)
        if progress and time.time() - last > 10:
            rate = done / (time.time() - t0)
            print(f"evaluate: {done}/{n} windows, {rate * T:,.0f} tokens/s, ETA {(n - done) / rate:.0f} s",
                  file=sys.stderr, flush=True)
            last = time.time()
    n_tokens = n * T
    n_bytes = n_eod = 0
    for i, (d, k) in enumerate(zip(shards, per_shard)):  # each shard's targets are one contiguous span
        targets = np.asarray(d.tokens[1: k * T + 1])
        if masks is not None:
            targets = targets[np.asarray(masks[i].tokens[1: k * T + 1]) != 0]
        n_bytes += count_bytes(tok, targets, eod)
        n_eod += int((targets == eod).sum())
    loss = loss_sum / max(n_counted, 1)
    return {
        "checkpoint": rec["source"],
        "step": rec["step"],
        "data": label,
        "shards": len(shards),
        "seq_len": T,
        "windows": n,
        "windows_available": n_windows,
        "batch_size": B,
        "tokens": n_tokens,
        "loss_tokens": n_counted,
        "loss_mask": masks is not None,
        "eod_tokens": n_eod,
        "bytes": n_bytes,
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_byte": loss_sum / (n_bytes * math.log(2)) if n_bytes else None,
        "bytes_method": BYTES_METHOD,
    }
