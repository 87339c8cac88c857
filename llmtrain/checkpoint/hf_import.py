"""Import a Hugging Face transformers folder as this project's GPT.

    python launcher/import_hf.py HF_DIR --output OUT

Supported: GPT-2, Llama (grouped-query attention, Llama 3 rope scaling), Mistral (without a
sliding window shorter than its context), GPT-NeoX / Pythia (parallel residual, partial rotary).
Anything else is refused with one line naming what does not map. The weights go through the same
name-mapping table as the export (llmtrain.checkpoint.hf_export.param_table), read backwards.

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

from llmtrain.checkpoint.hf_export import param_table
from llmtrain.checkpoint.load import ExportError
from llmtrain.core.files import replace_folder

SUPPORTED = ("gpt2", "llama", "mistral", "gpt_neox")
TABLE_ARCH = {"gpt2": "gpt2", "llama": "llama", "mistral": "llama", "gpt_neox": "gpt_neox"}
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


def _rope(hc: dict) -> dict:
    """rope_parameters (transformers 5), else the legacy rope_theta / rope_scaling keys (4.x)."""
    rope = dict(hc.get("rope_parameters") or {})
    if not rope:
        rope = dict(hc.get("rope_scaling") or {})
        rope.setdefault("rope_theta", hc.get("rope_theta", hc.get("rotary_emb_base", 10000.0)))
        if "partial_rotary_factor" not in rope and ("rotary_pct" in hc or "partial_rotary_factor" in hc):
            rope["partial_rotary_factor"] = hc.get("partial_rotary_factor", hc.get("rotary_pct"))
    rope.setdefault("rope_type", rope.pop("type", "default"))
    return rope


def _gelu(act: str, refuse) -> str:
    if act in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return "tanh" if act != "gelu_fast" else refuse(f"hidden activation {act!r}")
    if act == "gelu":
        return "exact"
    return refuse(f"hidden activation {act!r} (GELU, exact or tanh, is supported)")


def model_config_from_hf(hc: dict, where: str) -> dict:
    """Our model section for the transformers config ``hc``, or one line naming what does not map."""
    mt = hc.get("model_type")

    def refuse(what):
        raise ExportError(f"{where}: {what} does not map onto this project's GPT; nothing was written")

    if mt not in SUPPORTED:
        refuse(f"model_type {mt!r} (supported: {', '.join(SUPPORTED)})")
    common = dict(vocab_size=int(hc["vocab_size"]), dropout=0.0, tie_embeddings=bool(hc.get("tie_word_embeddings",
                                                                                             mt == "gpt2")))
    if mt == "gpt2":
        if not hc.get("scale_attn_weights", True) or hc.get("scale_attn_by_inverse_layer_idx"):
            refuse("GPT-2 attention scaling other than 1/sqrt(head_dim) (scale_attn_weights / "
                   "scale_attn_by_inverse_layer_idx)")
        d = int(hc["n_embd"])
        return dict(n_layer=int(hc["n_layer"]), d_model=d, n_head=int(hc["n_head"]), seq_len=int(hc["n_positions"]),
                    pos_encoding="learned", norm="layernorm", norm_eps=float(hc.get("layer_norm_epsilon", 1e-5)),
                    mlp="gelu", gelu=_gelu(hc.get("activation_function", "gelu_new"), refuse),
                    d_ff=int(hc.get("n_inner") or 4 * d), bias=True, **common)
    d, H = int(hc["hidden_size"]), int(hc["num_attention_heads"])
    rope = _rope(hc)
    if rope.get("rope_type") not in ("default", "llama3") or (mt == "gpt_neox" and rope["rope_type"] != "default"):
        refuse(f"rope_type {rope.get('rope_type')!r}")
    seq_len = int(hc.get("max_position_embeddings", 2048))
    rot = dict(pos_encoding="rotary", rope_theta=float(rope.get("rope_theta", 10000.0)))
    if rope["rope_type"] == "llama3":
        rot.update(rope_scaling="llama3", rope_scaling_factor=float(rope["factor"]),
                   rope_low_freq_factor=float(rope["low_freq_factor"]),
                   rope_high_freq_factor=float(rope["high_freq_factor"]),
                   rope_original_seq_len=int(rope["original_max_position_embeddings"]))
    if mt == "gpt_neox":
        if not hc.get("attention_bias", True):
            refuse("GPT-NeoX with attention_bias=false (its MLP keeps biases; this GPT has one bias switch)")
        return dict(n_layer=int(hc["num_hidden_layers"]), d_model=d, n_head=H, seq_len=seq_len, norm="layernorm",
                    norm_eps=float(hc.get("layer_norm_eps", 1e-5)), mlp="gelu",
                    gelu=_gelu(hc.get("hidden_act", "gelu"), refuse), d_ff=int(hc["intermediate_size"]), bias=True,
                    parallel_residual=bool(hc.get("use_parallel_residual", True)),
                    rotary_pct=float(rope.get("partial_rotary_factor", 1.0)), **rot, **common)
    # llama, mistral
    if hc.get("hidden_act", "silu") != "silu":
        refuse(f"hidden_act {hc.get('hidden_act')!r} (the gated MLP here is SwiGLU)")
    if hc.get("head_dim") not in (None, d // H):
        refuse(f"head_dim {hc['head_dim']} != hidden_size / num_attention_heads = {d // H}")
    if bool(hc.get("attention_bias", False)) != bool(hc.get("mlp_bias", False)):
        refuse("attention_bias != mlp_bias (this GPT has one bias switch)")
    if hc.get("pretraining_tp", 1) not in (None, 1):
        refuse(f"pretraining_tp={hc['pretraining_tp']}")
    window = hc.get("sliding_window")
    if mt == "mistral" and window is not None and int(window) < seq_len:
        refuse(f"sliding_window={window} (shorter than max_position_embeddings={seq_len}; set it to null for full "
               f"attention)")
    kv = int(hc.get("num_key_value_heads") or H)
    return dict(n_layer=int(hc["num_hidden_layers"]), d_model=d, n_head=H, seq_len=seq_len, norm="rmsnorm",
                norm_eps=float(hc.get("rms_norm_eps", 1e-6)), mlp="swiglu", d_ff=int(hc["intermediate_size"]),
                bias=bool(hc.get("attention_bias", False)), n_kv_head=None if kv == H else kv, **rot, **common)


def our_state_dict(hf_params: dict, cfg, model_type: str, where: str) -> dict:
    """transformers parameters (name → tensor) → our GPT state dict, through param_table."""
    out, used = {}, set()
    for e in param_table(cfg, TABLE_ARCH[model_type]):
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


@torch.no_grad()
def check_logits(state: dict, cfg, hf_model, n: int = 64) -> float:
    """max |logits ours - logits transformers| on 2 x min(n, seq_len) random token ids, fp32."""
    from llmtrain.model.gpt import GPT

    ours = GPT(cfg)
    missing, unexpected = ours.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ExportError(f"imported weights do not fill the model (missing {missing[:3]}, unexpected "
                          f"{unexpected[:3]})")
    ids = torch.randint(0, cfg.vocab_size, (2, max(2, min(n, cfg.seq_len))), generator=torch.Generator().manual_seed(0))
    return float((ours.eval()(ids) - hf_model(input_ids=ids).logits.float()).abs().max())


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
