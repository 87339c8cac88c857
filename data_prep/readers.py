"""Streaming document readers shared by every data_prep stage.

A document is a dict with at least ``id``, ``text`` and ``source`` (the file it came from).
Files are read line by line / record by record / row batch by row batch, never whole into
memory.

Supported inputs (by suffix, case-insensitive):

* JSONL: ``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst``, ``.json.gz``, ``.json.zst``; one JSON
  object per line with a string ``text`` field; ``id`` is the object's ``id`` field, else
  ``<file name>:<line>``.
* WARC / WET: ``.warc``, ``.warc.gz``, ``.wet``, ``.wet.gz``; ``response`` records (HTTP
  responses: the HTML payload, marked ``"html": True``; only text/html and
  application/xhtml types) and ``conversion`` records (WET plain text). ``id`` is the
  record's WARC-Target-URI.
* Parquet: ``.parquet``; read one batch of rows at a time (pyarrow), columns ``text`` and
  (if present) ``id``.
* Plain text: ``.txt``, ``.txt.gz``, ``.txt.zst``; **one document per file** (a book, an
  article); ``id`` is the file path. Blank-line blocks are kept as paragraphs of that one
  document, because the repetition and quality filters judge whole documents.

`expand_inputs` turns a mix of files and folders into the sorted list of supported files;
`iter_documents` yields the documents of one file.

Bad input: with ``strict=True`` (the default, used by the tokenizer scripts) the first
problem raises `InputError` naming file and line. With ``strict=False`` (the cleaning
pipeline) each problem is counted in the ``errors`` dict passed in, a warning naming the
file is logged, and reading goes on; a truncated compressed file or WARC keeps every
complete document before the cut.
"""
from __future__ import annotations

import gzip
import io
import json
import logging
import os
import zlib
from pathlib import Path
from typing import Iterator

log = logging.getLogger("data_prep.readers")

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".json.zst")
WARC_SUFFIXES = (".warc", ".warc.gz", ".wet", ".wet.gz")
PARQUET_SUFFIXES = (".parquet",)
TEXT_SUFFIXES = (".txt", ".txt.gz", ".txt.zst")
ALL_SUFFIXES = JSONL_SUFFIXES + WARC_SUFFIXES + PARQUET_SUFFIXES + TEXT_SUFFIXES

# A single document larger than this (bytes) is counted as `oversized` and skipped rather
# than held in memory; the cleaning config can change it.
DEFAULT_MAX_DOC_BYTES = 20_000_000
_CHUNK = 1 << 20


class InputError(ValueError):
    """Bad input named by file (and line): the message is meant to be shown as is."""


def _has_suffix(path: str, suffixes) -> bool:
    name = path.lower()
    return any(name.endswith(s) for s in suffixes)


def file_format(path: str) -> str | None:
    """'jsonl' | 'warc' | 'parquet' | 'text' for a supported path, else None."""
    for fmt, sfx in (("jsonl", JSONL_SUFFIXES), ("warc", WARC_SUFFIXES), ("parquet", PARQUET_SUFFIXES),
                     ("text", TEXT_SUFFIXES)):
        if _has_suffix(path, sfx):
            return fmt
    return None


def expand_inputs(inputs, suffixes=JSONL_SUFFIXES) -> list[str]:
    """Files and folders (searched recursively) → sorted list of files with a supported suffix.

    Raises InputError naming the first path that does not exist, or when nothing matched.
    Pass ``suffixes=ALL_SUFFIXES`` to accept every format this module reads.
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


def open_binary(path: str):
    """Open a possibly compressed file for streaming binary reads."""
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
    return open(path, "r", encoding="utf-8")


# ----------------------------------------------------------------------------- errors

def _count(errors: dict | None, key: str, msg: str, warn: bool = True) -> None:
    if errors is not None:
        errors[key] = errors.get(key, 0) + 1
    if warn:
        log.warning(msg)


def _problem(errors: dict | None, key: str, msg: str, strict: bool) -> None:
    """Bad input: raise InputError(msg) when strict, else count it under ``key`` and warn."""
    if strict:
        raise InputError(msg) from None
    _count(errors, key, msg)


# Exceptions that mean "the compressed stream or file ends early / is corrupt".
def _truncation_errors():
    errs = [EOFError, zlib.error, gzip.BadGzipFile, OSError]
    try:
        import zstandard

        errs.append(zstandard.ZstdError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errs)


_TRUNC = _truncation_errors()


def _read_lines_bounded(fh, max_bytes: int):
    """Yield (line_bytes or None, lineno); None marks a line longer than max_bytes (skipped
    without holding it: it is drained in chunks)."""
    lineno = 0
    while True:
        line = fh.readline(max_bytes + 1)
        if not line:
            return
        lineno += 1
        if len(line) > max_bytes and not line.endswith(b"\n"):
            # drain the rest of this over-long line
            while True:
                rest = fh.readline(_CHUNK)
                if not rest or rest.endswith(b"\n"):
                    break
            yield None, lineno
            continue
        yield line, lineno


# ----------------------------------------------------------------------------- JSONL

def iter_jsonl(path: str, text_key: str = "text", id_key: str = "id", strict: bool = True,
               errors: dict | None = None, max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES) -> Iterator[dict]:
    """Yield {'id', 'text', 'source'} for each JSON line of ``path``.

    strict=True raises InputError naming file and line on a malformed line, invalid UTF-8
    or a missing text field; strict=False counts the problem in ``errors`` (keys
    ``malformed_json``, ``invalid_utf8``, ``missing_text``, ``oversized``, ``truncated``),
    logs a warning and goes on.
    """
    base = os.path.basename(path)
    try:
        with open_binary(path) as fh:
            for raw, lineno in _read_lines_bounded(fh, max_doc_bytes):
                if raw is None:
                    msg = f"{path}:{lineno}: line longer than {max_doc_bytes} bytes; skipped"
                    _problem(errors, "oversized", msg, strict)
                    continue
                if not raw.strip():
                    continue
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    msg = f"{path}:{lineno}: invalid UTF-8 at byte {e.start}; fix the encoding or remove that line"
                    _problem(errors, "invalid_utf8", msg, strict)
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    msg = f"{path}:{lineno}: malformed JSON ({e.msg}); fix or remove that line"
                    _problem(errors, "malformed_json", msg, strict)
                    continue
                if not isinstance(obj, dict) or not isinstance(obj.get(text_key), str):
                    msg = f"{path}:{lineno}: no string field '{text_key}'; every line needs one"
                    _problem(errors, "missing_text", msg, strict)
                    continue
                doc_id = obj.get(id_key)
                yield {"id": str(doc_id) if doc_id is not None else f"{base}:{lineno}", "text": obj[text_key],
                       "source": path}
    except InputError:
        raise
    except _TRUNC as e:
        msg = f"{path}: truncated or corrupt file ({type(e).__name__}: {e}); documents before the cut are kept"
        _problem(errors, "truncated", msg, strict)


# ----------------------------------------------------------------------------- WARC / WET

_HTML_TYPES = (b"text/html", b"application/xhtml")


def _parse_headers(lines: list[bytes]) -> dict[str, str]:
    out: dict[str, str] = {}
    for ln in lines:
        k, sep, v = ln.partition(b":")
        if sep:
            out[k.strip().decode("latin-1").lower()] = v.strip().decode("latin-1")
    return out


def _charset(content_type: str) -> str | None:
    for part in content_type.split(";")[1:]:
        k, _, v = part.strip().partition("=")
        if k.strip().lower() == "charset" and v:
            return v.strip().strip("'\"")
    return None


def decode_html(payload: bytes, content_type: str = "") -> str:
    """Bytes of an HTML page → str: the HTTP charset if valid, else UTF-8, else the
    encoding resiliparse detects (or cp1252 with replacement)."""
    cs = _charset(content_type)
    if cs:
        try:
            return payload.decode(cs)
        except (LookupError, UnicodeDecodeError):
            pass
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        from resiliparse.parse.encoding import bytes_to_str, detect_encoding

        return bytes_to_str(payload, detect_encoding(payload))
    except ImportError:  # pragma: no cover
        return payload.decode("cp1252", errors="replace")


def iter_warc(path: str, strict: bool = True, errors: dict | None = None,
              max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES) -> Iterator[dict]:
    """Yield documents from the response and conversion records of a WARC/WET file.

    Response records give {'id', 'text' (decoded HTML), 'source', 'html': True}; only
    text/html and xhtml payloads with HTTP status 200 are kept (others are counted under
    ``warc_skipped``). Conversion records (WET) give plain text. A record cut short by a
    truncated file is counted under ``truncated`` and reading stops there.
    """
    try:
        fh = open_binary(path)
    except OSError as e:
        raise InputError(f"{path}: cannot open ({e})") from None
    nrec = 0
    try:
        with fh:
            while True:
                line = fh.readline(65536)
                if not line:
                    return
                if not line.strip():
                    continue
                if not line.startswith(b"WARC/"):
                    msg = f"{path}: record {nrec + 1}: expected a 'WARC/' version line, found {line[:40]!r}; stopping"
                    _problem(errors, "malformed_warc", msg, strict)
                    return
                hlines = []
                while True:
                    h = fh.readline(65536)
                    if not h:
                        raise EOFError("end of file inside WARC headers")
                    if not h.strip():
                        break
                    hlines.append(h)
                headers = _parse_headers(hlines)
                nrec += 1
                try:
                    length = int(headers.get("content-length", ""))
                except ValueError:
                    msg = f"{path}: record {nrec}: no valid Content-Length; stopping"
                    _problem(errors, "malformed_warc", msg, strict)
                    return
                rtype = headers.get("warc-type", "")
                wanted = rtype in ("response", "conversion")
                if not wanted or length > max_doc_bytes:
                    # skip the block without holding it
                    left = length
                    while left > 0:
                        chunk = fh.read(min(left, _CHUNK))
                        if not chunk:
                            raise EOFError("end of file inside a WARC record")
                        left -= len(chunk)
                    if wanted:
                        _count(errors, "oversized", f"{path}: record {nrec} larger than {max_doc_bytes} bytes; skipped")
                    continue
                block = fh.read(length)
                if len(block) < length:
                    raise EOFError(f"record {nrec} has {len(block)} of {length} bytes")
                uri = headers.get("warc-target-uri", "") or f"{os.path.basename(path)}:{nrec}"
                if rtype == "conversion":
                    try:
                        text = block.decode("utf-8")
                    except UnicodeDecodeError:
                        _count(errors, "invalid_utf8", f"{path}: record {nrec} ({uri}): invalid UTF-8; skipped")
                        continue
                    yield {"id": uri, "text": text, "source": path}
                    continue
                # response: HTTP status line + headers + payload
                ctype = headers.get("content-type", "")
                if "application/http" not in ctype and "msgtype=response" not in ctype and not block.startswith(b"HTTP/"):
                    _count(errors, "warc_skipped", "", warn=False)
                    continue
                head, sep, payload = block.partition(b"\r\n\r\n")
                if not sep:
                    head, sep, payload = block.partition(b"\n\n")
                status_line, _, rest = head.partition(b"\n")
                parts = status_line.split()
                http = _parse_headers(rest.split(b"\n"))
                http_ct = http.get("content-type", "").encode("latin-1", "replace").lower()
                if len(parts) < 2 or parts[1] != b"200" or not http_ct.startswith(_HTML_TYPES):
                    _count(errors, "warc_skipped", "", warn=False)
                    continue
                if "chunked" in http.get("transfer-encoding", "").lower():
                    payload = _dechunk(payload)
                yield {"id": uri, "text": decode_html(payload, http.get("content-type", "")), "source": path,
                       "html": True}
    except InputError:
        raise
    except _TRUNC as e:
        msg = f"{path}: truncated or corrupt WARC after {nrec} records ({type(e).__name__}: {e}); earlier records kept"
        _problem(errors, "truncated", msg, strict)


def _dechunk(data: bytes) -> bytes:
    out, pos = [], 0
    while pos < len(data):
        nl = data.find(b"\r\n", pos)
        if nl < 0:
            break
        try:
            size = int(data[pos:nl].split(b";")[0], 16)
        except ValueError:
            return data  # not really chunked
        if size == 0:
            break
        out.append(data[nl + 2:nl + 2 + size])
        pos = nl + 2 + size + 2
    return b"".join(out)


# ----------------------------------------------------------------------------- Parquet

def iter_parquet(path: str, text_key: str = "text", id_key: str = "id", strict: bool = True,
                 errors: dict | None = None, batch_rows: int = 1024) -> Iterator[dict]:
    """Yield documents from a Parquet file, one batch of rows (within a row group) at a time."""
    import pyarrow.parquet as pq

    base = os.path.basename(path)
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for corrupt files
        msg = f"{path}: not a readable Parquet file ({e})"
        _problem(errors, "unreadable_file", msg, strict)
        return
    names = pf.schema_arrow.names
    if text_key not in names:
        msg = f"{path}: no column '{text_key}' (columns: {', '.join(names)}); pass the text column name"
        _problem(errors, "missing_text", msg, strict)
        return
    cols = [text_key] + ([id_key] if id_key in names else [])
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=batch_rows, columns=cols):
            texts = batch.column(0).to_pylist()
            ids = batch.column(1).to_pylist() if len(cols) > 1 else [None] * len(texts)
            for t, i in zip(texts, ids):
                row += 1
                if not isinstance(t, str):
                    msg = f"{path}: row {row}: '{text_key}' is not a string"
                    _problem(errors, "missing_text", msg, strict)
                    continue
                yield {"id": str(i) if i is not None else f"{base}:{row}", "text": t, "source": path}
    except InputError:
        raise
    except Exception as e:
        msg = f"{path}: corrupt Parquet after {row} rows ({type(e).__name__}: {e}); earlier rows kept"
        _problem(errors, "truncated", msg, strict)


# ----------------------------------------------------------------------------- plain text

def iter_text(path: str, strict: bool = True, errors: dict | None = None,
              max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES) -> Iterator[dict]:
    """One document per file; read in chunks up to ``max_doc_bytes`` (larger: `oversized`)."""
    parts, size = [], 0
    try:
        with open_binary(path) as fh:
            while True:
                chunk = fh.read(_CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                if size > max_doc_bytes:
                    msg = f"{path}: text file larger than {max_doc_bytes} bytes; skipped (split it into files)"
                    _problem(errors, "oversized", msg, strict)
                    return
                parts.append(chunk)
    except InputError:
        raise
    except _TRUNC as e:
        msg = f"{path}: truncated or corrupt file ({type(e).__name__}: {e})"
        _problem(errors, "truncated", msg, strict)
        return
    try:
        text = b"".join(parts).decode("utf-8")
    except UnicodeDecodeError as e:
        msg = f"{path}: invalid UTF-8 at byte {e.start}; re-encode the file as UTF-8"
        _problem(errors, "invalid_utf8", msg, strict)
        return
    yield {"id": path, "text": text, "source": path}


def iter_documents(path: str, strict: bool = True, errors: dict | None = None,
                   max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES, text_key: str = "text",
                   id_key: str = "id") -> Iterator[dict]:
    """Documents of one file, by its suffix (see the module doc for each format)."""
    fmt = file_format(path)
    if fmt == "jsonl":
        return iter_jsonl(path, text_key=text_key, id_key=id_key, strict=strict, errors=errors,
                          max_doc_bytes=max_doc_bytes)
    if fmt == "warc":
        return iter_warc(path, strict=strict, errors=errors, max_doc_bytes=max_doc_bytes)
    if fmt == "parquet":
        return iter_parquet(path, text_key=text_key, id_key=id_key, strict=strict, errors=errors)
    if fmt == "text":
        return iter_text(path, strict=strict, errors=errors, max_doc_bytes=max_doc_bytes)
    raise InputError(f"{path}: unsupported file type; expected one of {', '.join(ALL_SUFFIXES)}")
