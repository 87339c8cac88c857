"""Document masking for packed sequences (data.document_mask): attention never crosses a
document separator and positions restart at it, in the model, in the GPU kernel (flex
attention, run eagerly here) and in training on every layout (real DeepSpeed processes)."""
from __future__ import annotations

import dataclasses
import gzip
import json
import re
from pathlib import Path

import pytest
import torch
from trainutil import REPO, SMALL, assert_one_line_error, run_python, run_torchrun, train_losses

from llmtrain.config import ModelConfig
from llmtrain.model.gpt import GPT, Documents, document_attention, flex_document_attention

SEP = 0
PRETRAIN = REPO / "launcher" / "pretrain.py"


def model(**kw) -> GPT:
    cfg = ModelConfig(n_layer=2, d_model=32, n_head=4, seq_len=64, vocab_size=64, document_mask_token=SEP,
                      init_std=0.2, **kw)  # larger than usual: attention far from uniform
    return GPT(cfg, seed=1).eval()


def test_document_ids_positions_and_mask():
    d = Documents.from_tokens(torch.tensor([[5, 0, 3, 3, 0, 0, 7], [1, 2, 3, 4, 5, 6, 7]]), SEP)
    # a separator opens the next document, at its position 0
    assert d.ids.tolist() == [[0, 1, 1, 1, 2, 3, 3], [0] * 7]
    assert d.positions.tolist() == [[0, 0, 1, 2, 0, 0, 1], list(range(7))]
    mask = d.dense_mask()
    assert mask.shape == (2, 1, 7, 7)
    assert mask[0, 0, 3].tolist() == [False, True, True, True, False, False, False]
    assert mask[0, 0, 6].tolist() == [False] * 5 + [True, True]
    assert torch.equal(mask[1, 0], torch.ones(7, 7, dtype=torch.bool).tril())


OPTIONS = {
    "learned": {},
    "sinusoidal": dict(pos_encoding="sinusoidal"),
    "rotary_gqa": dict(pos_encoding="rotary", n_kv_head=2, norm="rmsnorm", mlp="swiglu"),
    "pythia_mqa": dict(pos_encoding="rotary", rotary_pct=0.5, parallel_residual=True, n_kv_head=1),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(OPTIONS))
def test_a_token_does_not_depend_on_the_previous_document(name):
    m = model(**OPTIONS[name])
    g = torch.Generator().manual_seed(0)
    doc = torch.cat([torch.tensor([SEP]), torch.randint(1, 64, (24,), generator=g)])
    a = torch.cat([torch.randint(1, 64, (30,), generator=g), doc])[None]
    b = torch.cat([torch.randint(1, 64, (30,), generator=g), doc])[None]  # another document before it
    with torch.no_grad():
        la, lb, alone = m(a)[:, 30:], m(b)[:, 30:], m(doc[None])
    torch.testing.assert_close(la, lb, atol=1e-6, rtol=0)
    # positions restart: the document packed after another computes what it computes alone
    torch.testing.assert_close(la, alone, atol=1e-5, rtol=1e-5)
    m.cfg = dataclasses.replace(m.cfg, document_mask_token=None)  # without the mask it does depend on it
    with torch.no_grad():
        assert (m(a)[:, 30:] - m(b)[:, 30:]).abs().max() > 1e-3


def test_no_gradient_crosses_into_the_previous_document():
    """Training path (SDPA with the dense mask): a loss on the second document's predictions
    gives no gradient to the embeddings of tokens only the first document holds."""
    m = model(tie_embeddings=False, pos_encoding="rotary").train()
    g = torch.Generator().manual_seed(1)
    first = torch.randint(1, 32, (30,), generator=g)  # ids 1..31 occur only in the first document
    second = torch.cat([torch.tensor([SEP]), torch.randint(32, 64, (30,), generator=g)])
    idx = torch.cat([first, second])[None]
    targets = torch.cat([idx[:, 1:], torch.tensor([[SEP]])], dim=1)
    targets[:, :30] = -100
    m(idx, targets).backward()
    grad = m.embed.wte.weight.grad
    assert grad[1:32].abs().max() == 0
    assert grad[32:].abs().max() > 0


@pytest.fixture
def one_process_group(monkeypatch):
    """torch.distributed with one gloo process, as a launcher gives a rank (environment restored after)."""
    from llmtrain.core.tasks import free_port
    from llmtrain.train.dist import init_distributed

    for k, v in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                     MASTER_PORT=str(free_port())).items():
        monkeypatch.setenv(k, v)
    init_distributed()
    yield
    torch.distributed.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("checkpointing", [0, 1])
def test_a_pipeline_stage_makes_the_masks_once_per_micro_batch(one_process_group, monkeypatch, checkpointing):
    """A real PipelineModule stage holding the embedding and every block: one Documents and one
    mask per micro-batch (it was one per block), also through activation checkpointing's
    recomputation in the backward; the logits and gradients of the plain GPT."""
    import llmtrain.model.pipeline as pipeline
    from llmtrain.model.gpt import lm_loss

    made, masks = [], []

    class Counted(Documents):
        def __init__(self, ids):
            made.append(ids)
            super().__init__(ids)

        def dense_mask(self):
            if self._dense is None:
                masks.append(self)
            return super().dense_mask()

    monkeypatch.setattr(pipeline, "Documents", Counted)
    cfg = ModelConfig(n_layer=3, d_model=32, n_head=4, seq_len=64, vocab_size=64, document_mask_token=SEP)
    stage = pipeline.gpt_pipeline(cfg, num_stages=1, seed=1, activation_checkpoint_interval=checkpointing)
    stage._precompute_checkpointable_values()  # what DeepSpeed's engine does before the first step
    plain = GPT(cfg, seed=1)
    g = torch.Generator().manual_seed(0)
    for micro in range(1, 3):
        idx = torch.randint(0, 8, (2, 65), generator=g)  # many separators (token 0)
        out, ref = stage(idx[:, :-1]), plain(idx[:, :-1])
        torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
        lm_loss(out, idx[:, 1:]).backward()
        lm_loss(ref, idx[:, 1:]).backward()
        assert len(made) == micro and len(masks) == micro
    grad = dict(stage.named_parameters())["1.attn.qkv.weight"].grad
    torch.testing.assert_close(grad, plain.blocks[0].attn.qkv.weight.grad, atol=1e-6, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("kv", [4, 2, 1])
def test_flex_attention_kernel_matches_the_dense_mask(kv):
    """The GPU path (flex attention with the block mask, here its eager reference on CPU) gives what
    the CPU path (SDPA with the dense mask) gives; 200 tokens: not a multiple of the 128-token blocks."""
    g = torch.Generator().manual_seed(2)
    tokens = torch.randint(1, 50, (3, 200), generator=g)
    tokens[tokens < 6] = SEP  # ~10% separators, some adjacent
    tokens[2] = torch.randint(1, 50, (200,), generator=g)  # a row that is one document
    docs = Documents.from_tokens(tokens, SEP)
    q = torch.randn(3, 4, 200, 16, generator=g)
    k, v = torch.randn(2, 3, kv, 200, 16, generator=g)
    dense = document_attention(q, k, v, docs, dropout_p=0.0)
    flex = flex_document_attention(q, k, v, docs, compiled=False)
    torch.testing.assert_close(flex, dense, atol=2e-5, rtol=1e-4)


def write_short_documents(path: Path, n: int = 1500) -> Path:
    """Sentences of the bundled corpus as documents of one to two sentences (~10-60 tokens), so a
    64-token window holds several."""
    sentences = []
    with gzip.open(REPO / "data" / "sample" / "corpus.jsonl.gz", "rt") as fh:
        for line in fh:
            sentences += [s.strip() + "." for s in re.split(r"[.!?]\s", json.loads(line)["text"]) if 20 < len(s) < 200]
            if len(sentences) > 2 * n:
                break
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"text": " ".join(sentences[2 * i: 2 * i + 1 + i % 2])}) + "\n")
    return path


@pytest.fixture(scope="module")
def short_docs(token_data, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("short_docs")
    tok = Path(token_data).parent / "tokenizer.json"
    r = run_python([REPO / "data_prep" / "tokenize_corpus.py", "--input", write_short_documents(out / "docs.jsonl"),
                    "--tokenizer", tok, "--output-prefix", out / "short", "--valid-fraction", "0.05"])
    assert r.returncode == 0, r.stderr
    return str(out / "short")


@pytest.mark.slow
def test_document_masking_on_every_layout(short_docs, tmp_path):
    """ZeRO-0 x1, ZeRO-2 x2, ZeRO-3 x2 and pipeline x2 (the last two with activation checkpointing)
    give the same masked losses, which differ from the unmasked run's; evaluate.py reproduces the
    masked validation loss from the pipeline run's checkpoint."""
    common = [f"data.prefix={short_docs}", *SMALL, "train.max_steps=3", "checkpoint.save_final=false"]
    masked = [*common, "data.document_mask=true"]
    ckpt = "train.activation_checkpointing=true"
    runs = {
        "single": lambda d: run_python([PRETRAIN, "--run-dir", d, *masked]),
        "unmasked": lambda d: run_python([PRETRAIN, "--run-dir", d, *common]),
        "zero2": lambda d: run_torchrun(2, "--deepspeed_config", REPO / "ds_configs/zero2.json", "--run-dir", d,
                                         *masked),
        "zero3": lambda d: run_torchrun(2, "--deepspeed_config", REPO / "ds_configs/zero3.json", "--run-dir", d,
                                         *masked, ckpt),
        "pipe": lambda d: run_torchrun(2, "--deepspeed_config", REPO / "ds_configs/zero1.json", "--run-dir", d,
                                        *masked, ckpt, "parallel.pipeline_stages=2", "checkpoint.save_final=true"),
    }
    losses = {}
    for name, launch in runs.items():
        r = launch(tmp_path / name)
        assert r.returncode == 0, (name, r.stdout[-3000:], r.stderr[-3000:])
        losses[name] = train_losses(tmp_path / name)
    ref = losses["single"]
    assert sorted(ref) == [1, 2, 3]
    for name in ("zero2", "zero3", "pipe"):
        for step in ref:
            assert losses[name][step] == pytest.approx(ref[step], abs=2e-5), (name, step, losses[name], ref)
    assert max(abs(losses["unmasked"][s] - ref[s]) for s in ref) > 1e-3, (losses["unmasked"], ref)
    saved = (tmp_path / "single" / "config.yaml").read_text()
    assert "document_mask: true" in saved
    # evaluate.py keeps the run's mask: the pipeline run's final validation, recomputed from its checkpoint
    from llmtrain.eval.loss import evaluate

    final = json.loads((tmp_path / "pipe" / "summary.json").read_text())["final_valid_loss"]
    assert evaluate(tmp_path / "pipe", batches=2, progress=False)["loss"] == pytest.approx(final, abs=1e-5)


@pytest.mark.slow
def test_data_without_an_end_of_document_token_is_one_line(token_data, tmp_path):
    """A manifest that records no eod_token_id, whose tokenizer lacks its eod_token."""
    src = Path(token_data)
    for f in src.parent.glob(src.name + "_*"):
        (tmp_path / f.name).write_bytes(f.read_bytes())
    man = tmp_path / f"{src.name}_manifest.json"
    obj = json.loads(man.read_text())
    obj.pop("eod_token_id", None)
    obj["eod_token"] = "<|no-such-token|>"
    man.write_text(json.dumps(obj))
    prefix = tmp_path / src.name
    r = run_python([PRETRAIN, "--run-dir", tmp_path / "run", f"data.prefix={prefix}",
                    f"data.tokenizer={src.parent / 'tokenizer.json'}", *SMALL, "train.max_steps=1",
                    "data.document_mask=true"])
    assert_one_line_error(r, f"{prefix}_manifest.json", "data.document_mask")
    assert not (tmp_path / "run" / "checkpoints").exists()
