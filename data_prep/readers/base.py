"""What every reader shares: the adapter from records to documents, opening compressed files,
and bad-input handling, written once.

Bad input: with ``strict=True`` (the tokenizer scripts) the first problem raises `InputError`
naming the file and the line. With ``strict=False`` (the cleaning pipeline) each problem is
counted in the ``errors`` dict under a key (``malformed_json``, ``invalid_utf8``,
``missing_text``, ``missing_id``, ``oversized``, ``truncated``, ...), a warning naming the file is
logged, and reading goes on; a truncated compressed file keeps every complete document before the
cut.
"""
from __future__ import annotations

import gzip
import io
import logging
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from llmtrain_prep.document import Document

log = logging.getLogger("llmtrain_prep.readers")

# A single document larger than this (bytes) is counted as `oversized` and skipped rather than
# held in memory; the cleaning config can change it.
DEFAULT_MAX_DOC_BYTES = 20_000_000
DEFAULT_TEXT_KEY = "text"
DEFAULT_ID_KEY = "id"  # used when present; a named --id-key must exist
CHUNK = 1 << 20


class InputError(ValueError):
    """Bad input named by file (and line): the message is meant to be shown as is."""


@dataclass(frozen=True)
class Field:
    """A string field every record must have: ``key`` in the record, ``flag`` the command-line
    flag that names it (for messages)."""
    key: str
    flag: str = "--text-key"

    @property
    def hint(self) -> str:
        """How a message tells the user to name another field."""
        return "--text-key names the text field" if self.flag == "--text-key" else f"{self.flag} names it"


@dataclass(frozen=True)
class Adapter:
    """How a record's fields become a `Document`: ``text`` is the text field; ``id_key`` the id
    field (None: ``id`` when the record has one, else ``<name>:<row>``); ``fields`` more string
    fields every record must have, kept in ``Document.meta`` under their names (prompt/response
    records keep the response there); ``metadata`` optional fields copied into ``Document.meta``
    when present. Used by the readers of records (JSONL, Parquet, datasets); WARC and plain
    text have no fields to map."""
    text: Field = Field(DEFAULT_TEXT_KEY)
    id_key: str | None = None
    fields: dict[str, Field] = field(default_factory=dict)
    metadata: tuple[str, ...] = ()

    @classmethod
    def of(cls, text_key: str | None = None, id_key: str | None = None) -> Adapter:
        return cls(Field(text_key or DEFAULT_TEXT_KEY), id_key)

    @property
    def required(self) -> list[Field]:
        """The string fields of a record, the text first."""
        return [self.text, *self.fields.values()]

    def columns(self, names) -> list[str]:
        """The columns to read from a table with columns ``names`` (checked before)."""
        key = self.id_key or DEFAULT_ID_KEY
        cols = [f.key for f in self.required] + ([key] if key in names else [])
        return cols + [m for m in self.metadata if m in names and m not in cols]

    def bad_field(self, rec: dict) -> Field | None:
        """The first required field of ``rec`` that is not a string (None: all are)."""
        for f in self.required:
            if not isinstance(rec.get(f.key), str):
                return f
        return None

    def document(self, rec: dict, default_id: str, source: str) -> Document:
        """The document of a checked record (`bad_field` found nothing)."""
        rid = rec.get(self.id_key or DEFAULT_ID_KEY)
        meta = {name: rec[f.key] for name, f in self.fields.items()} if self.fields else {}
        for m in self.metadata:
            if rec.get(m) is not None:
                meta[m] = rec[m]
        return Document(rec[self.text.key], str(rid) if rid is not None else default_id, source, False, meta)


def truncation_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the compressed stream or file ends early or is corrupt"."""
    errs = [EOFError, zlib.error, gzip.BadGzipFile, OSError]
    try:
        import zstandard

        errs.append(zstandard.ZstdError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errs)


TRUNCATED = truncation_errors()


def open_binary(path: str):
    """Open a possibly compressed (.gz, .zst) file for streaming binary reads."""
    lower = path.lower()
    if lower.endswith(".gz"):
        return gzip.open(path, "rb")
    if lower.endswith(".zst"):
        import zstandard

        fh = open(path, "rb")
        # BufferedReader: zstandard's stream reader has no readline(), which the line readers need.
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(fh, closefd=True, read_across_frames=True))
    return open(path, "rb")


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
    return open(path, encoding="utf-8")


def first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


class Reader:
    """Reads the documents of one input, one record at a time, never the whole input.

    A subclass implements `_documents(path)` (yield documents, report bad records with
    `problem`) and, for a cut-off stream, `cut_message`; `read` adds the handling shared by
    every format: an `InputError` passes, an exception of ``cut_errors`` (a truncated or
    corrupt stream) is one more problem, ``truncated``, after the documents before the cut.
    `check(path)` opens an input and checks its fields before anything is written."""

    cut_errors: tuple[type[BaseException], ...] = TRUNCATED

    def __init__(self, adapter: Adapter | None = None, strict: bool = True, errors: dict | None = None,
                 max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES):
        self.adapter = adapter or Adapter()
        self.strict = strict
        self.errors = errors
        self.max_doc_bytes = max_doc_bytes

    # -- bad input
    def count(self, key: str, msg: str, warn: bool = True) -> None:
        """Count one problem under ``key`` (and log ``msg``), in strict mode too."""
        if self.errors is not None:
            self.errors[key] = self.errors.get(key, 0) + 1
        if warn:
            log.warning(msg)

    def problem(self, key: str, msg: str) -> None:
        """Bad input: raise InputError(msg) when strict, else count it under ``key`` and warn."""
        if self.strict:
            raise InputError(msg) from None
        self.count(key, msg)

    # -- reading
    def read(self, path: str) -> Iterator[Document]:
        """The documents of ``path``, in order."""
        try:
            yield from self._documents(path)
        except InputError:
            raise
        except self.cut_errors as e:
            self.problem("truncated", self.cut_message(path, e))

    def _documents(self, path: str) -> Iterator[Document]:  # pragma: no cover
        raise NotImplementedError

    def cut_message(self, path: str, e: BaseException) -> str:
        return f"{path}: truncated or corrupt file ({type(e).__name__}: {e}); documents before the cut are kept"

    def check(self, path: str) -> None:
        """Open ``path`` and check its fields, reading at most its first document: InputError
        (one line naming the input and the fix) otherwise."""
        docs = self.read(path)
        try:
            next(docs, None)
        finally:
            docs.close()
