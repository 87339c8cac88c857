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
        [--workdir /tmp/bench_tok] [--write FILE]  (the section of benchmarks/BENCHMARKS.md)
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
from benchutil import cpu_description  # noqa: E402  (benchmarks/ is this script's folder)


NOTES = """How tokenize_corpus keeps up with the encoder (--workers 1, the default on <= 4 cores): three
stages overlap. A reader thread decompresses, parses JSON and hashes each document for its split; an
encoder thread calls `encode_batch_fast` (the same ids as `encode_batch`, without character offsets),
which releases the GIL and runs on tokenizers' thread pool; the main thread turns the previous batch's
ids into one numpy array (the only per-token Python work: `Encoding.ids` builds a list, ~13 M tokens/s),
splits it by a per-token mask and appends each document to its shard. Reading and hashing 30 MB costs
~0.3 s of one core, the ids ~0.7 s, writing ~0.2 s, against 6-9 s of encoding, so end to end runs at
about the speed of `encode_batch` and within ~5% of `encode_batch_fast` (an earlier run of 3 rounds at
load ~7: 1.12x and 0.96x). The code before the
threads (everything in the main thread, one after another) measured 0.98x of `encode_batch` on 20 MB at
load ~1.6; an A/B of the serial, reader-thread and three-stage versions on 10 MB (6 rotated rounds,
load ~7) gave medians of 4.50 s, 3.96 s and 3.71 s with the same CPU time (2.9 s).

Caveat: the machine is shared and its load varies from second to second, so single rounds scatter by
±30%; compare within a round (the ratios above) or CPU seconds. With many cores, `--workers N` encodes in
N processes instead (not measured here: 2 cores)."""


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

    def baseline(fast: bool = False) -> tuple[int, dict]:
        encode = tok.encode_batch_fast if fast else tok.encode_batch
        n = 0
        for i in range(0, len(texts), args.chunk):
            encs = encode(texts[i : i + args.chunk], add_special_tokens=False)
            n += sum(len(e) for e in encs)  # the encodings' lengths (no ids copied out)
        return n + len(texts), {}  # + one EOD per document, as ours counts

    def ours() -> tuple[int, dict]:
        m = tokenize_corpus([str(f) for f in files], str(tok_path), str(work / "out" / "bench"), valid_fraction=0.01,
                            workers=1, quiet=True)
        return m["tokens"], m.get("timing", {})

    names = {"encode_batch": "baseline: `Tokenizer.encode_batch` on in-memory str",
             "encode_batch_fast": "baseline: `Tokenizer.encode_batch_fast` (no offsets) on in-memory str",
             "ours": "ours: `tokenize_corpus` end to end (read .jsonl.zst, parse, hash, encode, write .bin/.idx + manifest)"}
    runs = {"encode_batch": baseline, "encode_batch_fast": lambda: baseline(True), "ours": ours}
    wall = {k: [] for k in runs}
    cpu = {k: [] for k in runs}
    profiles = []
    tokens = None
    baseline()  # warm-up: page cache, thread pool
    for r in range(args.rounds):
        order = list(runs)[r % 3:] + list(runs)[: r % 3]  # rotate, so no contestant always goes first
        for k in order:
            w0, c0 = time.perf_counter(), time.process_time()  # process time: all threads
            n, prof = runs[k]()
            wall[k].append(time.perf_counter() - w0)
            cpu[k].append(time.process_time() - c0)
            assert tokens in (None, n), f"token counts differ: {k} {n} vs {tokens}"
            tokens = n
            if k == "ours":
                profiles.append(prof)
        print(f"round {r + 1}: " + ", ".join(f"{k} {wall[k][-1]:.2f} s (cpu {cpu[k][-1]:.2f} s)" for k in runs)
              + f"; ours vs encode_batch {wall['encode_batch'][-1] / wall['ours'][-1]:.2f}x", flush=True)
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    # Paired per round (the load of a shared machine changes between rounds), then the median.
    ratio = {k: statistics.median(b / o for b, o in zip(wall[k], wall["ours"])) for k in runs}
    ratio_cpu = {k: statistics.median(b / o for b, o in zip(cpu[k], cpu["ours"])) for k in runs}
    print("medians: " + ", ".join(f"{k} {med[k]:.2f} s" for k in runs) + f" -> ours runs at "
          f"{ratio['encode_batch']:.2f}x encode_batch's speed, {ratio['encode_batch_fast']:.2f}x encode_batch_fast's "
          f"(cpu time: {ratio_cpu['encode_batch']:.2f}x, {ratio_cpu['encode_batch_fast']:.2f}x; {tokens:,} tokens)",
          flush=True)
    prof = profiles[wall["ours"].index(sorted(wall["ours"])[(args.rounds - 1) // 2])]
    print("where tokenize_corpus's time went (median round): " + ", ".join(f"{k} {v:.2f} s" for k, v in prof.items()),
          flush=True)
    load1 = os.getloadavg()[0]

    if args.write:
        lines = [
            "# Tokenisation benchmark (`benchmarks/bench_tokenize.py`)",
            "",
            f"What: {n_chars / 1e6:.1f} M characters ({n_docs:,} documents, the bundled sample re-mixed; "
            f"{len(files)} .jsonl.zst files, {n_bytes / 1e6:.1f} MB compressed) encoded with a "
            f"{args.vocab:,}-token byte-level BPE into {tokens:,} tokens; baselines encode chunks of {args.chunk} "
            f"documents.",
            "",
            f"Machine: {cpu_description()} (shared with other work; load average {load0:.1f} at start, {load1:.1f} at end); "
            f"Python {platform.python_version()}, tokenizers {tokenizers.__version__}, numpy {np.__version__}. "
            f"RAYON_NUM_THREADS={args.threads}, TOKENIZERS_PARALLELISM=true for all three, in one process.",
            "",
            f"| | wall (median of {args.rounds}) | tokens/s | M chars/s | CPU s (all threads) "
            f"| ours' speed relative to it (wall; CPU) |",
            "|---|---|---|---|---|---|",
        ]
        for k in runs:
            rel = "-" if k == "ours" else f"{ratio[k]:.2f}x; {ratio_cpu[k]:.2f}x"
            lines.append(f"| {names[k]} | {med[k]:.2f} s | {tokens / med[k] / 1e6:.2f} M | {n_chars / med[k] / 1e6:.2f} "
                         f"| {med_cpu[k]:.2f} | {rel} |")
        lines += [
            "",
            "Ratios are the median over rounds of (baseline time / ours) within the same round. Every round's wall "
            "seconds (encode_batch / encode_batch_fast / ours): "
            + "; ".join(f"{a:.2f} / {b:.2f} / {c:.2f}" for a, b, c in zip(*wall.values())) + ".",
            "",
            "Where tokenize_corpus's time went (median round; `timing` in its manifest): "
            + ", ".join(f"{k} {v:.2f} s" for k, v in prof.items()) + ".",
        ]
        lines += ["", NOTES]
        Path(args.write).write_text("\n".join(lines) + "\n")
        print(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
