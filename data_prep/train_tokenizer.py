"""Train a byte-level BPE tokenizer (HF tokenizers) on documents.

    python data_prep/train_tokenizer.py --input data/sample --vocab-size 4096 --output tokenizer.json \
        [--eod-token '<|endoftext|>'] [--text-key text] [--hf-config C] [--hf-split S]

Inputs: JSONL(.gz/.zst), Parquet, datasets save_to_disk folders and hf:NAME (see
data_prep/readers/). Byte-level: every string, in any script, encodes without unknown tokens
and decodes back to exactly itself (no normalizer, no added prefix space). --eod-token (default
``<|endoftext|>``) is the special end-of-document token (id 0); data_prep/tokenize_corpus.py
appends it to every document (pass it the same --eod-token). The tokenizer.json is written under
a temporary name and renamed when complete.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from llmtrain_prep.readers import (
    TOKENIZE_SUFFIXES,
    InputError,
    add_input_args,
    check_input,
    expand_inputs,
    read_documents,
    reader_options,
)
from llmtrain.tokenizer import EOD_TOKEN
from llmtrain.core.files import atomic_write_text

# 256 byte symbols + the special token: the smallest vocabulary that can encode anything.
MIN_VOCAB = 257


def _documents(files: list[str], progress_every: float, stats: dict, reader: dict, max_documents: int | None):
    start = time.time()
    last = start
    for path in files:
        docs = read_documents(path, **reader)
        for doc in docs:
            if max_documents is not None and stats["documents"] >= max_documents:
                close = getattr(docs, "close", None)
                if close is not None:
                    close()
                return
            stats["documents"] += 1
            stats["characters"] += len(doc.text)
            yield doc.text
            now = time.time()
            if progress_every and now - last >= progress_every:
                last = now
                rate = stats["characters"] / max(now - start, 1e-9)
                print(f"train_tokenizer: read {stats['documents']:,} documents, "
                      f"{stats['characters'] / 1e6:.1f} M chars ({rate / 1e6:.2f} M chars/s) from {path}", flush=True)


def build_tokenizer():
    """An untrained byte-level BPE tokenizer with the ByteLevel pre-tokenizer and decoder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def train_tokenizer(inputs, vocab_size: int, output: str, min_frequency: int = 2,
                    progress_every: float = 10.0, quiet: bool = False, eod_token: str = EOD_TOKEN,
                    reader: dict | None = None, max_documents: int | None = None) -> str:
    """Train on the documents of ``inputs`` (files, folders, save_to_disk folders, hf:NAMEs;
    ``reader``: data_prep.readers.reader_options, e.g. {"text_key": "content"}) with
    ``eod_token`` as the special end-of-document token (id 0), and write ``output``
    atomically; ``max_documents``: train on the first N documents only (a sample of a big
    streamed data set). Returns the output path. Raises InputError on bad input, before writing."""
    from tokenizers import pre_tokenizers, trainers

    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    reader = {k: v for k, v in (reader or {}).items() if v is not None}
    if not eod_token:
        raise InputError("--eod-token is empty; name the end-of-document token, e.g. '<|endoftext|>'")
    if vocab_size < MIN_VOCAB:
        raise InputError(f"--vocab-size {vocab_size} is too small; byte-level BPE needs at least {MIN_VOCAB} "
                         f"(256 bytes + {eod_token})")
    if min_frequency < 1:
        raise InputError(f"--min-frequency {min_frequency} must be >= 1")
    if max_documents is not None and max_documents < 1:
        raise InputError(f"--max-documents {max_documents} must be >= 1")
    files = expand_inputs(inputs, TOKENIZE_SUFFIXES)
    out = Path(output)
    if out.is_dir():
        raise InputError(f"{out}: is a folder; --output names the tokenizer.json file to write")
    for path in files:
        check_input(path, **reader)
    tok = build_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[eod_token],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    stats = {"documents": 0, "characters": 0}
    t0 = time.time()
    docs = _documents(files, 0 if quiet else progress_every, stats, reader, max_documents)
    tok.train_from_iterator(docs, trainer=trainer)
    if stats["documents"] == 0:
        raise InputError(f"no documents in {', '.join(files)}; nothing to train on")
    if tok.token_to_id(eod_token) is None:  # cannot happen with the trainer above; guard the contract
        raise RuntimeError(f"trained tokenizer lacks {eod_token}")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, tok.to_str(pretty=True))
    if not quiet:
        print(f"train_tokenizer: {stats['documents']:,} documents, {stats['characters'] / 1e6:.2f} M chars, "
              f"vocab {tok.get_vocab_size()} (asked {vocab_size}), {eod_token}={tok.token_to_id(eod_token)}, "
              f"{time.time() - t0:.1f} s -> {out}", flush=True)
    return str(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Train a byte-level BPE tokenizer on documents.")
    ap.add_argument("--input", nargs="+", required=True, help="files or folders of .jsonl(.gz/.zst)/.parquet, "
                                                              "datasets save_to_disk folders, or hf:NAME")
    ap.add_argument("--vocab-size", type=int, required=True, help=f"target vocabulary size (>= {MIN_VOCAB})")
    ap.add_argument("--output", required=True, help="the tokenizer.json to write")
    ap.add_argument("--min-frequency", type=int, default=2, help="least count for a merge (default 2)")
    ap.add_argument("--eod-token", default=EOD_TOKEN,
                    help=f"the special end-of-document token, id 0 (default {EOD_TOKEN})")
    ap.add_argument("--max-documents", type=int, default=None,
                    help="train on the first N documents only (e.g. a sample of a streamed hf: data set)")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    add_input_args(ap)
    args = ap.parse_args(argv)
    try:
        train_tokenizer(args.input, args.vocab_size, args.output, args.min_frequency, quiet=args.quiet,
                        eod_token=args.eod_token, reader=reader_options(args), max_documents=args.max_documents)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
