"""Loss, perplexity and bits per byte of a checkpoint on a token dataset (.bin/.idx).

    python launcher/evaluate.py RUN_DIR_OR_CHECKPOINT [--data PREFIX] [--batches N] [--out FILE]

Windows: the dataset's tokens are one stream (documents end with the end-of-document token);
window j is tokens[j*T : j*T + T + 1] (T = model.seq_len), inputs the first T, targets the last
T: the non-overlapping windows the trainer's validation uses, in order. With --batches N only
the first N x batch_size windows are used (batch_size defaults to the run's
train.global_batch_size, so --batches train.eval_batches evaluates exactly the trainer's
validation windows); without it, every whole window.

loss: mean next-token cross-entropy in nats over every target token; perplexity = exp(loss).

bits per byte = (sum of the targets' losses in nats) / (ln 2 x bytes), where bytes is the UTF-8
length of the evaluated target tokens decoded back to text with the run's tokenizer. The targets
of consecutive windows are one contiguous span of the stream, decoded document by document (cut
at end-of-document tokens); the end-of-document token itself stands for no text and counts 0
bytes (its loss still counts). A multi-byte character split at the two ends of the span may
decode as U+FFFD: at most a few bytes off in total.
"""
from __future__ import annotations

import math
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

BYTES_METHOD = ("UTF-8 bytes of the target tokens decoded with the run's tokenizer, document by document "
                "(end-of-document token = 0 bytes)")


def resolve_data(info, data: str | None):
    """The IndexedDataset to evaluate: --data PREFIX (PREFIX.bin/.idx, or PREFIX_valid.* when
    PREFIX names a whole tokenised dataset), else the run's own valid split."""
    from pathlib import Path

    from llmtrain.data.indexed import IndexedDataset
    from llmtrain.export.runinfo import ExportError

    if data is None:
        spec = (info.config.get("data") or {}).get("prefix") or (info.prefixes[0] if len(info.prefixes) == 1 else None)
        if not spec or len(str(spec).split()) > 1:
            raise ExportError(f"{info.run_dir / 'config.yaml'}: data.prefix is "
                              f"{'a blend' if spec else 'not set'}; name the data to evaluate with --data PREFIX")
        return IndexedDataset(f"{spec}_valid")
    if not Path(f"{data}.idx").exists() and Path(f"{data}_valid.idx").exists():
        data = f"{data}_valid"
    return IndexedDataset(data)


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
    from llmtrain.export.runinfo import ExportError, eod_token_id, load_model, load_tokenizer, run_info, tokenizer_path

    info = run_info(checkpoint)
    ds = resolve_data(info, data)
    tok = load_tokenizer(tokenizer_path(info, tokenizer))
    eod = eod_token_id(info, tok)
    T = int(info.config["model"]["seq_len"])
    B = batch_size or int((info.config.get("train") or {}).get("global_batch_size") or 8)
    if B < 1 or (batches is not None and batches < 1) or micro_batch_size < 1:
        raise ExportError("--batches, --batch-size and --micro-batch-size must be >= 1")
    n_windows = (ds.num_tokens - 1) // T
    if n_windows < 1:
        raise ExportError(f"{ds.prefix}: {ds.num_tokens} tokens are fewer than one window of seq_len+1={T + 1}")
    n = n_windows if batches is None else min(n_windows, batches * B)
    model, rec = load_model(checkpoint)
    tokens = ds.tokens
    if int(tokens[: n * T + 1].max()) >= model.cfg.vocab_size:
        raise ExportError(f"{ds.prefix}.bin: token ids beyond the model's vocabulary ({model.cfg.vocab_size}); "
                          f"the data was made with another tokenizer")
    loss_sum, t0, last = 0.0, time.time(), time.time()
    for s in range(0, n, micro_batch_size):
        rows = np.stack([tokens[j * T: j * T + T + 1] for j in range(s, min(n, s + micro_batch_size))])
        t = torch.from_numpy(rows.astype(np.int64))
        logits = model(t[:, :-1])
        loss_sum += float(F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), t[:, 1:].reshape(-1),
                                          reduction="sum", ).double())
        done = min(n, s + micro_batch_size)
        if progress and time.time() - last > 10:
            rate = done / (time.time() - t0)
            print(f"evaluate: {done}/{n} windows, {rate * T:,.0f} tokens/s, ETA {(n - done) / rate:.0f} s",
                  file=sys.stderr, flush=True)
            last = time.time()
    n_tokens = n * T
    targets = np.asarray(tokens[1: n_tokens + 1])
    n_bytes = count_bytes(tok, targets, eod)
    loss = loss_sum / n_tokens
    return {
        "checkpoint": rec["source"],
        "step": rec["step"],
        "data": ds.prefix,
        "seq_len": T,
        "windows": n,
        "windows_available": n_windows,
        "batch_size": B,
        "tokens": n_tokens,
        "eod_tokens": int((targets == eod).sum()),
        "bytes": n_bytes,
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_byte": loss_sum / (n_bytes * math.log(2)) if n_bytes else None,
        "bytes_method": BYTES_METHOD,
    }
