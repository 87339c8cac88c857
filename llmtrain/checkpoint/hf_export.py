"""Export a checkpoint as a Hugging Face transformers model folder that
``AutoModelForCausalLM.from_pretrained(DIR)`` and ``AutoTokenizer.from_pretrained(DIR)`` load
with no custom code.

    python launcher/export_hf.py RUN_DIR_OR_CHECKPOINT --output DIR

Each combination of the model's options maps onto the one existing architecture that computes
exactly the same function (the export runs both models on the same tokens and refuses to write
a folder whose logits differ):

| pos_encoding | norm      | mlp    | bias  | transformers architecture                                 |
|--------------|-----------|--------|-------|-----------------------------------------------------------|
| learned      | layernorm | gelu   | any   | GPT-2 (GPT2LMHeadModel; absent biases written as 0)        |
| rotary       | rmsnorm   | swiglu | any   | Llama (attention_bias = mlp_bias = model.bias)            |
| rotary       | rmsnorm   | swiglu | false | Qwen3, when model.qk_norm (per-head RMSNorm on q and k)    |
| rotary       | layernorm | gelu   | any   | GPT-NeoX (absent biases 0)                                |
| rotary       | layernorm | swiglu | false | StableLM (sequential residual, no qk-norm)                |
| rotary       | layernorm | swiglu | true  | refused: StableLM has no MLP / output-projection biases   |
| rotary       | rmsnorm   | gelu   | any   | refused: no architecture pairs RMSNorm with a plain GELU   |
| learned      | rmsnorm   | any    | any   | refused: no architecture pairs learned positions, RMSNorm  |
| learned      | layernorm | swiglu | any   | refused: no architecture pairs learned positions, SwiGLU   |
| sinusoidal   | any       | any    | any   | refused: no causal-LM architecture has fixed sin/cos       |

The other options: model.n_kv_head → ``num_key_value_heads`` (Llama, Qwen3, StableLM; refused
for GPT-2 and GPT-NeoX, which have none); model.parallel_residual → GPT-NeoX's
``use_parallel_residual`` (refused elsewhere); model.rotary_pct → GPT-NeoX's ``rotary_pct`` /
StableLM's ``partial_rotary_factor``; model.rope_scaling=llama3 → Llama's rope_parameters
(rope_type llama3); model.gelu exact → ``gelu``, tanh → ``gelu_pytorch_tanh`` (the same kernels
as ours); z-loss changes only training. Tied or untied embeddings map to
``tie_word_embeddings``; the context length is model.seq_len.

Why these are exact: our LayerNorm without bias equals a LayerNorm whose bias is 0; our rotary
embedding rotates the halves (x[:h/2], x[h/2:]) with inv_freq = theta^(-2i/h), which is
``rotate_half`` of Llama / GPT-NeoX / StableLM with the full head rotated; our fused qkv
projection is [q heads | k heads | v heads], split into q/k/v for Llama and StableLM and
re-ordered per head ([q_h, k_h, v_h] for each head h) for GPT-NeoX; our SwiGLU up projection is
[gate | value], split into gate_proj and up_proj.

The tokenizer is our tokenizer.json wrapped in PreTrainedTokenizerFast, with the run's
end-of-document token (its manifest's eod_token; ``<|endoftext|>`` when none is recorded) as bos
and eos, and ``split_special_tokens`` on, so that a literal end-of-document string in text is
encoded as text exactly as data_prep/tokenize_corpus.py encoded the training data.

The name mapping is one table per architecture (``param_table``), read forwards here and
backwards by the import (llmtrain/checkpoint/hf_import.py).

The folder is written under a temporary name beside DIR and renamed into place when complete.
"""
from __future__ import annotations

import dataclasses

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from llmtrain.checkpoint.load import (ExportError, eod_token, eod_token_id, load_model, load_tokenizer, run_info,
                                      tokenizer_path)
from llmtrain.core.files import replace_folder

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
    """'gpt2' | 'llama' | 'qwen3' | 'gpt_neox' | 'stablelm' for a ModelConfig, or ExportError
    saying why no architecture represents it exactly."""
    arch = _base_architecture(cfg)
    if arch == "llama" and cfg.qk_norm and not cfg.bias:
        arch = "qwen3"
    why = None
    if cfg.qk_norm and arch != "qwen3":
        why = ("model.qk_norm=true: only Qwen3 has the same per-head QK-norm, and it needs RMSNorm, SwiGLU and "
               "model.bias=false")
    elif cfg.kv_heads != cfg.n_head and arch in ("gpt2", "gpt_neox"):
        why = f"model.n_kv_head={cfg.n_kv_head}: {arch} has no grouped-query attention (Llama-style models do)"
    elif cfg.parallel_residual and arch != "gpt_neox":
        why = "model.parallel_residual=true: only GPT-NeoX (rotary, LayerNorm, GELU) has this residual"
    elif cfg.rotary_pct != 1.0 and arch not in ("gpt_neox", "stablelm"):
        why = f"model.rotary_pct={cfg.rotary_pct}: only GPT-NeoX and StableLM rotate part of each head"
    elif cfg.rope_scaling and arch not in ("llama", "qwen3"):
        why = f"model.rope_scaling={cfg.rope_scaling}: only Llama-style models take Llama 3 rope scaling here"
    elif cfg.gelu != "tanh" and cfg.mlp == "gelu" and arch not in ("gpt2", "gpt_neox"):
        why = "model.gelu=exact"
    if why:
        raise ExportError(f"cannot export model exactly as {arch}: {why}")
    return arch


def _base_architecture(cfg) -> str:
    pos, norm, mlp, bias = cfg.pos_encoding, cfg.norm, cfg.mlp, bool(cfg.bias)
    why = None
    if pos == "sinusoidal":
        why = ("fixed sinusoidal positions: no transformers causal-LM architecture adds a sin/cos table to its "
               "embeddings (use learned or rotary positions to export)")
    elif pos == "learned":
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


def rope_parameters(cfg) -> dict:
    """transformers' rope_parameters for our rotary settings."""
    if cfg.rope_scaling == "llama3":
        return {"rope_type": "llama3", "rope_theta": float(cfg.rope_theta), "factor": float(cfg.rope_scaling_factor),
                "low_freq_factor": float(cfg.rope_low_freq_factor),
                "high_freq_factor": float(cfg.rope_high_freq_factor),
                "original_max_position_embeddings": int(cfg.rope_original_seq_len)}
    return {"rope_type": "default", "rope_theta": float(cfg.rope_theta)}


def hf_config(cfg, arch: str, bos: int, eos: int):
    """The transformers config of architecture ``arch`` for our ModelConfig."""
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig, Qwen3Config, StableLmConfig

    common = dict(vocab_size=cfg.vocab_size, tie_word_embeddings=bool(cfg.tie_embeddings), bos_token_id=bos,
                  eos_token_id=eos, initializer_range=cfg.init_std)
    d, H, L, KV = cfg.d_model, cfg.n_head, cfg.n_layer, cfg.kv_heads
    rope = rope_parameters(cfg)
    act = "gelu_pytorch_tanh" if cfg.gelu == "tanh" else "gelu"
    if arch == "gpt2":
        return GPT2Config(n_positions=cfg.seq_len, n_embd=d, n_layer=L, n_head=H, n_inner=cfg.ffn_dim,
                          activation_function=act, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
                          attn_pdrop=cfg.dropout, layer_norm_epsilon=cfg.norm_eps, scale_attn_weights=True,
                          scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False, **common)
    if arch == "llama":
        return LlamaConfig(hidden_size=d, intermediate_size=cfg.ffn_dim, num_hidden_layers=L, num_attention_heads=H,
                           num_key_value_heads=KV, head_dim=d // H, hidden_act="silu",
                           max_position_embeddings=cfg.seq_len, rms_norm_eps=cfg.norm_eps, rope_parameters=rope,
                           attention_bias=bool(cfg.bias), mlp_bias=bool(cfg.bias), attention_dropout=cfg.dropout,
                           pretraining_tp=1, **common)
    if arch == "qwen3":
        return Qwen3Config(hidden_size=d, intermediate_size=cfg.ffn_dim, num_hidden_layers=L, num_attention_heads=H,
                           num_key_value_heads=KV, head_dim=d // H, hidden_act="silu",
                           max_position_embeddings=cfg.seq_len, rms_norm_eps=cfg.norm_eps, rope_parameters=rope,
                           attention_bias=False, use_sliding_window=False, attention_dropout=cfg.dropout, **common)
    if arch == "gpt_neox":
        return GPTNeoXConfig(hidden_size=d, num_hidden_layers=L, num_attention_heads=H, intermediate_size=cfg.ffn_dim,
                             hidden_act=act, max_position_embeddings=cfg.seq_len,
                             layer_norm_eps=cfg.norm_eps, use_parallel_residual=bool(cfg.parallel_residual),
                             rope_parameters={**rope, "partial_rotary_factor": float(cfg.rotary_pct)},
                             attention_bias=bool(cfg.bias),
                             attention_dropout=cfg.dropout, hidden_dropout=cfg.dropout, **common)
    if arch == "stablelm":
        return StableLmConfig(hidden_size=d, intermediate_size=cfg.ffn_dim, num_hidden_layers=L,
                              num_attention_heads=H, num_key_value_heads=KV, hidden_act="silu",
                              max_position_embeddings=cfg.seq_len, layer_norm_eps=cfg.norm_eps,
                              rope_parameters={**rope, "partial_rotary_factor": float(cfg.rotary_pct)},
                              use_qkv_bias=False,
                              qk_layernorm=False, use_parallel_residual=False, hidden_dropout=cfg.dropout,
                              attention_dropout=cfg.dropout, **common)
    raise ValueError(arch)


# Keys older transformers (4.x) read from config.json instead of rope_parameters; written too so
# that an exported folder loads the same on either side of that change.
def _legacy_config_keys(arch: str, cfg) -> dict:
    if arch in ("llama", "qwen3"):
        scaling = {"rope_scaling": rope_parameters(cfg)} if cfg.rope_scaling else {}
        return {"rope_theta": float(cfg.rope_theta), **scaling}
    if arch == "gpt_neox":
        return {"rotary_pct": float(cfg.rotary_pct), "rotary_emb_base": float(cfg.rope_theta)}
    if arch == "stablelm":
        return {"rope_theta": float(cfg.rope_theta), "partial_rotary_factor": float(cfg.rotary_pct)}
    return {}


@dataclass(frozen=True)
class Entry:
    """One row of an architecture's name-mapping table, used in both directions: our parameter
    ``ours`` becomes the transformers tensors ``hf`` through ``to_hf`` and comes back through
    ``from_hf``. ``ours`` None: a tensor our model does not have (a bias of a bias-free model),
    written as zeros on export and required to be zero on import."""
    ours: str | None
    hf: tuple[str, ...]
    to_hf: Callable[[torch.Tensor], tuple[torch.Tensor, ...]]
    from_hf: Callable[[tuple[torch.Tensor, ...]], torch.Tensor]


def _same(ours, hf):
    return Entry(ours, (hf,), lambda t: (t,), lambda ts: ts[0])


def _transposed(ours, hf):  # GPT-2's Conv1D stores (in, out)
    return Entry(ours, (hf,), lambda t: (t.t().contiguous(),), lambda ts: ts[0].t().contiguous())


def _split(ours, hfs, sizes):  # one fused tensor of ours, several of theirs (rows in order)
    return Entry(ours, tuple(hfs), lambda t: tuple(x.contiguous() for x in t.split(sizes)), lambda ts: torch.cat(ts))


def _zeros(hf, size):
    return Entry(None, (hf,), lambda _: (torch.zeros(size),), lambda ts: ts[0])


def _per_head_qkv(ours, hf, H):
    """GPT-NeoX views its fused qkv as (heads, [q, k, v], head_dim); ours is ([q, k, v], heads, head_dim)."""
    def to_hf(t):
        return (t.reshape(3, H, -1, *t.shape[1:]).transpose(0, 1).reshape(t.shape).contiguous(),)

    def from_hf(ts):
        t = ts[0]
        return t.reshape(H, 3, -1, *t.shape[1:]).transpose(0, 1).reshape(t.shape).contiguous()
    return Entry(ours, (hf,), to_hf, from_hf)


def param_table(cfg, arch: str) -> list[Entry]:
    """The name-mapping table of ``arch`` for our ModelConfig: every parameter of ours and of the
    transformers model, once. Export (hf_state_dict) and import (hf_import.our_state_dict) both
    read it, so the two directions cannot disagree."""
    d, H, f = cfg.d_model, cfg.n_head, cfg.ffn_dim
    kv = cfg.kv_heads * (d // H)
    t: list[Entry] = []

    def bias(ours, hf, size, how=_same):  # a bias, or zeros where our model has none (exact: adding 0)
        t.append(how(ours, hf) if cfg.bias else _zeros(hf, size))

    for i in range(cfg.n_layer):
        p = f"blocks.{i}."
        if arch == "gpt2":
            q = f"transformer.h.{i}."
            t += [_same(p + "norm1.weight", q + "ln_1.weight"), _same(p + "norm2.weight", q + "ln_2.weight")]
            bias(p + "norm1.bias", q + "ln_1.bias", d)
            bias(p + "norm2.bias", q + "ln_2.bias", d)
            t += [_transposed(p + "attn.qkv.weight", q + "attn.c_attn.weight"),
                  _transposed(p + "attn.proj.weight", q + "attn.c_proj.weight"),
                  _transposed(p + "mlp.up.weight", q + "mlp.c_fc.weight"),
                  _transposed(p + "mlp.down.weight", q + "mlp.c_proj.weight")]
            bias(p + "attn.qkv.bias", q + "attn.c_attn.bias", 3 * d)
            bias(p + "attn.proj.bias", q + "attn.c_proj.bias", d)
            bias(p + "mlp.up.bias", q + "mlp.c_fc.bias", f)
            bias(p + "mlp.down.bias", q + "mlp.c_proj.bias", d)
        elif arch == "gpt_neox":
            q = f"gpt_neox.layers.{i}."
            t += [_same(p + "norm1.weight", q + "input_layernorm.weight"),
                  _same(p + "norm2.weight", q + "post_attention_layernorm.weight"),
                  _per_head_qkv(p + "attn.qkv.weight", q + "attention.query_key_value.weight", H),
                  _same(p + "attn.proj.weight", q + "attention.dense.weight"),
                  _same(p + "mlp.up.weight", q + "mlp.dense_h_to_4h.weight"),
                  _same(p + "mlp.down.weight", q + "mlp.dense_4h_to_h.weight")]
            bias(p + "norm1.bias", q + "input_layernorm.bias", d)
            bias(p + "norm2.bias", q + "post_attention_layernorm.bias", d)
            if cfg.bias:  # attention biases exist in GPT-NeoX only with attention_bias (written so)
                t += [_per_head_qkv(p + "attn.qkv.bias", q + "attention.query_key_value.bias", H),
                      _same(p + "attn.proj.bias", q + "attention.dense.bias")]
            bias(p + "mlp.up.bias", q + "mlp.dense_h_to_4h.bias", f)
            bias(p + "mlp.down.bias", q + "mlp.dense_4h_to_h.bias", d)
        else:  # llama, mistral, qwen3, stablelm: separate q/k/v and gate/up projections
            q = f"model.layers.{i}."
            t += [_same(p + "norm1.weight", q + "input_layernorm.weight"),
                  _same(p + "norm2.weight", q + "post_attention_layernorm.weight")]
            if arch == "stablelm":  # LayerNorm, always with a bias
                bias(p + "norm1.bias", q + "input_layernorm.bias", d)
                bias(p + "norm2.bias", q + "post_attention_layernorm.bias", d)
            qkv = [q + f"self_attn.{n}_proj.weight" for n in "qkv"]
            t += [_split(p + "attn.qkv.weight", qkv, [d, kv, kv]),
                  _same(p + "attn.proj.weight", q + "self_attn.o_proj.weight"),
                  _split(p + "mlp.up.weight", [q + "mlp.gate_proj.weight", q + "mlp.up_proj.weight"], [f, f]),
                  _same(p + "mlp.down.weight", q + "mlp.down_proj.weight")]
            if cfg.qk_norm:  # qwen3: one RMSNorm over head_dim, shared by the heads, as ours
                t += [_same(p + "attn.q_norm.weight", q + "self_attn.q_norm.weight"),
                      _same(p + "attn.k_norm.weight", q + "self_attn.k_norm.weight")]
            if cfg.bias:  # llama, mistral: attention_bias = mlp_bias = model.bias (others refuse biases)
                t += [_split(p + "attn.qkv.bias", [q + f"self_attn.{n}_proj.bias" for n in "qkv"], [d, kv, kv]),
                      _same(p + "attn.proj.bias", q + "self_attn.o_proj.bias"),
                      _split(p + "mlp.up.bias", [q + "mlp.gate_proj.bias", q + "mlp.up_proj.bias"], [f, f]),
                      _same(p + "mlp.down.bias", q + "mlp.down_proj.bias")]
    if arch == "gpt2":
        emb, norm = "transformer.wte.weight", "transformer.ln_f."
        t.append(_same("embed.wpe.weight", "transformer.wpe.weight"))
    elif arch == "gpt_neox":
        emb, norm = "gpt_neox.embed_in.weight", "gpt_neox.final_layer_norm."
    else:
        emb, norm = "model.embed_tokens.weight", "model.norm."
    t.append(_same("head.norm.weight", norm + "weight"))
    if arch in ("gpt2", "gpt_neox", "stablelm"):
        bias("head.norm.bias", norm + "bias", d)
    if cfg.tie_embeddings:  # one tensor of ours, two names of theirs
        t.append(Entry("embed.wte.weight", (emb, "lm_head.weight"), lambda x: (x, x), lambda ts: ts[0]))
    else:
        t += [_same("embed.wte.weight", emb), _same("head.out.weight", "lm_head.weight")]
    return t


def hf_state_dict(sd: dict, cfg, arch: str) -> dict:
    """Our GPT state dict (llmtrain.model.gpt names) → the transformers model's state dict."""
    out = {}
    for e in param_table(cfg, arch):
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
    ours.cfg = dataclasses.replace(ours.cfg, document_mask_token=None)  # transformers' models attend causally
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
        replace_folder(tmp, output)  # with --force, an existing folder is swapped out
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"exported {rec['source']} (step {rec['step']}) as {record['architecture']} to {output}; "
        f"max |logit difference| {diff:.2e} on {record['verified_on']}")
    return record
