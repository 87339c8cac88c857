"""Rebuild data/sample/corpus.jsonl.gz from the Python 3.11 documentation (Debian python3.11-doc).

The bundled sample corpus is the prose of the official Python documentation (PSF License
Version 2), converted from the installed HTML to plain-text paragraphs with the standard
library's html.parser: code listings (<pre>/highlight blocks), tables, navigation, API
signatures and index pages are dropped, so what remains is mostly English prose. Each page is
cut at its section headings into documents of at most --max-chars characters.

    apt-get install python3.11-doc          # provides /usr/share/doc/python3.11/html
    python data_prep/make_sample_corpus.py  # writes data/sample/corpus.jsonl.gz

The output is deterministic for a given package version (sorted pages, fixed gzip mtime).
"""
from __future__ import annotations

import argparse
import gzip
import html
import json
import os
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_HTML = "/usr/share/doc/python3.11/html"
# Folders in order of how much natural prose they hold; whole folders are taken until the
# character budget is met, then pages of the last folder are taken in sorted order.
DEFAULT_SECTIONS = ("tutorial", "howto", "faq", "reference", "using", "extending", "installing",
                    "distributing", "whatsnew", "library")
SKIP_PAGES = {"changelog.html", "index.html"}

BLOCK_TAGS = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "li", "dt", "dd", "blockquote", "div",
              "section", "ul", "ol", "dl", "figcaption", "caption"}
HEADINGS = {"h1", "h2", "h3"}
VOID_TAGS = {"br", "img", "hr", "meta", "link", "input", "wbr", "col", "area", "base", "source"}


class ProseExtractor(HTMLParser):
    """Collects the paragraphs of a Sphinx page's main body as (kind, text) pairs, where kind is
    'h1'/'h2'/'h3' for section headings and 'p' for everything else."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.blocks: list[tuple[str, str]] = []
        self._buf: list[str] = []
        self._depth_in_body = 0  # >0 while inside <div class="body">
        self._skip_depth = 0  # >0 while inside an element whose text is dropped
        self._stack: list[tuple[str, bool, bool]] = []  # (tag, opened body, opened skip)
        self._heading: str | None = None
        self._bullet = False

    def _flush(self):
        text = re.sub(r"\s+", " ", "".join(self._buf)).strip()
        self._buf = []
        if not text:
            return
        kind = self._heading or "p"
        if kind == "p" and self._bullet:
            text = "- " + text
        self._bullet = False
        self.blocks.append((kind, text))

    def handle_starttag(self, tag, attrs):
        if tag in VOID_TAGS:
            if tag == "br" and self._depth_in_body and not self._skip_depth:
                self._buf.append(" ")
            return
        a = dict(attrs)
        cls = (a.get("class") or "").split()
        opens_body = tag == "div" and "body" in cls and a.get("role") == "main"
        chrome = {"sphinxsidebar", "related", "footer", "toctree-wrapper", "versionmodified"}
        skip = (tag in {"pre", "script", "style", "table", "nav", "footer", "form"}
                or (tag == "div" and any(c.startswith("highlight") or c in chrome for c in cls))
                or (tag == "a" and "headerlink" in cls)
                or (tag == "dt" and ("sig" in cls or "sig-object" in cls))
                or (tag == "span" and "linenos" in cls))
        if opens_body:
            self._depth_in_body += 1
        if skip:
            self._skip_depth += 1
        self._stack.append((tag, opens_body, skip))
        if self._depth_in_body and not self._skip_depth and tag in BLOCK_TAGS:
            self._flush()
            if tag in HEADINGS:
                self._heading = tag
            elif tag == "li":
                self._bullet = True

    def handle_endtag(self, tag):
        if tag in VOID_TAGS:
            return
        # Pop to the matching open tag (Sphinx HTML is well formed; this tolerates stray ends).
        for i in range(len(self._stack) - 1, -1, -1):
            if self._stack[i][0] == tag:
                break
        else:
            return
        while len(self._stack) > i:
            t, opened_body, opened_skip = self._stack.pop()
            if self._depth_in_body and not self._skip_depth and t in BLOCK_TAGS:
                self._flush()
                if t in HEADINGS:
                    self._heading = None
            if opened_skip:
                self._skip_depth -= 1
            if opened_body:
                self._depth_in_body -= 1

    def handle_data(self, data):
        if self._depth_in_body and not self._skip_depth:
            self._buf.append(data)


def page_documents(path: Path, rel: str, max_chars: int) -> list[dict]:
    """Documents of one HTML page: its sections (cut at h2 headings, then packed by
    paragraph to at most max_chars), each with an id 'python-3.11-docs/<rel>#<n>'."""
    parser = ProseExtractor()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    parser.close()
    sections: list[list[str]] = [[]]
    for kind, text in parser.blocks:
        text = html.unescape(text)
        if kind in ("h1", "h2") and sections[-1]:
            sections.append([])
        sections[-1].append(text)
    docs: list[dict] = []
    for paras in sections:
        chunk: list[str] = []
        size = 0
        for para in paras:
            if chunk and size + len(para) > max_chars:
                docs.append(chunk)
                chunk, size = [], 0
            chunk.append(para)
            size += len(para) + 2
        if chunk:
            docs.append(chunk)
    out = []
    for n, chunk in enumerate(docs):
        text = "\n\n".join(chunk)
        # Tiny fragments (a lone heading, a "See also" line) are not worth a document.
        if len(text) < 200 or len(text.split()) < 30:
            continue
        out.append({"id": f"python-3.11-docs/{rel}#{n}", "text": text})
    return out


def build(html_root: str, output: str, max_mb: float, max_chars: int, sections=DEFAULT_SECTIONS) -> dict:
    root = Path(html_root)
    if not (root / "library").is_dir():
        raise SystemExit(f"error: {root}: Python HTML docs not found; install them with "
                         f"'apt-get install python3.11-doc' or pass --html-root")
    budget = int(max_mb * 1_000_000)
    total_chars = n_docs = n_pages = 0
    tmp = f"{output}.tmp{os.getpid()}"
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
            done = False
            for sec in sections:
                for page in sorted((root / sec).rglob("*.html")):
                    if page.name in SKIP_PAGES:
                        continue
                    rel = page.relative_to(root).as_posix()
                    docs = page_documents(page, rel, max_chars)
                    for d in docs:
                        gz.write((json.dumps(d, ensure_ascii=False) + "\n").encode("utf-8"))
                        total_chars += len(d["text"])
                        n_docs += 1
                    n_pages += 1
                    if total_chars >= budget:
                        done = True
                        break
                if done:
                    break
        os.replace(tmp, output)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return {"documents": n_docs, "pages": n_pages, "characters": total_chars,
            "bytes_gz": os.path.getsize(output)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--html-root", default=DEFAULT_HTML, help="the installed Python HTML docs")
    ap.add_argument("--output", default=str(REPO_ROOT / "data" / "sample" / "corpus.jsonl.gz"))
    ap.add_argument("--max-mb", type=float, default=5.0, help="stop after about this many million characters")
    ap.add_argument("--max-chars", type=int, default=12000, help="longest document, in characters")
    args = ap.parse_args(argv)
    stats = build(args.html_root, args.output, args.max_mb, args.max_chars)
    print(f"{args.output}: {stats['documents']} documents from {stats['pages']} pages, "
          f"{stats['characters'] / 1e6:.2f} M characters, {stats['bytes_gz'] / 1e6:.2f} MB gzipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
