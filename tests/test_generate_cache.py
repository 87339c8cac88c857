"""Generation with a KV cache (the default) gives the same greedy tokens as without it, for
several model options and past seq_len (the CLI on an imported Llama: tests/test_import_hf.py)."""
from __future__ import annotations

import pytest

from llmtrain.model.gpt import GPT
from test_model_options import OPTION_SETS, small


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gqa", "sinusoidal", "pythia"])
def test_greedy_generation_is_the_same_with_and_without_the_cache(name):
    """Including past seq_len, where the cached path falls back to re-reading the last seq_len tokens."""
    from llmtrain.eval.generate import sample

    model = GPT(small(**OPTION_SETS[name]), seed=2).eval()
    context = [1, 5, 9, 2]
    a = sample(model, context, 20, temperature=0, num_samples=2)
    b = sample(model, context, 20, temperature=0, num_samples=2, kv_cache=False)
    assert a == b and len(a[0]) == 20  # 4 + 20 tokens: past seq_len=16
    assert sample(model, context, 8, temperature=1.0, seed=3) == sample(model, context, 8, temperature=1.0, seed=3,
                                                                        kv_cache=False)
