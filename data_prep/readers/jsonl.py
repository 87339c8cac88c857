"""JSON Lines: ``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst``, ``.json.gz``, ``.json.zst``; one JSON
object per line, mapped to a document by the adapter; the id is the id field, else
``<file name>:<line>``."""
from __future__ import annotations

import json
import os
from collections.abc import Iterator

from llmtrain_prep.document import Document

from .base import CHUNK, DEFAULT_ID_KEY, Reader, open_binary


def read_lines_bounded(fh, max_bytes: int):
    """Yield (line bytes or None, line number); None marks a line longer than ``max_bytes``,
    skipped without holding it (it is drained in chunks)."""
    lineno = 0
    while True:
        line = fh.readline(max_bytes + 1)
        if not line:
            return
        lineno += 1
        if len(line) > max_bytes and not line.endswith(b"\n"):
            while True:
                rest = fh.readline(CHUNK)
                if not rest or rest.endswith(b"\n"):
                    break
            yield None, lineno
            continue
        yield line, lineno


class JsonlReader(Reader):
    """One JSON object per line. Problems: ``oversized`` (a line over max_doc_bytes),
    ``invalid_utf8``, ``malformed_json``, ``missing_text`` (a required field is not a string;
    the message names the flag that names it), ``missing_id`` (a named --id-key absent)."""

    def _documents(self, path: str) -> Iterator[Document]:
        base = os.path.basename(path)
        adapter = self.adapter
        id_key = adapter.id_key
        max_bytes = self.max_doc_bytes
        with open_binary(path) as fh:
            for raw, lineno in read_lines_bounded(fh, max_bytes):
                if raw is None:
                    self.problem("oversized", f"{path}:{lineno}: line longer than {max_bytes} bytes; skipped")
                    continue
                if not raw.strip():
                    continue
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    self.problem("invalid_utf8", f"{path}:{lineno}: invalid UTF-8 at byte {e.start}; fix the encoding "
                                                 f"or remove that line")
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    self.problem("malformed_json", f"{path}:{lineno}: malformed JSON ({e.msg}); fix or remove that "
                                                   f"line")
                    continue
                bad = adapter.bad_field(obj) if isinstance(obj, dict) else adapter.text
                if bad is not None:
                    self.problem("missing_text", f"{path}:{lineno}: no string field '{bad.key}'; every line needs one "
                                                 f"({bad.hint})")
                    continue
                if id_key is not None and obj.get(id_key) is None:
                    self.problem("missing_id", f"{path}:{lineno}: no field '{id_key or DEFAULT_ID_KEY}' (--id-key); "
                                               f"every line needs one, or leave --id-key out")
                    continue
                yield adapter.document(obj, f"{base}:{lineno}", path)
