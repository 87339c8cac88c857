"""Export a checkpoint as a Hugging Face transformers model folder that
``AutoModelForCausalLM.from_pretrained(DIR)`` and ``AutoTokenizer.from_pretrained(DIR)`` load
with no custom code.

    python launcher/export_hf.py RUN_DIR_OR_CHECKPOINT --output DIR

Each combination of the model's options maps onto the one existing architecture that computes
exactly the same function (the export runs both models on the same tokens and refuses to write
a folder whose logits differ):

| pos_encoding | norm      | mlp    | bias      | transformers architecture                          |
|--------------|-----------|--------|-----------|----------------------------------------------------|
| learned      | layernorm | gelu   | any       | GPT-2 (GPT2LMHeadModel; absent biases written as 0) |
| rotary       | rmsnorm   | swiglu | any       | Llama (attention_bias = mlp_bias = model.bias)     |
| rotary       | layernorm | gelu   | any       | GPT-NeoX (rotary on the whole head, sequential residual; absent biases 0) |
| rotary       | layernorm | swiglu | false     | StableLM (partial_rotary_factor 1, sequential residual, no qk-norm) |
| rotary       | layernorm | swiglu | true      | refused: StableLM has no MLP / output-projection biases |
| rotary       | rmsnorm   | gelu   | any       | refused: no architecture pairs RMSNorm with a non-gated GELU MLP |
| learned      | rmsnorm   | any    | any       | refused: no architecture pairs learned positions with RMSNorm |
| learned      | layernorm | swiglu | any       | refused: no architecture pairs learned positions with a gated MLP |

Tied or untied embeddings map to ``tie_word_embeddings``; GELU is the tanh approximation
(``gelu_pytorch_tanh``, the same kernel as ours); the context length is model.seq_len.

Why these are exact: our LayerNorm without bias equals a LayerNorm whose bias is 0; our rotary
embedding rotates the halves (x[:h/2], x[h/2:]) with inv_freq = theta^(-2i/h), which is
``rotate_half`` of Llama / GPT-NeoX / StableLM with the full head rotated; our fused qkv
projection is [q heads | k heads | v heads], split into q/k/v for Llama and StableLM and
re-ordered per head ([q_h, k_h, v_h] for each head h) for GPT-NeoX; our SwiGLU up projection is
[gate | value], split into gate_proj and up_proj.

The tokenizer is our tokenizer.json wrapped in PreTrainedTokenizerFast, with ``<|endoftext|>``
as bos and eos, and ``split_special_tokens`` on, so that a literal "<|endoftext|>" in text is
encoded as text exactly as data_prep/tokenize_corpus.py encoded the training data.

The folder is written under a temporary name beside DIR and renamed into place when complete.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from llmtrain.export.runinfo import (ExportError, eod_token, eod_token_id, load_model, load_tokenizer, run_info,
                                     tokenizer_path)

REFUSALS = {
    ("learned", "rmsnorm"): "learned position embeddings with RMSNorm: no transformers architecture has both "
                            "(GPT-2 and OPT use LayerNorm, Llama-style models use rotary)",
    ("learned", "swiglu"): "learned position embeddings with a SwiGLU MLP: no transformers architecture has both "
                           "(GPT-2 has a plain GELU MLP)",
    ("rmsnorm", "gelu"): "RMSNorm with a non-gated GELU MLP: no transformers architecture has both (Llama's MLP is "
                         "gated, GPT-NeoX and GPT-2 use LayerNorm)",
    ("layernorm", "swiglu", "bias"): "rotary + LayerNorm + SwiGLU with model.bias=true: StableLM, the one "
                                     "architecture with this layout, has no MLP or attention-output biases",
}


def choose_architecture(cfg) -> str:
    """'gpt2' | 'llama' | 'gpt_neox' | 'stablelm' for a ModelConfig, or ExportError saying why
    no architecture represents it exactly."""
    pos, norm, mlp, bias = cfg.pos_encoding, cfg.norm, cfg.mlp, bool(cfg.bias)
    why = None
    if pos == "learned":
        if norm == "rmsnorm":
            why = REFUSALS[("learned", "rmsnorm")]
        elif mlp == "swiglu":
            why = REFUSALS[("learned", "swiglu")]
        else:
            return "gpt2"
    elif norm == "rmsnorm":
        if mlp == "swiglu":
            return "llama"
        why = REFUSALS[("rmsnorm", "gelu")]
    elif mlp == "gelu":
        return "gpt_neox"
    elif not bias:
        return "stablelm"
    else:
        why = REFUSALS[("layernorm", "swiglu", "bias")]
    raise ExportError(f"cannot export model (pos_encoding={pos}, norm={norm}, mlp={mlp}, bias={str(bias).lower()}) "
                      f"exactly: {why}")


def hf_config(cfg, arch: str, bos: int, eos: int):
    """The transformers config of architecture ``arch`` for our ModelConfig."""
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig, StableLmConfig

    common = dict(vocab_size=cfg.vocab_size, tie_word_embeddings=bool(cfg.tie_embeddings), bos_token_id=bos,
                  eos_token_id=eos, initializer_range=cfg.init_std)
    d, H, L = cfg.d_model, cfg.n_head, cfg.n_layer
    rope = {"rope_type": "default", "rope_theta": float(cfg.rope_theta)}
    if arch == "gpt2":
        return GPT2Config(n_positions=cfg.seq_len, n_embd=d, n_layer=L, n_head=H, n_inner=cfg.ffn_dim,
                          activation_function="gelu_pytorch_tanh", resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
                          attn_pdrop=cfg.dropout, layer_norm_epsilon=cfg.norm_eps, scale_attn_weights=True,
                          scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False, **common)
    if arch == "llama":
        return LlamaConfig(hidden_size=d, intermediate_size=cfg.ffn_dim, num_hidden_layers=L, num_attention_heads=H,
                           num_key_value_heads=H, head_dim=d // H, hidden_act="silu",
                           max_position_embeddings=cfg.seq_len, rms_norm_eps=cfg.norm_eps, rope_parameters=rope,
                           attention_bias=bool(cfg.bias), mlp_bias=bool(cfg.bias), attention_dropout=cfg.dropout,
                           pretraining_tp=1, **common)
    if arch == "gpt_neox":
        return GPTNeoXConfig(hidden_size=d, num_hidden_layers=L, num_attention_heads=H, intermediate_size=cfg.ffn_dim,
                             hidden_act="gelu_pytorch_tanh", max_position_embeddings=cfg.seq_len,
                             layer_norm_eps=cfg.norm_eps, use_parallel_residual=False,
                             rope_parameters={**rope, "partial_rotary_factor": 1.0}, attention_bias=bool(cfg.bias),
                             attention_dropout=cfg.dropout, hidden_dropout=cfg.dropout, **common)
    if arch == "stablelm":
        return StableLmConfig(hidden_size=d, intermediate_size=cfg.ffn_dim, num_hidden_layers=L,
                              num_attention_heads=H, num_key_value_heads=H, hidden_act="silu",
                              max_position_embeddings=cfg.seq_len, layer_norm_eps=cfg.norm_eps,
                              rope_parameters={**rope, "partial_rotary_factor": 1.0}, use_qkv_bias=False,
                              qk_layernorm=False, use_parallel_residual=False, hidden_dropout=cfg.dropout,
                              attention_dropout=cfg.dropout, **common)
    raise ValueError(arch)


# Keys older transformers (4.x) read from config.json instead of rope_parameters; written too so
# that an exported folder loads the same on either side of that change.
def _legacy_config_keys(arch: str, cfg) -> dict:
    if arch == "llama":
        return {"rope_theta": float(cfg.rope_theta)}
    if arch == "gpt_neox":
        return {"rotary_pct": 1.0, "rotary_emb_base": float(cfg.rope_theta)}
    if arch == "stablelm":
        return {"rope_theta": float(cfg.rope_theta), "partial_rotary_factor": 1.0}
    return {}


def hf_state_dict(sd: dict, cfg, arch: str) -> dict:
    """Our GPT state dict (llmtrain.model.gpt names) → the transformers model's state dict."""
    d, H, f = cfg.d_model, cfg.n_head, cfg.ffn_dim
    hd = d // H

    def w(name):
        return sd[name]

    def b(name, size):  # a bias, or zeros where our model has none (exact: adding 0)
        return sd[name] if name in sd else torch.zeros(size)

    out = {}
    wte = w("embed.wte.weight")
    lm_head = wte if cfg.tie_embeddings else w("head.out.weight")
    for i in range(cfg.n_layer):
        p = f"blocks.{i}."
        qkv_w = w(p + "attn.qkv.weight")  # rows [q heads | k heads | v heads], each (H*hd)
        qkv_b = sd.get(p + "attn.qkv.bias")
        up_w = w(p + "mlp.up.weight")
        up_b = sd.get(p + "mlp.up.bias")
        if arch == "gpt2":
            q = f"transformer.h.{i}."
            out[q + "ln_1.weight"], out[q + "ln_1.bias"] = w(p + "norm1.weight"), b(p + "norm1.bias", d)
            out[q + "ln_2.weight"], out[q + "ln_2.bias"] = w(p + "norm2.weight"), b(p + "norm2.bias", d)
            out[q + "attn.c_attn.weight"] = qkv_w.t().contiguous()  # Conv1D stores (in, out)
            out[q + "attn.c_attn.bias"] = b(p + "attn.qkv.bias", 3 * d)
            out[q + "attn.c_proj.weight"] = w(p + "attn.proj.weight").t().contiguous()
            out[q + "attn.c_proj.bias"] = b(p + "attn.proj.bias", d)
            out[q + "mlp.c_fc.weight"] = up_w.t().contiguous()
            out[q + "mlp.c_fc.bias"] = b(p + "mlp.up.bias", f)
            out[q + "mlp.c_proj.weight"] = w(p + "mlp.down.weight").t().contiguous()
            out[q + "mlp.c_proj.bias"] = b(p + "mlp.down.bias", d)
        elif arch == "gpt_neox":
            q = f"gpt_neox.layers.{i}."
            out[q + "input_layernorm.weight"] = w(p + "norm1.weight")
            out[q + "input_layernorm.bias"] = b(p + "norm1.bias", d)
            out[q + "post_attention_layernorm.weight"] = w(p + "norm2.weight")
            out[q + "post_attention_layernorm.bias"] = b(p + "norm2.bias", d)
            # GPT-NeoX views the fused output as (heads, [q, k, v], head_dim): reorder per head
            out[q + "attention.query_key_value.weight"] = (
                qkv_w.view(3, H, hd, d).transpose(0, 1).reshape(3 * d, d).contiguous())
            out[q + "attention.dense.weight"] = w(p + "attn.proj.weight")
            if cfg.bias:
                out[q + "attention.query_key_value.bias"] = qkv_b.view(3, H, hd).transpose(0, 1).reshape(3 * d)
                out[q + "attention.dense.bias"] = w(p + "attn.proj.bias")
            out[q + "mlp.dense_h_to_4h.weight"] = up_w
            out[q + "mlp.dense_h_to_4h.bias"] = b(p + "mlp.up.bias", f)
            out[q + "mlp.dense_4h_to_h.weight"] = w(p + "mlp.down.weight")
            out[q + "mlp.dense_4h_to_h.bias"] = b(p + "mlp.down.bias", d)
        else:  # llama, stablelm: separate q/k/v and gate/up projections
            q = f"model.layers.{i}."
            out[q + "input_layernorm.weight"] = w(p + "norm1.weight")
            out[q + "post_attention_layernorm.weight"] = w(p + "norm2.weight")
            if arch == "stablelm":  # LayerNorm, always with a bias
                out[q + "input_layernorm.bias"] = b(p + "norm1.bias", d)
                out[q + "post_attention_layernorm.bias"] = b(p + "norm2.bias", d)
            for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
                out[q + f"self_attn.{name}.weight"] = qkv_w[j * d:(j + 1) * d].contiguous()
                if cfg.bias:
                    out[q + f"self_attn.{name}.bias"] = qkv_b[j * d:(j + 1) * d].contiguous()
            out[q + "self_attn.o_proj.weight"] = w(p + "attn.proj.weight")
            out[q + "mlp.gate_proj.weight"] = up_w[:f].contiguous()
            out[q + "mlp.up_proj.weight"] = up_w[f:].contiguous()
            out[q + "mlp.down_proj.weight"] = w(p + "mlp.down.weight")
            if cfg.bias:  # llama only (stablelm with bias is refused)
                out[q + "self_attn.o_proj.bias"] = w(p + "attn.proj.bias")
                out[q + "mlp.gate_proj.bias"] = up_b[:f].contiguous()
                out[q + "mlp.up_proj.bias"] = up_b[f:].contiguous()
                out[q + "mlp.down_proj.bias"] = w(p + "mlp.down.bias")
    if arch == "gpt2":
        out["transformer.wte.weight"] = wte
        out["transformer.wpe.weight"] = w("embed.wpe.weight")
        out["transformer.ln_f.weight"], out["transformer.ln_f.bias"] = w("head.norm.weight"), b("head.norm.bias", d)
    elif arch == "gpt_neox":
        out["gpt_neox.embed_in.weight"] = wte
        out["gpt_neox.final_layer_norm.weight"] = w("head.norm.weight")
        out["gpt_neox.final_layer_norm.bias"] = b("head.norm.bias", d)
    else:
        out["model.embed_tokens.weight"] = wte
        out["model.norm.weight"] = w("head.norm.weight")
        if arch == "stablelm":
            out["model.norm.bias"] = b("head.norm.bias", d)
    out["lm_head.weight"] = lm_head
    return out


def build_hf_model(sd: dict, cfg, arch: str, bos: int, eos: int):
    """A transformers model (eval, fp32) holding our weights; every one of its parameters must be
    set from ours and every one of ours used."""
    from transformers import AutoModelForCausalLM

    config = hf_config(cfg, arch, bos, eos)
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


@torch.no_grad()
def logit_difference(ours, hf_model, ids: torch.Tensor) -> float:
    """max |logits_ours - logits_hf| on token ids (B, T), both in fp32."""
    a = ours(ids)
    b_ = hf_model(input_ids=ids).logits
    return float((a.float() - b_.float()).abs().max())


def save_model(hf_model, cfg, arch: str, out_dir: Path) -> None:
    """config.json (with the legacy rope keys too) and model.safetensors."""
    hf_model.save_pretrained(str(out_dir), safe_serialization=True)
    cfg_file = Path(out_dir) / "config.json"
    hcfg = json.loads(cfg_file.read_text())
    for k, v in _legacy_config_keys(arch, cfg).items():
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
    hf_model = build_hf_model(rec["state_dict"], cfg, arch, eod, eod)

    # Check the mapping on real tokens before writing anything.
    n = max(2, min(cfg.seq_len, verify_tokens))
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, tok.get_vocab_size(), (2, n), generator=gen)
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
        if output.exists():  # --force: swap the new folder in, then drop the old one
            old = output.parent / f".{output.name}.old-{os.getpid()}"
            os.replace(output, old)
            os.replace(tmp, output)
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
        else:
            os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"exported {rec['source']} (step {rec['step']}) as {record['architecture']} to {output}; "
        f"max |logit difference| {diff:.2e} on {record['verified_on']}")
    return record
