"""The logit check of the export and the import: both models on the same random tokens, fp32."""
from __future__ import annotations

import torch


def random_ids(vocab_size: int, seq_len: int, n: int = 64) -> torch.Tensor:
    """2 x min(n, seq_len) (at least 2) token ids below vocab_size, the same every time."""
    return torch.randint(0, vocab_size, (2, max(2, min(seq_len, n))), generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def logit_difference(ours, hf_model, ids: torch.Tensor) -> float:
    """max |logits_ours - logits_hf| on token ids (B, T), both in fp32."""
    a = ours(ids)
    b_ = hf_model(input_ids=ids).logits
    return float((a.float() - b_.float()).abs().max())
