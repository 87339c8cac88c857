"""The checked plan of a tokenising task (`Job`): its inputs, the tokenizer, the options and
the names it writes; `plan` makes it and checks every input before anything is written, and
`finished_task` finds a task that already finished with the same plan."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmtrain.core.errors import ConfigError
from llmtrain.core.files import sha256_file
from llmtrain.core.tasks import partition
from llmtrain.data.indexed import dtype_for_vocab
from llmtrain.data.manifest import Manifest, ManifestError, manifest_file
from llmtrain.tokenizer import EOD_TOKEN, tokenizer_file
from llmtrain.tokenizer import load_tokenizer as _load_tokenizer
from llmtrain_prep.readers import (TOKENIZE_SUFFIXES, InputError, check_input, expand_inputs, input_bytes,
                                   is_hf_input, is_hf_name)
from llmtrain_prep.runner import Task

from .options import READER_DEFAULTS, SPLITS, Options


def load_tokenizer(path: str, eod_token: str = EOD_TOKEN):
    """(tokenizer, eod id) through llmtrain.tokenizer.load_tokenizer (a tokenizer.json or a
    transformers folder); InputError naming the file and the fix when it is missing, unusable
    or lacks ``eod_token``."""
    try:
        return _load_tokenizer(path, eod_token)
    except ConfigError as e:
        raise InputError(str(e)) from None


def task_prefix(prefix: str, task_index: int) -> str:
    """The output prefix of one task: PREFIX.task-00003."""
    return f"{prefix}.task-{task_index:05d}"


def inputs_digest(files: list[str]) -> str:
    names = [f if is_hf_name(f) else os.path.abspath(f) for f in files]
    return hashlib.sha256("\n".join(names).encode("utf-8", "surrogatepass")).hexdigest()


@dataclass
class Job:
    """A checked tokenising task: what to read, with which tokenizer, into which files."""
    all_inputs: list[str]
    inputs: list[str]  # this task's
    tokenizer: object
    eod: int
    tokenizer_path: str  # the tokenizer.json file (also when a transformers folder was given)
    tokenizer_sha256: str
    vocab_size: int
    dtype: np.dtype
    base_prefix: str
    prefix: str  # base_prefix, or this task's PREFIX.task-NNNNN
    options: Options
    task_index: int = 0
    num_tasks: int = 1
    reader: dict = field(default_factory=dict)  # options.reader + this task's hf_shard
    per_input: list[dict] = field(default_factory=list)

    @property
    def tasked(self) -> bool:
        return self.num_tasks > 1

    @property
    def split_names(self) -> tuple[str, ...]:
        return SPLITS if self.options.valid_fraction > 0 else ("train",)

    def task_record(self) -> dict | None:
        if not self.tasked:
            return None
        return {"index": self.task_index, "count": self.num_tasks, "files": len(self.inputs),
                "inputs_total": len(self.all_inputs), "inputs_sha256": inputs_digest(self.all_inputs)}

    def encoder(self):
        """The tokenizer; loaded again in a process this job was sent to (it is not pickled)."""
        if self.tokenizer is None:
            self.tokenizer, _ = load_tokenizer(self.tokenizer_path, self.options.eod_token)
        return self.tokenizer

    def __getstate__(self):
        return {**self.__dict__, "tokenizer": None}


def plan(inputs, tokenizer_path: str, output_prefix: str, options: Options, task: Task) -> Job:
    """Check the options, the output prefix, the tokenizer (and its --eod-token) and every input
    of this task (opened, fields checked) before anything is written; InputError (one line)
    otherwise. Files are dealt out whole; a datasets input (hf:NAME, a save_to_disk folder) is
    read by every task, each its own part of it, so N tasks share one Hub data set."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    options.check()
    all_inputs = expand_inputs([str(i) for i in inputs], TOKENIZE_SUFFIXES)
    mine = (partition([p for p in all_inputs if not is_hf_input(p)], task.index, task.count)
            + [p for p in all_inputs if is_hf_input(p)])
    base_prefix = str(output_prefix)
    if Path(base_prefix).is_dir() or base_prefix.endswith(os.sep):
        raise InputError(f"--output-prefix {base_prefix} is a folder; give a prefix such as "
                         f"{os.path.join(base_prefix, 'corpus')}")
    tok, eod = load_tokenizer(tokenizer_path, options.eod_token)
    tok_file = str(tokenizer_file(tokenizer_path))
    reader = {**options.reader, "hf_shard": (task.index, task.count) if task.count > 1 else None}
    if options.masked and task.count > 1:
        raise InputError("--format prompt-response runs as one task; leave out --num-tasks")
    adapter = options.adapter()
    for path in mine:
        check_input(path, hf_config=reader["hf_config"], hf_split=reader["hf_split"], hf_shard=reader["hf_shard"],
                    adapter=adapter)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    return Job(all_inputs=all_inputs, inputs=mine, tokenizer=tok, eod=eod, tokenizer_path=os.path.abspath(tok_file),
               tokenizer_sha256=sha256_file(tok_file), vocab_size=vocab, dtype=np.dtype(dtype_for_vocab(vocab)),
               base_prefix=base_prefix,
               prefix=task_prefix(base_prefix, task.index) if task.count > 1 else base_prefix, options=options,
               task_index=task.index, num_tasks=task.count, reader=reader,
               per_input=[{"path": p if is_hf_name(p) else os.path.abspath(p), "bytes": input_bytes(p), "documents": 0}
                          for p in mine])


def _differences(old: Manifest, job: Job) -> list[str]:
    """What a finished task's manifest was made with differently from ``job`` (words for the user)."""
    o = old.options
    diff = []
    if old.tokenizer_sha256 != job.tokenizer_sha256:
        diff.append("tokenizer")
    if [(i.get("path"), i.get("bytes")) for i in old.inputs] != [(i["path"], i["bytes"]) for i in job.per_input]:
        diff.append("input files")
    for key, flag in (("valid_fraction", "--valid-fraction"), ("seed", "--seed")):
        if o.get(key) != getattr(job.options, key):
            diff.append(flag)
    if (old.eod_token or EOD_TOKEN) != job.options.eod_token:
        diff.append("--eod-token")
    for key, default in READER_DEFAULTS.items():
        if o.get(key, default) != job.options.reader.get(key):
            diff.append("--" + key.replace("_", "-"))
    if old.extra.get("task") != job.task_record():
        diff.append("input list or --num-tasks")
    return diff


def finished_task(job: Job) -> Manifest | None:
    """The manifest of this task when it already finished with the same inputs, tokenizer and
    options; None when there is none (or its shards are gone); InputError when it was made
    differently."""
    path = manifest_file(job.prefix)
    if not path.is_file():
        return None
    try:
        old = Manifest.read(path)
    except ManifestError:
        return None  # unreadable: do the task again (the manifest is replaced at the end)
    diff = _differences(old, job)
    if diff:
        raise InputError(f"{path}: a finished task made with another {', '.join(diff)} than this run; "
                         f"pass --overwrite to redo it (or delete its files)")
    return None if old.missing_shards() else old
