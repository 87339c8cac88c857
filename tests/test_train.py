"""Training for real: DeepSpeed on CPU (gloo), single and multi-process, with the run folder,
TensorBoard events, layouts that agree, exact resume after a crash, preemption and bad input."""
from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import psutil
import pytest

from trainutil import (REPO, SMALL, assert_one_line_error, deepspeed_cmd, env, free_port, read_metrics, run_deepspeed,
                       run_python, run_torchrun, steps_logged, train_losses, wait_for)

PRETRAIN = REPO / "launcher" / "pretrain.py"


@pytest.mark.slow
def test_single_process_run_folder_and_tensorboard(token_data, tmp_path):
    run = tmp_path / "run"
    r = run_python([PRETRAIN, "--run-dir", run, f"data.prefix={token_data}", *SMALL, "train.max_steps=40",
                    "train.eval_interval=20", "train.log_interval=5"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"tensorboard --logdir {run / 'tb'}" in r.stdout
    for f in ("metrics.jsonl", "summary.json", "config.yaml", "ds_config.json", "env.json", "data_manifest.json"):
        assert (run / f).is_file(), f
    assert (run / "checkpoints" / "latest").read_text().strip() == "global_step40"
    assert (run / "checkpoints" / "global_step40").is_dir()

    recs = read_metrics(run)
    train = [x for x in recs if "split" not in x]
    valid = [x for x in recs if x.get("split") == "valid"]
    assert [x["step"] for x in train] == [5, 10, 15, 20, 25, 30, 35, 40]
    for x in train:
        assert {"step", "tokens", "loss", "lr", "grad_norm", "tokens_per_s"} <= x.keys()
        assert x["tokens"] == x["step"] * 8 * 64
    # one 8-sequence batch per record is noisy: the mean of the last three (steps 30-40) against the first
    assert sum(x["loss"] for x in train[-3:]) / 3 < train[0]["loss"] - 0.4, "loss should fall visibly"
    assert [v["step"] for v in valid] == [20, 40]

    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "finished" and s["tokens"] == 40 * 8 * 64
    assert s["flops"] == pytest.approx(6 * s["n_params"] * s["tokens"])
    assert s["flops_with_attention"] > s["flops"] * 0.5
    assert s["n_params_non_embedding"] < s["n_params"]
    assert s["final_valid_loss"] == pytest.approx(valid[-1]["loss"])
    cfg = (run / "config.yaml").read_text()
    assert "n_layer: 2" in cfg and "vocab_size: 512" in cfg  # resolved, vocab from the tokenizer
    ds = json.loads((run / "ds_config.json").read_text())
    assert ds["train_batch_size"] == 8

    # TensorBoard's own reader sees train and valid loss, lr and throughput
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "valid/loss", "train/lr", "train/tokens_per_s"} <= tags
    tb_loss = [e.value for e in acc.Scalars("train/loss")]
    assert tb_loss == pytest.approx([x["loss"] for x in train], rel=1e-6)
    # the HParams tab: this run's hyperparameters and final metrics, for comparing a ladder
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["model.n_layer"].number_value == 2
    assert start.hparams["n_params"].number_value == s["n_params"]
    exp = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in exp.metric_infos} == {"hparam/final_train_loss", "hparam/final_valid_loss"}
    assert acc.Scalars("hparam/final_valid_loss")[0].value == pytest.approx(s["final_valid_loss"], rel=1e-6)

    # starting over in the same folder (checkpoint.resume=false): the two runs never read as one
    r = run_python([PRETRAIN, "--run-dir", run, f"data.prefix={token_data}", *SMALL, "train.max_steps=10",
                    "train.eval_interval=0", "train.log_interval=5", "train.lr=1e-3", "checkpoint.resume=false"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "metrics.jsonl.prev" in r.stdout
    again = [x for x in read_metrics(run) if "split" not in x]
    assert [x["step"] for x in again] == [5, 10] and again[0]["lr"] != train[0]["lr"]
    prev = [json.loads(ln) for ln in (run / "metrics.jsonl.prev").read_text().splitlines()]
    assert [x["step"] for x in prev if "split" not in x] == [5, 10, 15, 20, 25, 30, 35, 40]
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [
        (x["step"], pytest.approx(x["loss"], rel=1e-6)) for x in again]


@pytest.mark.slow
def test_layouts_agree_on_the_same_model(token_data, tmp_path):
    """1 process, ZeRO-2 x2, ZeRO-3 x2 and pipeline x2 (with activation checkpointing) give the same
    losses and gradient norms (before clipping: the single process's torch foreach norm, DeepSpeed's
    ZeRO and pipeline norms) for the same model, on a blend (each rank computes the blend's order
    of its own samples: nothing is built or shared between ranks)."""
    common = [f"data.prefix=0.7 {token_data} 0.3 {token_data}", *SMALL, "train.max_steps=3", "train.log_interval=1",
              "train.grad_clip=0.5"]
    runs = {
        "single": run_python([PRETRAIN, "--run-dir", tmp_path / "single", *common]),
        "zero2": run_torchrun(2, "--deepspeed_config", REPO / "ds_configs/zero2.json", "--run-dir", tmp_path / "zero2",
                               *common),
        "zero3": run_torchrun(2, "--deepspeed_config", REPO / "ds_configs/zero3.json", "--run-dir", tmp_path / "zero3",
                               *common),
        "pipe": run_torchrun(2, "--deepspeed_config", REPO / "ds_configs/zero1.json", "--run-dir", tmp_path / "pipe",
                              *common, "parallel.pipeline_stages=2", "train.activation_checkpointing=true"),
    }
    for name, r in runs.items():
        assert r.returncode == 0, (name, r.stdout[-3000:], r.stderr[-3000:])
    ref = train_losses(tmp_path / "single")
    norms = {name: {x["step"]: x["grad_norm"] for x in read_metrics(tmp_path / name) if "split" not in x}
             for name in runs}
    assert len(ref) == 3
    assert all(v > 0.5 for v in norms["single"].values()), norms  # clipping is active
    for name in ("zero2", "zero3", "pipe"):
        got = train_losses(tmp_path / name)
        assert json.loads((tmp_path / name / "summary.json").read_text())["world_size"] == 2
        for step in ref:
            assert got[step] == pytest.approx(ref[step], abs=2e-5), (name, step)
            assert norms[name][step] == pytest.approx(norms["single"][step], rel=1e-4), (name, step)


@pytest.mark.slow
def test_resume_after_a_rank_is_killed_matches_uninterrupted(token_data, tmp_path):
    """SIGKILL one rank mid-run, relaunch the same command: step-by-step losses equal an
    uninterrupted run's (model, optimizer, schedule, RNG and data position restored)."""
    common = ["--deepspeed_config", REPO / "ds_configs/zero2.json", f"data.prefix={token_data}", *SMALL,
              "train.max_steps=30", "checkpoint.interval=5", "model.dropout=0.1"]
    ref = run_deepspeed(2, "--run-dir", tmp_path / "ref", *common)
    assert ref.returncode == 0, ref.stderr[-3000:]

    run = tmp_path / "crash"
    p = subprocess.Popen(deepspeed_cmd(2, "--run-dir", run, *common), cwd=REPO, env=env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: steps_logged(run) >= 7, 300, "the run to reach step 7", every=0.2)
        children = psutil.Process(p.pid).children(recursive=True)
        victims = [c for c in children if "--local_rank=1" in " ".join(c.cmdline())]
        assert victims
        victims[0].send_signal(signal.SIGKILL)
        p.wait(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    killed_at = int((run / "checkpoints" / "latest").read_text().strip().replace("global_step", ""))
    assert 5 <= killed_at < 30 and not (run / "summary.json").exists(), "the run must have died mid-way"

    again = run_deepspeed(2, "--run-dir", run, *common)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stdout
    a, b = train_losses(tmp_path / "ref"), train_losses(run)
    assert sorted(b) == list(range(1, 31)), "metrics.jsonl must read as one run"
    for step in a:
        assert b[step] == pytest.approx(a[step], abs=1e-6), step


@pytest.mark.slow
def test_sigterm_to_the_launcher_group_checkpoints_and_exits(token_data, tmp_path):
    run = tmp_path / "run"
    cmd = deepspeed_cmd(2, "--run-dir", run, f"data.prefix={token_data}", *SMALL, "train.max_steps=100000")
    p = subprocess.Popen(cmd,
                         cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    try:
        wait_for(lambda: steps_logged(run) >= 3, 300, "the run to reach step 3", every=0.2)
        procs = [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]
        os.killpg(p.pid, signal.SIGTERM)  # what a scheduler does on preemption
        gone, alive = psutil.wait_procs(procs, timeout=120)
        assert not alive
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    out = p.stdout.read()
    assert "received SIGTERM" in out
    tag = (run / "checkpoints" / "latest").read_text().strip()
    step = int(tag.replace("global_step", ""))
    assert step >= 3 and (run / "checkpoints" / tag).is_dir()


@pytest.mark.slow
def test_two_nodes_on_one_machine(token_data, tmp_path):
    """Two launchers, --node_rank 0 and 1, master 127.0.0.1, one process each."""
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=1\n127.0.0.1 slots=1\n")
    port = free_port()
    run = tmp_path / "run"
    cmds = [
        ["deepspeed", "--no_ssh", "--hostfile", hostfile, "--node_rank", str(r), "--master_addr", "127.0.0.1",
         "--master_port", str(port), PRETRAIN, "--run-dir", run, f"data.prefix={token_data}", *SMALL,
         "train.max_steps=3"]
        for r in (0, 1)
    ]
    procs = [subprocess.Popen(list(map(str, c)), cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for c in cmds]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][-3000:] + outs[1][-3000:]
    s = json.loads((run / "summary.json").read_text())
    assert s["world_size"] == 2 and s["steps"] == 3


# ----------------------------------------------------------------------------- bad input


@pytest.mark.slow
def test_unknown_override_key(token_data):
    r = run_python([PRETRAIN, f"data.prefix={token_data}", "train.max_stepz=5"])
    assert_one_line_error(r, "unknown key 'train.max_stepz'")


@pytest.mark.slow
def test_missing_data_path(tmp_path):
    r = run_python([PRETRAIN, f"data.prefix={tmp_path}/nope"])
    assert_one_line_error(r, f"{tmp_path}/nope_manifest.json", "tokenize_corpus.py")


@pytest.mark.slow
def test_malformed_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  n_layer: [2\n")
    r = run_python([PRETRAIN, "--config", bad])
    assert_one_line_error(r, str(bad), "malformed YAML")


@pytest.mark.slow
def test_tokenizer_vocab_mismatch(token_data, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train_from_iterator(["some other text entirely"] * 10,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"]))
    other = tmp_path / "other.json"
    tok.save(str(other))
    r = run_python([PRETRAIN, f"data.prefix={token_data}", f"data.tokenizer={other}"])
    assert_one_line_error(r, str(other), "does not match")


@pytest.mark.slow
def test_model_vocab_smaller_than_tokenizer(token_data):
    r = run_python([PRETRAIN, f"data.prefix={token_data}", "model.vocab_size=100"])
    assert_one_line_error(r, "model.vocab_size=100", "smaller than the tokenizer")


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate_idx", "truncate_bin", "bad_magic"])
def test_corrupt_token_files(token_data, tmp_path, damage):
    import shutil

    src = Path(token_data)
    (tmp_path / "copy").mkdir()
    dst = tmp_path / "copy" / src.name  # same names: the manifest lists its shards by name
    for suffix in ("_train.bin", "_train.idx", "_valid.bin", "_valid.idx", "_manifest.json"):
        shutil.copy(f"{src}{suffix}", f"{dst}{suffix}")
    if damage == "truncate_idx":
        f = Path(f"{dst}_train.idx")
        f.write_bytes(f.read_bytes()[:-7])
    elif damage == "truncate_bin":
        f = Path(f"{dst}_train.bin")
        f.write_bytes(f.read_bytes()[:-100])
    else:
        f = Path(f"{dst}_train.idx")
        f.write_bytes(b"NOTMEGA!!" + f.read_bytes()[9:])
    r = run_python([PRETRAIN, f"data.prefix={dst}", "--run-dir", tmp_path / "run"])
    assert_one_line_error(r, str(f))
    assert not (tmp_path / "run").exists(), "nothing may be written before the error"


@pytest.mark.slow
def test_pipeline_with_zero2_is_refused_before_training(token_data, tmp_path):
    r = run_deepspeed(2, "--deepspeed_config", REPO / "ds_configs/zero2.json", "--run-dir", tmp_path / "run",
                      f"data.prefix={token_data}", *SMALL, "parallel.pipeline_stages=2")
    assert r.returncode != 0
    assert "ZeRO-0/1 only" in r.stderr + r.stdout
    assert "Traceback" not in r.stderr + r.stdout
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.slow
def test_checkpoint_from_another_model_shape_is_refused(token_data, tmp_path):
    run = tmp_path / "run"
    r = run_python([PRETRAIN, "--run-dir", run, f"data.prefix={token_data}", *SMALL, "train.max_steps=2"])
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_python([PRETRAIN, "--run-dir", run, f"data.prefix={token_data}", *SMALL, "train.max_steps=4",
                    "model.d_model=32"])
    assert_one_line_error(r, str(run / "checkpoints"), "another model shape", "model.d_model=64")


@pytest.mark.slow
def test_global_batch_the_ranks_cannot_split(token_data, tmp_path):
    r = run_deepspeed(2, "--run-dir", tmp_path / "run", f"data.prefix={token_data}", *SMALL,
                      "train.global_batch_size=7")
    assert r.returncode != 0
    assert "cannot be split over 2 data-parallel ranks" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["zero0_x1", "zero2_x2"])
def test_non_finite_steps_are_skipped_then_the_run_stops(token_data, tmp_path, layout):
    """An absurd LR blows the gradients up: each such step is skipped and logged, and after
    train.max_bad_steps in a row the run stops naming the last good checkpoint."""
    run = tmp_path / "run"
    args = ["--run-dir", run, f"data.prefix={token_data}", *SMALL, "train.max_steps=30", "train.lr=1e5",
            "train.warmup_steps=0", "train.grad_clip=0", "checkpoint.interval=1", "train.max_bad_steps=3"]
    if layout == "zero0_x1":
        r = run_python([PRETRAIN, *args])
    else:
        r = run_deepspeed(2, "--deepspeed_config", REPO / "ds_configs/zero2.json", *args)
    assert r.returncode != 0
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "3 skipped steps" in err[0] and "last good checkpoint" in err[0], r.stderr[-2000:]
    events = [x for x in read_metrics(run) if x.get("skipped")]
    assert len(events) == 3 and [e["bad_steps_in_a_row"] for e in events] == [1, 2, 3]
    named = err[0].split("last good checkpoint: ")[1].split(";")[0]
    assert Path(named).is_dir()


@pytest.mark.slow
def test_compiled_model_trains_like_eager(token_data, tmp_path):
    """train.compile=true (torch.compile through engine.compile) gives the eager losses."""
    common = [f"data.prefix={token_data}", *SMALL, "train.max_steps=4"]
    eager = run_python([PRETRAIN, "--run-dir", tmp_path / "eager", *common])
    compiled = run_python([PRETRAIN, "--run-dir", tmp_path / "compiled", *common, "train.compile=true"])
    assert eager.returncode == 0 and compiled.returncode == 0, compiled.stderr[-3000:]
    a, b = train_losses(tmp_path / "eager"), train_losses(tmp_path / "compiled")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in a:
        assert b[step] == pytest.approx(a[step], abs=1e-4), step
