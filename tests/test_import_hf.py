"""Import from Hugging Face (issue 12, item 2): transformers models built from configs with random
weights (no hub access) - GPT-2, a Llama with 8 heads and 2 KV heads and Llama 3 rope scaling, a
Pythia-style GPT-NeoX (rotary_pct 0.25, parallel residual), Mistral, a Qwen3 (QK-norm) - import with our logits
within 1e-4 of transformers', export back with the same logits, and generate; anything else is
refused in one line, before anything is written."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from trainutil import REPO, assert_one_line_error, run_python

import transformers  # noqa: E402  (the test extra installs it)

IMPORT = REPO / "launcher" / "import_hf.py"
EXPORT = REPO / "launcher" / "export_hf.py"
GENERATE = REPO / "launcher" / "generate.py"
EVALUATE = REPO / "launcher" / "evaluate.py"
VOCAB = 320


def _configs():
    t = transformers
    small = dict(vocab_size=VOCAB, bos_token_id=0, eos_token_id=0)
    llama = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8,
                 num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, **small)
    return {
        "gpt2": t.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=64, **small),
        "llama": t.LlamaConfig(**llama, tie_word_embeddings=False,
                               rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                "original_max_position_embeddings": 16}),
        "pythia": t.GPTNeoXConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                                  max_position_embeddings=64, use_parallel_residual=True,
                                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                   "partial_rotary_factor": 0.25}, tie_word_embeddings=False, **small),
        "mistral": t.MistralConfig(**llama, sliding_window=None, tie_word_embeddings=True),
        "qwen3": t.Qwen3Config(**llama, head_dim=8, tie_word_embeddings=False),
    }


def _tokenizer(folder: Path, eos: str) -> None:
    """A byte-level BPE of VOCAB-ish tokens trained on the README, saved as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator((REPO / "README.md").read_text().splitlines(),
                            trainers.BpeTrainer(vocab_size=VOCAB - 8, special_tokens=[eos],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, bos_token=eos)
    fast.save_pretrained(str(folder))


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    """name → folder of a transformers model with random weights (every tensor moved off its init,
    so that norms and biases matter) and a tokenizer."""
    base = tmp_path_factory.mktemp("hf")
    out = {}
    for name, config in _configs().items():
        torch.manual_seed(len(name))
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        folder = base / name
        model.save_pretrained(str(folder))
        _tokenizer(folder, "</s>" if name in ("llama", "mistral", "qwen3") else "<|endoftext|>")
        out[name] = folder
    return out


@torch.no_grad()
def _hf_logits(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    m = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    return m(input_ids=ids).logits


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gpt2", "llama", "pythia", "mistral", "qwen3"])
def test_import_then_export_gives_the_same_logits(name, hf_models, tmp_path):
    from llmtrain.checkpoint.hf import export
    from llmtrain.checkpoint.hf import import_hf, load_hf_folder
    from llmtrain.checkpoint.consolidate import load_gpt

    src = hf_models[name]
    rec = import_hf(src, tmp_path / "ours", log=lambda *_: None)
    assert rec["max_abs_logit_diff"] <= 1e-4
    ids = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(1))
    want = _hf_logits(src, ids)
    ours, _ = load_gpt(tmp_path / "ours")
    with torch.no_grad():
        assert float((ours(ids) - want).abs().max()) <= 1e-4
    # the shapes came from the folder
    cfg = ours.cfg
    if name == "llama":
        assert (cfg.n_head, cfg.n_kv_head, cfg.rope_scaling, cfg.rope_original_seq_len) == (8, 2, "llama3", 16)
    if name == "pythia":
        assert (cfg.parallel_residual, cfg.rotary_pct, cfg.gelu, cfg.bias) == (True, 0.25, "exact", True)
    if name == "qwen3":
        assert (cfg.qk_norm, cfg.n_kv_head, cfg.bias) == (True, 2, False)
    # export back: a transformers folder with the same logits, and our tokenizer's end-of-document token
    export(tmp_path / "ours", tmp_path / "back", log=lambda *_: None)
    torch.testing.assert_close(_hf_logits(tmp_path / "back", ids), want, atol=1e-4, rtol=0)
    back = json.loads((tmp_path / "back" / "config.json").read_text())
    if name in ("llama", "mistral", "qwen3"):
        assert back["num_key_value_heads"] == 2 and back["model_type"] == ("qwen3" if name == "qwen3" else "llama")
        assert json.loads((tmp_path / "back" / "tokenizer_config.json").read_text())["eos_token"] == "</s>"
    if name == "pythia":
        assert back["use_parallel_residual"] is True and back["rotary_pct"] == 0.25
    # the trainer's entry point gives the same weights
    model_cfg, state, tok = load_hf_folder(src)
    assert model_cfg == {k: v for k, v in rec["model_config"].items()} and tok == src / "tokenizer.json"
    assert all(torch.equal(state[k], v) for k, v in ours.state_dict().items() if k in state)


@pytest.mark.slow
def test_imported_folder_generates_and_evaluates(hf_models, tmp_path):
    """generate.py (greedy, with and without the KV cache) and evaluate.py take an imported folder;
    the context starts with the folder's own end-of-document token (Llama's </s>)."""
    from llmtrain.data.indexed import IndexedDataset, IndexedDatasetWriter
    from llmtrain.eval.generate import generate
    from llmtrain.checkpoint.hf import import_hf, is_hf_folder

    from llmtrain.checkpoint.consolidate import is_consolidated

    assert is_hf_folder(hf_models["llama"]) and not is_consolidated(hf_models["llama"])
    import_hf(hf_models["llama"], tmp_path / "ours", log=lambda *_: None)
    assert not is_hf_folder(tmp_path / "ours") and is_consolidated(tmp_path / "ours")
    manifest = json.loads((tmp_path / "ours" / "data_manifest.json").read_text())["manifests"][0]
    assert manifest["eod_token"] == "</s>"
    r = run_python([GENERATE, tmp_path / "ours", "--prompt", "The model", "--max-new-tokens", "20",
                    "--temperature", "0", "--json"])
    assert r.returncode == 0, r.stderr[-2000:]
    cached = json.loads(r.stdout)["tokens"]
    assert len(cached[0]) > 0
    assert generate(tmp_path / "ours", "The model", 20, temperature=0, kv_cache=False)["tokens"] == cached
    # evaluate.py on tokens of this tokenizer: the loss of the transformers model on the same windows
    gen = torch.Generator().manual_seed(0)
    with IndexedDatasetWriter(tmp_path / "tok_valid", np.uint16) as w:
        for _ in range(4):
            w.add_document(torch.randint(0, 300, (70,), generator=gen).tolist())
    r = run_python([EVALUATE, tmp_path / "ours", "--data", tmp_path / "tok_valid", "--out", tmp_path / "ev.json"])
    assert r.returncode == 0, r.stderr[-2000:]
    ev = json.loads((tmp_path / "ev.json").read_text())
    tokens = np.concatenate([np.asarray(w) for w in [IndexedDataset(tmp_path / "tok_valid")[i] for i in range(4)]])
    T = ev["seq_len"]
    windows = torch.from_numpy(np.stack([tokens[j * T: j * T + T + 1] for j in range(ev["windows"])]).astype(np.int64))
    with torch.no_grad():
        logits = _hf_logits(hf_models["llama"], windows[:, :-1])
    want = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))
    assert abs(ev["loss"] - float(want)) < 1e-4


@pytest.mark.slow
def test_cli_and_refusals(hf_models, tmp_path):
    from llmtrain.core.errors import ConfigError
    from llmtrain.checkpoint.hf import import_hf
    from llmtrain.checkpoint.load import ExportError

    r = run_python([IMPORT, hf_models["gpt2"], "--output", tmp_path / "gpt2"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "imported" in r.stdout and (tmp_path / "gpt2" / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt2"]  # no temporary folder left
    # an architecture that does not map: named in one line, and nothing written
    opt = tmp_path / "opt"
    shutil.copytree(hf_models["gpt2"], opt)
    cfg = json.loads((opt / "config.json").read_text())
    (opt / "config.json").write_text(json.dumps({**cfg, "model_type": "opt"}))
    r = run_python([IMPORT, opt, "--output", tmp_path / "x"])
    assert_one_line_error(r, "model_type 'opt'", "does not map")

    def refused(src, *needles, error=ExportError):
        with pytest.raises(error) as e:
            import_hf(src, tmp_path / "x", log=lambda *_: None)
        assert "\n" not in str(e.value) and all(n in str(e.value) for n in needles), str(e.value)
        assert not (tmp_path / "x").exists()

    with pytest.raises(ExportError, match="already exists"):
        import_hf(hf_models["gpt2"], tmp_path / "gpt2", log=lambda *_: None)
    # Mistral with a sliding window shorter than its context
    sw = tmp_path / "sw"
    shutil.copytree(hf_models["mistral"], sw)
    cfg = json.loads((sw / "config.json").read_text())
    (sw / "config.json").write_text(json.dumps({**cfg, "sliding_window": 16}))
    refused(sw, "sliding_window=16")
    # GPT-NeoX with another rope type; Llama with a non-SiLU activation
    neox = json.loads((hf_models["pythia"] / "config.json").read_text())
    (sw / "config.json").write_text(json.dumps({**neox, "rope_parameters": {"rope_type": "linear", "factor": 2.0}}))
    refused(sw, "rope_type 'linear'")
    (sw / "config.json").write_text(json.dumps({**cfg, "sliding_window": None, "hidden_act": "gelu"}))
    refused(sw, "hidden_act 'gelu'")
    # Qwen3 with sliding-window attention
    qwen = json.loads((hf_models["qwen3"] / "config.json").read_text())
    (sw / "config.json").write_text(json.dumps({**qwen, "use_sliding_window": True}))
    refused(sw, "use_sliding_window=true")
    # no tokenizer
    (sw / "config.json").write_text(json.dumps({**cfg, "sliding_window": None}))
    (sw / "tokenizer.json").unlink()
    refused(sw, "tokenizer.json", error=ConfigError)


@pytest.mark.slow
def test_pickle_weights_load_without_running_code(hf_models, tmp_path):
    """A folder with only pytorch_model.bin: plain tensors load (weights_only=True); a pickle that
    would run code is refused in one line, and the code does not run."""
    from llmtrain.checkpoint.hf import import_hf
    from llmtrain.checkpoint.load import ExportError
    from test_safe_load import _Evil

    folder = tmp_path / "bin"
    shutil.copytree(hf_models["gpt2"], folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    (folder / "model.safetensors").unlink()
    state = model.state_dict()
    torch.save(state, folder / "pytorch_model.bin")
    assert import_hf(folder, tmp_path / "ok", log=lambda *_: None)["max_abs_logit_diff"] <= 1e-4
    marker = tmp_path / "pwned"
    torch.save({**state, "hook": _Evil(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(ExportError) as e:
        import_hf(folder, tmp_path / "bad", log=lambda *_: None)
    assert not marker.exists() and "\n" not in str(e.value) and not (tmp_path / "bad").exists()
