"""YAML configs as typed dataclasses: read a file (errors name the file and line), convert each
value to its field's type, apply ``section.key=value`` overrides. An unknown key or a value of
the wrong type is a ConfigError naming the key and where it came from."""
from __future__ import annotations

import dataclasses
from dataclasses import fields
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from llmtrain.core.errors import ConfigError


def coerce(value: Any, hint: Any, key: str, where: str) -> Any:
    """Convert a YAML or command-line value to the field's type, or raise ConfigError."""
    origin = get_origin(hint)
    if origin is list:
        (inner,) = get_args(hint)
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split()]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {key}={value!r} is not a list")
        return [coerce(v, inner, f"{key}[{i}]" if dataclasses.is_dataclass(inner) else key, where)
                for i, v in enumerate(value)]
    if dataclasses.is_dataclass(hint):  # an entry of a list of records (data.stages)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key}={value!r} must be a mapping of its fields "
                              f"({', '.join(f.name for f in fields(hint))})")
        obj = hint()
        apply_updates(obj, value, key + ".", where)
        return obj
    if origin is Union:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        inner = [a for a in get_args(hint) if a is not type(None)][0]
        return coerce(value, inner, key, where)
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            raise ValueError
        if hint is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, str):
                f = float(value)
                if not f.is_integer():
                    raise ValueError
                return int(f)
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if hint is str:
            if not isinstance(value, (str, int, float)):
                raise ValueError
            return str(value)
    except (ValueError, TypeError):
        pass
    else:
        return value
    tname = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"{where}: {key}={value!r} is not a valid {tname}")


def apply_updates(obj: Any, updates: dict, prefix: str, where: str) -> None:
    hints = get_type_hints(type(obj))
    names = {f.name for f in fields(obj)}
    for k, v in updates.items():
        key = f"{prefix}{k}"
        if k not in names:
            raise ConfigError(f"{where}: unknown key '{key}'; known keys here: {', '.join(sorted(names))}")
        current = getattr(obj, k)
        if dataclasses.is_dataclass(current):
            if not isinstance(v, dict):
                raise ConfigError(f"{where}: '{key}' must be a mapping of its fields")
            apply_updates(current, v, key + ".", where)
        else:
            setattr(obj, k, coerce(v, hints[k], key, where))


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form section.key=value (e.g. train.max_steps=50)")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if len(path) < 2 or not all(path):
        raise ConfigError(f"override '{text}': the key must name a section and a field, e.g. train.max_steps=50")
    value = yaml.safe_load(raw) if raw.strip() else ""
    return path, value


def read_yaml(path: Path, what: str = "config", hint: str = "pass an existing YAML with --config"):
    """Parsed YAML of ``path``, or ConfigError naming the file (and line) on a missing file or
    bad syntax."""
    if not path.is_file():
        raise ConfigError(f"{path}: {what} file not found; {hint}")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        loc = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}{loc}: malformed YAML ({problem}); fix the syntax there") from None


def apply_overrides(obj: Any, overrides) -> None:
    """Apply ``section.key=value`` strings (a command line's) to the dataclass tree ``obj``."""
    for ov in overrides:
        keys, value = parse_override(ov)
        nested: Any = value
        for k in reversed(keys[1:]):
            nested = {k: nested}
        apply_updates(obj, {keys[0]: nested}, "", f"override '{ov}'")
