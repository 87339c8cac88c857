"""Rebuild the test tasks' data (deterministic; tests/test_harness.py checks the files are what
this writes):

    python tests/data/harness/build.py [OUT_DIR]      # default: this folder

- python_docs_ppl.jsonl: the 12 held-out documents of the bundled corpus (the valid split that
  data/tasks/python_docs_cloze.jsonl is made from: tokenize_corpus.py's hashing, valid fraction
  0.02, seed 0) of at most 1,500 characters, whole, in id order: {"id", "text"}.
- python_docs_complete.jsonl: the first 24 examples of data/tasks/python_docs_cloze.jsonl as
  prompts to continue: {"id", "context", "target"}, the target being the true ending without its
  leading space.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from llmtrain_prep.make_task import read_docs
from llmtrain_prep.tokenize_corpus import is_valid_doc, split_key

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]


def ppl_docs() -> list[dict]:
    key = split_key(0)
    docs = [d for d in read_docs(REPO / "data" / "sample" / "corpus.jsonl.gz")
            if is_valid_doc(d["id"], d["text"], 0.02, key) and len(d["text"]) <= 1500]
    return [{"id": d["id"], "text": d["text"]} for d in sorted(docs, key=lambda d: d["id"])[:12]]


def completions() -> list[dict]:
    lines = (REPO / "data" / "tasks" / "python_docs_cloze.jsonl").read_text(encoding="utf-8").splitlines()[:24]
    out = []
    for line in lines:
        ex = json.loads(line)
        out.append({"id": ex["id"], "context": ex["context"], "target": ex["choices"][ex["label"]].strip()})
    return out


def write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    write(out / "python_docs_ppl.jsonl", ppl_docs())
    write(out / "python_docs_complete.jsonl", completions())
