#!/usr/bin/env python
"""Build the real-text corpus of benchmarks/bench_clean.py from HTML that Debian packages ship.

    apt-get install debian-reference-{en,de,fr,es,it,ja} python3.11-doc \\
        debian-handbook debian-history debian-faq harden-doc
    python benchmarks/real_pages/make_pages.py --out /tmp/real_pages [--mb 6] [--files 4] [--seed 1]

Two kinds of pages (see NOTICE beside this script for provenance and licences):

* documentation: the Debian reference (six languages) and the Python 3.11 documentation;
* prose: the Debian Administrator's Handbook (a book, six languages), the history of the Debian
  project (six languages), the Debian FAQ, the "Securing Debian" manual (six languages) and
  the Python "What's New" release notes.

Each page's main text is extracted once with resiliparse (what clean.py does to HTML), so that
every pipeline of the benchmark reads the same text; index, search and table-of-contents pages and
pages under 200 characters are left out. Sources share the byte budget equally where they have
enough pages; pages are picked in a seeded random order, then dealt round-robin into ``--files``
JSONL files of ``{"id": "<source>[.<lang>]:<path>", "text": ...}``. ``pages.json`` records the
package versions, the count and characters per source, and a sha256 of the corpus, so a rerun can
be checked against a recorded one. Nothing is downloaded and nothing of these packages is committed.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import random
import re
import subprocess
import sys
from dataclasses import dataclass

LANGS = ("en", "de", "fr", "es", "it", "ja")


@dataclass(frozen=True)
class Source:
    name: str
    kind: str  # documentation | prose
    packages: tuple[str, ...]
    root: str
    patterns: tuple[str, ...]  # globs under root
    lang_re: str = ""  # a regex whose group 1 is the page's language, matched on its path under root
    exclude: str = ""  # a regex of paths under root that another source takes

    def pages(self) -> list[str]:
        found: set[str] = set()
        for pat in self.patterns:
            found.update(glob.glob(os.path.join(self.root, pat), recursive=True))
        return sorted(p for p in found if not _skipped(os.path.basename(p))
                      and not (self.exclude and re.match(self.exclude, os.path.relpath(p, self.root))))

    def label(self, path: str) -> str:
        rel = os.path.relpath(path, self.root)
        m = re.search(self.lang_re, rel) if self.lang_re else None
        return f"{self.name}.{m.group(1)[:2]}:{rel}" if m else f"{self.name}:{rel}"


_HANDBOOK = ("en-US", "de-DE", "fr-FR", "es-ES", "it-IT", "ja-JP")
SOURCES = (
    Source("debian-reference", "documentation", tuple(f"debian-reference-{x}" for x in LANGS),
           "/usr/share/debian-reference", tuple(f"*.{x}.html" for x in LANGS), r"\.(\w\w)\.html$"),
    Source("python-docs", "documentation", ("python3.11-doc",), "/usr/share/doc/python3.11/html",
           ("**/*.html",), exclude=r"whatsnew/"),
    Source("debian-handbook", "prose", ("debian-handbook",), "/usr/share/doc/debian-handbook/html",
           tuple(f"{x}/*.html" for x in _HANDBOOK), r"^(\w\w)-"),
    Source("debian-history", "prose", ("debian-history",), "/usr/share/doc/debian-history/docs",
           tuple(f"*.{x}.html" for x in LANGS), r"\.(\w\w)\.html$"),
    Source("debian-faq", "prose", ("debian-faq",), "/usr/share/doc/debian/FAQ", ("*.en.html",)),
    Source("securing-debian", "prose", ("harden-doc",), "/usr/share/doc/harden-doc/html",
           tuple(f"{x}/*.html" for x in _HANDBOOK), r"^(\w\w)-"),
    Source("python-whatsnew", "prose", ("python3.11-doc",), "/usr/share/doc/python3.11/html/whatsnew",
           ("*.html",)),
)


def _skipped(name: str) -> bool:
    return name.startswith(("index", "genindex", "search", "py-modindex", "all.", "ix", "pr01", "bk01"))


def package_version(pkg: str) -> str | None:
    r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else None


def extract(path: str, extractor) -> str:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return extractor(fh.read())


def build(out: str, megabytes: float, n_files: int, seed: int, sources=SOURCES) -> dict:
    from llmtrain_prep.cleaning.html import HtmlExtractor

    ex = HtmlExtractor()
    rng = random.Random(seed)
    found = {s: s.pages() for s in sources}
    missing = [s.name for s, pages in found.items() if not pages]
    if missing:
        pkgs = sorted({p for s in sources if s.name in missing for p in s.packages})
        raise SystemExit(f"no pages for {', '.join(missing)}: apt-get install {' '.join(pkgs)}")
    budget = megabytes * 1e6 / len(sources)
    docs, per_source = [], {}
    for src, pages in found.items():
        rng.shuffle(pages)
        size = n = 0
        for p in pages:
            if size >= budget:
                break
            text = extract(p, ex)
            if len(text) < 200:
                continue
            docs.append({"id": src.label(p), "text": text})
            size += len(text.encode("utf-8"))
            n += 1
        per_source[src.name] = {"kind": src.kind, "pages": n, "bytes": size,
                                "packages": {p: package_version(p) for p in src.packages}}
    rng.shuffle(docs)
    os.makedirs(out, exist_ok=True)
    digest = hashlib.sha256()
    fhs = [open(os.path.join(out, f"part-{k:03d}.jsonl"), "w", encoding="utf-8") for k in range(n_files)]
    total = 0
    for i, d in enumerate(docs):
        line = json.dumps(d, ensure_ascii=False) + "\n"
        fhs[i % n_files].write(line)
        digest.update(line.encode("utf-8"))
        total += len(line.encode("utf-8"))
    for fh in fhs:
        fh.close()
    lens = sorted(len(d["text"]) for d in docs)
    info = {"bytes": total, "docs": len(docs), "max_chars": lens[-1], "median_chars": lens[len(lens) // 2],
            "sha256": digest.hexdigest(), "seed": seed, "megabytes": megabytes, "files": n_files,
            "sources": per_source}
    with open(os.path.join(out, "pages.json"), "w", encoding="utf-8") as fh:
        json.dump(info, fh, indent=1)
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for part-NNN.jsonl and pages.json")
    ap.add_argument("--mb", type=float, default=6.0, help="megabytes of text in all (default 6)")
    ap.add_argument("--files", type=int, default=4, help="JSONL files (default 4)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    info = build(args.out, args.mb, args.files, args.seed)
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
