"""Export to transformers, generation and evaluation, on checkpoints trained for real: one
process (GPT-2 layout), ZeRO-3 x2 (Llama layout, untied) and pipeline x2 (GPT-NeoX layout, with
biases). The exported folders are loaded by transformers with no custom code and must give the
project's own logits; the tokenizer must encode as ours; bad input gets one line."""
from __future__ import annotations

import itertools
import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from trainutil import REPO, SMALL, assert_one_line_error, env, run_python, torchrun_cmd


PRETRAIN = REPO / "launcher" / "pretrain.py"
EXPORT = REPO / "launcher" / "export_hf.py"
GENERATE = REPO / "launcher" / "generate.py"
EVALUATE = REPO / "launcher" / "evaluate.py"

LAYOUTS = {  # name: (launch, model options, expected transformers class)
    "single": ([], ["model.pos_encoding=learned", "model.norm=layernorm", "model.mlp=gelu",
                    "model.tie_embeddings=true"], "GPT2LMHeadModel"),
    "zero3": (["--deepspeed_config", REPO / "ds_configs/zero3.json"],
              ["model.pos_encoding=rotary", "model.norm=rmsnorm", "model.mlp=swiglu", "model.tie_embeddings=false"],
              "LlamaForCausalLM"),
    "pipe": (["--deepspeed_config", REPO / "ds_configs/zero1.json"],
             ["parallel.pipeline_stages=2", "model.pos_encoding=rotary", "model.norm=layernorm", "model.mlp=gelu",
              "model.bias=true"],
             "GPTNeoXForCausalLM"),
}


@pytest.fixture(scope="module")
def runs(token_data, tmp_path_factory):
    """Three tiny runs of 2 steps; the two 2-process launches run while the single one trains."""
    base = tmp_path_factory.mktemp("export_runs")
    common = [f"data.prefix={token_data}", *SMALL, "train.max_steps=2", "log.tensorboard=false"]
    procs, logs = {}, {}
    for name in ("zero3", "pipe"):
        launch, opts, _ = LAYOUTS[name]
        logs[name] = open(base / f"{name}.log", "w")
        procs[name] = subprocess.Popen(torchrun_cmd(2, *launch, "--run-dir", base / name, *common, *opts), cwd=REPO,
                                       env=env(), stdout=logs[name], stderr=subprocess.STDOUT)
    r = run_python([PRETRAIN, "--run-dir", base / "single", *common, *LAYOUTS["single"][1]])
    assert r.returncode == 0, r.stderr[-3000:]
    for name, p in procs.items():
        assert p.wait(timeout=600) == 0, (name, (base / f"{name}.log").read_text()[-3000:])
        logs[name].close()
    return {name: base / name for name in LAYOUTS}


@pytest.fixture(scope="module")
def exports(runs, tmp_path_factory):
    """The single-process run exported by the CLI (named by its run folder); the ZeRO-3 run (by its
    checkpoints/ folder) and the pipeline run (by its step folder) by the library in this process."""
    from llmtrain.checkpoint.hf import export

    base = tmp_path_factory.mktemp("exported")
    r = run_python([EXPORT, runs["single"], "--output", base / "single"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "exported" in r.stdout and "GPT2LMHeadModel" in r.stdout, r.stdout
    export(runs["zero3"] / "checkpoints", base / "zero3")
    export(next((runs["pipe"] / "checkpoints").glob("global_step*")), base / "pipe")
    assert sorted(x.name for x in base.iterdir()) == sorted(LAYOUTS)  # no temporary folders left behind
    return {name: base / name for name in LAYOUTS}


def valid_windows(run: Path, n: int = 2) -> torch.Tensor:
    from llmtrain.data.indexed import IndexedDataset

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    T = cfg["model"]["seq_len"]
    ds = IndexedDataset(f"{cfg['data']['prefix']}_valid")
    return torch.from_numpy(np.stack([ds.tokens[j * T: j * T + T] for j in range(n)]).astype(np.int64))


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_exported_model_gives_our_logits(layout, runs, exports):
    from transformers import AutoModelForCausalLM

    from llmtrain.checkpoint.consolidate import load_gpt

    ours, rec = load_gpt(runs[layout])
    hf = AutoModelForCausalLM.from_pretrained(exports[layout], dtype=torch.float32).eval()
    assert type(hf).__name__ == LAYOUTS[layout][2]
    assert hf.config.tie_word_embeddings == ours.cfg.tie_embeddings
    if not ours.cfg.tie_embeddings:
        assert not torch.equal(hf.get_output_embeddings().weight, hf.get_input_embeddings().weight)
    ids = valid_windows(runs[layout])  # real text, the full context length
    with torch.no_grad():
        a, b = ours(ids), hf(input_ids=ids).logits
    diff = float((a - b).abs().max())
    print(f"{layout}: max |logit difference| {diff:.3g}")
    assert a.shape == b.shape and diff <= 1e-4
    record = json.loads((exports[layout] / "llmtrain_export.json").read_text())
    assert record["step"] == rec["step"] == 2 and record["max_abs_logit_diff"] <= 1e-4


@pytest.mark.slow
def test_every_representable_option_set_maps_exactly(tmp_path):
    """All 32 option sets with random weights (biases and norm weights perturbed so a dropped or
    misplaced one shows): representable ones round-trip through save/load with our logits, the
    rest are refused naming the reason."""
    from transformers import AutoModelForCausalLM

    from llmtrain.config import ModelConfig
    from llmtrain.checkpoint.hf import build_hf_model, choose_architecture, save_model
    from llmtrain.checkpoint.load import ExportError
    from llmtrain.model.gpt import GPT

    seen = {}
    for pos, norm, mlp, bias, tie in itertools.product(["learned", "rotary"], ["layernorm", "rmsnorm"],
                                                       ["gelu", "swiglu"], [False, True], [True, False]):
        cfg = ModelConfig(n_layer=2, d_model=32, n_head=4, seq_len=16, vocab_size=97, pos_encoding=pos, norm=norm,
                          mlp=mlp, bias=bias, tie_embeddings=tie, init_std=0.2, rope_theta=500.0, norm_eps=1e-6)
        try:
            arch = choose_architecture(cfg)
        except ExportError as e:
            seen[(pos, norm, mlp, bias)] = "refused"
            assert "cannot export" in str(e) and "\n" not in str(e)
            continue
        seen[(pos, norm, mlp, bias)] = arch
        model = GPT(cfg, seed=3).eval()
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith("bias") or "norm" in n:
                    p.add_(0.3 * torch.randn_like(p))
        sd = {k: v for k, v in model.state_dict().items() if not k.endswith(("rope_cos", "rope_sin"))}
        out = tmp_path / f"{pos}-{norm}-{mlp}-{bias}-{tie}"
        save_model(build_hf_model(sd, cfg, arch, 0, 0), cfg, arch, out)
        hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        ids = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            diff = float((model(ids) - hf(input_ids=ids).logits).abs().max())
        assert diff <= 1e-4, (pos, norm, mlp, bias, tie, arch, diff)
    assert {k: v for k, v in seen.items() if v != "refused"} == {
        ("learned", "layernorm", "gelu", False): "gpt2", ("learned", "layernorm", "gelu", True): "gpt2",
        ("rotary", "layernorm", "gelu", False): "gpt_neox", ("rotary", "layernorm", "gelu", True): "gpt_neox",
        ("rotary", "layernorm", "swiglu", False): "stablelm",
        ("rotary", "rmsnorm", "swiglu", False): "llama", ("rotary", "rmsnorm", "swiglu", True): "llama",
    }


@pytest.mark.slow
def test_exported_tokenizer_encodes_like_ours(runs, exports):
    from transformers import AutoTokenizer

    from llmtrain_prep.tokenize_corpus import load_tokenizer
    from llmtrain.data.indexed import IndexedDataset

    cfg = yaml.safe_load((runs["single"] / "config.yaml").read_text())
    manifest = json.loads((runs["single"] / "data_manifest.json").read_text())["manifests"][0]
    ours, eod = load_tokenizer(manifest["tokenizer"]["path"])  # exactly as the training data was encoded
    hf = AutoTokenizer.from_pretrained(exports["single"])
    assert hf.eos_token == hf.bos_token == "<|endoftext|>" and hf.eos_token_id == hf.bos_token_id == eod
    ds = IndexedDataset(f"{cfg['data']['prefix']}_valid")
    texts = ["", " leading space", "tabs\tand\nnewlines\n\n", "naïve café — 日本語 🙂",
             "a literal <|endoftext|> in text", "x" * 300]
    for i in range(min(20, len(ds))):  # real documents: decode the stored ids, re-encode with both
        doc = ds[i].tolist()
        assert doc[-1] == eod
        text = ours.decode(doc[:-1], skip_special_tokens=False)
        assert ours.encode(text, add_special_tokens=False).ids == doc[:-1]
        texts.append(text)
    for t in texts:
        want = ours.encode(t, add_special_tokens=False).ids
        assert hf(t)["input_ids"] == want, t[:60]
        assert hf.decode(want) == t


@pytest.mark.slow
def test_unrepresentable_model_is_refused(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["single"], run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["model"]["norm"] = "rmsnorm"  # learned positions + RMSNorm: no architecture has both
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    r = run_python([EXPORT, run, "--output", tmp_path / "hf"])
    assert_one_line_error(r, "cannot export", "pos_encoding=learned, norm=rmsnorm",
                          "no transformers architecture has both")
    assert not (tmp_path / "hf").exists() and [p.name for p in tmp_path.iterdir()] == ["run"]


@pytest.mark.slow
def test_bad_input_gives_one_line(runs, exports, tmp_path):
    from llmtrain.checkpoint.hf import export
    from llmtrain.checkpoint.load import ExportError

    run = tmp_path / "run"
    shutil.copytree(runs["single"], run)
    step = next((run / "checkpoints").glob("global_step*"))
    # an existing output folder is not overwritten without --force
    with pytest.raises(ExportError, match="already exists; choose another --output or pass --force"):
        export(run, exports["single"])
    # a damaged model file
    f = next(step.glob("*model_states.pt"))
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 3])
    r = run_python([EXPORT, run, "--output", tmp_path / "hf"])
    assert_one_line_error(r, "cannot be read", "incomplete or damaged")
    # a step folder without its model file
    f.unlink()
    for cmd in ([EXPORT, step, "--output", tmp_path / "hf"], [EVALUATE, step]):
        assert_one_line_error(run_python(cmd), str(step), "not a DeepSpeed checkpoint folder")
    f.write_bytes(data)
    # the tokenizer the run names is gone
    dm = json.loads((run / "data_manifest.json").read_text())
    dm["manifests"][0]["tokenizer"]["path"] = str(tmp_path / "gone" / "tokenizer.json")
    (run / "data_manifest.json").write_text(json.dumps(dm))
    for cmd in ([EXPORT, run, "--output", tmp_path / "hf"], [GENERATE, run]):
        assert_one_line_error(run_python(cmd), "gone/tokenizer.json", "tokenizer not found", "--tokenizer")
    assert not (tmp_path / "hf").exists()


@pytest.mark.slow
def test_generate_is_deterministic_for_a_seed(runs, exports):
    args = [GENERATE, runs["single"], "--prompt", "The function", "--max-new-tokens", "12", "--num-samples", "2",
            "--top-k", "50", "--top-p", "0.95", "--json"]
    a = run_python([*args, "--seed", "7"])
    b = run_python([*args, "--seed", "7"])
    assert a.returncode == 0 and b.returncode == 0, a.stderr[-2000:]
    ra, rb = json.loads(a.stdout), json.loads(b.stdout)
    assert ra == rb and len(ra["samples"]) == 2 and all(len(t) >= 1 for t in ra["tokens"])

    # in process: another seed differs; greedy decoding equals transformers' greedy generate
    from transformers import AutoModelForCausalLM

    from llmtrain.eval.generate import sample
    from llmtrain.checkpoint.consolidate import load_gpt

    model, _ = load_gpt(runs["single"])
    ctx = valid_windows(runs["single"], 1)[0, :8].tolist()
    s1 = sample(model, ctx, 12, seed=1, num_samples=3)
    assert s1 == sample(model, ctx, 12, seed=1, num_samples=3) and s1 != sample(model, ctx, 12, seed=2, num_samples=3)
    hf = AutoModelForCausalLM.from_pretrained(exports["single"], dtype=torch.float32).eval()
    hf.generation_config.eos_token_id = None  # run all 12 steps, as sample() without stop_id does
    want = hf.generate(torch.tensor([ctx]), do_sample=False, max_new_tokens=12, pad_token_id=0)[0, len(ctx):].tolist()
    assert sample(model, ctx, 12, temperature=0.0) == [want]


@pytest.mark.slow
def test_evaluate_matches_the_trainers_valid_loss(runs, tmp_path):
    """--batches train.eval_batches with the run's global batch evaluates exactly the windows the
    trainer's final validation used, with the same weights in fp32: only the order of the fp32
    sums differs (the trainer averages per micro-batch and over ranks), a few 1e-7 at loss ~6, so
    1e-5 is a tight bound. Bits per byte follows from the loss and the byte count."""
    from tokenizers import Tokenizer
    from tokenizers.pre_tokenizers import ByteLevel

    from llmtrain.data.indexed import IndexedDataset
    from llmtrain.eval.loss import evaluate

    out = tmp_path / "eval.json"
    r = run_python([EVALUATE, runs["single"], "--batches", "2", "--out", out])
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert "bits/byte" in r.stdout and json.loads(r.stdout.strip().splitlines()[-1]) == res
    results = {"single": res, "zero3": evaluate(runs["zero3"], batches=2, progress=False)}
    for name, res in results.items():
        summary = json.loads((runs[name] / "summary.json").read_text())
        assert res["windows"] == 2 * 8 and res["tokens"] == 16 * 64
        assert abs(res["loss"] - summary["final_valid_loss"]) <= 1e-5, (name, res["loss"], summary["final_valid_loss"])
        assert res["perplexity"] == pytest.approx(math.exp(res["loss"]), rel=1e-12)
        assert res["bits_per_byte"] == pytest.approx(res["loss"] * res["tokens"] / (res["bytes"] * math.log(2)),
                                                     rel=1e-12)
    # the byte count, independently: every byte-level token is one character per byte, <|endoftext|> none
    cfg = yaml.safe_load((runs["single"] / "config.yaml").read_text())
    manifest = json.loads((runs["single"] / "data_manifest.json").read_text())["manifests"][0]
    tok = Tokenizer.from_file(manifest["tokenizer"]["path"])
    alphabet = set(ByteLevel.alphabet())
    ds = IndexedDataset(f"{cfg['data']['prefix']}_valid")
    targets = np.asarray(ds.tokens[1: res["tokens"] + 1])
    n_bytes = 0
    for t in targets.tolist():
        piece = tok.id_to_token(t)
        n_bytes += 0 if t == manifest["eod_token_id"] else len(piece)
        assert t == manifest["eod_token_id"] or set(piece) <= alphabet
    assert abs(results["single"]["bytes"] - n_bytes) <= 6  # U+FFFD for a character cut at either end of the span
    # --data PREFIX of any .bin/.idx; every whole window by default
    from llmtrain.data.indexed import IndexedDatasetWriter

    with IndexedDatasetWriter(tmp_path / "small", ds.dtype) as w:
        for i in range(3):
            w.add_document(ds[i])
    small = evaluate(runs["single"], data=str(tmp_path / "small"), progress=False)
    assert small["windows"] == small["windows_available"] == (sum(len(ds[i]) for i in range(3)) - 1) // 64 >= 2


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_consolidated_file_holds_only_tensors_and_is_taken_by_every_command(runs, tmp_path, suffix):
    """python launcher/consolidate.py (pipeline checkpoint) → a file that torch.load(weights_only=True)
    or safetensors reads, and that generate/export take with the checkpoint's own logits."""
    from llmtrain.eval.generate import generate
    from llmtrain.checkpoint.consolidate import load_gpt

    out = tmp_path / f"model{suffix}"
    r = run_python([str(REPO / "launcher" / "consolidate.py"), runs["pipe"], "--out", out])
    assert r.returncode == 0, r.stderr[-2000:]
    if suffix == ".pt":
        rec = torch.load(out, weights_only=True)
        assert set(rec) == {"model_config", "state_dict", "step", "tokens", "source"}
    a, rec_a = load_gpt(runs["pipe"])
    b, rec_b = load_gpt(out)
    ids = valid_windows(runs["pipe"])[:, :-1]
    with torch.no_grad():
        assert torch.equal(a(ids), b(ids)) and rec_a["step"] == rec_b["step"] == 2
    # the run's tokenizer is named with --tokenizer (a lone file carries no data manifest)
    from llmtrain.checkpoint.load import run_info, tokenizer_path

    tok_path = str(tokenizer_path(run_info(runs["pipe"])))
    assert generate(out, "The", 5, temperature=0, tokenizer=tok_path)["tokens"] == \
        generate(runs["pipe"], "The", 5, temperature=0)["tokens"]
