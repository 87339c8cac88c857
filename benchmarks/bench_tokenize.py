"""Benchmark corpus tokenisation: data_prep/tokenize_corpus.py end to end against HF tokenizers'
own ``encode_batch`` on the same texts, side by side in one run, with the same threads.

Ours (end to end): read the .jsonl.zst files, parse JSON, encode, assign each document to
train/valid by its keyed hash, write .bin/.idx shards and the manifest (tokenize_corpus with
--workers 1, i.e. tokenizers' own thread pool, as on a machine of <= 4 cores).

Baseline: the same documents already in memory as a list of str (reading them is not timed),
``Tokenizer.encode_batch`` over chunks of --chunk documents, the encodings dropped. This is
the speed of the encoder alone; end to end cannot be faster than it.

Both run in this process with RAYON_NUM_THREADS = --threads and TOKENIZERS_PARALLELISM=true
(set before tokenizers is imported), alternating, --rounds times; the median of each is
reported. The corpus is the bundled data/sample/corpus.jsonl.gz re-mixed to --mb megabytes:
each copy shuffles every document's paragraphs (seeded) and gets a new id, so the BPE word
cache sees text like a real corpus's rather than exact repeats.

    python benchmarks/bench_tokenize.py [--mb 30] [--vocab 16384] [--threads 2] [--rounds 3] \\
        [--workdir /tmp/bench_tok] [--write benchmarks/BENCHMARKS_tokenize.md]
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=30.0, help="megabytes of text to tokenise (default 30)")
    ap.add_argument("--files", type=int, default=4, help="number of .jsonl.zst input files (default 4)")
    ap.add_argument("--vocab", type=int, default=16384, help="tokenizer vocabulary (default 16384)")
    ap.add_argument("--threads", type=int, default=2, help="RAYON_NUM_THREADS for both (default 2)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians reported (default 3)")
    ap.add_argument("--chunk", type=int, default=1024, help="documents per baseline encode_batch call (default 1024)")
    ap.add_argument("--workdir", default="/tmp/bench_tokenize", help="where the corpus and outputs go")
    ap.add_argument("--write", default=None, help="write the results table to this markdown file")
    return ap.parse_args(argv)


def make_corpus(workdir: Path, mb: float, n_files: int) -> tuple[list[Path], int, int]:
    """Re-mix the bundled sample into ~mb MB of text in n_files .jsonl.zst files (cached)."""
    import zstandard

    out = workdir / f"corpus_{mb:g}mb_{n_files}f"
    files = [out / f"part-{i:03d}.jsonl.zst" for i in range(n_files)]
    meta = out / "meta.json"
    if meta.exists() and all(f.exists() for f in files):
        m = json.loads(meta.read_text())
        return files, m["documents"], m["chars"]
    out.mkdir(parents=True, exist_ok=True)
    with gzip.open(REPO / "data" / "sample" / "corpus.jsonl.gz", "rt", encoding="utf-8") as fh:
        docs = [json.loads(line) for line in fh]
    rng = random.Random(0)
    target = int(mb * 1e6)
    chars = n = copy = 0
    lines: list[list[str]] = [[] for _ in range(n_files)]
    while chars < target:
        for d in docs:
            paras = d["text"].split("\n")
            if copy:
                rng.shuffle(paras)
            text = "\n".join(paras)
            lines[n % n_files].append(json.dumps({"id": f"{d['id']}-r{copy}", "text": text}, ensure_ascii=False))
            chars += len(text)
            n += 1
            if chars >= target:
                break
        copy += 1
    cctx = zstandard.ZstdCompressor(level=3)
    for f, ls in zip(files, lines):
        f.write_bytes(cctx.compress(("\n".join(ls) + "\n").encode("utf-8")))
    meta.write_text(json.dumps({"documents": n, "chars": chars}))
    return files, n, chars


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {cores} cores visible"


def main(argv=None) -> int:
    args = parse_args(argv)
    # Before tokenizers starts its thread pool: the same threads for both contestants.
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    import numpy as np
    import tokenizers
    from tokenizers import Tokenizer

    from data_prep.readers import iter_documents
    from data_prep.tokenize_corpus import tokenize_corpus
    from data_prep.train_tokenizer import train_tokenizer

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()[0]
    files, n_docs, n_chars = make_corpus(work, args.mb, args.files)
    n_bytes = sum(f.stat().st_size for f in files)
    print(f"corpus: {n_docs:,} documents, {n_chars / 1e6:.1f} M chars in {len(files)} .jsonl.zst files "
          f"({n_bytes / 1e6:.1f} MB compressed)", flush=True)
    tok_path = work / f"tokenizer_{args.vocab}.json"
    if not tok_path.exists():
        t = time.time()
        train_tokenizer([str(REPO / "data" / "sample")], args.vocab, str(tok_path), quiet=True)
        print(f"trained a {args.vocab}-token tokenizer on the sample in {time.time() - t:.1f} s", flush=True)

    texts = [d["text"] for f in files for d in iter_documents(str(f))]
    tok = Tokenizer.from_file(str(tok_path))
    tok.encode_special_tokens = True

    def baseline(fast: bool = False) -> tuple[float, int]:
        encode = tok.encode_batch_fast if fast else tok.encode_batch
        t = time.perf_counter()
        n = 0
        for i in range(0, len(texts), args.chunk):
            encs = encode(texts[i : i + args.chunk], add_special_tokens=False)
            n += sum(len(e) for e in encs)  # the encodings' lengths (no ids copied out)
        return time.perf_counter() - t, n + len(texts)  # + one EOD per document, as ours counts

    def ours() -> tuple[float, int, float]:
        prefix = work / "out" / "bench"
        t = time.perf_counter()
        m = tokenize_corpus([str(f) for f in files], str(tok_path), str(prefix), valid_fraction=0.01, workers=1,
                            quiet=True)
        return time.perf_counter() - t, m["tokens"], m.get("timing", {})

    base_t, fast_t, ours_t, profiles = [], [], [], []
    tokens = None
    baseline()  # warm-up: page cache, thread pool
    for r in range(args.rounds):
        bt, bn = baseline()
        ft, fn = baseline(fast=True)
        ot, on, prof = ours()
        assert bn == on == fn, f"token counts differ: baseline {bn} / {fn} vs ours {on}"
        tokens = on
        base_t.append(bt)
        fast_t.append(ft)
        ours_t.append(ot)
        profiles.append(prof)
        print(f"round {r + 1}: encode_batch {bt:.2f} s ({bn / bt / 1e6:.2f} M tok/s), encode_batch_fast {ft:.2f} s, "
              f"tokenize_corpus end to end {ot:.2f} s ({on / ot / 1e6:.2f} M tok/s), ratio {bt / ot:.2f}x "
              f"/ {ft / ot:.2f}x", flush=True)
    b, f, o = statistics.median(base_t), statistics.median(fast_t), statistics.median(ours_t)
    ratio, ratio_fast = b / o, f / o
    print(f"median: encode_batch {b:.2f} s, encode_batch_fast {f:.2f} s, ours {o:.2f} s -> ours runs at "
          f"{ratio:.2f}x encode_batch's speed, {ratio_fast:.2f}x encode_batch_fast's ({tokens:,} tokens)", flush=True)
    prof = profiles[ours_t.index(sorted(ours_t)[(len(ours_t) - 1) // 2])] if profiles else {}
    if prof:
        print("where tokenize_corpus's time went (median round): "
              + ", ".join(f"{k} {v:.2f} s" for k, v in prof.items()), flush=True)

    if args.write:
        lines = [
            "# Tokenisation benchmark (`benchmarks/bench_tokenize.py`)",
            "",
            f"What: {n_chars / 1e6:.1f} M characters ({n_docs:,} documents, the bundled sample re-mixed; "
            f"{len(files)} .jsonl.zst files, {n_bytes / 1e6:.1f} MB compressed) encoded with a "
            f"{args.vocab:,}-token byte-level BPE into {tokens:,} tokens.",
            "",
            f"Machine: {machine()} (shared with other work; load average {load0:.1f} at start); "
            f"Python {platform.python_version()}, tokenizers {tokenizers.__version__}, numpy {np.__version__}. "
            f"RAYON_NUM_THREADS={args.threads}, TOKENIZERS_PARALLELISM=true for both.",
            "",
            "| | time (median of %d) | tokens/s | M chars/s | speed vs encode_batch |" % args.rounds,
            "|---|---|---|---|---|",
            f"| baseline: `Tokenizer.encode_batch` on in-memory str, chunks of {args.chunk} docs | {b:.2f} s "
            f"| {tokens / b / 1e6:.2f} M | {n_chars / b / 1e6:.2f} | 1.00x |",
            f"| baseline: `Tokenizer.encode_batch_fast` (no offsets), same chunks | {f:.2f} s "
            f"| {tokens / f / 1e6:.2f} M | {n_chars / f / 1e6:.2f} | {b / f:.2f}x |",
            f"| ours: `tokenize_corpus` end to end (read .jsonl.zst, parse, encode, split, write .bin/.idx + manifest) "
            f"| {o:.2f} s | {tokens / o / 1e6:.2f} M | {n_chars / o / 1e6:.2f} | {ratio:.2f}x ({ratio_fast:.2f}x of encode_batch_fast) |",
            "",
            "Every round (encode_batch / encode_batch_fast / ours): "
            + "; ".join(f"{x:.2f} / {z:.2f} / {y:.2f} s" for x, z, y in zip(base_t, fast_t, ours_t)) + ".",
        ]
        if prof:
            lines += ["", "Where tokenize_corpus's time went (median round, wall seconds on the main thread): "
                      + ", ".join(f"{k} {v:.2f} s" for k, v in prof.items()) + "."]
        Path(args.write).write_text("\n".join(lines) + "\n")
        print(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
