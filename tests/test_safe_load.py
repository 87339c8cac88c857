"""Loading a model never runs code from the file (issue 12, item 7): consolidated files are read
with torch.load(weights_only=True) or from safetensors; a crafted pickle is refused, one line."""
import pickle
from pathlib import Path

import pytest
import torch
from trainutil import REPO, assert_one_line_error, run_python

from llmtrain.config import ModelConfig
from llmtrain.model.gpt import GPT
from llmtrain.checkpoint.consolidate import CheckpointError, load_consolidated, load_gpt, save_consolidated


class _Evil:
    """Unpickling this would create ``marker`` (what an attacker's file would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _crafted(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    cfg = ModelConfig(n_layer=1, d_model=16, n_head=2, seq_len=8, vocab_size=32)
    rec = {"model_config": vars(cfg), "state_dict": GPT(cfg).state_dict(), "step": 0, "tokens": 0,
           "hook": _Evil(marker)}
    path = tmp_path / "model.pt"
    with open(path, "wb") as fh:
        torch.save(rec, fh, pickle_module=pickle)
    return path, marker


@pytest.mark.slow
def test_crafted_pickle_is_refused_without_running(tmp_path):
    path, marker = _crafted(tmp_path)
    with pytest.raises(CheckpointError) as e:
        load_consolidated(path)
    assert not marker.exists()
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "refused" in msg
    # the same through a command that takes a checkpoint: one line, exit 2, nothing run
    r = run_python([REPO / "launcher" / "generate.py", path, "--max-new-tokens", "2"])
    assert_one_line_error(r, str(path), "refused")
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_consolidated_round_trip_holds_only_tensors_and_plain_data(tmp_path, suffix):
    cfg = ModelConfig(n_layer=1, d_model=16, n_head=2, seq_len=8, vocab_size=32, pos_encoding="rotary")
    model = GPT(cfg, seed=3)
    meta = {"model_config": vars(cfg), "step": 7, "tokens": 896, "source": "somewhere"}
    out = tmp_path / f"c{suffix}"
    save_consolidated(model.state_dict(), meta, out)
    state, got = load_consolidated(out)
    assert got == meta
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    loaded, rec = load_gpt(out)
    idx = torch.randint(0, 32, (1, 8))
    assert torch.equal(loaded(idx), model.eval()(idx)) and rec["step"] == 7
    if suffix == ".pt":  # readable by plain torch.load(weights_only=True): nothing but tensors and plain types
        torch.load(out, weights_only=True)


@pytest.mark.slow
def test_init_from_a_crafted_pickle_is_refused_by_the_trainer(token_data, tmp_path):
    """checkpoint.init_from=FILE.pt: the trainer reads it through load_consolidated, so the
    crafted file is refused in one line before anything runs from it."""
    from trainutil import SMALL

    path, marker = _crafted(tmp_path)
    r = run_python([REPO / "launcher" / "pretrain.py", "--run-dir", tmp_path / "run", f"data.prefix={token_data}",
                    *SMALL, "train.max_steps=1", f"checkpoint.init_from={path}"])
    assert_one_line_error(r, str(path), "refused")
    assert not marker.exists()
