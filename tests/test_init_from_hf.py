"""Continued pretraining straight from a transformers folder: checkpoint.init_from=HF_DIR takes the
model section from the folder, refuses a contradicting model.* override, and trains on data
tokenised with the folder's own tokenizer (a Llama with 8 heads, 2 KV heads and
<|end_of_text|>), on windows shorter than its positions (train.seq_len), in one process and on
ZeRO-3 x2, whose partitions rank 0 fills from the folder's weights."""
from __future__ import annotations

import gzip
import json

import pytest

from trainutil import REPO, assert_one_line_error, read_metrics, run_python, run_torchrun

import transformers  # noqa: E402  (the test extra installs it)

from test_import_hf import _configs, _tokenizer  # noqa: E402

PRETRAIN = REPO / "launcher" / "pretrain.py"


@pytest.mark.slow
def test_init_from_a_transformers_folder(tmp_path):
    hf = tmp_path / "llama"
    model = transformers.LlamaForCausalLM(_configs()["llama"]).eval()
    model.save_pretrained(str(hf))
    _tokenizer(hf, "<|end_of_text|>")

    docs = tmp_path / "docs.jsonl"
    with gzip.open(REPO / "data/sample/corpus.jsonl.gz", "rt") as fh:
        docs.write_text("".join(next(fh) for _ in range(60)))
    r = run_python([REPO / "data_prep/tokenize_corpus.py", "--input", docs, "--tokenizer", hf,
                    "--eod-token", "<|end_of_text|>", "--output-prefix", tmp_path / "tok", "--valid-fraction", "0.1"])
    assert r.returncode == 0, r.stderr[-2000:]

    common = [f"data.prefix={tmp_path / 'tok'}", f"checkpoint.init_from={hf}", "train.global_batch_size=4",
              "train.max_steps=2", "train.log_interval=1", "train.eval_interval=0", "train.eval_batches=1"]
    r = run_python([PRETRAIN, "--run-dir", tmp_path / "clash", *common, "model.n_layer=3"])
    assert_one_line_error(r, "model.n_layer=3", "config.json", "n_layer=2")
    r = run_python([PRETRAIN, "--run-dir", tmp_path / "clash", *common, "model.seq_len=32"])
    assert_one_line_error(r, "model.seq_len=32", "seq_len=64", "train.seq_len=32 instead")

    run = tmp_path / "run"
    r = run_python([PRETRAIN, "--run-dir", run, *common, "model.dropout=0.0", "train.seq_len=32"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"started from {hf}" in r.stdout
    saved = (run / "config.yaml").read_text()
    assert "n_kv_head: 2" in saved and "n_head: 8" in saved and "seq_len: 64" in saved and "seq_len: 32" in saved
    losses = [x["loss"] for x in read_metrics(run) if "split" not in x]
    assert len(losses) == 2 and all(0 < v < 20 for v in losses)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["seq_len"] == 32 and summary["tokens"] == 2 * 4 * 32

    zero3 = tmp_path / "zero3"
    r = run_torchrun(2, "--deepspeed_config", REPO / "ds_configs/zero3.json", "--run-dir", zero3, *common,
                     "train.seq_len=32")
    assert r.returncode == 0, r.stderr[-3000:]
    assert [x["loss"] for x in read_metrics(zero3) if "split" not in x] == pytest.approx(losses, abs=2e-5)
