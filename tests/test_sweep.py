"""Scaling sweeps (launcher/sweep.py, llmtrain/scaling/plan.py): the planner's rules (shapes,
token budgets, WSD cooldown branches, IsoFLOP grids, the LR rule, bad input), the CLI's dry
run and Slurm scripts, and a real tiny sweep end to end: trunks and their cooldown branches
trained by DeepSpeed on CPU, a rerun that skips them all, and fit_scaling.py on the result."""
from __future__ import annotations

import importlib.util
import json
import math
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from trainutil import REPO, read_metrics, run_python, train_losses

from llmtrain.config import ModelConfig, load_config
from llmtrain.core.errors import ConfigError
from llmtrain.model.gpt import count_params
from llmtrain.scaling.plan import load_sweep, plan, seq_len_and_model, shape_for
from llmtrain.train.schedule import lr_multiplier

SWEEP = REPO / "launcher" / "sweep.py"
FIT = REPO / "launcher" / "fit_scaling.py"


def write_sweep(path: Path, **sections) -> Path:
    """A sweep YAML: a small valid default, with top-level sections replaced or extended."""
    sw = {
        "name": "t",
        "base": "configs/tiny.yaml",
        "vocab_size": 512,
        "overrides": ["model.seq_len=64"],
        "ladder": {"params": [2e4, 1e5], "aspect_ratio": 32, "head_dim": 16},
        "tokens": {"basis": "non_embedding", "tokens_per_param": [5, 10, 20]},
        "hparams": {"lr": 4e-3, "lr_ref_params": 1e5, "lr_exponent": 0.2, "global_batch_size": 8,
                    "warmup_fraction": 0.1, "warmup_min_steps": 5, "warmup_max_steps": 100,
                    "schedule": "wsd", "decay_fraction": 0.2, "branch": True},
    }
    for k, v in sections.items():
        if isinstance(v, dict) and isinstance(sw.get(k), dict):
            sw[k] = {**sw[k], **v}
        else:
            sw[k] = v
    path.write_text(yaml.safe_dump(sw))
    return path


_spec = importlib.util.spec_from_file_location("sweep_cli", SWEEP)
sweep_cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep_cli)


def plan_of(path: Path):
    """The plan as launcher/sweep.py makes it (vocabulary from the sweep, the base config or the data)."""
    sw = load_sweep(path)
    seq_len, model, base = seq_len_and_model(sw)
    return sw, seq_len, plan(sw, seq_len, sweep_cli.vocab_size_for(sw, model, base), model)


def tiny_model(**kw) -> ModelConfig:
    return ModelConfig(**{**load_config(REPO / "configs" / "tiny.yaml", []).model.__dict__, **kw})


# ---------------------------------------------------------------------------------------------
# planner units


@pytest.mark.parametrize("head_dim,aspect", [(16, 32), (32, 32), (64, 64)])
def test_shape_rule_hits_the_target_size(head_dim, aspect):
    base = tiny_model(vocab_size=512)
    for target in (1e5, 3e5, 1e6, 1e7, 1e8):
        L, d, h = shape_for(target, aspect, head_dim, base)
        assert d % head_dim == 0 and h == d // head_dim and L >= 1
        n = count_params(ModelConfig(**{**base.__dict__, "n_layer": L, "d_model": d, "n_head": h}))
        ratio = n["n_params_non_embedding"] / target
        # widths come in steps of head_dim, so small targets land only near them
        assert 1 / 1.35 < ratio < 1.35, (target, L, d, ratio)
        if target >= 1e7:
            assert abs(ratio - 1) < 0.07, (target, L, d, ratio)
            assert aspect / 2 <= d / L <= aspect * 2, (target, L, d)
    # sizes grow with the target, and a ladder's shapes are distinct
    shapes = [shape_for(t, 32, 16, base) for t in (2e4, 1e5, 1e6, 1e7)]
    assert len(set(shapes)) == 4
    assert [s[1] for s in shapes] == sorted(s[1] for s in shapes)


@pytest.mark.parametrize("basis", ["total", "non_embedding"])
def test_tokens_per_param_budgets_and_lr_rule(tmp_path, basis):
    path = write_sweep(tmp_path / "s.yaml", tokens={"basis": basis, "tokens_per_param": [5, 10, 20]},
                       hparams={"branch": False})
    sw, seq_len, runs = plan_of(path)
    tps = 8 * seq_len
    assert len(runs) == 6 and all(r.init_from is None and r.compute_steps == r.steps for r in runs)
    assert len({r.size for r in runs}) == 2
    for r in runs:
        counts = count_params(tiny_model(n_layer=r.n_layer, d_model=r.d_model, n_head=r.n_head, vocab_size=512,
                                        seq_len=seq_len))
        assert (r.n_params, r.n_params_non_embedding) == (counts["n_params"], counts["n_params_non_embedding"])
        N = r.n_params if basis == "total" else r.n_params_non_embedding
        assert r.n_basis == N
        assert r.tokens == r.steps * tps
        k = min((5, 10, 20), key=lambda k: abs(r.tokens - k * N))
        assert abs(r.tokens - k * N) <= tps / 2, (r.name, r.tokens, k * N)  # rounded to whole steps
        assert r.flops == pytest.approx(6 * r.n_params * r.tokens)
        assert r.lr == pytest.approx(4e-3 * (1e5 / N) ** 0.2, rel=1e-12)
        assert r.overrides(sw)[:3] == [f"model.n_layer={r.n_layer}", f"model.d_model={r.d_model}",
                                       f"model.n_head={r.n_head}"]
        assert f"train.max_steps={r.steps}" in r.overrides(sw)
    for size in {r.size for r in runs}:
        mine = [r for r in runs if r.size == size]
        shortest = min(r.steps for r in mine)
        assert {r.warmup_steps for r in mine} == {int(min(100, max(5, round(0.1 * shortest))))}
        ks = sorted(r.tokens / r.n_basis for r in mine)
        assert ks == pytest.approx([5, 10, 20], rel=0.15)
    # the smaller model gets the larger LR under a positive exponent
    small, big = min((r.n_basis, r.lr) for r in runs), max((r.n_basis, r.lr) for r in runs)
    assert small[0] < big[0] and small[1] > big[1]


def test_branches_start_where_the_cooldown_of_their_budget_starts(tmp_path):
    path = write_sweep(tmp_path / "s.yaml", hparams={"decay_fraction": 0.25})
    sw, _, runs = plan_of(path)
    sizes = sorted({r.size for r in runs})
    assert len(sizes) == 2
    for size in sizes:
        mine = [r for r in runs if r.size == size]
        trunks = [r for r in mine if r.init_from is None]
        assert len(trunks) == 1, "one trunk per size"
        trunk = trunks[0]
        branches = [r for r in mine if r.init_from]
        assert len(branches) == 2 and trunk.steps == max(r.steps for r in mine) > max(b.steps for b in branches)
        assert trunk.compute_steps == trunk.steps
        points = []
        for b in branches:
            B = b.steps - round(0.25 * b.steps)
            assert (b.init_from, b.init_step, b.compute_steps) == (trunk.name, B, b.steps - B)
            assert b.warmup_steps == trunk.warmup_steps < B and b.lr == trunk.lr
            # the trainer's WSD schedule for the branch is constant up to B and cools down from there
            sched = {"schedule": "wsd", "warmup_steps": b.warmup_steps, "decay_fraction": 0.25}
            assert lr_multiplier(B - 1, b.steps, **sched) == 1.0
            assert lr_multiplier(B, b.steps, **sched) < 1.0
            assert lr_multiplier(b.steps - 1, b.steps, **sched) == pytest.approx(0.1)
            # ...and the trunk is still at constant LR there, so the weights are the branch's own
            assert all(lr_multiplier(s, trunk.steps, **sched) == 1.0 for s in range(b.warmup_steps, B))
            points.append(B)
        assert trunk.save_steps == sorted(points)
        assert "checkpoint.save_steps=" + ",".join(map(str, sorted(points))) in trunk.overrides(sw)
        assert not any(o.startswith("checkpoint.save_steps") for b in branches for o in b.overrides(sw))
    # a branch costs its cooldown only
    assert sum(r.compute_steps for r in runs) < sum(r.steps for r in runs) * 0.75


@pytest.mark.parametrize("branch", [False, True])
def test_isoflop_keeps_budgets_within_the_tokens_per_param_band(tmp_path, branch):
    flops = [1e11, 3e11, 1e12, 3e12]
    path = write_sweep(tmp_path / "s.yaml", ladder={"params": [2e4, 5e4, 1e5, 3e5]},
                       tokens={"basis": "non_embedding", "tokens_per_param": None,
                               "isoflop": {"flops": flops, "min_tokens_per_param": 4, "max_tokens_per_param": 60}},
                       hparams={"branch": branch, "warmup_min_steps": 1, "warmup_fraction": 0.0})
    _, seq_len, runs = plan_of(path)
    tps = 8 * seq_len
    base = tiny_model(vocab_size=512)
    expected = set()
    for t in (2e4, 5e4, 1e5, 3e5):
        L, d, h = shape_for(t, 32, 16, base)
        N = count_params(ModelConfig(**{**base.__dict__, "n_layer": L, "d_model": d, "n_head": h}))[
            "n_params_non_embedding"]
        for C in flops:
            D = C / (6 * N)
            if 4 * N <= D <= 60 * N:
                expected.add((f"L{L}_d{d}", max(1, round(D / tps))))
    assert 4 <= len(expected) < 16, "the band must drop some of the grid for this test to mean anything"
    assert {(r.size, r.steps) for r in runs} == expected
    for r in runs:
        assert 4 * r.n_basis - tps <= r.tokens <= 60 * r.n_basis + tps
        assert any(abs(6 * r.n_basis * r.tokens / C - 1) < tps / r.tokens + 1e-9 for C in flops)
    if branch:
        assert sum(r.init_from is None for r in runs) == len({r.size for r in runs})


def test_explicit_rows_bypass_the_shape_rule(tmp_path):
    rows = [{"n_layer": 2, "d_model": 48}, {"n_layer": 3, "d_model": 64, "n_head": 2}]
    path = write_sweep(tmp_path / "s.yaml", ladder={"params": None, "rows": rows})
    _, _, runs = plan_of(path)
    assert {(r.n_layer, r.d_model, r.n_head) for r in runs} == {(2, 48, 3), (3, 64, 2)}


BAD = [
    ({"hparams": {"lr_rate": 1e-3}}, "hparams.lr_rate"),
    ({"ladder": {"param": [1e5]}}, "ladder.param"),
    ({"tokens": {"tokens_per_parm": [5]}}, "tokens.tokens_per_parm"),
    ({"resolution": 3}, "resolution"),
    ({"tokens": {"tokens_per_param": None, "isoflop": {"flops": [1e12], "max_tpp": 5}}}, "isoflop.max_tpp"),
    ({"hparams": {"schedule": "cosine", "branch": True}}, "hparams.branch"),
    ({"tokens": {"tokens_per_param": [5, 20], "isoflop": {"flops": [1e12]}}}, "tokens_per_param"),
    ({"tokens": {"tokens_per_param": None}}, "tokens_per_param"),
    ({"tokens": {"tokens_per_param": 20}}, "tokens.tokens_per_param"),
    ({"tokens": {"tokens_per_param": [5, -20]}}, "tokens.tokens_per_param"),
    ({"tokens": {"basis": "embedding"}}, "tokens.basis"),
    ({"ladder": {"params": ["big"]}}, "ladder.params"),
    ({"hparams": {"decay_fraction": 1.5}}, "hparams.decay_fraction"),
    # 0.1 tokens/param of the 2e4 size is 5 steps: its cooldown would start inside the warmup
    ({"tokens": {"tokens_per_param": [0.1, 20]}}, "warmup"),
    ({"hparams": {"lr_grid": [1e-3, 1e-2]}}, "'lr' and 'lr_grid'"),  # the default sweep sets lr too
]


@pytest.mark.parametrize("edit,key", BAD, ids=[k for _, k in BAD])
def test_bad_sweep_is_one_line_naming_file_and_key(tmp_path, edit, key):
    path = write_sweep(tmp_path / "bad.yaml", **edit)
    with pytest.raises(ConfigError) as ei:
        plan_of(path)
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith(str(path)) and key in msg, msg


@pytest.mark.slow
def test_bad_sweep_on_the_command_line(tmp_path):
    path = write_sweep(tmp_path / "bad.yaml", hparams={"warmup_steps": 10})
    r = run_python([SWEEP, "--config", path, "--dry-run"], timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [f"error: {path}: unknown key 'hparams.warmup_steps' (known: " + ", ".join(
        sorted(["lr", "lr_grid", "lr_ref_params", "lr_exponent", "global_batch_size", "warmup_fraction",
                "warmup_min_steps", "warmup_max_steps", "schedule", "decay_fraction", "branch"])) + ")"]
    (tmp_path / "broken.yaml").write_text("ladder:\n  params: [1e5\ntokens: {}\n")
    r = run_python([SWEEP, "--config", tmp_path / "broken.yaml", "--dry-run"], timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and f"{tmp_path / 'broken.yaml'}:" in r.stderr


def grid_sweep(path: Path, lr_grid, **hparams) -> Path:
    """The default sweep with hparams.lr replaced by hparams.lr_grid."""
    write_sweep(path, hparams=hparams)
    sw = yaml.safe_load(path.read_text())
    del sw["hparams"]["lr"]
    sw["hparams"]["lr_grid"] = lr_grid
    path.write_text(yaml.safe_dump(sw))
    return path


@pytest.mark.parametrize("branch", [False, True])
def test_lr_grid_plans_every_size_and_budget_at_every_lr(tmp_path, branch):
    grid = [1e-3, 3e-3, 1e-2]
    path = grid_sweep(tmp_path / "s.yaml", grid, branch=branch)
    sw, seq_len, runs = plan_of(path)
    # the same plan without a grid, once per LR
    _, _, single = plan_of(write_sweep(tmp_path / "one.yaml", hparams={"branch": branch}))
    assert len(single) == 6 and len(runs) == 3 * len(single)
    assert len({r.name for r in runs}) == len(runs)
    sizes = {r.size for r in single}
    assert {(r.size, r.lr_grid_value) for r in runs} == {(z, g) for z in sizes for g in grid}
    for g in grid:
        mine = [r for r in runs if r.lr_grid_value == g]
        assert len(mine) == len(single)
        for r, s in zip(mine, single):
            # everything as in the plan without a grid, but the LR: the grid value in place of hparams.lr
            assert r.name == f"{s.name}_lr{g:g}"
            assert (r.size, r.tokens, r.steps, r.warmup_steps, r.n_params, r.compute_steps, r.init_step) == (
                s.size, s.tokens, s.steps, s.warmup_steps, s.n_params, s.compute_steps, s.init_step)
            assert r.lr == pytest.approx(g * (1e5 / r.n_basis) ** 0.2, rel=1e-12)
            assert f"train.lr={r.lr}" in r.overrides(sw) and f"log.name={r.name}" in r.overrides(sw)
            if branch:
                # each (size, LR) has its own trunk, and a branch starts from the trunk of its own LR
                assert (r.init_from is None) == (s.init_from is None)
                if r.init_from:
                    trunk = next(t for t in runs if t.name == r.init_from)
                    assert trunk.lr == r.lr and trunk.size == r.size and trunk.init_from is None
    assert sum(r.init_from is None for r in runs) == (6 if branch else 18)
    assert all(s.lr_grid_value is None for s in single)


@pytest.mark.parametrize("grid,want", [([], "non-empty list"), ([1e-3, -1e-2], "positive"),
                                       ([1e-3, 1e-3], "repeats"), ("1e-3", "non-empty list")])
def test_bad_lr_grid(tmp_path, grid, want):
    path = grid_sweep(tmp_path / "bad.yaml", grid)
    with pytest.raises(ConfigError) as ei:
        plan_of(path)
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith(str(path)) and "hparams.lr_grid" in msg and want in msg, msg


# ---------------------------------------------------------------------------------------------
# a real tiny sweep: 2 sizes x 2 budgets, each size one trunk (4 tokens/param) + one branch (2);
# 8 x 64 tokens a step, 12 to 55 steps a run

DECAY = 0.4


def tiny_sweep(path: Path, prefix: str) -> Path:
    return write_sweep(
        path, name="tiny", vocab_size=None,
        overrides=[f"data.prefix={prefix}", "model.seq_len=64", "train.eval_interval=0", "train.eval_batches=1",
                   "train.log_interval=1", "train.min_lr_ratio=0.1", "train.threads=1"],
        ladder={"params": [3000, 8000], "aspect_ratio": 16, "head_dim": 8},
        tokens={"basis": "non_embedding", "tokens_per_param": [2, 4]},
        hparams={"lr": 4e-3, "lr_ref_params": 1e4, "lr_exponent": 0.2, "global_batch_size": 8,
                 "warmup_fraction": 0.1, "warmup_min_steps": 2, "decay_fraction": DECAY, "branch": True})


@pytest.fixture(scope="module")
def swept(token_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    cfg = tiny_sweep(tmp / "tiny.yaml", token_data)
    out = tmp / "sweep"
    t0 = time.time()
    r = run_python([SWEEP, "--config", cfg, "--out", out], timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    plan_doc = json.loads((out / "plan.json").read_text())
    return {"cfg": cfg, "out": out, "stdout": r.stdout, "seconds": time.time() - t0, "plan": plan_doc["runs"]}


@pytest.mark.slow
def test_sweep_trains_every_planned_run(swept):
    out, runs = swept["out"], swept["plan"]
    assert len(runs) == 4 and sum(r["init_from"] is None for r in runs) == 2
    assert (out / "plan.md").read_text().count("\n| L") == 4
    for i, r in enumerate(runs, 1):
        assert f"[{i}/4] {r['name']}: N={r['n_params']:,}" in swept["stdout"]
        s = json.loads((out / r["name"] / "summary.json").read_text())
        # the plan's sizes (vocabulary padded as the trainer pads it) and budgets are what ran
        assert s["status"] == "finished"
        assert (s["n_params"], s["n_params_non_embedding"], s["steps"], s["tokens"]) == (
            r["n_params"], r["n_params_non_embedding"], r["steps"], r["tokens"])
        assert s["final_valid_loss"] is not None and math.isfinite(s["final_valid_loss"])
        assert s["lr"] == pytest.approx(r["lr"])
        steps = sorted(train_losses(out / r["name"]))
        # a branch computes only its cooldown: its first logged step follows the branch point
        assert steps == list(range(r["init_step"] + 1, r["steps"] + 1))
        if r["init_from"] is None:
            for b in r["save_steps"]:
                assert (out / r["name"] / "checkpoints" / f"global_step{b}").is_dir()
    assert "sweep done" in swept["stdout"]


@pytest.mark.slow
def test_branch_continues_the_trunk_and_cools_down_to_the_minimum(swept):
    out = swept["out"]
    branches = [r for r in swept["plan"] if r["init_from"]]
    assert len(branches) == 2
    for b in branches:
        B, S, peak = b["init_step"], b["steps"], b["lr"]
        assert B == S - round(DECAY * S)
        trunk_log = {m["step"]: m for m in read_metrics(out / b["init_from"]) if m.get("split") is None}
        log = [m for m in read_metrics(out / b["name"]) if m.get("split") is None]
        first = log[0]
        assert first["step"] == B + 1
        # same weights, same batch: the branch's first loss is the trunk's loss at that step
        assert first["loss"] == pytest.approx(trunk_log[B + 1]["loss"], rel=1e-6, abs=1e-6)
        assert trunk_log[B + 1]["lr"] == pytest.approx(peak)  # the trunk goes on at constant LR
        # ...a trained one, not a fresh model
        assert first["loss"] < trunk_log[1]["loss"] - 0.1
        lrs = [m["lr"] for m in log]
        assert all(a >= c for a, c in zip(lrs, lrs[1:])), lrs
        assert lrs[-1] == pytest.approx(0.1 * peak, rel=1e-6)  # down to min_lr_ratio x lr at the last step
        # from the second cooldown step on, exactly the WSD cooldown of an S-step run
        for m in log[1:]:
            want = peak * lr_multiplier(m["step"] - 1, S, "wsd", b["warmup_steps"], 0.1, DECAY)
            assert m["lr"] == pytest.approx(want, rel=1e-6), m["step"]


@pytest.mark.slow
def test_branch_first_step_already_cools_down(swept):
    for b in (r for r in swept["plan"] if r["init_from"]):
        first = [m for m in read_metrics(swept["out"] / b["name"]) if m.get("split") is None][0]
        want = b["lr"] * lr_multiplier(b["init_step"], b["steps"], "wsd", b["warmup_steps"], 0.1, DECAY)
        assert first["lr"] == pytest.approx(want, rel=1e-6)


@pytest.mark.slow
def test_rerun_skips_finished_runs(swept):
    out = swept["out"]
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("*/metrics.jsonl")}
    t0 = time.time()
    r = run_python([SWEEP, "--config", swept["cfg"], "--out", out], timeout=120)
    took = time.time() - t0
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("finished, skipped") == 4 and "N=" not in r.stdout
    assert took < max(20.0, swept["seconds"] / 3), took
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("*/metrics.jsonl")} == before


@pytest.mark.slow
def test_fit_scaling_on_the_sweep(swept, tmp_path):
    out = swept["out"]
    # four runs: too few for approach 3's five parameters, and the fitter says so
    r = run_python([FIT, out, "--method", "chinchilla", "--out", tmp_path / "chin"], timeout=120)
    assert r.returncode == 2 and "needs at least 6 points; got 4" in r.stderr
    assert not (tmp_path / "chin" / "fit.json").exists()
    # Kaplan's L(D) and L(C) each need 4 frontier points: four distinct budgets give them
    r = run_python([FIT, out, "--method", "kaplan", "--out", tmp_path / "kap", "--no-plots"], timeout=120)
    assert r.returncode == 0, r.stderr
    fit = json.loads((tmp_path / "kap" / "fit.json").read_text())
    assert fit["n_points"] == 4 and fit["source_kind"] == "sweep" and fit["loss_source"] == "validation loss"
    got = {p["label"]: p for p in fit["points"]}
    assert set(got) == {r["name"] for r in swept["plan"]}
    for name, p in got.items():
        s = json.loads((out / name / "summary.json").read_text())
        assert (p["N"], p["D"], p["loss"]) == pytest.approx((s["n_params"], s["tokens"], s["final_valid_loss"]))
    assert "D" in fit["laws"] and "N" in fit["laws_skipped"]  # two sizes are no L(N)
    assert fit["parameters"]["alpha_D"]["value"] > 0  # more data, lower loss
    resid = fit["laws"]["D"]["residuals_log"]
    assert max(abs(x) for x in resid) < 0.05


# ---------------------------------------------------------------------------------------------
# CLI without training


@pytest.mark.slow
def test_dry_run_prints_the_plan_and_writes_nothing(token_data, tmp_path):
    cfg = tiny_sweep(tmp_path / "tiny.yaml", token_data)
    work = tmp_path / "cwd"
    work.mkdir()
    r = subprocess.run([sys.executable, str(SWEEP), "--config", str(cfg), "--dry-run"], cwd=work,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("| run | L | d | N | N non-emb | D (tokens) | D/N | steps |")
    rows = [ln for ln in lines[2:] if ln.startswith("| L")]
    _, _, runs = plan_of(cfg)
    assert len(rows) == len(runs) == 4
    for row, run in zip(rows, runs):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[0] == run.name and int(cells[7]) == run.steps
        assert cells[10] == (f"{run.init_from}@{run.init_step}" if run.init_from else "-")
        assert cells[12] == f"{run.n_params_active:,}"
        assert cells[13].endswith(" GiB") and cells[14] == "yes" and int(cells[15]) >= 1  # memory per rank
    assert any(ln.startswith("4 runs; estimated total ") for ln in lines)
    assert any(ln.startswith("memory per rank against ") for ln in lines)
    assert list(work.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "tiny.yaml"]


@pytest.mark.slow
def test_slurm_arrays_run_the_sweep_and_a_preempted_run_resumes(swept, slurm, tmp_path):
    """--slurm writes the phase files, run.sbatch and submit.sh; submit.sh under the real Slurm
    runs the trunks, then the branches (afterok); a trunk preempted mid-way (SIGTERM to its batch
    shell) checkpoints, requeues its array task and resumes. Every run ends with the losses of the
    same sweep run locally, step by step."""
    from slurmutil import CPU_JOB, attempts, job, output, preempt, scancel, wait_for

    out = tmp_path / "sweep"
    r = run_python([SWEEP, "--config", swept["cfg"], "--out", out, "--slurm"], timeout=120)
    assert r.returncode == 0, r.stderr
    runs = swept["plan"]
    slurm_dir = out / "slurm"
    phase1 = [shlex.split(ln) for ln in (slurm_dir / "phase1.txt").read_text().splitlines()]
    phase2 = [shlex.split(ln) for ln in (slurm_dir / "phase2.txt").read_text().splitlines()]
    trunks, branches = [x for x in runs if not x["init_from"]], [x for x in runs if x["init_from"]]
    assert len(phase1) == len(trunks) == 2 and len(phase2) == len(branches) == 2
    for args, run in zip(phase1 + phase2, trunks + branches):  # launcher/pretrain.py's arguments
        assert Path(args[args.index("--run-dir") + 1]) == out / run["name"]
        assert f"train.max_steps={run['steps']}" in args
    assert not any((out / x["name"]).exists() for x in runs)  # nothing trained yet

    submit = subprocess.run(["bash", str(slurm_dir / "submit.sh"), *CPU_JOB, "--cpus-per-task=1",
                             "--export=ALL,SLURM_GPUS_ON_NODE=1"], cwd=REPO, env=slurm, capture_output=True,
                            text=True, timeout=60)
    assert submit.returncode == 0, submit.stderr
    j1 = submit.stdout.split("phase 1: job ")[1].split()[0]
    j2 = submit.stdout.split("phase 2: job ")[1].split()[0]
    trunk = out / trunks[0]["name"]
    try:
        # the tiny trunk trains in a blink: preempt it once its rank made the run folder (set-up)
        wait_for(trunk.is_dir, 300, "the first trunk to start", every=0.05)
        preempt(slurm, f"{j1}_1")
        wait_for(lambda: all(job(slurm, j).get("JobState") == "COMPLETED" for j in
                             (f"{j1}_1", f"{j1}_2", f"{j2}_1", f"{j2}_2")), 600,
                 f"both phases to finish ({[output(f)[-1500:] for f in slurm_dir.glob('*.out')]})")
    finally:
        scancel(slurm, j1)
        scancel(slurm, j2)
    assert [a.split(": ")[-1] for a in attempts(trunk)] == ["requeued", "finished"]
    assert int(job(slurm, f"{j1}_1")["Restarts"]) == 1
    for run in runs:
        got, want = train_losses(out / run["name"]), train_losses(swept["out"] / run["name"])
        assert sorted(got) == sorted(want), run["name"]
        for step in want:
            assert got[step] == pytest.approx(want[step], abs=1e-6), (run["name"], step)
