"""Train a byte-level BPE tokenizer (HF tokenizers) on JSONL documents.

    python data_prep/train_tokenizer.py --input data/sample --vocab-size 4096 --output tokenizer.json

Byte-level: every string, in any script, encodes without unknown tokens and decodes back to
exactly itself (no normalizer, no added prefix space). ``<|endoftext|>`` is the special
end-of-document token (id 0); data_prep/tokenize_corpus.py appends it to every document.
The tokenizer.json is written under a temporary name and renamed when complete.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python data_prep/train_tokenizer.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_prep.readers import InputError, expand_inputs, iter_documents  # noqa: E402

EOD_TOKEN = "<|endoftext|>"
# 256 byte symbols + the special token: the smallest vocabulary that can encode anything.
MIN_VOCAB = 257


def _documents(files: list[str], progress_every: float, stats: dict):
    start = time.time()
    last = start
    for path in files:
        for doc in iter_documents(path):
            stats["documents"] += 1
            stats["characters"] += len(doc["text"])
            yield doc["text"]
            now = time.time()
            if progress_every and now - last >= progress_every:
                last = now
                rate = stats["characters"] / max(now - start, 1e-9)
                print(f"train_tokenizer: read {stats['documents']:,} documents, {stats['characters'] / 1e6:.1f} M chars "
                      f"({rate / 1e6:.2f} M chars/s) from {path}", flush=True)


def build_tokenizer():
    """An untrained byte-level BPE tokenizer with the ByteLevel pre-tokenizer and decoder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def train_tokenizer(inputs, vocab_size: int, output: str, min_frequency: int = 2,
                    progress_every: float = 10.0, quiet: bool = False) -> str:
    """Train on the documents of ``inputs`` (files or folders of .jsonl/.jsonl.gz/.jsonl.zst)
    and write ``output`` atomically. Returns the output path. Raises InputError on bad input."""
    from tokenizers import pre_tokenizers, trainers

    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if vocab_size < MIN_VOCAB:
        raise InputError(f"--vocab-size {vocab_size} is too small; byte-level BPE needs at least {MIN_VOCAB} "
                         f"(256 bytes + {EOD_TOKEN})")
    if min_frequency < 1:
        raise InputError(f"--min-frequency {min_frequency} must be >= 1")
    files = expand_inputs(inputs)
    out = Path(output)
    if out.is_dir():
        raise InputError(f"{out}: is a folder; --output names the tokenizer.json file to write")
    tok = build_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    stats = {"documents": 0, "characters": 0}
    t0 = time.time()
    tok.train_from_iterator(_documents(files, 0 if quiet else progress_every, stats), trainer=trainer)
    if stats["documents"] == 0:
        raise InputError(f"no documents in {', '.join(files)}; nothing to train on")
    if tok.token_to_id(EOD_TOKEN) is None:  # cannot happen with the trainer above; guard the contract
        raise RuntimeError(f"trained tokenizer lacks {EOD_TOKEN}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        tok.save(str(tmp))
        os.replace(tmp, out)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    if not quiet:
        print(f"train_tokenizer: {stats['documents']:,} documents, {stats['characters'] / 1e6:.2f} M chars, "
              f"vocab {tok.get_vocab_size()} (asked {vocab_size}), {EOD_TOKEN}={tok.token_to_id(EOD_TOKEN)}, "
              f"{time.time() - t0:.1f} s -> {out}", flush=True)
    return str(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Train a byte-level BPE tokenizer on JSONL documents.")
    ap.add_argument("--input", nargs="+", required=True, help="files or folders of .jsonl/.jsonl.gz/.jsonl.zst")
    ap.add_argument("--vocab-size", type=int, required=True, help=f"target vocabulary size (>= {MIN_VOCAB})")
    ap.add_argument("--output", required=True, help="the tokenizer.json to write")
    ap.add_argument("--min-frequency", type=int, default=2, help="least count for a merge (default 2)")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    args = ap.parse_args(argv)
    try:
        train_tokenizer(args.input, args.vocab_size, args.output, args.min_frequency, quiet=args.quiet)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
