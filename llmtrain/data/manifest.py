"""The manifest beside a tokenised dataset (PREFIX_manifest.json): one type for its writer
(data_prep/tokenize_corpus.py), the task merge (data_prep/merge_manifests.py), the trainer
(llmtrain/data/dataset.py) and the evaluation (llmtrain/eval/loss.py).

    {"format": "megatron-indexed-dataset", "format_version": 2, "prefix": ...,
     "splits": {"train": {"documents", "tokens", "shards": [{"prefix", "documents", "tokens"}]},
                "valid": {...}},
     "documents", "tokens", "dtype", "vocab_size", "eod_token", "eod_token_id",
     "tokenizer": {"path", "sha256"}, "inputs": [...], "options": {...}, ...}

Shard prefixes are relative to the manifest's folder (``PREFIX_train`` or ``PREFIX_train_00000``
for a single run; ``PREFIX.task-00001_train`` for the tasks of a merged one). Manifests of format
1 (one file per split, no ``shards``) are read too: their split is ``PREFIX_<split>``.

`Manifest.read` validates what it reads and names the file and key of a problem in one line
(`ManifestError`, a DataFormatError); `Manifest.write` writes atomically.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmtrain.data.indexed import DataFormatError

FORMAT = "megatron-indexed-dataset"
FORMAT_VERSION = 2  # 2: splits.<split>.shards
SPLITS = ("train", "valid")
FIX = "re-create it with python data_prep/tokenize_corpus.py"
# Keys the dataclass fields hold; anything else in the file is kept in `extra` as it is.
_KNOWN = ("format", "format_version", "created", "prefix", "splits", "documents", "tokens", "dtype", "vocab_size",
          "eod_token", "eod_token_id", "tokenizer", "inputs", "options")


class ManifestError(DataFormatError):
    """A manifest that is missing or malformed: one line naming the file, the key and the fix."""


def manifest_file(prefix_or_path: str | os.PathLike) -> Path:
    """PREFIX → PREFIX_manifest.json; a path ending in .json is returned as is."""
    s = str(prefix_or_path)
    return Path(s) if s.endswith(".json") else Path(f"{s}_manifest.json")


@dataclass
class Shard:
    prefix: str  # relative to the manifest's folder (absolute paths are kept as they are)
    documents: int
    tokens: int

    def to_dict(self) -> dict:
        return {"prefix": self.prefix, "documents": self.documents, "tokens": self.tokens}


@dataclass
class Split:
    shards: list[Shard] = field(default_factory=list)

    @property
    def documents(self) -> int:
        return sum(s.documents for s in self.shards)

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.shards)

    def to_dict(self) -> dict:
        return {"documents": self.documents, "tokens": self.tokens, "shards": [s.to_dict() for s in self.shards]}


@dataclass
class Manifest:
    prefix: str
    splits: dict[str, Split]
    dtype: str
    vocab_size: int | None
    eod_token: str | None
    eod_token_id: int | None
    tokenizer_path: str | None
    tokenizer_sha256: str | None
    inputs: list[dict] = field(default_factory=list)
    options: dict = field(default_factory=dict)
    created: str = ""
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)  # command, timing, task, merged_from, ...
    path: Path | None = None  # the file it was read from / written to (not stored in it)

    # ---- counts
    @property
    def documents(self) -> int:
        return sum(s.documents for s in self.splits.values())

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.splits.values())

    @property
    def folder(self) -> Path:
        if self.path is not None:
            return self.path.parent
        return Path(f"{self.prefix}_manifest.json").parent

    def shard_prefixes(self, split: str) -> list[str]:
        """The .bin/.idx prefixes of ``split`` as paths (relative ones resolved against the
        manifest's folder); [] when there is no such split."""
        sp = self.splits.get(split)
        if sp is None:
            return []
        return [str(self.folder / s.prefix) for s in sp.shards]

    def missing_shards(self) -> list[str]:
        """Shard files that are absent or whose .bin is not the size the manifest says (empty: all there)."""
        item = np.dtype(self.dtype).itemsize
        bad = []
        for split in self.splits:
            for sh, p in zip(self.splits[split].shards, self.shard_prefixes(split)):
                if not os.path.isfile(f"{p}.idx"):
                    bad.append(f"{p}.idx")
                elif not os.path.isfile(f"{p}.bin") or os.path.getsize(f"{p}.bin") != sh.tokens * item:
                    bad.append(f"{p}.bin")
        return bad

    # ---- (de)serialisation
    def to_dict(self) -> dict:
        d = {
            "format": FORMAT,
            "format_version": self.format_version,
            "created": self.created or _now(),
            "prefix": self.prefix,
            "splits": {k: self._split_dict(v) for k, v in self.splits.items()},
            "documents": self.documents,
            "tokens": self.tokens,
            "dtype": self.dtype,
            "vocab_size": self.vocab_size,
            "eod_token": self.eod_token,
            "eod_token_id": self.eod_token_id,
            "tokenizer": {"path": self.tokenizer_path, "sha256": self.tokenizer_sha256},
            "inputs": self.inputs,
            "options": self.options,
        }
        d.update(self.extra)
        return d

    def _split_dict(self, split: Split) -> dict:
        d = split.to_dict()
        if len(split.shards) == 1 and not os.path.isabs(split.shards[0].prefix):
            # the one file as the dataset's prefix names it (the key format-1 readers look for)
            d["prefix"] = os.path.join(os.path.dirname(self.prefix), split.shards[0].prefix)
        return d

    @classmethod
    def from_dict(cls, obj, path: str | os.PathLike | None = None, prefix: str | None = None) -> Manifest:
        """Validate a parsed manifest; ``path`` (the file) names it in errors and anchors
        relative shard prefixes; ``prefix`` is the dataset prefix (default: from the path)."""
        where = str(path) if path is not None else "manifest"
        if not isinstance(obj, dict):
            raise ManifestError(f"{where}: expected a JSON object; {FIX}")
        if prefix is None:
            prefix = str(path)[: -len("_manifest.json")] if path is not None and str(path).endswith(
                "_manifest.json") else str(obj.get("prefix", ""))
        splits_obj = obj.get("splits")
        if not isinstance(splits_obj, dict) or not splits_obj:
            raise ManifestError(f"{where}: no 'splits'; not a tokenize_corpus manifest ({FIX})")
        splits = {}
        for name, sp in splits_obj.items():
            key = f"splits.{name}"
            if not isinstance(sp, dict):
                raise ManifestError(f"{where}: {key} is not an object; {FIX}")
            shards_obj = sp.get("shards")
            if shards_obj is None:  # format 1: one file per split, beside the manifest
                one = os.path.basename(str(sp.get("prefix") or f"{prefix}_{name}"))
                shards_obj = [{"prefix": one, "documents": sp.get("documents", 0), "tokens": sp.get("tokens", 0)}]
            if not isinstance(shards_obj, list):
                raise ManifestError(f"{where}: {key}.shards is not a list; {FIX}")
            shards = []
            for i, sh in enumerate(shards_obj):
                if isinstance(sh, str):
                    sh = {"prefix": sh, "documents": 0, "tokens": 0}
                if not isinstance(sh, dict):
                    raise ManifestError(f"{where}: {key}.shards[{i}] is not an object; {FIX}")
                for k, typ in (("prefix", str), ("documents", int), ("tokens", int)):
                    if not isinstance(sh.get(k), typ) or isinstance(sh.get(k), bool):
                        raise ManifestError(f"{where}: {key}.shards[{i}].{k} is missing or not a "
                                            f"{typ.__name__}; {FIX}")
                shards.append(Shard(sh["prefix"], sh["documents"], sh["tokens"]))
            splits[name] = Split(shards)
        dtype = obj.get("dtype", "uint16")
        try:
            np.dtype(dtype)
        except TypeError:
            raise ManifestError(f"{where}: dtype {dtype!r} is not a numpy dtype; {FIX}") from None
        tok = obj.get("tokenizer")
        if isinstance(tok, dict):
            tok_path, tok_sha = tok.get("path"), tok.get("sha256")
        else:  # format 0: a path and a separate sha256
            tok_path, tok_sha = tok, obj.get("tokenizer_sha256")
        eod_id = obj.get("eod_token_id")
        if eod_id is not None and (not isinstance(eod_id, int) or isinstance(eod_id, bool)):
            raise ManifestError(f"{where}: eod_token_id {eod_id!r} is not an integer; {FIX}")
        return cls(
            prefix=prefix, splits=splits, dtype=str(np.dtype(dtype)), vocab_size=obj.get("vocab_size"),
            eod_token=obj.get("eod_token"), eod_token_id=eod_id, tokenizer_path=tok_path, tokenizer_sha256=tok_sha,
            inputs=list(obj.get("inputs") or []), options=dict(obj.get("options") or {}),
            created=obj.get("created", ""), format_version=obj.get("format_version", 1),
            extra={k: v for k, v in obj.items() if k not in _KNOWN},
            path=Path(path) if path is not None else None,
        )

    @classmethod
    def read(cls, prefix_or_path: str | os.PathLike) -> Manifest:
        """Read and validate PREFIX_manifest.json (or the .json path given)."""
        path = manifest_file(prefix_or_path)
        if not path.is_file():
            pre = str(path)[: -len("_manifest.json")]
            raise ManifestError(f"{path}: manifest not found; create the dataset with python "
                                f"data_prep/tokenize_corpus.py --output-prefix {pre} ...")
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ManifestError(f"{path}:{e.lineno}: malformed JSON ({e.msg}); {FIX}") from None
        return cls.from_dict(obj, path)

    def write(self, prefix: str | os.PathLike | None = None) -> Path:
        """Write PREFIX_manifest.json atomically (PREFIX: ``self.prefix`` unless given); returns its path."""
        from llmtrain.core.files import atomic_write_json

        path = manifest_file(prefix if prefix is not None else self.prefix)
        atomic_write_json(path, self.to_dict())
        self.path = path
        return path


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
