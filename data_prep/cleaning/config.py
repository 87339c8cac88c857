"""The cleaning pipeline's configuration: defaults, YAML loading, validation.

The defaults are FineWeb's recipe (Penedo et al. 2024): language ID (English, 0.65),
Gopher repetition, Gopher quality, C4 without its terminal-punctuation line rule, FineWeb's
own rules, then MinHash dedup (5-grams, 14x8) and PII masking. ``configs/data/clean_default.yaml``
spells the same values out; a user YAML only needs the keys it changes. An unknown key is
an error naming the file and the key.
"""
from __future__ import annotations

import copy
import hashlib
import json

DEFAULTS: dict = {
    "read": {
        "text_key": "text",            # JSONL / Parquet field holding the text
        "id_key": "id",                # JSONL / Parquet field holding the id
        "max_doc_bytes": 20_000_000,   # larger documents are counted as `oversized` and skipped
        "max_control_char_ratio": 0.01,  # more control characters (or any NUL): `binary`, skipped
    },
    "html": {"enabled": True, "extractor": "resiliparse", "main_content": True},
    "unicode": {"fix": True, "normalization": "NFC"},
    "language": {"enabled": True, "languages": ["en"], "threshold": 0.65},
    "gopher_repetition": {
        "enabled": True,
        "dup_line_frac": 0.3, "dup_para_frac": 0.3, "dup_line_char_frac": 0.2, "dup_para_char_frac": 0.2,
        "top_n_grams": [[2, 0.2], [3, 0.18], [4, 0.16]],
        "dup_n_grams": [[5, 0.15], [6, 0.14], [7, 0.13], [8, 0.12], [9, 0.11], [10, 0.10]],
    },
    "gopher_quality": {
        "enabled": True,
        "min_doc_words": 50, "max_doc_words": 100_000, "min_avg_word_length": 3, "max_avg_word_length": 10,
        "max_symbol_word_ratio": 0.1, "max_bullet_lines_ratio": 0.9, "max_ellipsis_lines_ratio": 0.3,
        "min_alpha_words_ratio": 0.8, "min_stop_words": 2,
        "stop_words": ["the", "be", "to", "of", "and", "that", "have", "with"],
    },
    "c4": {
        "enabled": True,
        "remove_citations": True,
        "filter_no_terminal_punct": False,  # C4's paper: true; FineWeb: false (it drops too much)
        "min_num_sentences": 5, "min_words_per_line": 3, "max_word_length": 1000,
        "filter_lorem_ipsum": True, "filter_javascript": True, "filter_curly_bracket": True, "filter_policy": True,
    },
    "fineweb_quality": {
        "enabled": True,
        "line_punct_thr": 0.12, "line_punct_exclude_zero": False, "short_line_thr": 0.67,
        "short_line_length": 30, "char_duplicates_ratio": 0.01, "new_line_ratio": 0.3,
    },
    "dedup": {
        "exact": True,
        "near": True,
        "ngram": 5, "bands": 14, "rows": 8, "seed": 1,
    },
    "pii": {
        "enabled": True, "email": True, "ip": True,
        "email_replacement": "email@example.com", "ipv4_replacement": "192.0.2.1", "ipv6_replacement": "2001:db8::1",
    },
    "output": {
        "removed_samples": 100,   # documents kept per filter under removed/<filter>.jsonl
        "zstd_level": 3,
    },
}

# The filter stages, in the order they run.
FILTER_ORDER = ("language", "gopher_repetition", "gopher_quality", "c4", "fineweb_quality")


class ConfigError(ValueError):
    pass


def _merge(base: dict, over: dict, where: str, path: str = "") -> None:
    for k, v in over.items():
        key = f"{path}{k}"
        if k not in base:
            raise ConfigError(f"{where}: unknown key '{key}'; known keys here: {', '.join(base)}")
        if isinstance(base[k], dict):
            if not isinstance(v, dict):
                raise ConfigError(f"{where}: '{key}' must be a mapping")
            _merge(base[k], v, where, key + ".")
        else:
            base[k] = v


def load_config(path: str | None = None, overrides: dict | None = None) -> dict:
    """Defaults, then the YAML file at ``path`` (if any), then ``overrides`` (same shape)."""
    cfg = copy.deepcopy(DEFAULTS)
    if path:
        import yaml

        try:
            with open(path, encoding="utf-8") as fh:
                user = yaml.safe_load(fh) or {}
        except OSError as e:
            raise ConfigError(f"{path}: cannot read config ({e.strerror})") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(user, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of stage names")
        _merge(cfg, user, path)
    if overrides:
        _merge(cfg, overrides, "command line")
    if cfg["html"]["extractor"] not in ("resiliparse", "trafilatura"):
        raise ConfigError(f"html.extractor: '{cfg['html']['extractor']}' is not one of resiliparse, trafilatura")
    langs = cfg["language"]["languages"]
    if isinstance(langs, str):
        cfg["language"]["languages"] = [s.strip() for s in langs.split(",") if s.strip()]
    return cfg


def _hash(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def config_hash(cfg: dict) -> str:
    """Hash of every setting that changes what the filter pass writes: the reader, extraction,
    unicode repair, the filters, and the dedup keys it computes (shingles, bands, rows, seed)."""
    relevant = {k: v for k, v in cfg.items() if k not in ("output", "pii", "dedup")}
    relevant["dedup_keys"] = {k: cfg["dedup"][k] for k in ("near", "ngram", "bands", "rows", "seed")}
    relevant["removed_samples"] = cfg["output"]["removed_samples"]
    return _hash(relevant)


def dedup_hash(cfg: dict) -> str:
    """The filter pass's hash plus the dedup settings: which documents count as duplicates."""
    return _hash([config_hash(cfg), cfg["dedup"]])


def final_hash(cfg: dict) -> str:
    """Everything that changes the final shards: the duplicates removed, PII masking, output."""
    return _hash([dedup_hash(cfg), cfg["pii"], cfg["output"]])
