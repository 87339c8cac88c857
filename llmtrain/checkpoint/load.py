"""What a checkpoint needs from its run folder: the model (any layout, through
llmtrain.checkpoint.consolidate), the tokenizer the run was trained with, its end-of-document token
and its token data. Every problem is an ExportError (or CheckpointError / DataFormatError /
ConfigError), a ValueError whose message is one line naming the file and the fix.

Besides DeepSpeed checkpoints, a "checkpoint" may be a consolidated file (python -m
llmtrain.checkpoint.consolidate; its folder is taken as the run folder) or a folder written by
launcher/import_hf.py (model.safetensors, config.yaml, data_manifest.json, the tokenizer)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from llmtrain.tokenizer import manifest_eod_id, manifest_eod_token
from llmtrain.tokenizer import load_tokenizer as _load_tokenizer
from llmtrain.checkpoint.consolidate import CheckpointError, is_consolidated, load_consolidated, resolve_checkpoint
from llmtrain.core.files import sha256_file


class ExportError(ValueError):
    """One line naming what is wrong and how to fix it."""


@dataclass
class RunInfo:
    step_dir: Path
    run_dir: Path
    config: dict  # the run's resolved config.yaml
    manifests: list[dict]  # from data_manifest.json (may be empty when the file is missing)
    prefixes: list[str]


def run_info(path) -> RunInfo:
    if is_consolidated(path):
        p = Path(path)
        run_dir = p if p.is_dir() else p.parent
        step_dir = run_dir
        if not (run_dir / "config.yaml").is_file():  # a lone consolidated file: its own model_config
            _, meta = load_consolidated(p)
            return RunInfo(step_dir, run_dir, {"model": meta["model_config"]}, *_manifests(run_dir))
    else:
        step_dir, run_dir = resolve_checkpoint(path)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise CheckpointError(f"{cfg_path}: missing; the run's config is needed to know the model's shape")
    try:
        config = yaml.safe_load(cfg_path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ExportError(f"{cfg_path}: not valid YAML ({str(e).splitlines()[0]})") from None
    return RunInfo(step_dir, run_dir, config, *_manifests(run_dir))


def _manifests(run_dir: Path) -> tuple[list[dict], list[str]]:
    man_path = run_dir / "data_manifest.json"
    manifests, prefixes = [], []
    if man_path.is_file():
        try:
            dm = json.loads(man_path.read_text())
        except json.JSONDecodeError as e:
            raise ExportError(f"{man_path}:{e.lineno}: malformed JSON ({e.msg})") from None
        manifests = list(dm.get("manifests") or [])
        prefixes = list(dm.get("prefixes") or [])
    return manifests, prefixes


def tokenizer_path(info: RunInfo, override: str | None = None) -> Path:
    """The run's tokenizer.json: --tokenizer, else the run's data.tokenizer, else the one named in
    data_manifest.json. When the manifest records a sha256, the file must match it."""
    man_file = info.run_dir / "data_manifest.json"
    tok = (info.manifests[0].get("tokenizer") if info.manifests else None) or {}
    if isinstance(tok, str):
        tok = {"path": tok}
    named_by = "--tokenizer" if override else None
    path = override
    if not path and (info.config.get("data") or {}).get("tokenizer"):
        path, named_by = info.config["data"]["tokenizer"], f"{info.run_dir / 'config.yaml'} (data.tokenizer)"
    if not path:
        path, named_by = tok.get("path"), str(man_file)
    if not path:
        what = "names no tokenizer" if man_file.is_file() else "is missing"
        raise ExportError(f"{man_file}: {what}, so the run's tokenizer is unknown; pass --tokenizer tokenizer.json")
    p = Path(path)
    if p.is_dir() and (p / "tokenizer.json").is_file():  # a transformers folder: its tokenizer.json
        p = p / "tokenizer.json"
    if not p.is_absolute() and not p.is_file() and (info.run_dir / p).is_file():
        p = info.run_dir / p  # a path relative to the run folder (an imported model's own tokenizer.json)
    if not p.is_file():
        raise ExportError(f"{p}: tokenizer not found (named by {named_by}); pass --tokenizer PATH to the "
                          f"tokenizer.json the run was trained with")
    want = tok.get("sha256")
    if want and sha256_file(p) != want:
        raise ExportError(f"{p}: sha256 differs from the {want[:12]}... recorded in {man_file}; this is not the "
                          f"tokenizer the run was trained with (pass --tokenizer PATH to the right one)")
    return p


def load_tokenizer(path: Path):
    """The tokenizers.Tokenizer through the shared loader (llmtrain.tokenizer.load_tokenizer), set
    up as data_prep/tokenize_corpus.py encodes the training data."""
    return _load_tokenizer(path, None)[0]


def eod_token(info: RunInfo, tok=None) -> str:
    """The run's end-of-document token as recorded in its manifest (eod_token), else the default."""
    return manifest_eod_token(info.manifests)


def eod_token_id(info: RunInfo, tok) -> int:
    """The run's end-of-document id: the manifest's eod_token_id, else the id of its eod_token
    (or the default) in ``tok``."""
    eod = manifest_eod_id(info.manifests, tok.token_to_id)
    if eod is None:
        raise ExportError(f"the tokenizer has no {eod_token(info)} token and {info.run_dir / 'data_manifest.json'} "
                          f"records no eod_token_id; pass --tokenizer PATH to the run's tokenizer")
    return eod


def load_model(path):
    """(GPT in eval mode, fp32; the consolidated record) for any layout's checkpoint."""
    import contextlib
    import pickle
    import sys

    from llmtrain.checkpoint.consolidate import load_gpt

    try:  # DeepSpeed's zero_to_fp32 reports progress on stdout: keep stdout for the command's own output
        with contextlib.redirect_stdout(sys.stderr):
            return load_gpt(path)
    except CheckpointError:
        raise
    except (RuntimeError, KeyError, EOFError, OSError, ValueError, pickle.UnpicklingError) as e:
        # a truncated or foreign file inside a checkpoint folder: torch.load / zero_to_fp32 fail deep inside
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: the checkpoint cannot be read ({msg}); it is incomplete or damaged, "
                              f"name another checkpoints/global_stepN") from None


def run_cli(main, argv=None) -> int:
    """Run a CLI body; a known bad-input error prints one line 'error: ...' and exits with 2."""
    import sys

    from llmtrain.core.errors import ConfigError
    from llmtrain.data.indexed import DataFormatError

    try:
        return main(argv) or 0
    except (ExportError, CheckpointError, DataFormatError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
