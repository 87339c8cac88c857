"""The cleaning pipeline's typed configuration: defaults, YAML loading, validation, hashes.

The defaults are FineWeb's recipe (Penedo et al. 2024): language ID (English, 0.65),
Gopher repetition, Gopher quality, C4 without its terminal-punctuation line rule, FineWeb's
own rules, then MinHash dedup (5-grams, 14x8) and PII masking. ``configs/data/clean_default.yaml``
spells the same values out; a user YAML only needs the keys it changes. An unknown key or a
value of the wrong type is a one-line `llmtrain.config.ConfigError` naming the file and key.

The sections are the fixed ones below (read, html, unicode, dedup, pii, output) plus one per
registered filter (steps.FILTERS, in pipeline order), each typed by the filter's own
``Config`` dataclass: a new filter brings its section with it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, make_dataclass
from typing import Optional

from llmtrain.core.errors import ConfigError
from llmtrain.core.yamlconf import apply_updates, read_yaml

from . import filters as _filters  # noqa: F401  (registers the filters)
from .steps import FILTERS


@dataclass
class ReadConfig:
    text_key: str = "text"               # JSONL / Parquet / datasets field holding the text (--text-key)
    id_key: Optional[str] = None         # ... holding the id; null: `id` when present, else <name>:<row> (--id-key)
    hf_config: Optional[str] = None      # configuration of hf:NAME inputs (--hf-config)
    hf_split: Optional[str] = None       # split of hf:NAME inputs and DatasetDict folders (--hf-split)
    max_doc_bytes: int = 20_000_000      # larger documents are counted as `oversized` and skipped
    max_control_char_ratio: float = 0.01  # more control characters (or any NUL): `binary`, skipped


@dataclass
class HtmlConfig:
    enabled: bool = True
    extractor: str = "resiliparse"  # or trafilatura
    main_content: bool = True


@dataclass
class UnicodeConfig:
    fix: bool = True
    normalization: Optional[str] = "NFC"  # NFC | NFKC | NFD | NFKD | null


@dataclass
class DedupConfig:
    exact: bool = True
    near: bool = True
    ngram: int = 5
    bands: int = 14
    rows: int = 8
    seed: int = 1


@dataclass
class PiiConfig:
    enabled: bool = True
    email: bool = True
    ip: bool = True
    email_replacement: str = "email@example.com"
    ipv4_replacement: str = "192.0.2.1"
    ipv6_replacement: str = "2001:db8::1"


@dataclass
class OutputConfig:
    removed_samples: int = 100  # documents kept per stage under removed/<stage>.jsonl
    zstd_level: int = 3


class _CleanConfigBase:
    def validate(self, where: str) -> _CleanConfigBase:
        if self.html.extractor not in ("resiliparse", "trafilatura"):
            raise ConfigError(f"{where}: html.extractor={self.html.extractor!r} is not one of resiliparse, trafilatura")
        if self.unicode.normalization not in (None, "NFC", "NFKC", "NFD", "NFKD"):
            raise ConfigError(f"{where}: unicode.normalization={self.unicode.normalization!r} is not one of "
                              "NFC, NFKC, NFD, NFKD, null")
        for k in ("ngram", "bands", "rows"):
            if getattr(self.dedup, k) < 1:
                raise ConfigError(f"{where}: dedup.{k} must be >= 1 (got {getattr(self.dedup, k)})")
        if self.read.max_doc_bytes < 1:
            raise ConfigError(f"{where}: read.max_doc_bytes must be >= 1")
        if self.output.removed_samples < 0:
            raise ConfigError(f"{where}: output.removed_samples must be >= 0")
        if not 1 <= self.output.zstd_level <= 22:
            raise ConfigError(f"{where}: output.zstd_level must be in [1, 22] (got {self.output.zstd_level})")
        for name in FILTERS:
            sec = getattr(self, name)
            if hasattr(sec, "validate"):
                sec.validate(where, name)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def reader_options(self) -> dict:
        """The keyword arguments of readers.iter_documents / check_input."""
        r = self.read
        return {"text_key": r.text_key, "id_key": r.id_key, "hf_config": r.hf_config, "hf_split": r.hf_split}

    def filter_configs(self) -> list[tuple[str, object]]:
        """(name, config) of every registered filter, in pipeline order."""
        return [(name, getattr(self, name)) for name in FILTERS]


def _sections():
    secs = [("read", ReadConfig), ("html", HtmlConfig), ("unicode", UnicodeConfig)]
    secs += [(name, cls.Config) for name, cls in FILTERS.items()]
    secs += [("dedup", DedupConfig), ("pii", PiiConfig), ("output", OutputConfig)]
    return [(name, typ, field(default_factory=typ)) for name, typ in secs]


CleanConfig = make_dataclass("CleanConfig", _sections(), bases=(_CleanConfigBase,))
CleanConfig.__doc__ = "Every section of the cleaning YAML, typed."
CleanConfig.__module__ = __name__

# The filter sections, in the order they run.
FILTER_ORDER = tuple(FILTERS)


def load_config(path: str | None = None, overrides: dict | None = None) -> CleanConfig:
    """Defaults, then the YAML file at ``path`` (if any), then ``overrides`` (same shape)."""
    from pathlib import Path

    cfg = CleanConfig()
    where = "defaults"
    if path:
        where = str(path)
        user = read_yaml(Path(path), "cleaning config", "pass an existing YAML with --config")
        if not isinstance(user, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections "
                              f"({', '.join(f.name for f in dataclasses.fields(cfg))})")
        apply_updates(cfg, user, "", str(path))
    if overrides:
        apply_updates(cfg, overrides, "", "command line")
    return cfg.validate(where)


# ----------------------------------------------------------------------------- hashes
# Each stage's hash covers every setting that changes what that stage writes, and the hash
# of the stage before it; a finished piece of work whose marker holds another hash is redone.

def _canonical(obj):
    """Whole floats as ints, so `3` in a YAML and the default `3.0` hash alike."""
    if isinstance(obj, float) and obj.is_integer():
        return int(obj)
    if isinstance(obj, dict):
        return {k: _canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    return obj


def _hash(obj) -> str:
    return hashlib.sha1(json.dumps(_canonical(obj), sort_keys=True).encode()).hexdigest()[:16]


def filter_hash(cfg: CleanConfig) -> str:
    """Filter pass: reader, extraction, unicode repair, the filters, the dedup keys it
    computes (shingles, bands, rows, seed) and how many removed documents it samples."""
    d = cfg.to_dict()
    relevant = {k: v for k, v in d.items() if k not in ("output", "pii", "dedup")}
    relevant["dedup_keys"] = {k: d["dedup"][k] for k in ("near", "ngram", "bands", "rows", "seed")}
    relevant["removed_samples"] = cfg.output.removed_samples
    return _hash(relevant)


def dedup_hash(cfg: CleanConfig) -> str:
    """Buckets and clusters: the filter pass's hash plus the dedup settings."""
    return _hash([filter_hash(cfg), dataclasses.asdict(cfg.dedup)])


def final_hash(cfg: CleanConfig) -> str:
    """The final write: the duplicates removed, PII masking, output settings."""
    return _hash([dedup_hash(cfg), dataclasses.asdict(cfg.pii), dataclasses.asdict(cfg.output)])


config_hash = filter_hash
