"""Generation with a KV cache (the default) gives the same greedy tokens as without it, in the
library (several model options, past seq_len) and through launcher/generate.py on an imported
Llama folder (the run's end-of-document token from its manifest)."""
from __future__ import annotations

import json

import pytest

from llmtrain.model.gpt import GPT
from test_import_hf import hf_models  # noqa: F401  (the fixture)
from test_model_options import OPTION_SETS, small
from trainutil import REPO, run_python

GENERATE = REPO / "launcher" / "generate.py"


@pytest.mark.parametrize("name", ["gqa", "sinusoidal", "pythia"])
def test_greedy_generation_is_the_same_with_and_without_the_cache(name):
    """Including past seq_len, where the cached path falls back to re-reading the last seq_len tokens."""
    from llmtrain.export.generate import sample

    model = GPT(small(**OPTION_SETS[name]), seed=2).eval()
    context = [1, 5, 9, 2]
    a = sample(model, context, 30, temperature=0, num_samples=2)
    b = sample(model, context, 30, temperature=0, num_samples=2, kv_cache=False)
    assert a == b and len(a[0]) == 30
    assert sample(model, context, 8, temperature=1.0, seed=3) == sample(model, context, 8, temperature=1.0, seed=3,
                                                                        kv_cache=False)


def test_imported_folder_generates_greedily_with_and_without_cache(hf_models, tmp_path):  # noqa: F811
    from llmtrain.export.hf_import import import_hf

    import_hf(hf_models["llama"], tmp_path / "ours", log=lambda *_: None)
    outs = []
    for extra in ([], ["--no-kv-cache"]):
        r = run_python([GENERATE, tmp_path / "ours", "--prompt", "The model", "--max-new-tokens", "20",
                        "--temperature", "0", "--json", *extra])
        assert r.returncode == 0, r.stderr[-2000:]
        outs.append(json.loads(r.stdout)["tokens"])
    assert outs[0] == outs[1] and len(outs[0][0]) > 0


