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
* Hugging Face ``datasets``: a folder written by ``Dataset.save_to_disk`` (it holds
  ``state.json`` and ``dataset_info.json``) or ``DatasetDict.save_to_disk`` (it holds
  ``dataset_dict.json``; ``--hf-split`` picks the split when there are several), read
  memory-mapped one batch of rows at a time; and ``hf:NAME``, streamed through
  ``datasets.load_dataset(NAME, --hf-config, split=--hf-split, streaming=True)``: a Hub
  data set (``hf:HuggingFaceFW/fineweb``), or anything else load_dataset takes by name, such as a
  local folder of Parquet/JSONL files (``hf:/data/my_corpus``).

``--text-key`` / ``--id-key`` name the text and id columns of JSONL, Parquet and datasets
inputs (defaults ``text`` and ``id``; a missing ``id`` column is fine with the default, ids are
then ``<name>:<row>``, but a named ``--id-key`` must exist). Every script declares these flags
with `add_input_args` and passes `reader_options(args)` to `iter_documents`.

`expand_inputs` turns a mix of files, folders and ``hf:`` names into the sorted list of
inputs (a ``save_to_disk`` folder is one input); `check_input` opens one and checks its
columns (call it on every input before writing anything); `iter_documents` yields the
documents of one input.

Bad input: with ``strict=True`` (the default, used by the tokenizer scripts) the first
problem raises `InputError` naming file and line. With ``strict=False`` (the cleaning
pipeline) each problem is counted in the ``errors`` dict passed in, a warning naming the
file is logged, and reading goes on; a truncated compressed file or WARC keeps every
complete document before the cut.
"""
from __future__ import annotations

import functools
import gzip
import io
import json
import logging
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("llmtrain_prep.readers")

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".json.zst")
WARC_SUFFIXES = (".warc", ".warc.gz", ".wet", ".wet.gz")
PARQUET_SUFFIXES = (".parquet",)
TEXT_SUFFIXES = (".txt", ".txt.gz", ".txt.zst")
ALL_SUFFIXES = JSONL_SUFFIXES + WARC_SUFFIXES + PARQUET_SUFFIXES + TEXT_SUFFIXES
# What the tokenizer scripts read: documents already cleaned (no WARC/HTML, no one-file-one-document text).
TOKENIZE_SUFFIXES = JSONL_SUFFIXES + PARQUET_SUFFIXES

# A single document larger than this (bytes) is counted as `oversized` and skipped rather
# than held in memory; the cleaning config can change it.
DEFAULT_MAX_DOC_BYTES = 20_000_000
DEFAULT_ID_KEY = "id"  # used when present; a named --id-key must exist
_CHUNK = 1 << 20


class InputError(ValueError):
    """Bad input named by file (and line): the message is meant to be shown as is."""


def _has_suffix(path: str, suffixes) -> bool:
    name = path.lower()
    return any(name.endswith(s) for s in suffixes)


HF_PREFIX = "hf:"
# The files save_to_disk writes: a Dataset folder, a DatasetDict folder.
_DATASET_MARKERS = (("state.json", "dataset_info.json"), ("dataset_dict.json",))


def is_hf_name(path) -> bool:
    """True for ``hf:NAME`` (a data set streamed through datasets.load_dataset)."""
    return str(path).startswith(HF_PREFIX)


def is_dataset_dir(path) -> bool:
    """True for a folder written by datasets' Dataset/DatasetDict.save_to_disk."""
    p = Path(path)
    return p.is_dir() and any(all((p / m).is_file() for m in marks) for marks in _DATASET_MARKERS)


def is_hf_input(path) -> bool:
    """True for the inputs read through `datasets` (save_to_disk folders and hf:NAME)."""
    return is_hf_name(path) or is_dataset_dir(path)


def input_bytes(path: str) -> int:
    """On-disk bytes of one input (a save_to_disk folder: all its files; hf:NAME: 0, unknown)."""
    if is_hf_name(path):
        return 0
    p = Path(path)
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return p.stat().st_size


def file_format(path: str) -> str | None:
    """'jsonl' | 'warc' | 'parquet' | 'text' | 'hf_disk' | 'hf_stream' for a supported input,
    else None."""
    if is_hf_name(path):
        return "hf_stream"
    if is_dataset_dir(path):
        return "hf_disk"
    for fmt, sfx in (("jsonl", JSONL_SUFFIXES), ("warc", WARC_SUFFIXES), ("parquet", PARQUET_SUFFIXES),
                     ("text", TEXT_SUFFIXES)):
        if _has_suffix(path, sfx):
            return fmt
    return None


def _walk(folder: Path, suffixes) -> list[str]:
    """Supported files under ``folder`` and, as one input each, the save_to_disk folders in it."""
    found: list[str] = []
    for root, dirs, names in os.walk(folder):
        root_p = Path(root)
        if is_dataset_dir(root_p):
            found.append(str(root_p))
            dirs[:] = []  # its arrow files and split folders are that one input
            continue
        found.extend(str(root_p / n) for n in names if _has_suffix(n, suffixes))
    return sorted(found)


def expand_inputs(inputs, suffixes=JSONL_SUFFIXES) -> list[str]:
    """Files, folders (searched recursively) and ``hf:NAME``s → sorted list of inputs: files
    with a supported suffix, save_to_disk folders (one input each, also when found inside a
    folder) and the hf: names as given (in the order given, after the files).

    Raises InputError naming the first path that does not exist, or when nothing matched.
    Pass ``suffixes=ALL_SUFFIXES`` to accept every format this module reads.
    """
    files: list[str] = []
    names: list[str] = []
    for item in inputs:
        if is_hf_name(item):
            if not str(item)[len(HF_PREFIX):].strip():
                raise InputError(f"{item}: no data set name after 'hf:'; write e.g. hf:HuggingFaceFW/fineweb")
            names.append(str(item))
            continue
        p = Path(item)
        if p.is_dir():
            files.extend(_walk(p, suffixes))
        elif p.is_file():
            if not _has_suffix(str(p), suffixes):
                raise InputError(f"{p}: unsupported file type; expected one of {', '.join(suffixes)}")
            files.append(str(p))
        else:
            raise InputError(f"{p}: no such file or folder; check the --input path")
    if not files and not names:
        raise InputError(f"no input files with suffix {', '.join(suffixes)} (nor save_to_disk folders) under "
                         f"{', '.join(map(str, inputs))}")
    return files + names


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
    return open(path, encoding="utf-8")


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

def iter_jsonl(path: str, text_key: str = "text", id_key: str | None = None, strict: bool = True,
               errors: dict | None = None, max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES) -> Iterator[dict]:
    """Yield {'id', 'text', 'source'} for each JSON line of ``path``.

    strict=True raises InputError naming file and line on a malformed line, invalid UTF-8,
    a missing text field or a missing named ``id_key`` (None: the ``id`` field when there is
    one, else ``<file name>:<line>``); strict=False counts the problem in ``errors`` (keys
    ``malformed_json``, ``invalid_utf8``, ``missing_text``, ``missing_id``, ``oversized``,
    ``truncated``), logs a warning and goes on.
    """
    base = os.path.basename(path)
    need_id = id_key is not None
    id_key = id_key or DEFAULT_ID_KEY
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
                    msg = (f"{path}:{lineno}: no string field '{text_key}'; every line needs one "
                           f"(--text-key names the text field)")
                    _problem(errors, "missing_text", msg, strict)
                    continue
                doc_id = obj.get(id_key)
                if doc_id is None and need_id:
                    msg = (f"{path}:{lineno}: no field '{id_key}' (--id-key); every line needs one, "
                           f"or leave --id-key out")
                    _problem(errors, "missing_id", msg, strict)
                    continue
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
                if ("application/http" not in ctype and "msgtype=response" not in ctype
                        and not block.startswith(b"HTTP/")):
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

def _is_text_type(t) -> bool:
    import pyarrow as pa

    return pa.types.is_string(t) or pa.types.is_large_string(t) or (
        hasattr(pa.types, "is_string_view") and pa.types.is_string_view(t))


def iter_parquet(path: str, text_key: str = "text", id_key: str | None = None, strict: bool = True,
                 errors: dict | None = None, batch_rows: int = 1024) -> Iterator[dict]:
    """Yield documents from a Parquet file, one batch of rows (within a row group) at a time:
    column ``text_key`` (a string column) and ``id_key`` (None: ``id`` when present)."""
    import pyarrow.parquet as pq

    base = os.path.basename(path)
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for corrupt files
        msg = f"{path}: not a readable Parquet file ({e})"
        _problem(errors, "unreadable_file", msg, strict)
        return
    schema = pf.schema_arrow
    cols = _columns(path, schema.names, {n: schema.field(n).type for n in schema.names}, text_key, id_key,
                    strict, errors)
    if cols is None:
        return
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=batch_rows, columns=cols):
            texts = batch.column(0).to_pylist()
            ids = batch.column(1).to_pylist() if len(cols) > 1 else None
            yield from _rows(path, base, texts, ids, row, text_key, strict, errors)
            row += len(texts)
    except InputError:
        raise
    except Exception as e:
        msg = f"{path}: corrupt Parquet after {row} rows ({type(e).__name__}: {e}); earlier rows kept"
        _problem(errors, "truncated", msg, strict)


def _columns(name: str, names: list[str], types: dict, text_key: str, id_key: str | None, strict: bool,
             errors: dict | None) -> list[str] | None:
    """[text column, id column (if any)] of a table with columns ``names`` (``types``: arrow
    types or datasets features, None when unknown); None after a problem when not strict."""
    if text_key not in names:
        _problem(errors, "missing_text", f"{name}: no column '{text_key}' (columns: {', '.join(names)}); "
                                         f"name the text column with --text-key", strict)
        return None
    t = types.get(text_key)
    if t is not None and not _text_type(t):
        _problem(errors, "missing_text", f"{name}: column '{text_key}' holds {t}, not text; name a string column "
                                         f"with --text-key", strict)
        return None
    if id_key is not None and id_key not in names:
        _problem(errors, "missing_id", f"{name}: no column '{id_key}' (--id-key; columns: {', '.join(names)}); "
                                       f"name an existing column or leave --id-key out", strict)
        return None
    key = id_key or DEFAULT_ID_KEY
    return [text_key] + ([key] if key in names else [])


def _text_type(t) -> bool:
    """True for an arrow string type or a datasets Value('string' / 'large_string')."""
    dtype = getattr(t, "dtype", None)
    if isinstance(dtype, str):  # datasets.Value
        return dtype in ("string", "large_string", "string_view")
    try:
        return _is_text_type(t)
    except TypeError:
        return False


def _rows(source: str, base: str, texts: list, ids: list | None, offset: int, text_key: str, strict: bool,
          errors: dict | None, label: str | None = None) -> Iterator[dict]:
    """Documents of one batch of rows (row numbers from offset + 1); ``label`` names the input
    in messages (default: ``source``)."""
    if ids is None:
        ids = [None] * len(texts)
    for k, (t, i) in enumerate(zip(texts, ids), offset + 1):
        if not isinstance(t, str):
            what = "empty" if t is None else type(t).__name__
            _problem(errors, "missing_text", f"{label or source}: row {k}: '{text_key}' is {what}, not text; fix "
                                             f"that row or name another column with --text-key", strict)
            continue
        yield {"id": str(i) if i is not None else f"{base}:{k}", "text": t, "source": source}


# ----------------------------------------------------------------------------- Hugging Face datasets

def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def _pick_split(name: str, splits: list[str], hf_split: str | None) -> str:
    if hf_split is not None:
        if hf_split not in splits:
            raise InputError(f"{name}: no split '{hf_split}' (splits: {', '.join(splits)}); pass --hf-split with "
                             f"one of them")
        return hf_split
    if len(splits) != 1:
        raise InputError(f"{name}: has splits {', '.join(splits)}; pick one with --hf-split")
    return splits[0]


@functools.lru_cache(maxsize=16)
def _open_disk(path: str, hf_split: str | None):
    """(Dataset, split or None) of a save_to_disk folder; InputError when it cannot be opened."""
    import datasets

    try:
        obj = datasets.load_from_disk(path)
    except Exception as e:
        raise InputError(f"{path}: cannot open as a datasets save_to_disk folder ({_first_line(e)}); save it again "
                         f"with Dataset.save_to_disk(PATH)") from None
    if isinstance(obj, datasets.DatasetDict):
        split = _pick_split(path, list(obj), hf_split)
        return obj[split], split
    return obj, None


@functools.lru_cache(maxsize=16)
def _open_stream(name: str, hf_config: str | None, hf_split: str | None):
    """(IterableDataset, split) streamed by datasets.load_dataset; InputError when it cannot be opened."""
    import datasets

    label = f"{HF_PREFIX}{name}"
    try:
        obj = datasets.load_dataset(name, hf_config, split=hf_split, streaming=True)
    except Exception as e:  # DatasetNotFoundError, ValueError (bad config/split), ConnectionError, ...
        raise InputError(f"{label}: cannot open with datasets.load_dataset(streaming=True) ({_first_line(e)}); "
                         f"check the name, --hf-config and --hf-split (and that the Hub or its cache is "
                         f"reachable)") from None
    if isinstance(obj, datasets.IterableDatasetDict):
        split = _pick_split(label, list(obj), hf_split)
        return obj[split], split
    return obj, hf_split


def _hf_dataset(path: str, hf_config: str | None, hf_split: str | None):
    if is_hf_name(path):
        return _open_stream(path[len(HF_PREFIX):], hf_config, hf_split)
    return _open_disk(path, hf_split)


def iter_hf(path: str, text_key: str = "text", id_key: str | None = None, hf_config: str | None = None,
            hf_split: str | None = None, strict: bool = True, errors: dict | None = None,
            batch_rows: int = 1024, hf_shard: tuple[int, int] | None = None) -> Iterator[dict]:
    """Documents of a save_to_disk folder (memory-mapped) or of ``hf:NAME`` (streamed), one
    batch of rows at a time; the columns are checked before the first row is read (for a
    streamed data set whose features are unknown: on every row). ``hf_shard=(i, n)``: only
    part i of n (datasets.distributed.split_dataset_by_node: whole source files per part when
    their count divides by n, else every n-th row), so n tasks read the data set once together."""
    ds, split = _hf_dataset(path, hf_config, hf_split)
    if hf_shard is not None and hf_shard[1] > 1:
        from datasets.distributed import split_dataset_by_node

        ds = split_dataset_by_node(ds, rank=hf_shard[0], world_size=hf_shard[1])
    label = path if split is None else f"{path}[{split}]"
    base = os.path.basename(os.path.normpath(path)) if not is_hf_name(path) else path
    feats = ds.features
    names = list(feats) if feats is not None else None
    if names is not None:
        cols = _columns(label, names, dict(feats), text_key, id_key, strict, errors)
        if cols is None:
            return
    else:  # a streamed data set of unknown columns: take each row's
        cols = None
    row = 0
    try:
        if cols is not None:
            for batch in ds.select_columns(cols).iter(batch_size=batch_rows):
                texts = batch[cols[0]]
                ids = batch[cols[1]] if len(cols) > 1 else None
                yield from _rows(path, base, texts, ids, row, text_key, strict, errors, label)
                row += len(texts)
        else:
            key = id_key or DEFAULT_ID_KEY
            for rec in ds:
                row += 1
                if text_key not in rec or (id_key is not None and id_key not in rec):
                    _columns(label, list(rec), {}, text_key, id_key, strict, errors)
                    continue
                yield from _rows(path, base, [rec[text_key]], [rec.get(key)], row - 1, text_key, strict, errors, label)
    except InputError:
        raise
    except Exception as e:
        _problem(errors, "truncated", f"{label}: reading failed after {row} rows ({type(e).__name__}: "
                                      f"{_first_line(e)}); earlier rows kept", strict)


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
                   id_key: str | None = None, hf_config: str | None = None,
                   hf_split: str | None = None, hf_shard: tuple[int, int] | None = None) -> Iterator[dict]:
    """Documents of one input (a file, a save_to_disk folder or hf:NAME; see the module doc).
    ``text_key``/``id_key`` apply to JSONL, Parquet and datasets; ``hf_config`` to hf:NAME;
    ``hf_split`` to hf:NAME and DatasetDict folders; ``hf_shard=(i, n)`` to both datasets kinds
    (part i of n, see `iter_hf`)."""
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
    if fmt in ("hf_disk", "hf_stream"):
        return iter_hf(path, text_key=text_key, id_key=id_key, hf_config=hf_config, hf_split=hf_split,
                       strict=strict, errors=errors, hf_shard=hf_shard)
    raise InputError(f"{path}: unsupported input; expected a file ending in one of {', '.join(ALL_SUFFIXES)}, a "
                     f"datasets save_to_disk folder, or hf:NAME")


def check_input(path: str, text_key: str = "text", id_key: str | None = None, hf_config: str | None = None,
                hf_split: str | None = None, hf_shard: tuple[int, int] | None = None) -> None:
    """Open one input and check that its columns are there and hold text, reading at most its
    first document: InputError (one line naming the input and the fix) otherwise. Scripts call
    it on every input before they write anything."""
    fmt = file_format(path)
    if fmt in ("warc", "text"):
        return
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            schema = pq.read_schema(path)
        except Exception as e:
            raise InputError(f"{path}: not a readable Parquet file ({_first_line(e)})") from None
        _columns(path, schema.names, {n: schema.field(n).type for n in schema.names}, text_key, id_key, True, None)
        return
    docs = iter_documents(path, text_key=text_key, id_key=id_key, hf_config=hf_config, hf_split=hf_split,
                          hf_shard=hf_shard)
    try:
        next(iter(docs), None)
    finally:
        close = getattr(docs, "close", None)
        if close is not None:
            close()


DEFAULT_TEXT_KEY = "text"
READER_OPTIONS = ("text_key", "id_key", "hf_config", "hf_split")


def add_input_args(parser):
    """Add --text-key, --id-key, --hf-config, --hf-split to an argparse parser (every data_prep
    script declares them through this); `reader_options(args)` turns them into the keyword
    arguments of `iter_documents` / `check_input`."""
    g = parser.add_argument_group("input columns and Hugging Face data sets")
    g.add_argument("--text-key", default=DEFAULT_TEXT_KEY,
                   help="the text field/column of JSONL, Parquet and datasets inputs (default: text)")
    g.add_argument("--id-key", default=None,
                   help="the id field/column (default: 'id' when present, else <name>:<row>); a named one must exist")
    g.add_argument("--hf-config", default=None,
                   help="configuration of hf:NAME inputs (datasets.load_dataset's name, e.g. sample-10BT)")
    g.add_argument("--hf-split", default=None,
                   help="split of hf:NAME inputs and DatasetDict folders (default: the only split; "
                        "required when there are several)")
    return g


def reader_options(args) -> dict:
    """{'text_key', 'id_key', 'hf_config', 'hf_split'} from parsed `add_input_args` flags:
    the keyword arguments of `iter_documents` and `check_input`."""
    return {k: getattr(args, k, None) for k in READER_OPTIONS} | {"text_key": getattr(args, "text_key", None)
                                                                   or DEFAULT_TEXT_KEY}
