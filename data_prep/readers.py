"""Streaming document readers shared by every data_prep stage.

A document is a dict with at least ``id`` and ``text``; readers add ``source`` (the file it
came from). Files are read line by line / record by record, never whole into memory.

`expand_inputs` turns a mix of files and folders into the sorted list of supported files;
`iter_documents` yields the documents of one file.
"""
from __future__ import annotations

import gzip
import io
import json
import os
from pathlib import Path
from typing import Iterator

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".json.zst")


class InputError(ValueError):
    """Bad input named by file (and line): the message is meant to be shown as is."""


def _has_suffix(path: str, suffixes) -> bool:
    name = path.lower()
    return any(name.endswith(s) for s in suffixes)


def expand_inputs(inputs, suffixes=JSONL_SUFFIXES) -> list[str]:
    """Files and folders (searched recursively) → sorted list of files with a supported suffix.

    Raises InputError naming the first path that does not exist, or when nothing matched.
    """
    files: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(str(f) for f in p.rglob("*") if f.is_file() and _has_suffix(str(f), suffixes))
            files.extend(found)
        elif p.is_file():
            if not _has_suffix(str(p), suffixes):
                raise InputError(f"{p}: unsupported file type; expected one of {', '.join(suffixes)}")
            files.append(str(p))
        else:
            raise InputError(f"{p}: no such file or folder; check the --input path")
    if not files:
        raise InputError(f"no input files with suffix {', '.join(suffixes)} under {', '.join(map(str, inputs))}")
    return files


def open_text(path: str) -> io.TextIOBase:
    """Open a possibly compressed text file for streaming reads (utf-8)."""
    lower = path.lower()
    if lower.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    if lower.endswith(".zst"):
        import zstandard

        fh = open(path, "rb")
        stream = zstandard.ZstdDecompressor().stream_reader(fh, closefd=True)
        return io.TextIOWrapper(stream, encoding="utf-8")
    return open(path, "r", encoding="utf-8")


def iter_jsonl(path: str, text_key: str = "text", id_key: str = "id", strict: bool = True) -> Iterator[dict]:
    """Yield {'id', 'text', 'source'} for each JSON line of ``path``.

    strict=True raises InputError naming file and line on a malformed line or a missing
    text field; strict=False skips such lines (the caller counts them via the `errors` key
    of the yielded sentinel-free stream: see ``iter_jsonl_counting``).
    """
    base = os.path.basename(path)
    with open_text(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                if strict:
                    raise InputError(f"{path}:{lineno}: malformed JSON ({e.msg}); fix or remove that line") from None
                continue
            if not isinstance(obj, dict) or not isinstance(obj.get(text_key), str):
                if strict:
                    raise InputError(f"{path}:{lineno}: no string field '{text_key}'; every line needs one")
                continue
            doc_id = obj.get(id_key)
            yield {"id": str(doc_id) if doc_id is not None else f"{base}:{lineno}", "text": obj[text_key], "source": path}


def iter_documents(path: str, strict: bool = True) -> Iterator[dict]:
    """Documents of one file, by its suffix."""
    if _has_suffix(path, JSONL_SUFFIXES):
        return iter_jsonl(path, strict=strict)
    raise InputError(f"{path}: unsupported file type")
