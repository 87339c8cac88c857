"""Sample text from a checkpoint with the project's own GPT.

    python launcher/generate.py RUN_DIR_OR_CHECKPOINT --prompt "The" --max-new-tokens 50 --seed 0

The context starts with the run's end-of-document token (from its data manifest; as every
document in the training stream follows one), then the prompt encoded as
data_prep/tokenize_corpus.py encodes the training data. A sample stops at the end-of-document
token or after max_new_tokens. Sampling is reproducible: one torch.Generator seeded with --seed
draws every token.

With the KV cache (the default) the context is run once and each step runs only the new token
against the kept keys and values. Once the context passes seq_len, every position would shift
(the model only knows positions 0..seq_len-1), so from there each step runs the model on the last
seq_len tokens, as ``--no-kv-cache`` does from the start: both give the same greedy tokens.
"""
from __future__ import annotations

import dataclasses

import torch

from llmtrain.model.gpt import KVCache


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """logits (N, V) with everything outside the top-k and outside the top-p nucleus set to -inf."""
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        drop = cum - torch.softmax(sorted_logits, dim=-1) >= top_p  # mass before this token already >= p
        drop[:, 0] = False  # always keep the most likely token
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logits


@torch.no_grad()
def sample(model, context: list[int], max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, seed: int = 0, num_samples: int = 1, stop_id: int | None = None,
           vocab_limit: int | None = None, kv_cache: bool = True) -> list[list[int]]:
    """num_samples continuations (token ids, without the context) of ``context``.

    temperature 0 is greedy decoding. vocab_limit: ids >= it (padding rows of a vocabulary
    larger than the tokenizer's) are never drawn. kv_cache: run only the new token each step."""
    seq_len = model.cfg.seq_len
    gen = torch.Generator().manual_seed(seed)
    idx = torch.tensor([context] * num_samples, dtype=torch.long)
    out = [[] for _ in range(num_samples)]
    done = torch.zeros(num_samples, dtype=torch.bool)
    cache = KVCache(model.cfg.n_layer) if kv_cache else None
    feed = idx  # the tokens the cache has not seen
    for _ in range(max_new_tokens):
        if cache is not None and idx.shape[1] <= seq_len:
            logits = model(feed, cache=cache)[:, -1, :].float()
        else:  # no cache, or past seq_len: the last seq_len tokens from scratch
            cache = None
            logits = model(idx[:, -seq_len:])[:, -1, :].float()
        if vocab_limit is not None:
            logits = logits[:, :vocab_limit]
        if temperature <= 0:
            nxt = logits.argmax(dim=-1)
        else:
            probs = torch.softmax(filter_logits(logits / temperature, top_k, top_p), dim=-1)
            nxt = torch.multinomial(probs, 1, generator=gen).squeeze(1)
        for i in range(num_samples):
            if not done[i]:
                if stop_id is not None and int(nxt[i]) == stop_id:
                    done[i] = True
                else:
                    out[i].append(int(nxt[i]))
        if bool(done.all()):
            break
        idx = torch.cat([idx, nxt[:, None]], dim=1)
        feed = nxt[:, None]
    return out


def generate(checkpoint, prompt: str = "", max_new_tokens: int = 100, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int = 0, num_samples: int = 1,
             tokenizer: str | None = None, kv_cache: bool = True) -> dict:
    """{"prompt", "samples": [text, ...], "step", "source"} for a checkpoint."""
    from llmtrain.checkpoint.load import (ExportError, eod_token_id, load_model, load_tokenizer, run_info,
                                          tokenizer_path)

    if max_new_tokens < 1 or num_samples < 1:
        raise ExportError("--max-new-tokens and --num-samples must be >= 1")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ExportError(f"--top-p must be in (0, 1] (got {top_p})")
    if temperature < 0:
        raise ExportError(f"--temperature must be >= 0 (got {temperature}; 0 is greedy)")
    info = run_info(checkpoint)
    tok = load_tokenizer(tokenizer_path(info, tokenizer))
    eod = eod_token_id(info, tok)
    model, rec = load_model(checkpoint)
    # one document: with or without the KV cache, no document mask (the cache path has none)
    model.cfg = dataclasses.replace(model.cfg, document_mask_token=None)
    context = [eod] + tok.encode(prompt, add_special_tokens=False).ids
    if len(context) > model.cfg.seq_len:
        context = context[-model.cfg.seq_len:]
    ids = sample(model, context, max_new_tokens, temperature, top_k, top_p, seed, num_samples, stop_id=eod,
                 vocab_limit=tok.get_vocab_size(), kv_cache=kv_cache)
    return {"prompt": prompt, "samples": [tok.decode(s, skip_special_tokens=False) for s in ids],
            "tokens": ids, "step": rec["step"], "source": rec["source"]}
