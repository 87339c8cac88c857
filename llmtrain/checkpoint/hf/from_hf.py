"""Import a Hugging Face transformers folder as this project's GPT.

    python launcher/import_hf.py HF_DIR --output OUT

Supported: the specs of llmtrain.checkpoint.hf that read a config.json model_type (``reads``):
GPT-2, Llama (grouped-query attention, Llama 3 rope scaling), Mistral (without a sliding window
shorter than its context), Qwen3 (without sliding windows) and GPT-NeoX / Pythia (parallel
residual, partial rotary). Anything else is refused with one line naming what does not map. The
weights go through the spec's name-mapping table, the export's, read backwards.

OUT holds what every tool of the project takes as a checkpoint (export_hf.py, generate.py,
evaluate.py, checkpoint.init_from=OUT):

    model.safetensors     our state dict (fp32) + the model section as metadata (consolidated format)
    config.yaml           the model section (model.*)
    data_manifest.json    the tokenizer (tokenizer.json, its sha256) and the end-of-document token
    tokenizer.json ...    the folder's tokenizer files, copied
    llmtrain_import.json  source, architecture, the logit check

Before anything is written, our model's logits are compared with the transformers model's on
random tokens (fp32); a difference above 1e-4 is refused. Loading runs no code from the folder:
weights come from safetensors, or pickle .bin files read with weights_only=True, and no remote
code is trusted.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from llmtrain.checkpoint.hf.spec import ArchSpec, specs
from llmtrain.checkpoint.hf.verify import logit_difference, random_ids
from llmtrain.checkpoint.load import ExportError
from llmtrain.core.files import replace_folder

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def is_hf_folder(path: str | os.PathLike) -> bool:
    """A transformers model folder (config.json), not one written by launcher/import_hf.py or a
    run folder (config.yaml)."""
    p = Path(path)
    return p.is_dir() and (p / "config.json").is_file() and not (p / "config.yaml").is_file()


def read_hf_config(path: str | os.PathLike) -> dict:
    f = Path(path) / "config.json"
    if not f.is_file():
        raise ExportError(f"{f}: not found; name a Hugging Face transformers model folder (with config.json)")
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise ExportError(f"{f}:{e.lineno}: malformed JSON ({e.msg})") from None


def reader(model_type) -> ArchSpec | None:
    """The spec that imports config.json's ``model_type``."""
    return next((s for s in specs() if model_type in s.reads), None)


def model_config_from_hf(hc: dict, where: str) -> dict:
    """Our model section for the transformers config ``hc``, or one line naming what does not map."""
    mt = hc.get("model_type")

    def refuse(what):
        raise ExportError(f"{where}: {what} does not map onto this project's GPT; nothing was written")

    spec = reader(mt)
    if spec is None:
        refuse(f"model_type {mt!r} (supported: {', '.join(sorted(t for s in specs() for t in s.reads))})")
    return spec.from_config(hc, refuse)


def our_state_dict(hf_params: dict, cfg, model_type: str, where: str) -> dict:
    """transformers parameters (name → tensor) → our GPT state dict, through the spec's table."""
    out, used = {}, set()
    for e in reader(model_type).table(cfg):
        present = tuple(hf_params[n] for n in e.hf if n in hf_params)
        need = e.hf[:1] if len(e.hf) == 2 and e.hf[1] == "lm_head.weight" else e.hf  # a tied head may be absent
        missing = [n for n in need if n not in hf_params]
        if missing:
            raise ExportError(f"{where}: the weights lack {missing[0]}; the folder is incomplete or of another "
                              f"layout than its config.json says")
        used.update(e.hf)
        if e.ours is None:
            if any(bool(t.any()) for t in present):
                raise ExportError(f"{where}: {e.hf[0]} is non-zero where this GPT has no such tensor")
            continue
        out[e.ours] = e.from_hf(present).detach().float().contiguous()
    unused = sorted(set(hf_params) - used)
    if unused:
        raise ExportError(f"{where}: weights {unused[:3]} do not map onto this project's GPT; nothing was written")
    return out


def load_hf_model(path: str | os.PathLike):
    """The transformers model (fp32, eval) from a local folder, running no code from it."""
    from transformers import AutoModelForCausalLM

    p = Path(path)
    names = {f.name for f in p.iterdir()}
    if not any(n.endswith(".safetensors") or n.endswith(".safetensors.index.json") or n.endswith(".bin")
               for n in names):
        raise ExportError(f"{p}: no model weights (model.safetensors or pytorch_model.bin) in the folder")
    try:
        model = AutoModelForCausalLM.from_pretrained(str(p), dtype=torch.float32, local_files_only=True,
                                                     trust_remote_code=False, weights_only=True)
    except Exception as e:  # transformers raises many kinds; report the first line
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"{p}: transformers could not load the model without running code from the folder "
                          f"({msg[:300]})") from None
    return model.eval()


def hf_eod_token(path: str | os.PathLike, tok) -> tuple[str, int]:
    """(end-of-document token, id): the folder's eos token (tokenizer_config.json, else config.json's
    eos_token_id), which documents end with in this model's training data."""
    p = Path(path)
    name = None
    tc = p / "tokenizer_config.json"
    if tc.is_file():
        eos = json.loads(tc.read_text()).get("eos_token")
        name = eos.get("content") if isinstance(eos, dict) else eos
    if name is None:
        eos_id = read_hf_config(p).get("eos_token_id")
        eos_id = eos_id[0] if isinstance(eos_id, list) else eos_id
        name = tok.id_to_token(int(eos_id)) if eos_id is not None else None
    if name is None or tok.token_to_id(name) is None:
        raise ExportError(f"{p}: no end-of-document (eos) token found in tokenizer_config.json or config.json; add "
                          f"eos_token to tokenizer_config.json")
    return name, tok.token_to_id(name)


def load_hf_folder(path: str | os.PathLike, verify: bool = True, tolerance: float = 1e-4):
    """(model_config_dict, state_dict, tokenizer_path) of a Hugging Face folder: our model section,
    our GPT state dict (fp32), and the folder's tokenizer.json. With ``verify``, our model's logits
    must match the transformers model's within ``tolerance`` (fp32). Bad input: ExportError or
    ConfigError, one line."""
    model_cfg, state, tok_path, _ = _load(path, verify, tolerance)
    return model_cfg, state, tok_path


def _load(path, verify: bool, tolerance: float):
    """load_hf_folder's work, plus the max logit difference (None when not verified)."""
    from llmtrain.config import ModelConfig
    from llmtrain.core.errors import ConfigError
    from llmtrain.tokenizer import load_tokenizer, tokenizer_file

    p = Path(path)
    where = str(p / "config.json")
    hc = read_hf_config(p)
    model_cfg = model_config_from_hf(hc, where)
    cfg = ModelConfig(**model_cfg)
    try:
        cfg.validate(where)
    except ConfigError as e:
        raise ExportError(f"{e}; this folder does not map onto this project's GPT") from None
    tok_path = tokenizer_file(p)
    tok, _ = load_tokenizer(tok_path, None)
    if tok.get_vocab_size() > cfg.vocab_size:
        raise ExportError(f"{tok_path}: vocabulary of {tok.get_vocab_size()} is larger than the model's "
                          f"{cfg.vocab_size}; the tokenizer is not this model's")
    hf_model = load_hf_model(p)
    params = dict(hf_model.named_parameters(remove_duplicate=False))
    state = our_state_dict(params, cfg, hc["model_type"], where)
    diff = None
    if verify:
        diff = check_logits(state, cfg, hf_model)
        if not diff <= tolerance:
            raise ExportError(f"{p}: our model's logits differ from transformers' by {diff:.3g} (> {tolerance:g}); "
                              f"nothing was written")
    return model_cfg, state, tok_path, diff


def check_logits(state: dict, cfg, hf_model, n: int = 64) -> float:
    """max |logits ours - logits transformers| on 2 x min(n, seq_len) random token ids, fp32."""
    from llmtrain.model.gpt import GPT

    ours = GPT(cfg)
    missing, unexpected = ours.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ExportError(f"imported weights do not fill the model (missing {missing[:3]}, unexpected "
                          f"{unexpected[:3]})")
    return logit_difference(ours.eval(), hf_model, random_ids(cfg.vocab_size, cfg.seq_len, n))


def import_hf(hf_dir, output, force: bool = False, log=print) -> dict:
    """Write OUT (see the module docstring) for the transformers folder ``hf_dir``; returns the
    record written to OUT/llmtrain_import.json."""
    import transformers
    import yaml

    from llmtrain.tokenizer import load_tokenizer
    from llmtrain.checkpoint.consolidate import save_consolidated
    from llmtrain.core.files import sha256_file

    src, output = Path(hf_dir), Path(output)
    if not src.is_dir():
        raise ExportError(f"{src}: no such folder; name a Hugging Face transformers model folder")
    if output.exists() and not force:
        raise ExportError(f"{output}: already exists; choose another --output or pass --force to replace it")
    hc = read_hf_config(src)
    model_cfg, state, tok_path, diff = _load(src, True, 1e-4)
    tok, _ = load_tokenizer(tok_path, None)
    eod, eod_id = hf_eod_token(src, tok)
    record = {"source": str(src.resolve()), "model_type": hc["model_type"], "architectures": hc.get("architectures"),
              "model_config": model_cfg, "max_abs_logit_diff": diff, "verified_on": "2 random sequences, fp32",
              "eod_token": eod, "eod_token_id": eod_id, "transformers_version": transformers.__version__,
              "torch_version": torch.__version__}
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.parent / f".{output.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_consolidated(state, {"model_config": model_cfg, "step": 0, "tokens": 0, "source": str(src.resolve())},
                          tmp / "model.safetensors")
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copyfile(src / name, tmp / name)
        (tmp / "config.yaml").write_text(yaml.safe_dump({"model": model_cfg}, sort_keys=False))
        manifest = {"tokenizer": {"path": "tokenizer.json", "sha256": sha256_file(tmp / "tokenizer.json")},
                    "eod_token": eod, "eod_token_id": eod_id, "imported_from": str(src.resolve())}
        (tmp / "data_manifest.json").write_text(json.dumps({"manifests": [manifest], "prefixes": []}, indent=2) + "\n")
        (tmp / "llmtrain_import.json").write_text(json.dumps(record, indent=2) + "\n")
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        replace_folder(tmp, output)  # with --force, an existing folder is swapped out
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    n = sum(v.numel() for v in state.values())
    log(f"imported {src} ({hc['model_type']}, {n:,} parameters) to {output}; max |logit difference| {diff:.2e}")
    return record
