"""Data stages (data.stages): mixtures that change during a run.

The sampler's rules on synthetic datasets (each stage its own blend from its start, a dataset read
again continuing its stream, the counts per source, any stretch computed alone), the config's
and the data's one-line errors, the resume check, the sweep's cooldown mixtures, and real runs:
a two-stage run on ZeRO-0, relaunched from a checkpoint just before and just after the boundary
on ZeRO-0, ZeRO-2 x2, ZeRO-3 x2 and pipeline x2, each continuing the run's losses and reading
exactly the samples the stages say (recorded by tests/sample_probe.py as the trainer feeds them),
and a WSD branch that cools down on another dataset from its branch point."""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from trainutil import REPO, SAMPLE, SMALL, assert_one_line_error, env, free_port, read_metrics, run_python, train_losses

from llmtrain.config import load_config
from llmtrain.core.errors import ConfigError
from llmtrain.data.dataset import load_data
from llmtrain.data.indexed import IndexedDataset, IndexedDatasetWriter
from llmtrain.data.sampler import BlendedSamples, StagedSamples, TokenWindows, batch

PRETRAIN = REPO / "launcher" / "pretrain.py"
PROBE = Path(__file__).resolve().parent / "sample_probe.py"
FAST = ["train.peak_flops=1e12"]  # no matmul measurement for MFU at each start
TOL = 2e-5  # fp32, another reduction order (tests/test_train.py: the layouts agree to this)


def make(tmp_path, name, docs):
    with IndexedDatasetWriter(tmp_path / name, np.uint16) as w:
        for d in docs:
            w.add_document(np.asarray(d))
    return IndexedDataset(tmp_path / name)


def windows(tmp_path, name, value, n_windows, seq_len=4, seed=0):
    """A dataset whose every token carries ``value`` in its thousands and its window index below:
    a sample's first token says which dataset and which window it is."""
    toks = np.concatenate([value * 1000 + np.full(seq_len, j) for j in range(n_windows)] + [[value * 1000]])
    return TokenWindows(make(tmp_path, name, [toks]), seq_len, seed)


def who(samples, positions):
    rows, _ = samples.take(np.asarray(positions))
    return [(int(r[0]) // 1000, int(r[0]) % 1000) for r in rows]


# ---------------------------------------------------------------------------------------------
# the sampler


@pytest.mark.parametrize("weights", [[0.7, 0.3], [1, 1, 1], list(np.linspace(0.05, 1, 7))])
def test_counts_are_the_blend_order_counted(weights):
    blend = BlendedSamples([object()] * len(weights), weights)
    choice, _ = blend.order(3000)
    for n in (0, 1, 2, 7, 100, 999, 3000):
        assert blend.counts(n).tolist() == np.bincount(choice[:n], minlength=len(weights)).tolist(), n
    far = blend.counts(10**12)  # far into a run, without building anything before it
    assert far.sum() == 10**12 and (np.abs(far - 10**12 * blend.weights) <= len(weights) + 1).all()


def test_stages_switch_blends_and_streams_continue(tmp_path):
    """Stage 0 reads A; from sample 40 an even blend of A and B; from 100 A alone again. Each
    stage keeps the blend's bound counted from its own start; A's stream goes on across both
    boundaries (no window twice within its epoch, then the next epoch); any stretch, across a
    boundary or not, is what the whole run reads there; counts() is what take() reads."""
    a, b = windows(tmp_path, "a", 1, 150), windows(tmp_path, "b", 2, 80, seed=1)
    run = StagedSamples([a, b], [(0, [0], [1.0]), (40, [0, 1], [0.5, 0.5]), (100, [0], [1.0])])
    read = who(run, np.arange(200))
    assert {d for d, _ in read[:40]} == {1} and {d for d, _ in read[100:]} == {1}
    mid = [d for d, _ in read[40:100]]
    for n in range(1, 61):  # the bound of two equal weights, from the stage's start: within one sample
        assert abs(mid[:n].count(1) - n / 2) <= 1, n
    a_windows = [j for d, j in read if d == 1]
    assert len(a_windows) == 170 and sorted(a_windows[:150]) == list(range(150)), "A's first epoch, once each"
    assert a_windows[150:] == [a.window_index(150 + k) for k in range(20)], "then its second epoch"
    assert [j for d, j in read if d == 2] == [b.window_index(k) for k in range(30)]
    for start, n in ((0, 200), (35, 10), (95, 10), (39, 62), (120, 5), (0, 1)):
        assert who(run, np.arange(start, start + n)) == read[start:start + n], (start, n)
    for n in (0, 1, 40, 41, 77, 100, 150, 200):
        got = run.counts(n)
        assert got.tolist() == [sum(d == 1 for d, _ in read[:n]), sum(d == 2 for d, _ in read[:n])], n
    x, y = batch(run, 38, 4)  # a batch across the boundary: (inputs, shifted targets) as any batch
    assert x.shape == (4, 4) and np.array_equal(x[:, 1:].numpy(), y[:, :-1].numpy())


def test_one_stage_is_the_plain_blend(tmp_path):
    a, b = windows(tmp_path, "a", 1, 50), windows(tmp_path, "b", 2, 50, seed=5)
    plain = BlendedSamples([a, b], [0.7, 0.3])
    staged = StagedSamples([a, b], [(0, [0, 1], [0.7, 0.3])])
    assert who(staged, np.arange(300)) == who(plain, np.arange(300))


def test_bad_stage_lists_are_refused(tmp_path):
    a = windows(tmp_path, "a", 1, 10)
    for stages in ([(5, [0], [1.0])], [(0, [0], [1.0]), (0, [0], [1.0])], [(0, [0, 0], [1, 1])]):
        with pytest.raises(ValueError):
            StagedSamples([a], stages)


# ---------------------------------------------------------------------------------------------
# the config and the data


def test_fractions_resolve_where_the_wsd_cooldown_starts():
    from llmtrain.train.schedule import lr_multiplier

    for steps, frac in ((100, 0.2), (13, 0.2), (7, 0.3), (1001, 0.25)):
        cfg = load_config(None, [f"train.max_steps={steps}", "train.schedule=wsd", f"train.decay_fraction={frac}",
                                 f"data.stages=[{{at: {1 - frac}, prefix: x}}]"])
        (step,) = cfg.stage_steps()
        lr = [lr_multiplier(s, steps, "wsd", 0, 0.1, frac) for s in range(steps)]
        assert lr[step - 1] == 1.0 and lr[step] < 1.0, (steps, frac, step)
    cfg = load_config(None, ["train.max_steps=1000", "train.max_tokens=40960", "model.seq_len=256",
                             "data.stages=[{at: 0.5, prefix: x}, {at: 9, prefix: y}]"])
    assert cfg.stage_steps() == [5, 9]  # against max_tokens' 10 steps, not max_steps


@pytest.mark.parametrize("stages,needle", [
    ("[{at: 0.8}]", "data.stages[0].prefix is missing"),
    ("[{prefix: x}]", "data.stages[0].at=None"),
    ("[{at: -1, prefix: x}]", "data.stages[0].at=-1.0"),
    ("[{at: 1.5, prefix: x}]", "data.stages[0].at=1.5 is neither a fraction"),
    ("[{at: 0.9, prefix: x}, {at: 0.5, prefix: y}]", "data.stages[1].at=0.5 starts at step 50, not after"),
    ("[{at: 100, prefix: x}]", "data.stages[0].at=100 starts at step 100, but the run ends at step 100"),
    ("[{at: 0.001, prefix: x}]", "data.stages[0].at=0.001 is step 0 of a 100-step run"),
    ("[{at: 0.5, prefix: x}, {at: 0, prefix: y}]", "data.stages[1].at=0: only the first stage"),
    ("[{at: 0, prefix: x}]", "data.stages[0] (at 0) reads 'x' but data.prefix is 'z'"),
    ("[{at: 0.5, prefix: x, weight: 1}]", "unknown key 'data.stages[0].weight'"),
    ("x", "data.stages[0]='x' must be a mapping"),
])
def test_bad_stages_are_one_line_naming_the_key(stages, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.max_steps=100", "data.prefix=z", f"data.stages={stages}"])
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_a_stage_at_zero_is_data_prefix():
    cfg = load_config(None, ["data.stages=[{at: 0, prefix: a}, {at: 0.5, prefix: b}]"])
    assert cfg.data.prefix == "a" and [s.prefix for s in cfg.data.stages] == ["b"]


@pytest.fixture(scope="module")
def second(token_data, tmp_path_factory) -> str:
    """PREFIX of a second real dataset with the same tokenizer: the "What's New" pages of the bundled
    corpus (Python's release notes), tokenised by data_prep/tokenize_corpus.py."""
    out = tmp_path_factory.mktemp("second")
    with gzip.open(SAMPLE / "corpus.jsonl.gz", "rt") as src, open(out / "whatsnew.jsonl", "w") as dst:
        dst.writelines(ln for ln in src if json.loads(ln)["id"].startswith("python-3.11-docs/whatsnew/"))
    r = run_python([REPO / "data_prep" / "tokenize_corpus.py", "--input", out / "whatsnew.jsonl", "--tokenizer",
                    Path(token_data).parent / "tokenizer.json", "--output-prefix", out / "whatsnew",
                    "--valid-fraction", "0.05", "--quiet"])
    assert r.returncode == 0, r.stderr
    return str(out / "whatsnew")


@pytest.mark.slow
def test_the_data_of_a_staged_run(token_data, second, tmp_path):
    cfg = load_config(None, [f"data.prefix={token_data}", *SMALL, "train.max_steps=10",
                             f"data.stages=[{{at: 0.3, prefix: '0.5 {token_data} 0.5 {second}'}}, "
                             f"{{at: 8, prefix: {second}}}]"])
    data = load_data(cfg, cfg.data.prefix, "cfg")
    assert [s.name for s in data.sources] == ["sample", "whatsnew"]
    assert [(st.step, st.sources) for st in data.stages] == [(0, [0]), (3, [0, 1]), (8, [1])]
    G, T = 8, 64
    by_source = data.tokens_by_source(10 * G)
    assert sum(by_source.values()) == 10 * G * T and by_source["sample"] == (3 * G + 5 * G // 2) * T
    assert data.stage_at(3 * G - 1) == 0 and data.stage_at(3 * G) == 1 and data.stage_at(10**9) == 2
    summary = data.stage_summary(10 * G, G)
    assert [s["tokens"] for s in summary] == [3 * G * T, 5 * G * T, 2 * G * T]
    assert summary[2]["tokens_by_source"] == {"whatsnew": 2 * G * T}
    assert set(data.per_source_valid()) == {"sample", "whatsnew"}
    # without stages: what a run read before stages existed (each dataset of a blend seeded by its place)
    cfg = load_config(None, [f"data.prefix=0.7 {token_data} 0.3 {second}", *SMALL])
    data = load_data(cfg, cfg.data.prefix, "cfg")
    old = BlendedSamples([TokenWindows([IndexedDataset(p) for p in _train_shards(prefix)], 64, 1234 + 7919 * i)
                          for i, prefix in enumerate((token_data, second))], [0.7, 0.3])
    pos = np.arange(0, 5000, 7)
    assert all(np.array_equal(u, v) for u, v in zip(data.train.take(pos)[0], old.take(pos)[0]))
    assert data.per_source_valid() and data.record()["stages"][0]["step"] == 0


def _train_shards(prefix: str) -> list[str]:
    from llmtrain.data.dataset import read_manifest, split_shards

    return split_shards(prefix, read_manifest(prefix)[0], "train")


@pytest.mark.slow
def test_bad_stage_data_is_one_line_naming_the_key(token_data, second, tmp_path):
    other = tmp_path / "other"  # the same text under another tokenizer
    tok = tmp_path / "tok.json"
    assert run_python([REPO / "data_prep" / "train_tokenizer.py", "--input", SAMPLE, "--vocab-size", "300",
                       "--output", tok, "--quiet"]).returncode == 0
    assert run_python([REPO / "data_prep" / "tokenize_corpus.py", "--input", Path(second).parent / "whatsnew.jsonl",
                       "--tokenizer", tok, "--output-prefix", other, "--quiet"]).returncode == 0
    cases = [
        (f"[{{at: 5, prefix: '{other}'}}]", f"data.stages[0].prefix: {other} and {token_data} were made with "
                                            f"different tokenizers"),
        (f"[{{at: 5, prefix: '{token_data}'}}]", f"data.stages[0].prefix='{token_data}' is the blend the run "
                                                 f"already reads from step 0"),
        (f"[{{at: 5, prefix: '1 {second} 1'}}]", f"data.stages[0].prefix='1 {second} 1': a blend is pairs"),
        (f"[{{at: 5, prefix: '{tmp_path / 'none'}'}}]", f"{tmp_path / 'none'}_manifest.json: data manifest not found"),
    ]
    for stages, needle in cases:
        cfg = load_config(None, [f"data.prefix={token_data}", *SMALL, f"data.stages={stages}"])
        with pytest.raises(ConfigError) as e:
            load_data(cfg, cfg.data.prefix, "cfg")
        assert needle in str(e.value), (needle, str(e.value))
    # from the command line: one line, exit 2, nothing written
    r = run_python([PRETRAIN, "--run-dir", tmp_path / "run", f"data.prefix={token_data}", *SMALL,
                    f"data.stages={cases[0][0]}"])
    assert_one_line_error(r, "data.stages[0].prefix", "different tokenizers")
    assert not (tmp_path / "run").exists()


def test_the_resume_check_compares_the_stages_before_the_checkpoint(tmp_path):
    from llmtrain.checkpoint.ds import check_stages_compatible

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest").write_text("global_step50")
    recorded = [{"step": 0, "prefix": "a"}, {"step": 40, "prefix": "0.5 a 0.5 b"}, {"step": 80, "prefix": "b"}]
    (tmp_path / "data_manifest.json").write_text(json.dumps({"stages": recorded}))

    def check(*overrides):
        check_stages_compatible(tmp_path, load_config(None, ["data.prefix=a", *overrides]))

    base = ["train.max_steps=100", "data.stages=[{at: 0.4, prefix: '0.5 a 0.5 b'}, {at: 0.8, prefix: b}]"]
    check(*base)
    check("train.max_steps=100", "data.stages=[{at: 40, prefix: '1 a 1 ./b'}, {at: 70, prefix: c}]")  # later: free
    check("train.max_steps=200", "data.stages=[{at: 40, prefix: '0.5 a 0.5 b'}]")  # more steps, the step written
    for bad in (["train.max_steps=200", base[1]],  # the fraction moved the stage the run is in
                ["train.max_steps=100", "data.stages=[{at: 40, prefix: '0.6 a 0.4 b'}]"],
                ["train.max_steps=100", "data.stages=[{at: 30, prefix: x}, {at: 40, prefix: '0.5 a 0.5 b'}]"],
                ["train.max_steps=100"]):
        with pytest.raises(ConfigError) as e:
            check(*bad)
        assert "data_manifest.json: before its checkpoint at step 50" in str(e.value)
        assert "checkpoint.allow_data_change=true" in str(e.value)
    check("train.max_steps=100", "checkpoint.allow_data_change=true")


# ---------------------------------------------------------------------------------------------
# the sweep: cooling down on another mixture


def sweep_yaml(path: Path, cooldown, schedule="wsd") -> Path:
    path.write_text(yaml.safe_dump({
        "name": "t", "base": "configs/tiny.yaml", "vocab_size": 512, "overrides": ["model.seq_len=64"],
        "ladder": {"params": [2e4], "head_dim": 16},
        "tokens": {"basis": "non_embedding", "tokens_per_param": [10, 20]},
        "hparams": {"global_batch_size": 8, "warmup_min_steps": 5, "schedule": schedule,
                    "branch": schedule == "wsd"},
        **({"cooldown_prefix": cooldown} if cooldown is not None else {})}, sort_keys=False))
    return path


def sweep_cli():
    spec = importlib.util.spec_from_file_location("sweep_cli", REPO / "launcher" / "sweep.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def plan_of(path: Path):
    from llmtrain.scaling.plan import load_sweep, plan, seq_len_and_model

    sw = load_sweep(path)
    seq_len, model, _ = seq_len_and_model(sw)
    return sw, plan(sw, seq_len, 512, model)


def test_a_sweep_cools_down_on_other_mixtures(tmp_path):
    sw, runs = plan_of(sweep_yaml(tmp_path / "one.yaml", "0.3 a 0.7 b"))
    assert [r.name for r in runs] == ["L2_d32_D494592", "L2_d32_D247296"]  # names as without it
    trunk, branch = runs
    assert trunk.cooldown_step == 966 - 193 and branch.cooldown_step == branch.init_step == 483 - 97
    cmd = sweep_cli().command(branch, sw, tmp_path, "configs/tiny.yaml")
    cfg = load_config(None, [c for c in cmd if c.startswith(("data.", "train.", "model."))])
    assert [(s.at, s.prefix) for s in cfg.data.stages] == [(386, "0.3 a 0.7 b")] and cfg.stage_steps() == [386]

    _, runs = plan_of(sweep_yaml(tmp_path / "map.yaml", {"plain": None, "books": "b"}))
    by = {r.name: r for r in runs}
    assert sorted(by) == ["L2_d32_D247296_cd-books", "L2_d32_D247296_cd-plain", "L2_d32_D494592_cd-books",
                          "L2_d32_D494592_cd-plain"]
    trunk = by["L2_d32_D494592_cd-plain"]  # the first entry's cooldown is the trunk's own
    assert trunk.init_from is None and trunk.cooldown_prefix is None and trunk.save_steps == [386, 773]
    long_books = by["L2_d32_D494592_cd-books"]
    assert (long_books.init_from, long_books.init_step, long_books.cooldown_step) == (trunk.name, 773, 773)
    assert long_books.compute_steps == 193 and by["L2_d32_D247296_cd-books"].init_step == 386
    assert by["L2_d32_D247296_cd-plain"].cooldown_step is None

    with pytest.raises(ConfigError, match="cooldown_prefix needs hparams.schedule: wsd"):
        plan_of(sweep_yaml(tmp_path / "cos.yaml", "b", schedule="cosine"))
    with pytest.raises(ConfigError, match="cooldown_prefix label 'a b'"):
        plan_of(sweep_yaml(tmp_path / "lab.yaml", {"a b": "x"}))


@pytest.mark.slow
def test_a_sweep_with_a_missing_cooldown_dataset_is_one_line(tmp_path):
    r = run_python([REPO / "launcher" / "sweep.py", "--config", sweep_yaml(tmp_path / "miss.yaml", "0.5 x/y 0.5 z"),
                    "--dry-run"])
    assert_one_line_error(r, "x/y_manifest.json: data manifest not found")


# ---------------------------------------------------------------------------------------------
# real runs: every layout, resumed across the boundary, and a branch


LAYOUTS = {  # name: (processes, DeepSpeed config, overrides)
    "zero0_x1": (1, "zero0.json", []),
    "zero2_x2": (2, "zero2.json", []),
    "zero3_x2": (2, "zero3.json", []),
    "pipe_x2": (2, "zero1.json", ["parallel.pipeline_stages=2"]),
}
STEPS, BOUNDARY = 6, 3


def launch(layout: str, probe: Path, *args, monkeypatch) -> subprocess.CompletedProcess:
    """tests/sample_probe.py (launcher/pretrain.py recording what each rank trains on) on a layout;
    two ranks are started by torchrun."""
    nproc, ds, extra = LAYOUTS[layout]
    monkeypatch.setenv("SAMPLE_PROBE", str(probe))
    args = [PROBE, "--deepspeed_config", REPO / "ds_configs" / ds, *args, *extra]
    head = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                                                str(nproc), "--master_port", str(free_port())]
    return subprocess.run([*head, *map(str, args)], cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)


def probed(probe: Path) -> dict[int, set[str]]:
    """step -> the digests of every row any rank trained on at that step."""
    out: dict[int, set[str]] = {}
    for f in probe.parent.glob(probe.name + ".rank*"):
        for ln in f.read_text().splitlines():
            rec = json.loads(ln)
            out.setdefault(rec["step"], set()).update(rec["rows"])
    return out


def expected_rows(overrides: list[str], steps) -> dict[int, set[str]]:
    """step -> the digests of the samples the config's stages put at that step (the library's
    pure function of step, seed and stages, computed here in the test's own process)."""
    cfg = load_config(None, overrides)
    data = load_data(cfg, cfg.data.prefix, "cfg")
    G = cfg.train.global_batch_size
    return {s: {digest(r.numpy()) for r in batch(data.train, s * G, G)[0]} for s in steps}


def digest(row: np.ndarray) -> str:
    """As tests/sample_probe.py digests a row of inputs."""
    return hashlib.sha1(row.astype("int64").tobytes()).hexdigest()[:16]


def rewind(run: Path, step: int) -> None:
    """The run folder as a run killed right after its checkpoint at ``step`` leaves it."""
    ckpts = run / "checkpoints"
    for d in ckpts.glob("global_step*"):
        if int(d.name.removeprefix("global_step")) > step:
            shutil.rmtree(d)
    (ckpts / "latest").write_text(f"global_step{step}")
    (run / "summary.json").unlink(missing_ok=True)


@pytest.fixture(scope="module")
def staged_run(token_data, second, tmp_path_factory):
    """A 6-step run on ZeRO-0 that reads the corpus, then from step 3 (at: 0.5) an even blend with
    the second dataset; checkpoints at 2 and 4, one step before and one after the boundary."""
    tmp = tmp_path_factory.mktemp("staged")
    overrides = [f"data.prefix={token_data}", *SMALL, *FAST, f"train.max_steps={STEPS}", "train.eval_batches=1",
                 f"data.stages=[{{at: 0.5, prefix: '0.5 {token_data} 0.5 {second}'}}]"]
    mp = pytest.MonkeyPatch()
    try:
        r = launch("zero0_x1", tmp / "ref.probe", "--run-dir", tmp / "ref", *overrides, "checkpoint.save_steps=[2,4]",
                   monkeypatch=mp)
    finally:
        mp.undo()
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    return tmp, overrides, expected_rows(overrides, range(STEPS))


@pytest.mark.slow
def test_a_staged_run_reads_its_stages_and_reports_each_source(staged_run, token_data, second):
    tmp, overrides, expected = staged_run
    run = tmp / "ref"
    got = probed(tmp / "ref.probe")
    assert sorted(got) == list(range(STEPS)) and all(got[s] == expected[s] for s in got)
    plain = expected_rows([o for o in overrides if not o.startswith("data.stages")], range(STEPS))
    assert all(plain[s] == expected[s] for s in range(BOUNDARY)), "the same samples before the boundary"
    read_plain = set().union(*plain.values())
    for s in range(BOUNDARY, STEPS):  # after it, an even blend: the corpus's stream goes on, the other comes in
        assert len(expected[s] & read_plain) == len(expected[s] - read_plain) == 4, s

    G, T = 8, 64
    train = [x for x in read_metrics(run) if "split" not in x]
    assert [x["stage"] for x in train] == [0, 0, 0, 1, 1, 1]
    for x in train:
        assert sum(x["tokens_by_source"].values()) == x["tokens"] == x["step"] * G * T
    assert train[2]["tokens_by_source"] == {"sample": 3 * G * T, "whatsnew": 0}
    assert train[-1]["tokens_by_source"] == {"sample": (3 * G + 3 * G // 2) * T, "whatsnew": 3 * G // 2 * T}
    valid = {x["split"]: x["loss"] for x in read_metrics(run) if x.get("split", "").startswith("valid")}
    assert set(valid) == {"valid", "valid:sample", "valid:whatsnew"}
    assert valid["valid"] == valid["valid:sample"], "the first blend is the corpus alone: the same windows"
    s = json.loads((run / "summary.json").read_text())
    assert s["tokens_by_source"] == train[-1]["tokens_by_source"]
    assert [(st["step"], st["at"], st["tokens"]) for st in s["stages"]] == [(0, None, 3 * G * T), (3, 0.5, 3 * G * T)]
    assert s["valid_loss_by_source"] == {"sample": valid["valid:sample"], "whatsnew": valid["valid:whatsnew"]}
    manifest = json.loads((run / "data_manifest.json").read_text())
    assert [(st["step"], st["at"], st["sources"]) for st in manifest["stages"]] == [
        (0, None, ["sample"]), (3, 0.5, ["sample", "whatsnew"])]
    assert manifest["sources"] == {"sample": token_data, "whatsnew": second}

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/stage", "train/tokens_by_source/sample", "train/tokens_by_source/whatsnew",
            "valid:whatsnew/loss", "valid:sample/loss", "valid/loss"} <= tags
    assert [e.value for e in acc.Scalars("train/tokens_by_source/whatsnew")] == [
        x["tokens_by_source"]["whatsnew"] for x in train]


@pytest.mark.slow
@pytest.mark.parametrize("layout,at", [("zero0_x1", 4), ("zero2_x2", 2), ("zero3_x2", 4), ("pipe_x2", 2)])
def test_resume_across_the_boundary_on_every_layout(staged_run, layout, at, monkeypatch):
    """The run killed right after its checkpoint one step before the boundary (2) or one after (4),
    relaunched with the same command on this layout: the steps after the checkpoint read exactly
    the samples the stages put there, from the checkpoint's step on, and the losses are the run's."""
    tmp, overrides, expected = staged_run
    run = tmp / f"resume_{layout}"
    shutil.copytree(tmp / "ref", run)
    rewind(run, at)
    probe = tmp / f"{layout}.probe"
    r = launch(layout, probe, "--run-dir", run, *overrides, monkeypatch=monkeypatch)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    assert f"from {run / 'checkpoints' / f'global_step{at}'} at step {at}" in r.stdout
    got = probed(probe)
    assert sorted(got) == list(range(at, STEPS)), "the data position is the checkpoint's step"
    for s in got:
        assert got[s] == expected[s], (layout, s)
    ref, losses = train_losses(tmp / "ref"), train_losses(run)
    assert sorted(losses) == list(range(1, STEPS + 1))
    for step in range(at + 1, STEPS + 1):
        assert losses[step] == pytest.approx(ref[step], abs=TOL), (layout, step)
    if layout == "zero0_x1":  # the same layout, DeepSpeed's own loader: bit for bit
        assert all(losses[s] == ref[s] for s in range(at + 1, STEPS + 1))


@pytest.mark.slow
def test_a_changed_stage_before_the_checkpoint_is_refused(staged_run, token_data, tmp_path):
    tmp, overrides, _ = staged_run
    run = tmp_path / "run"
    shutil.copytree(tmp / "ref", run)
    rewind(run, 4)
    before = {f: (run / f).read_bytes() for f in ("config.yaml", "metrics.jsonl", "data_manifest.json")}
    r = run_python([PRETRAIN, "--run-dir", run, *[o for o in overrides if "max_steps" not in o], "train.max_steps=10"])
    assert_one_line_error(r, "data_manifest.json: before its checkpoint at step 4", "step 3:", "now none",
                          "checkpoint.allow_data_change=true")
    assert {f: (run / f).read_bytes() for f in before} == before


@pytest.mark.slow
def test_a_branch_cools_down_on_another_dataset_from_its_branch_point(staged_run, token_data, second, monkeypatch):
    """A WSD branch from the run's checkpoint at step 2 (what launcher/sweep.py starts with
    cooldown_prefix): it reads the second dataset alone from its first step, with the trunk's
    history counted in its tokens."""
    tmp, overrides, _ = staged_run
    branch = [f"data.prefix={token_data}", *SMALL, *FAST, "train.max_steps=4", "train.schedule=wsd",
              "train.decay_fraction=0.5", "train.eval_batches=1", f"data.stages=[{{at: 2, prefix: {second}}}]"]
    probe = tmp / "branch.probe"
    r = launch("zero0_x1", probe, "--run-dir", tmp / "branch", *branch,
               f"checkpoint.init_from={tmp / 'ref' / 'checkpoints' / 'global_step2'}", monkeypatch=monkeypatch)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    got, want = probed(probe), expected_rows(branch, range(2, 4))
    assert sorted(got) == [2, 3] and all(got[s] == want[s] for s in got)
    every = TokenWindows([IndexedDataset(p) for p in _train_shards(second)], 64, 0, shuffle=False)
    rows, _ = every.take(np.arange(every.num_samples))
    of_second = {digest(r[:-1]) for r in rows}
    assert all(got[s] <= of_second for s in got), "the second dataset's windows only"
    s = json.loads((tmp / "branch" / "summary.json").read_text())
    assert s["tokens_by_source"] == {"sample": 2 * 8 * 64, "whatsnew": 2 * 8 * 64}
