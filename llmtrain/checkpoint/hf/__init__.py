"""Hugging Face transformers export and import: one spec per architecture, read both ways.

Each module here with a ``SPEC`` (``spec.ArchSpec``) is one transformers architecture: which of
our models it represents exactly (``layout`` and ``options``), the config it writes, the
parameter-name table used forwards by the export and backwards by the import (with its tensor
transforms: transposes, fused q/k/v and gate/up splits, GPT-NeoX's per-head order), and, for an
architecture that imports, the config.json ``model_type`` values it reads and how:

| module   | positions | norm      | mlp    | bias  | also                                       | imports        |
|----------|-----------|-----------|--------|-------|--------------------------------------------|----------------|
| gpt2     | learned   | layernorm | gelu   | any   | exact GELU; absent biases written as 0     | gpt2           |
| llama    | rotary    | rmsnorm   | swiglu | any   | GQA, Llama 3 rope scaling                  | llama, mistral |
| qwen3    | rotary    | rmsnorm   | swiglu | false | qk_norm (per-head RMSNorm), GQA            | qwen3          |
| gpt_neox | rotary    | layernorm | gelu   | any   | parallel residual, rotary_pct, exact GELU  | gpt_neox       |
| stablelm | rotary    | layernorm | swiglu | false | rotary_pct (partial_rotary_factor), GQA    | -              |

Everything else is refused in one line: a layout no spec has (``spec.NO_ARCHITECTURE``: fixed
sinusoidal positions, learned positions with RMSNorm or SwiGLU, RMSNorm with a plain GELU, ...), or
an option the matching spec lacks (``spec.OPTIONS``: grouped-query attention on GPT-2, a parallel
residual outside GPT-NeoX, ...). Why the mappings are exact: our LayerNorm without bias equals a
LayerNorm whose bias is 0; our rotary embedding rotates the halves (x[:h/2], x[h/2:]) with
inv_freq = theta^(-2i/h), which is ``rotate_half`` of Llama / GPT-NeoX / StableLM; a muP model's
multipliers are folded into the query and final-norm weights (llmtrain.model.mup). Both drivers
check the logits of the two models on the same tokens (fp32, max difference <= 1e-4) before
writing anything: the drivers ``to_hf.export`` (launcher/export_hf.py) and ``from_hf.import_hf``
(launcher/import_hf.py).

Adding an architecture is one new module in this package, found by ``spec.specs()``:

    SPEC = ArchSpec(name="mixtral", layout=dict(pos_encoding="rotary", norm="rmsnorm", mlp="swiglu", ...),
                    options=frozenset({"gqa", ...}), config=config, table=table,
                    reads=("mixtral",), from_config=from_config)

with ``config(cfg, bos, eos)`` building its transformers config, ``table(cfg)`` listing every
parameter once as ``spec.Entry`` rows (reuse ``llama.layers`` or ``spec.head`` where the names
are the same), and, to import, ``from_config(hc, refuse)`` returning our model section (call
``refuse("what")`` for anything that does not map). Among the specs whose layout a model matches,
the most specific layout that represents every option the model uses wins. A model option that no
spec had before (experts, say) also needs its row in ``spec.OPTIONS``, so that the other specs
refuse it by name. Test it like tests/test_export.py and tests/test_import_hf.py do: random
weights both ways, the same logits.

The names below are the package's interface (the launchers and the trainer's
``checkpoint.init_from`` import them from here).
"""
from __future__ import annotations

from llmtrain.checkpoint.hf.from_hf import (import_hf, is_hf_folder, load_hf_folder, model_config_from_hf,
                                            read_hf_config)
from llmtrain.checkpoint.hf.to_hf import (build_hf_model, choose_architecture, export, hf_state_dict, save_model,
                                          spec_for)
from llmtrain.checkpoint.hf.spec import ArchSpec, specs
from llmtrain.checkpoint.hf.verify import logit_difference
from llmtrain.checkpoint.load import ExportError

__all__ = ["ArchSpec", "ExportError", "build_hf_model", "choose_architecture", "export", "hf_state_dict",
           "import_hf", "is_hf_folder", "load_hf_folder", "logit_difference", "model_config_from_hf",
           "read_hf_config", "save_model", "spec_for", "specs"]
