"""Streaming readers of every input the data tools take, shared by every data_prep stage.

A reader is a class per format (base.py holds what they share, the bad-input handling once);
an `Adapter` maps a record's fields to a `Document`'s text, id and metadata, so a reader knows
formats and the adapter knows fields. Inputs are read record by record / row batch by row
batch, never whole into memory.

==================  ===========================================================  ==============
format              inputs                                                       reader
==================  ===========================================================  ==============
JSONL               ``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst``, ``.json.gz/.zst``    `JsonlReader`
WARC / WET          ``.warc``, ``.warc.gz``, ``.wet``, ``.wet.gz`` (HTML pages)      `WarcReader`
Parquet             ``.parquet``                                                 `ParquetReader`
plain text          ``.txt``, ``.txt.gz``, ``.txt.zst``: one document per file       `TextReader`
datasets            ``save_to_disk`` folders, ``hf:NAME`` (streamed)              `HfReader`
==================  ===========================================================  ==============

``--text-key`` / ``--id-key`` name the text and id fields of JSONL, Parquet and datasets inputs
(defaults ``text`` and ``id``; a missing ``id`` is fine with the default, ids are then
``<name>:<row>``, but a named ``--id-key`` must exist). Every script declares these flags with
`add_input_args`; `expand_inputs` lists the inputs; `check_input` opens one and checks its
fields (call it on every input before writing anything); `read_documents` yields one input's
documents (`iter_documents`: as plain dicts).

Bad input: with ``strict=True`` (the default, used by the tokenizer scripts) the first
problem raises `InputError` naming file and line. With ``strict=False`` (the cleaning
pipeline) each problem is counted in the ``errors`` dict passed in, a warning naming the file
is logged, and reading goes on; a truncated compressed file or WARC keeps every complete
document before the cut.
"""
from .base import (DEFAULT_ID_KEY, DEFAULT_MAX_DOC_BYTES, DEFAULT_TEXT_KEY, Adapter, Field, InputError, Reader,
                   open_binary, open_text)
from .cli import READER_OPTIONS, add_input_args, reader_options
from .hf import HF_PREFIX, HfReader, is_dataset_dir, is_hf_input, is_hf_name
from .inputs import (ALL_SUFFIXES, JSONL_SUFFIXES, PARQUET_SUFFIXES, TEXT_SUFFIXES, TOKENIZE_SUFFIXES, WARC_SUFFIXES,
                     check_input, expand_inputs, file_format, input_bytes, iter_documents, read_documents, reader_for)
from .jsonl import JsonlReader
from .parquet import ParquetReader
from .text import TextReader
from .warc import WarcReader, decode_html

__all__ = ["ALL_SUFFIXES", "DEFAULT_ID_KEY", "DEFAULT_MAX_DOC_BYTES", "DEFAULT_TEXT_KEY", "HF_PREFIX",
           "JSONL_SUFFIXES", "PARQUET_SUFFIXES", "READER_OPTIONS", "TEXT_SUFFIXES", "TOKENIZE_SUFFIXES",
           "WARC_SUFFIXES", "Adapter", "Field", "HfReader", "InputError", "JsonlReader", "ParquetReader", "Reader",
           "TextReader", "WarcReader", "add_input_args", "check_input", "decode_html", "expand_inputs",
           "file_format", "input_bytes", "is_dataset_dir", "is_hf_input", "is_hf_name", "iter_documents",
           "open_binary", "open_text", "read_documents", "reader_for", "reader_options"]
