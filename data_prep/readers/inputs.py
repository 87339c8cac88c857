"""Which inputs there are and which reader reads each: `expand_inputs` turns files, folders and
``hf:`` names into the sorted list of inputs; `reader_for` picks the reader of one by its suffix
(or kind); `read_documents` / `check_input` read and check one."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from llmtrain_prep.document import Document

from .base import DEFAULT_MAX_DOC_BYTES, Adapter, InputError, Reader
from .hf import HF_PREFIX, HfReader, is_dataset_dir, is_hf_name
from .jsonl import JsonlReader
from .parquet import ParquetReader
from .text import TextReader
from .warc import WarcReader

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".json.zst")
WARC_SUFFIXES = (".warc", ".warc.gz", ".wet", ".wet.gz")
PARQUET_SUFFIXES = (".parquet",)
TEXT_SUFFIXES = (".txt", ".txt.gz", ".txt.zst")
ALL_SUFFIXES = JSONL_SUFFIXES + WARC_SUFFIXES + PARQUET_SUFFIXES + TEXT_SUFFIXES
# What the tokenizer scripts read: documents already cleaned (no WARC/HTML, no one-file-one-document text).
TOKENIZE_SUFFIXES = JSONL_SUFFIXES + PARQUET_SUFFIXES

# format -> (reader class, suffixes)
FORMATS = {"jsonl": (JsonlReader, JSONL_SUFFIXES), "warc": (WarcReader, WARC_SUFFIXES),
           "parquet": (ParquetReader, PARQUET_SUFFIXES), "text": (TextReader, TEXT_SUFFIXES)}


def _has_suffix(path: str, suffixes) -> bool:
    name = path.lower()
    return any(name.endswith(s) for s in suffixes)


def file_format(path: str) -> str | None:
    """'jsonl' | 'warc' | 'parquet' | 'text' | 'hf_disk' | 'hf_stream' for a supported input, else None."""
    if is_hf_name(path):
        return "hf_stream"
    if is_dataset_dir(path):
        return "hf_disk"
    for fmt, (_, sfx) in FORMATS.items():
        if _has_suffix(path, sfx):
            return fmt
    return None


def input_bytes(path: str) -> int:
    """On-disk bytes of one input (a save_to_disk folder: all its files; hf:NAME: 0, unknown)."""
    if is_hf_name(path):
        return 0
    p = Path(path)
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return p.stat().st_size


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
    Pass ``suffixes=ALL_SUFFIXES`` to accept every format this package reads.
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


def reader_for(path: str, adapter: Adapter | None = None, strict: bool = True, errors: dict | None = None,
               max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES, hf_config: str | None = None, hf_split: str | None = None,
               hf_shard: tuple[int, int] | None = None) -> Reader:
    """The reader of one input. ``hf_config`` applies to hf:NAME, ``hf_split`` to hf:NAME and
    DatasetDict folders, ``hf_shard=(i, n)`` to both kinds of datasets input (part i of n)."""
    fmt = file_format(path)
    if fmt in ("hf_disk", "hf_stream"):
        return HfReader(adapter, strict, errors, hf_config=hf_config, hf_split=hf_split, hf_shard=hf_shard)
    if fmt is None:
        raise InputError(f"{path}: unsupported input; expected a file ending in one of {', '.join(ALL_SUFFIXES)}, "
                         f"a datasets save_to_disk folder, or hf:NAME")
    return FORMATS[fmt][0](adapter, strict, errors, max_doc_bytes)


def read_documents(path: str, strict: bool = True, errors: dict | None = None,
                   max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES, text_key: str | None = None, id_key: str | None = None,
                   hf_config: str | None = None, hf_split: str | None = None,
                   hf_shard: tuple[int, int] | None = None, adapter: Adapter | None = None) -> Iterator[Document]:
    """The `Document`s of one input (a file, a save_to_disk folder or hf:NAME): through
    ``adapter``, or one made of ``text_key`` / ``id_key``."""
    adapter = adapter or Adapter.of(text_key, id_key)
    return reader_for(path, adapter, strict, errors, max_doc_bytes, hf_config, hf_split, hf_shard).read(path)


def iter_documents(path: str, strict: bool = True, errors: dict | None = None,
                   max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES, text_key: str | None = None, id_key: str | None = None,
                   hf_config: str | None = None, hf_split: str | None = None,
                   hf_shard: tuple[int, int] | None = None) -> Iterator[dict]:
    """`read_documents` as plain dicts ({"id", "text", "source"}, ``"html": True`` for an HTML
    page), for scripts."""
    for doc in read_documents(path, strict, errors, max_doc_bytes, text_key, id_key, hf_config, hf_split, hf_shard):
        yield doc.to_record()


def check_input(path: str, text_key: str | None = None, id_key: str | None = None, hf_config: str | None = None,
                hf_split: str | None = None, hf_shard: tuple[int, int] | None = None,
                adapter: Adapter | None = None) -> None:
    """Open one input and check that the adapter's fields are there and hold text, reading at
    most its first document: InputError (one line naming the input and the fix) otherwise.
    Scripts call it on every input before they write anything."""
    adapter = adapter or Adapter.of(text_key, id_key)
    reader_for(path, adapter, True, None, hf_config=hf_config, hf_split=hf_split, hf_shard=hf_shard).check(path)
