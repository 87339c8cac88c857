"""Prompt/response fine-tuning: tokenize_corpus.py --format prompt-response writes token shards
and a loss mask; the trainer counts only the response tokens, on every layout; evaluate.py
reports the masked loss. Real tokenizer, real DeepSpeed processes on CPU."""
from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import numpy as np
import pytest
from trainutil import REPO, SMALL, assert_one_line_error, read_metrics, run_deepspeed, run_python, run_torchrun

from llmtrain.data.indexed import IndexedDataset
from llmtrain.data.manifest import Manifest

RESPONSE = " zebra quantum velvet"  # fixed: predictable once the prompt's last word "Answer:" is seen


def words() -> list[str]:
    with gzip.open(REPO / "data" / "sample" / "corpus.jsonl.gz", "rt") as fh:
        text = " ".join(json.loads(next(fh))["text"] for _ in range(20))
    return sorted({w for w in text.lower().split() if w.isalpha() and 3 <= len(w) <= 9})[:300]


def write_pairs(path: Path, n: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    vocab = words()
    with open(path, "w") as fh:
        for i in range(n):
            prompt = " ".join(rng.choice(vocab) for _ in range(8)) + " Answer:"
            fh.write(json.dumps({"id": f"r{i}", "prompt": prompt, "response": RESPONSE}) + "\n")
    return path


@pytest.fixture(scope="module")
def pairs(token_data, tmp_path_factory) -> tuple[str, str]:
    """(PREFIX of prompt/response shards, tokenizer path) made through the CLI."""
    out = tmp_path_factory.mktemp("pairs")
    tok = str(Path(token_data).parent / "tokenizer.json")
    src = write_pairs(out / "pairs.jsonl", 1200)
    r = run_python([REPO / "data_prep" / "tokenize_corpus.py", "--format", "prompt-response", "--input", src,
                    "--tokenizer", tok, "--output-prefix", out / "ft", "--valid-fraction", "0.1"])
    assert r.returncode == 0, r.stderr
    return str(out / "ft"), tok


@pytest.mark.slow
def test_tokens_and_loss_mask(pairs):
    from tokenizers import Tokenizer

    prefix, tok_path = pairs
    m = Manifest.read(prefix)
    assert m.options["format"] == "prompt-response" and m.extra["loss_mask"]["suffix"] == "_mask"
    tok = Tokenizer.from_file(tok_path)
    eod = m.eod_token_id
    resp = tok.encode(RESPONSE, add_special_tokens=False).ids
    for split in ("train", "valid"):
        toks, mask = IndexedDataset(f"{prefix}_{split}"), IndexedDataset(f"{prefix}_{split}_mask")
        assert mask.dtype == np.uint8 and (mask.sizes == toks.sizes).all() and len(toks) > 50
        for i in range(0, len(toks), 17):
            t, k = toks[i].tolist(), mask[i].tolist()
            n = len(resp) + 1
            assert t[-n:] == resp + [eod] and k[-n:] == [1] * n and k[:-n] == [0] * (len(t) - n)
            assert tok.decode(t[:-n]).endswith("Answer:")


@pytest.mark.slow
def test_megatron_core_reads_the_tokens(pairs):
    import megatron.core.datasets.indexed_dataset as mid
    ours = IndexedDataset(f"{pairs[0]}_train")
    theirs = mid.IndexedDataset(f"{pairs[0]}_train")
    assert len(theirs) == len(ours)
    for i in (0, 1, len(ours) - 1):
        np.testing.assert_array_equal(theirs[i], ours[i])


@pytest.mark.slow
def test_record_without_response_is_one_line_and_writes_nothing(pairs, tmp_path):
    src = write_pairs(tmp_path / "bad.jsonl", 5)
    lines = src.read_text().splitlines()
    lines[3] = json.dumps({"id": "x", "prompt": "no answer here"})
    src.write_text("\n".join(lines) + "\n")
    r = run_python([REPO / "data_prep" / "tokenize_corpus.py", "--format", "prompt-response", "--input", src,
                    "--tokenizer", pairs[1], "--output-prefix", tmp_path / "out"])
    assert_one_line_error(r, "bad.jsonl:4", "'response'", "--response-key")
    assert not list(tmp_path.glob("out*"))


@pytest.mark.slow
def test_mask_that_does_not_match_its_tokens_is_refused(pairs, tmp_path):
    import shutil

    for f in Path(pairs[0]).parent.glob("ft*"):
        shutil.copy(f, tmp_path / f.name)
    bad = tmp_path / "ft_train_mask"
    shutil.copy(tmp_path / "ft_valid_mask.bin", f"{bad}.bin")  # the valid split's mask on the train tokens
    shutil.copy(tmp_path / "ft_valid_mask.idx", f"{bad}.idx")
    r = run_deepspeed(1, "--run-dir", tmp_path / "run", f"data.prefix={tmp_path / 'ft'}", *SMALL, "train.max_steps=1")
    assert_one_line_error(r, "ft_train_mask.bin", "does not match", "--format prompt-response")


def counted_targets(prefix: str, seq_len: int, global_batch: int, steps: int) -> list[int]:
    """What the trainer should log as loss_tokens, from the data alone (the sampler's own order)."""
    from llmtrain.data.sampler import TokenWindows, batch

    shards = [IndexedDataset(f"{prefix}_train")]
    w = TokenWindows(shards, seq_len, 1234, masks=[IndexedDataset(f"{prefix}_train_mask")])
    return [int((batch(w, s * global_batch, global_batch)[1] != -100).sum()) for s in range(steps)]


@pytest.mark.slow
def test_finetune_counts_only_the_response(pairs, tmp_path):
    """Prompts of random words, a fixed response: the logged loss falls near zero, which it could
    not if the prompt's tokens counted (evaluated without the mask, the same model's loss is high)."""
    from llmtrain.config import load_config
    from llmtrain.model.gpt import GPT
    from llmtrain.checkpoint.consolidate import save_consolidated

    prefix, _ = pairs
    cfg = load_config(REPO / "configs" / "finetune_tiny.yaml", [*SMALL, "model.vocab_size=512"])
    model = tmp_path / "model.safetensors"  # a model as consolidate/import_hf write it, recorded at step 7
    save_consolidated(GPT(cfg.model).state_dict(), {"model_config": cfg.to_dict()["model"], "step": 7, "tokens": 0,
                                                    "source": "test"}, model)
    run = tmp_path / "ft"
    r = run_torchrun(1, "--config", REPO / "configs" / "finetune_tiny.yaml", "--run-dir", run,
                      f"data.prefix={prefix}", f"checkpoint.init_from={model}", *SMALL, "train.max_steps=50",
                      "train.eval_interval=0", "train.log_interval=5", "train.lr=1e-2", "train.schedule=constant",
                      "train.warmup_steps=5")
    assert r.returncode == 0, r.stderr[-3000:]
    recs = [x for x in read_metrics(run) if x.get("split") is None and x.get("loss") is not None]
    assert recs[0]["step"] == 5 and recs[-1]["step"] == 50  # started at step 0 (init_step), not the model's 7
    losses = [x["loss"] for x in recs]
    assert losses[0] > 2.0 and min(losses[-3:]) < 0.05 and losses[-1] < 0.15, losses
    want = counted_targets(prefix, 64, 8, 50)
    assert [x["loss_tokens"] for x in recs] == [want[x["step"] - 1] for x in recs]
    assert 0 < want[0] < 0.5 * 8 * 64  # most targets are prompt words, which do not count

    ev = json.loads(run_python([REPO / "launcher" / "evaluate.py", run]).stdout.splitlines()[-1])
    assert ev["loss_mask"] and ev["loss"] < 0.1 and 0 < ev["loss_tokens"] < ev["tokens"]
    # the trainer's final validation (token mean over the response tokens of 2 batches), recomputed
    ev2 = json.loads(run_python([REPO / "launcher" / "evaluate.py", run, "--batches", "2"]).stdout.splitlines()[-1])
    final = json.loads((run / "summary.json").read_text())["final_valid_loss"]
    assert ev2["loss"] == pytest.approx(final, abs=1e-5)
    r = run_python([REPO / "launcher" / "evaluate.py", run, "--data", f"{prefix}_valid"])
    unmasked = json.loads(r.stdout.splitlines()[-1])  # the .bin/.idx file alone: every target counts
    assert not unmasked["loss_mask"] and unmasked["loss"] > 1.0


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["zero3", "pipe"])
def test_finetune_layouts(pairs, tmp_path, layout):
    prefix, _ = pairs
    ds, extra = (("zero3.json", []) if layout == "zero3" else ("zero1.json", ["parallel.pipeline_stages=2"]))
    r = run_torchrun(2, "--deepspeed_config", REPO / "ds_configs" / ds, "--run-dir", tmp_path / layout,
                      f"data.prefix={prefix}", *SMALL, "train.max_steps=3", "data.document_mask=true", *extra)
    assert r.returncode == 0, r.stderr[-3000:]
    recs = [x for x in read_metrics(tmp_path / layout) if x.get("split") is None and x.get("loss") is not None]
    assert [x["loss_tokens"] for x in recs] == counted_targets(prefix, 64, 8, 3)
    assert all(np.isfinite(x["loss"]) for x in recs)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["zero0_x1", "zero2_x2", "zero3_x2", "pipe_x2"])
def test_every_counted_token_weighs_the_same(pairs, tmp_path, layout):
    """Micro-batches of 2 windows hold different numbers of response tokens; the step's loss (and
    gradient) is the mean over the global batch's counted tokens, not the mean of micro-batch
    means: the first logged loss equals the initial model's token mean on the first batch."""
    import torch

    from llmtrain.config import load_config
    from llmtrain.data.sampler import TokenWindows, batch
    from llmtrain.model.gpt import GPT, lm_loss

    prefix, _ = pairs
    cfg = load_config(None, [*SMALL, "model.vocab_size=512"])

    def first_batch(seed: int):
        """The token mean and the micro-batch means of the first global batch of a run with this seed."""
        w = TokenWindows([IndexedDataset(f"{prefix}_train")], 64, seed, masks=[IndexedDataset(f"{prefix}_train_mask")])
        x, y = batch(w, 0, 8)
        with torch.no_grad():
            logits = GPT(cfg.model, seed=seed)(x)
            return float(lm_loss(logits, y)), [float(lm_loss(logits[i:i + 2], y[i:i + 2])) for i in range(0, 8, 2)], y

    # the first seed whose first batch tells the two weightings apart (the test is void otherwise)
    seed = next(s for s in range(cfg.train.seed, cfg.train.seed + 20)
                if abs((d := first_batch(s))[0] - sum(d[1]) / 4) > 1e-3)
    want, means, y = first_batch(seed)

    args = ["--run-dir", tmp_path / layout, f"data.prefix={prefix}", *SMALL, "model.vocab_size=512",
            "train.max_steps=1", "train.micro_batch_size=2", "checkpoint.save_final=false", f"train.seed={seed}"]
    if layout == "zero0_x1":
        r = run_torchrun(1, *args)
    elif layout in ("zero2_x2", "zero3_x2"):
        r = run_torchrun(2, "--deepspeed_config", REPO / "ds_configs" / f"{layout[:5]}.json", *args)
    else:
        r = run_torchrun(2, "--deepspeed_config", REPO / "ds_configs" / "zero1.json", *args,
                          "parallel.pipeline_stages=2")
    assert r.returncode == 0, r.stderr[-3000:]
    rec = [x for x in read_metrics(tmp_path / layout) if x.get("split") is None and x.get("loss") is not None][0]
    assert rec["step"] == 1 and rec["loss_tokens"] == int((y != -100).sum())
    assert rec["loss"] == pytest.approx(want, abs=2e-5), (rec["loss"], want, means)

