"""Export a checkpoint as a Hugging Face transformers folder that
``AutoModelForCausalLM.from_pretrained(DIR)`` and ``AutoTokenizer.from_pretrained(DIR)`` load with
no custom code (``python launcher/export_hf.py RUN_DIR_OR_CHECKPOINT --output DIR``).

The architecture is the spec (``llmtrain.checkpoint.hf``) whose layout the model has and which
represents every option it uses; none: one line saying why (``choose_architecture``). The weights
go through the spec's table (a muP model's multipliers folded in first), the export runs both
models on the same tokens and refuses to write a folder whose logits differ, and the folder is
written under a temporary name beside DIR and renamed into place when complete.

The tokenizer is our tokenizer.json wrapped in PreTrainedTokenizerFast, with the run's
end-of-document token (its manifest's eod_token; ``<|endoftext|>`` when none is recorded) as bos
and eos, and ``split_special_tokens`` on, so that a literal end-of-document string in text is
encoded as text exactly as data_prep/tokenize_corpus.py encoded the training data.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import torch

from llmtrain.checkpoint.hf.spec import NO_ARCHITECTURE, ArchSpec, specs
from llmtrain.checkpoint.hf.verify import logit_difference, random_ids
from llmtrain.checkpoint.load import (ExportError, eod_token, eod_token_id, load_model, load_tokenizer, run_info,
                                      tokenizer_path)
from llmtrain.core.files import replace_folder


def spec_for(cfg) -> ArchSpec:
    """The spec that represents the ModelConfig ``cfg`` exactly, or ExportError saying why none does."""
    matching = [s for s in specs() if s.matches(cfg)]
    if not matching:
        why = next((why for has, why in NO_ARCHITECTURE if has(cfg)), "no architecture in llmtrain/checkpoint/hf has "
                   "this layout")
        raise ExportError(f"cannot export model (pos_encoding={cfg.pos_encoding}, norm={cfg.norm}, mlp={cfg.mlp}, "
                          f"bias={str(bool(cfg.bias)).lower()}) exactly: {why}")
    for s in matching:
        if s.refusal(cfg) is None:
            return s
    raise ExportError(f"cannot export model exactly as {matching[0].name}: {matching[0].refusal(cfg)}")


def choose_architecture(cfg) -> str:
    """The name of ``spec_for(cfg)``: 'gpt2', 'llama', 'qwen3', 'gpt_neox', 'stablelm', ..."""
    return spec_for(cfg).name


def _spec(arch: str) -> ArchSpec:
    return next(s for s in specs() if s.name == arch)


def hf_state_dict(sd: dict, cfg, arch: str) -> dict:
    """Our GPT state dict (llmtrain.model.gpt names) → the transformers model's state dict."""
    out = {}
    for e in _spec(arch).table(cfg):
        out.update(zip(e.hf, e.to_hf(sd[e.ours] if e.ours is not None else None)))
    return out


def build_hf_model(sd: dict, cfg, arch: str, bos: int, eos: int):
    """A transformers model (eval, fp32) holding our weights; every one of its parameters must be
    set from ours and every one of ours used. A muP model's multipliers are folded into weights
    first (llmtrain.model.mup.standard_state_dict): the attention's into the query projection (or
    the query norm), the readout's into the final norm, so tied embeddings stay tied."""
    from transformers import AutoModelForCausalLM

    from llmtrain.model.mup import standard_state_dict

    sd = standard_state_dict(sd, cfg)
    config = _spec(arch).config(cfg, bos, eos)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    target = model.state_dict()
    mapped = hf_state_dict(sd, cfg, arch)
    unknown = sorted(set(mapped) - set(target))
    missing = sorted(k for k in target if k not in mapped)
    if unknown or missing:  # a transformers version whose names differ from the ones mapped here
        raise ExportError(f"the installed transformers' {type(model).__name__} has other parameter names than the "
                          f"export maps (missing {missing[:3]}, unknown {unknown[:3]}); use the transformers "
                          f"version named in the README")
    for k, v in mapped.items():
        if tuple(target[k].shape) != tuple(v.shape):
            raise ExportError(f"{k}: shape {tuple(v.shape)} where {type(model).__name__} expects "
                              f"{tuple(target[k].shape)}")
    model.load_state_dict(mapped, strict=True)
    if cfg.tie_embeddings:
        model.tie_weights()
    return model.eval()


def save_model(hf_model, cfg, arch: str, out_dir: Path) -> None:
    """config.json (with the legacy rope keys too) and model.safetensors."""
    hf_model.save_pretrained(str(out_dir), safe_serialization=True)
    cfg_file = Path(out_dir) / "config.json"
    hcfg = json.loads(cfg_file.read_text())
    for k, v in _spec(arch).legacy_keys(cfg).items():
        hcfg.setdefault(k, v)
    cfg_file.write_text(json.dumps(hcfg, indent=2, sort_keys=True) + "\n")
    for f in Path(out_dir).iterdir():  # files meant to be read by others (some are written 0600)
        os.chmod(f, 0o644)


def save_tokenizer(tok_file: Path, out_dir: Path, eos: str, seq_len: int) -> None:
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=str(tok_file), bos_token=eos, eos_token=eos,
                                  model_max_length=seq_len, split_special_tokens=True,
                                  clean_up_tokenization_spaces=False)
    tok.save_pretrained(str(out_dir))
    # Name the class by its long-standing name so that transformers 4.x loads the folder too.
    cfg_file = out_dir / "tokenizer_config.json"
    tcfg = json.loads(cfg_file.read_text())
    tcfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    tcfg["split_special_tokens"] = True
    cfg_file.write_text(json.dumps(tcfg, indent=2) + "\n")


def export(checkpoint, output, tokenizer: str | None = None, force: bool = False, verify_tokens: int = 64,
           tolerance: float = 1e-4, log=print) -> dict:
    """Write the transformers folder for ``checkpoint`` to ``output``; returns the record written
    to output/llmtrain_export.json (architecture, source, step, max logit difference)."""
    import transformers

    from llmtrain.config import ModelConfig

    output = Path(output)
    if output.exists() and not force:
        raise ExportError(f"{output}: already exists; choose another --output or pass --force to replace it")
    info = run_info(checkpoint)
    tok_file = tokenizer_path(info, tokenizer)
    cfg = ModelConfig(**info.config["model"])
    arch = choose_architecture(cfg)  # refuse before the (slow) consolidation
    tok = load_tokenizer(tok_file)
    eod, eos = eod_token_id(info, tok), eod_token(info, tok)
    if tok.get_vocab_size() > cfg.vocab_size:
        raise ExportError(f"{tok_file}: vocabulary of {tok.get_vocab_size()} is larger than the model's "
                          f"{cfg.vocab_size}; pass --tokenizer PATH to the tokenizer the run was trained with")
    ours, rec = load_model(checkpoint)
    ours.cfg = dataclasses.replace(ours.cfg, document_mask_token=None)  # transformers' models attend causally
    hf_model = build_hf_model(rec["state_dict"], cfg, arch, eod, eod)

    # Check the mapping on real tokens before writing anything.
    ids = random_ids(tok.get_vocab_size(), cfg.seq_len, verify_tokens)
    n = ids.shape[1]
    diff = logit_difference(ours, hf_model, ids)
    if not diff <= tolerance:
        raise ExportError(f"the exported {arch} model's logits differ from the checkpoint's by {diff:.3g} "
                          f"(> {tolerance:g}); nothing was written")

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.parent / f".{output.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    record = {
        "architecture": type(hf_model).__name__,
        "model_type": hf_model.config.model_type,
        "source": rec["source"],
        "step": rec["step"],
        "tokens": rec["tokens"],
        "model_config": info.config["model"],
        "tokenizer": str(tok_file),
        "max_abs_logit_diff": diff,
        "verified_on": f"2 x {n} random token ids, fp32",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
    }
    try:
        save_model(hf_model, cfg, arch, tmp)
        save_tokenizer(tok_file, tmp, eos, cfg.seq_len)
        (tmp / "llmtrain_export.json").write_text(json.dumps(record, indent=2) + "\n")
        replace_folder(tmp, output)  # with --force, an existing folder is swapped out
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"exported {rec['source']} (step {rec['step']}) as {record['architecture']} to {output}; "
        f"max |logit difference| {diff:.2e} on {record['verified_on']}")
    return record
