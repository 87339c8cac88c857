"""Hugging Face ``datasets``: a folder written by ``Dataset.save_to_disk`` (it holds
``state.json`` and ``dataset_info.json``) or ``DatasetDict.save_to_disk`` (``dataset_dict.json``;
``hf_split`` picks the split when there are several), read memory-mapped one batch of rows at a
time; and ``hf:NAME``, streamed through ``datasets.load_dataset(NAME, hf_config, split=hf_split,
streaming=True)``: a Hub data set (``hf:HuggingFaceFW/fineweb``) or anything else load_dataset
takes by name, such as a local folder of Parquet/JSONL files (``hf:/data/my_corpus``)."""
from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from pathlib import Path

from llmtrain_prep.document import Document

from .base import InputError, first_line
from .table import TableReader

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
        raise InputError(f"{path}: cannot open as a datasets save_to_disk folder ({first_line(e)}); save it again "
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
        raise InputError(f"{label}: cannot open with datasets.load_dataset(streaming=True) ({first_line(e)}); "
                         f"check the name, --hf-config and --hf-split (and that the Hub or its cache is "
                         f"reachable)") from None
    if isinstance(obj, datasets.IterableDatasetDict):
        split = _pick_split(label, list(obj), hf_split)
        return obj[split], split
    return obj, hf_split


class HfReader(TableReader):
    """Rows of a data set; the columns are checked before the first row is read (for a
    streamed data set whose features are unknown: on every row). ``hf_shard=(i, n)``: only part
    i of n (datasets.distributed.split_dataset_by_node: whole source files per part when their
    count divides by n, else every n-th row), so n tasks read the data set once together."""

    cut_errors = (Exception,)

    def __init__(self, *args, hf_config: str | None = None, hf_split: str | None = None,
                 hf_shard: tuple[int, int] | None = None, batch_rows: int = 1024, **kwargs):
        super().__init__(*args, **kwargs)
        self.hf_config, self.hf_split, self.hf_shard, self.batch_rows = hf_config, hf_split, hf_shard, batch_rows
        self.row = 0
        self.label = ""

    def cut_message(self, path: str, e: BaseException) -> str:
        return (f"{self.label}: reading failed after {self.row} rows ({type(e).__name__}: {first_line(e)}); "
                f"earlier rows kept")

    def dataset(self, path: str):
        """(the data set, or this task's part of it; its split or None)."""
        if is_hf_name(path):
            ds, split = _open_stream(path[len(HF_PREFIX):], self.hf_config, self.hf_split)
        else:
            ds, split = _open_disk(path, self.hf_split)
        if self.hf_shard is not None and self.hf_shard[1] > 1:
            from datasets.distributed import split_dataset_by_node

            ds = split_dataset_by_node(ds, rank=self.hf_shard[0], world_size=self.hf_shard[1])
        return ds, split

    def read(self, path: str) -> Iterator[Document]:
        self._ds, split = self.dataset(path)  # InputError here, before the shared handling: not a cut-off read
        self.label = path if split is None else f"{path}[{split}]"
        self.row = 0
        yield from super().read(path)

    def _documents(self, path: str) -> Iterator[Document]:
        ds, label = self._ds, self.label
        base = path if is_hf_name(path) else os.path.basename(os.path.normpath(path))
        feats = ds.features
        if feats is not None:
            cols = self.columns(label, list(feats), dict(feats))
            if cols is None:
                return
            for batch in ds.select_columns(cols).iter(batch_size=self.batch_rows):
                n = len(batch[cols[0]])
                yield from self.rows(path, base, {c: batch[c] for c in cols}, self.row, label)
                self.row += n
            return
        a = self.adapter  # a streamed data set of unknown columns: take each row's
        for rec in ds:
            self.row += 1
            names = list(rec)
            if any(f.key not in rec for f in a.required) or (a.id_key is not None and a.id_key not in rec):
                self.columns(label, names, {})
                continue
            yield from self.rows(path, base, {c: [rec[c]] for c in a.columns(names)}, self.row - 1, label)
