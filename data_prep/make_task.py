"""Build a multiple-choice sentence-completion (cloze) task from held-out documents.

Each example is a real sentence cut in two at a word boundary: the context is the sentences
before it in its paragraph (up to --max-context-chars) and the sentence's beginning; the
choices are its true ending and the endings of other held-out sentences of similar length
(within 25% in characters, so the length alone gives little away). The label's position is
drawn at random. The output is the trainer's task format (llmtrain/eval/tasks.py), one JSON
object a line: {"id", "context", "choices", "label"}.

Held out: only the documents that data_prep/tokenize_corpus.py puts in the valid split with
--valid-fraction and --split-seed (the default run prepares the bundled corpus with
valid_fraction 0.02 and seed 0, so it never trains on them).

    python data_prep/make_task.py                       # writes data/tasks/python_docs_cloze.jsonl
    python data_prep/make_task.py --input CORPUS.jsonl.gz --n 300 --output data/tasks/x.jsonl

Deterministic for given inputs and options (--seed).
"""
from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import sys
from pathlib import Path

from llmtrain_prep.tokenize_corpus import is_valid_doc, split_key

REPO_ROOT = Path(__file__).resolve().parent.parent

SENTENCE_END = re.compile(r"(?<=[a-z0-9)][.!?])\s+(?=[A-Z])")
WORD_OK = re.compile(r"^[\w'’\",;:()\-./%]+$")


def read_docs(path: Path) -> list[dict]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def good_sentence(s: str, min_words: int, max_words: int) -> bool:
    """Plain prose: a capitalised sentence ending in a full stop, of ordinary words."""
    words = s.split()
    return (min_words <= len(words) <= max_words and s[0].isupper() and s.endswith(".") and not s[0].isdigit()
            and all(WORD_OK.match(w) for w in words) and "..." not in s)


def candidates(docs: list[dict], args) -> list[dict]:
    """Every usable sentence of the documents with the text before it in its paragraph."""
    out = []
    for doc in docs:
        for p_i, para in enumerate(doc["text"].split("\n\n")):
            sents = [s.strip() for s in SENTENCE_END.split(para.replace("\n", " ")) if s.strip()]
            for s_i, s in enumerate(sents):
                if not good_sentence(s, args.min_words, args.max_words):
                    continue
                before = ""
                for prev in reversed(sents[:s_i]):  # whole preceding sentences that fit
                    if len(prev) + len(before) + 1 > args.max_context_chars:
                        break
                    before = prev + " " + before
                out.append({"id": f"{doc['id']}/p{p_i}/s{s_i}", "before": before, "sentence": s})
    return out


def make_examples(cands: list[dict], n: int, n_choices: int, rng: random.Random) -> list[dict]:
    for c in cands:  # cut each sentence once: the beginning keeps 40-60% of its words
        words = c["sentence"].split()
        k = rng.randint(max(3, round(0.4 * len(words))), min(len(words) - 3, round(0.6 * len(words))))
        c["start"], c["ending"] = " ".join(words[:k]), " " + " ".join(words[k:])
    endings = sorted({c["ending"] for c in cands}, key=lambda e: (len(e), e))
    chosen = rng.sample(cands, min(n, len(cands)))
    chosen.sort(key=lambda c: c["id"])
    examples = []
    for c in chosen:
        true = c["ending"]
        pool = [e for e in endings if e != true and 0.8 * len(true) <= len(e) <= 1.25 * len(true)]
        if len(pool) < n_choices - 1:
            continue
        choices = rng.sample(pool, n_choices - 1)
        label = rng.randrange(n_choices)
        choices.insert(label, true)
        examples.append({"id": c["id"], "context": c["before"] + c["start"], "choices": choices, "label": label})
    return examples


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", default=str(REPO_ROOT / "data" / "sample" / "corpus.jsonl.gz"),
                   help="JSONL(.gz) documents {id, text} (default: the bundled corpus)")
    p.add_argument("--output", default=str(REPO_ROOT / "data" / "tasks" / "python_docs_cloze.jsonl"))
    p.add_argument("--valid-fraction", type=float, default=0.02,
                   help="take only the documents of this valid split (tokenize_corpus.py's hashing); 0: all")
    p.add_argument("--split-seed", type=int, default=0, help="tokenize_corpus.py --seed of that split")
    p.add_argument("--n", type=int, default=400, help="examples (fewer when the documents hold fewer)")
    p.add_argument("--choices", type=int, default=4)
    p.add_argument("--min-words", type=int, default=8)
    p.add_argument("--max-words", type=int, default=30)
    p.add_argument("--max-context-chars", type=int, default=200, help="preceding text of the paragraph kept")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    src = Path(args.input)
    if not src.is_file():
        print(f"error: {src}: input not found; pass --input JSONL(.gz) with id and text fields", file=sys.stderr)
        return 2
    docs = read_docs(src)
    if args.valid_fraction > 0:
        key = split_key(args.split_seed)
        docs = [d for d in docs if is_valid_doc(d["id"], d["text"], args.valid_fraction, key)]
    examples = make_examples(candidates(docs, args), args.n, args.choices, random.Random(args.seed))
    if not examples:
        print(f"error: {src}: no usable sentences in the {len(docs)} selected documents; raise --valid-fraction",
              file=sys.stderr)
        return 2
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples), encoding="utf-8")
    tmp.replace(out)
    print(f"{out}: {len(examples)} examples from {len(docs)} documents, {args.choices} choices each")
    return 0


if __name__ == "__main__":
    sys.exit(main())
