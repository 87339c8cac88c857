"""A summarisation-like prompt/response task from the bundled corpus: a documentation section's
text → its title.

    python data_prep/make_finetune_task.py --output-dir data/tok/title_task [--valid-fraction 0.1]

The bundled corpus (data/sample/corpus.jsonl.gz, the Python 3.11 documentation, PSF licence; see
data/sample/NOTICE) is cut at section headings, so each document opens with its section's title
("8.2. The while statement", "hmac — Keyed-Hashing for Message Authentication"). Each record:

    {"id": DOC_ID, "prompt": "<the section's text, cut to --max-chars at a word>\\nTitle:",
     "response": " <the title, without its section number>"}

Documents whose first paragraph is not a title (longer than 80 characters, or a sentence) are
left out. A document goes to test.jsonl when the pretraining run's train/valid hash puts it in
the valid split of the bundled corpus (data.valid_fraction of the run, seed 0: exactly the
split data_prep/tokenize_corpus.py made), so the test sections are text the pretrained model
never trained on; the rest go to train.jsonl. Writes through temporary names.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import sys
from pathlib import Path

from llmtrain_prep.tokenize_corpus import is_valid_doc, split_key
from llmtrain.core.paths import SAMPLE_CORPUS

NUMBER = re.compile(r"^\d+(\.\d+)*\.\s+")
PROMPT_END = "\nTitle:"


def title_of(paragraph: str) -> str | None:
    p = paragraph.strip()
    if not p or len(p) > 80 or "\n" in p or p.endswith((".", ":")):
        return None
    return NUMBER.sub("", p).strip() or None


def record(doc: dict, max_chars: int) -> dict | None:
    paras = [p.strip() for p in doc["text"].split("\n\n") if p.strip()]
    if len(paras) < 2:
        return None
    title = title_of(paras[0])
    body = " ".join(p for p in paras[1:] if title_of(p) is None)  # sub-headings left out
    if title is None or len(body) < 100:
        return None
    if len(body) > max_chars:
        body = body[:max_chars].rsplit(" ", 1)[0]
    return {"id": doc["id"], "prompt": body + PROMPT_END, "response": " " + title}


def make_task(output_dir, corpus: Path = SAMPLE_CORPUS, valid_fraction: float = 0.1, max_chars: int = 600,
              seed: int = 0) -> dict:
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    key = split_key(seed)
    splits: dict[str, list[dict]] = {"train": [], "test": []}
    skipped = 0
    with gzip.open(corpus, "rt", encoding="utf-8") as fh:
        for line in fh:
            doc = json.loads(line)
            rec = record(doc, max_chars)
            if rec is None:
                skipped += 1
                continue
            test = is_valid_doc(doc["id"], doc["text"], valid_fraction, key)
            splits["test" if test else "train"].append(rec)
    for name, recs in splits.items():
        tmp = out / f".{name}.jsonl.{os.getpid()}.tmp"
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
        tmp.replace(out / f"{name}.jsonl")
    return {"train": len(splits["train"]), "test": len(splits["test"]), "skipped": skipped}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--output-dir", required=True, help="writes train.jsonl and test.jsonl here")
    ap.add_argument("--corpus", default=str(SAMPLE_CORPUS), help="the bundled corpus (default)")
    ap.add_argument("--valid-fraction", type=float, default=0.1,
                    help="the pretraining run's data.valid_fraction: its valid documents become the test set")
    ap.add_argument("--max-chars", type=int, default=600, help="characters of section text in a prompt")
    args = ap.parse_args(argv)
    if not Path(args.corpus).is_file():
        print(f"error: {args.corpus}: not found; run from the project folder", file=sys.stderr)
        return 2
    n = make_task(args.output_dir, Path(args.corpus), args.valid_fraction, args.max_chars)
    print(f"make_finetune_task: {n['train']} train and {n['test']} test records ({n['skipped']} documents without "
          f"a title left out) -> {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
