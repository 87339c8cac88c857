"""Every shipped DeepSpeed config (ds_configs/*.json, tuned for GPUs: overlapped communication,
large buckets, pinned host memory) trains on CPU. Those the layout tests do not launch are
trained here, two processes each, and give the same losses as each other."""
from __future__ import annotations

import pytest

from trainutil import REPO, SMALL, run_torchrun, train_losses

# where each shipped config is trained by the tests
TRAINED_BY = {
    "zero0.json": "tests/test_train.py::test_layouts_agree_on_the_same_model (the default config)",
    "zero1.json": "tests/test_train.py::test_layouts_agree_on_the_same_model (pipeline)",
    "zero2.json": "tests/test_train.py::test_layouts_agree_on_the_same_model",
    "zero3.json": "tests/test_train.py::test_layouts_agree_on_the_same_model",
    "zero2_offload.json": "here",
    "zero3_offload.json": "here",
    "pipeline.json": "here",
}


def test_every_shipped_config_is_trained_by_a_test():
    assert sorted(p.name for p in (REPO / "ds_configs").glob("*.json")) == sorted(TRAINED_BY)


@pytest.mark.slow
def test_offload_and_pipeline_configs_train(token_data, tmp_path):
    common = [f"data.prefix={token_data}", *SMALL, "train.max_steps=2", "checkpoint.save_final=false"]
    runs = {name: run_torchrun(2, "--deepspeed_config", REPO / "ds_configs" / name, "--run-dir", tmp_path / name,
                               *common, *(["parallel.pipeline_stages=2"] if name == "pipeline.json" else []))
            for name, where in TRAINED_BY.items() if where == "here"}
    for name, r in runs.items():
        assert r.returncode == 0, (name, r.stdout[-2000:], r.stderr[-2000:])
    losses = {name: train_losses(tmp_path / name) for name in runs}
    ref = losses["pipeline.json"]
    assert sorted(ref) == [1, 2]
    for name, got in losses.items():
        assert [got[s] for s in ref] == pytest.approx([ref[s] for s in ref], abs=2e-5), name
