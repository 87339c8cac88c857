#!/usr/bin/env python
"""The two sources of the data-stages study, tokenised with one tokenizer.

    apt-get install debian-handbook debian-reference-en debian-faq harden-doc debian-history
    python benchmarks/stages_cpu/make_data.py --out runs/stages_cpu/data

* ``python``: the bundled corpus (data/sample/corpus.jsonl.gz, the prose of the Python 3.11
  documentation), split as the trainer splits it by default (valid fraction 0.02, split seed 0),
  so the documents data/tasks/python_docs_cloze.jsonl was made from stay held out;
* ``debian``: the English prose and documentation that Debian's documentation packages ship
  (the Debian Administrator's Handbook, the Debian Reference, the Debian FAQ, "Securing Debian",
  the project's history), each page's main text extracted by benchmarks/real_pages/make_pages.py
  (resiliparse, as clean.py extracts HTML), cut at blank lines into documents of at most 12,000
  characters like the bundled corpus, valid fraction 0.05 (its 300-odd documents would leave
  only 7 held out at 0.02).

One byte-level BPE (1,024 tokens, the CPU ladder's size) is trained on both, so neither source
is tokenised with a vocabulary fitted to the other alone. Writes OUT/{python,debian}_* token
data, OUT/tokenizer.json and OUT/debian_pages/ (pages.json records the package versions).
Nothing is downloaded and nothing of these packages is committed.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MAX_CHARS = 12_000


def make_pages_module():
    """benchmarks/real_pages/make_pages.py, imported by path (benchmarks/ is no package)."""
    spec = importlib.util.spec_from_file_location("make_pages", REPO / "benchmarks" / "real_pages" / "make_pages.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["make_pages"] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


def english_sources(mp) -> tuple:
    S = mp.Source
    return (
        S("debian-handbook", "prose", ("debian-handbook",), "/usr/share/doc/debian-handbook/html", ("en-US/*.html",)),
        S("debian-reference", "documentation", ("debian-reference-en",), "/usr/share/debian-reference", ("*.en.html",)),
        S("debian-faq", "prose", ("debian-faq",), "/usr/share/doc/debian/FAQ", ("*.en.html",)),
        S("securing-debian", "prose", ("harden-doc",), "/usr/share/doc/harden-doc/html", ("en-US/*.html",)),
        S("debian-history", "prose", ("debian-history",), "/usr/share/doc/debian-history/docs", ("*.en.html",)),
    )


def chunks(text: str, limit: int = MAX_CHARS) -> list[str]:
    """Whole paragraphs (blank-line separated) packed into pieces of at most ``limit`` characters
    (a longer paragraph is a piece of its own)."""
    out, cur = [], ""
    for para in (p.strip() for p in text.split("\n\n")):
        if not para:
            continue
        if cur and len(cur) + 2 + len(para) > limit:
            out.append(cur)
            cur = ""
        cur = f"{cur}\n\n{para}" if cur else para
    if cur:
        out.append(cur)
    return out


def debian_documents(out: Path) -> tuple[Path, dict]:
    mp = make_pages_module()
    pages_dir = out / "debian_pages"
    info = mp.build(str(pages_dir), megabytes=1000.0, n_files=1, seed=1, sources=english_sources(mp))
    docs = out / "debian.jsonl"
    n = 0
    with open(pages_dir / "part-000.jsonl", encoding="utf-8") as src, open(docs, "w", encoding="utf-8") as dst:
        for line in src:
            page = json.loads(line)
            for k, piece in enumerate(chunks(page["text"])):
                dst.write(json.dumps({"id": f"{page['id']}#{k}", "text": piece}, ensure_ascii=False) + "\n")
                n += 1
    info["documents"] = n
    return docs, info


def run(*args) -> None:
    subprocess.run([sys.executable, *map(str, args)], check=True, cwd=REPO)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/stages_cpu/data", help="folder for the token data (default %(default)s)")
    ap.add_argument("--vocab-size", type=int, default=1024)
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    corpus = REPO / "data" / "sample" / "corpus.jsonl.gz"
    debian, info = debian_documents(out)
    tok = out / "tokenizer.json"
    run(REPO / "data_prep" / "train_tokenizer.py", "--input", corpus, debian, "--vocab-size", args.vocab_size,
        "--output", tok, "--quiet")
    for name, src, valid in (("python", corpus, "0.02"), ("debian", debian, "0.05")):
        run(REPO / "data_prep" / "tokenize_corpus.py", "--input", src, "--tokenizer", tok, "--output-prefix",
            out / name, "--valid-fraction", valid, "--seed", "0", "--overwrite", "--quiet")
    summary = {"debian": {k: info[k] for k in ("documents", "docs", "bytes", "sources")}}
    for name in ("python", "debian"):
        m = json.loads((out / f"{name}_manifest.json").read_text())
        splits = {k: {"documents": v.get("documents"), "tokens": v.get("tokens")} for k, v in m["splits"].items()}
        summary[name] = {**summary.get(name, {}), "splits": splits}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
