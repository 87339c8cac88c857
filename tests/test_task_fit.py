"""Task-level scaling fits (fit_scaling.py --method task): the exponential error-from-loss form on
Gadre et al. 2024's released per-model results, checked against a refit with their own code; the
two-step prediction of held-out larger models; recovery of a known sigmoid from run folders whose
metrics.jsonl logs task records; bad metric names and flags."""
from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llmtrain.scaling.laws import task
from llmtrain.scaling.laws.task import fit_metric, predict_metric
from llmtrain.scaling.points import Points
from llmtrain.scaling.sources import best_of_duplicates, read_csv, read_runs

REPO = Path(__file__).resolve().parents[1]
GADRE_CSV = Path(__file__).resolve().parent / "data" / "scaling" / "gadre2024_models.csv"

# (k, gamma, eps) of Err = eps - k exp(-gamma L), C4 validation loss, from the repository's own fitting
# code (scaling/shared.py fit_ds, scipy curve_fit) run on its exp_data at commit a003c49; see
# tests/data/scaling/README.md
GADRE_REFIT = {
    ("c4_original", "err_avg"): (1.28851604, 0.97216429, 0.75894944),
    ("c4_original", "err_avg_subset"): (2.07890716, 0.75612088, 0.84974201),
    ("rpj", "err_avg"): (1.32289889, 0.89070785, 0.76084951),
    ("rpj", "err_avg_subset"): (2.20649009, 0.71459055, 0.85699193),
    ("rw_original", "err_avg"): (1.12807421, 0.82152275, 0.76767921),
    ("rw_original", "err_avg_subset"): (2.21481484, 0.70704850, 0.86527954),
}


def gadre_rows():
    with open(GADRE_CSV, newline="") as fh:
        return list(csv.DictReader(fh))


def in_gadre_error_fit(r) -> bool:
    """The models Gadre et al.'s downstream fit uses (their Table 2 default): the four small sizes at
    20 tokens per parameter, the smallest also at 320, and the 1.4B model at 20."""
    tpp = float(r["tokens_per_param"])
    return (r["model"] in ("d=96_l=8_h=4", "d=512_l=8_h=4", "d=576_l=24_h=8", "d=1024_l=24_h=8", "open_lm_1b")
            and tpp == 20) or (r["model"] == "d=96_l=8_h=4" and tpp == 320)


def cli(*args):
    return subprocess.run([sys.executable, str(REPO / "launcher" / "fit_scaling.py"), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


_spec = importlib.util.spec_from_file_location("fit_scaling_cli", REPO / "launcher" / "fit_scaling.py")
fit_scaling = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fit_scaling)


def cli_error(capsys, *args) -> str:
    """The CLI's main() in this process, for input it must refuse: exit status 2 and one line."""
    assert fit_scaling.main([str(a) for a in args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


# ---------------------------------------------------------------------------------------------
# published numbers


def test_gadre_data_is_the_released_evaluations():
    rows = gadre_rows()
    assert len(rows) == 104  # "104 models between 11M and 6.9B parameters"
    assert {r["dataset"] for r in rows} == {"c4_original", "rpj", "rw_original"}
    acc = [c for c in rows[0] if c.startswith("acc_")]
    assert len(acc) == 46
    for r in rows:
        errs = [1 - float(r[c]) for c in acc]
        assert float(r["err_avg"]) == pytest.approx(np.mean(errs), abs=2e-6)
        assert int(r["tokens"]) == pytest.approx(float(r["tokens_per_param"]) * int(r["params"]), rel=0.01)


@pytest.mark.parametrize("dataset,split", sorted(GADRE_REFIT))
def test_exponential_form_matches_gadre_refit(dataset, split):
    sel = [r for r in gadre_rows() if r["dataset"] == dataset and in_gadre_error_fit(r)]
    assert len(sel) == 6
    L = np.array([float(r["loss_c4_val"]) for r in sel])
    y = np.array([float(r[split]) for r in sel])
    eps, k, gamma = fit_metric("exponential", L, y)["theta"]
    k0, gamma0, eps0 = GADRE_REFIT[dataset, split]
    assert (k, gamma, eps) == pytest.approx((k0, gamma0, eps0), rel=2e-4)


@pytest.mark.slow
def test_two_step_predicts_held_out_larger_models_on_gadre_data():
    """Fit both steps on the RedPajama models below 1B parameters (4 sizes x 8 token multipliers), then
    predict the 17-task error of the 1.4B model at 640 tokens/parameter and the 6.9B model at 20."""
    ld = read_csv(GADRE_CSV, loss_col="loss_c4_val", metric_col="err_avg_subset",
                  where=("dataset=rpj", "params<1e9"))
    pts = ld.points
    assert len(pts) == 32
    held = {r["name"]: r for r in gadre_rows() if r["name"] in ("rpj-open_lm_1b-32.0", "rpj-open_lm_7b-1.0")}
    targets = [(float(held[n]["params"]), float(held[n]["tokens"])) for n in sorted(held)]
    res = task.fit(pts, pts.M, n_boot=20, seed=0, targets=targets)
    for p, name in zip(res.predictions, sorted(held)):
        true_loss, true_err = float(held[name]["loss_c4_val"]), float(held[name]["err_avg_subset"])
        assert p["loss"].value == pytest.approx(true_loss, rel=0.04)
        for form in ("sigmoid", "exponential"):
            assert p[form].value == pytest.approx(true_err, rel=0.08), (name, form)
            assert p[form].ci_low <= p[form].value <= p[form].ci_high
    # the error falls as the loss falls under both forms, and the fit is close in sample
    for form in ("sigmoid", "exponential"):
        law = res.metric_laws[form]
        assert law.rmse < 0.015
        Ls = np.linspace(2.5, 6.0, 20)
        assert np.all(np.diff(predict_metric(form, law.theta, Ls)) > 0)


# ---------------------------------------------------------------------------------------------
# run folders with task records, through the CLI

E0, A0, B0, ALPHA0, BETA0 = 1.82, 482.0, 2085.0, 0.348, 0.366
SIG = (-0.55, 2.5, 3.0, 0.8)  # a, k, L0, b: acc_norm falls from 0.8 towards 0.25 as the loss grows


def law(N, D):
    return E0 + A0 / N ** ALPHA0 + B0 / D ** BETA0


def acc_norm(L):
    return predict_metric("sigmoid", SIG, L)


def write_run(root: Path, name: str, N: float, D: float, noise: float, rng, where: str = "metrics"):
    run = root / name
    run.mkdir(parents=True)
    L = law(N, D) * np.exp(rng.normal(0, 0.002))
    acc = float(acc_norm(L) + rng.normal(0, noise))
    recs = [{"step": 10, "tokens": int(D), "loss": L + 0.05, "lr": 1e-3},
            {"step": 5, "tokens": int(D / 2), "split": "task:wiki", "acc": 0.1, "acc_norm": 0.1},  # superseded
            {"step": 10, "tokens": int(D), "split": "valid", "loss": L}]
    if where == "metrics":
        recs.append({"step": 10, "tokens": int(D), "split": "task:wiki", "acc": acc - 0.02, "acc_norm": acc})
    summary = {"status": "finished", "n_params": int(N), "n_params_non_embedding": int(N), "tokens": int(D),
               "flops": 6.0 * N * int(D), "final_valid_loss": L}
    if where == "summary":
        summary["tasks"] = {"wiki": {"acc": acc - 0.02, "acc_norm": acc}}
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"step": 11, "spl')
    (run / "summary.json").write_text(json.dumps(summary))
    return L, acc


@pytest.fixture(scope="module")
def task_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("task") / "sweep"
    rng = np.random.default_rng(0)
    truth = {}
    for i, N in enumerate(np.geomspace(2e7, 2e9, 5)):
        for k in (5, 20, 80):
            name = f"n{i}_tpp{k}"
            truth[name] = write_run(root, name, N, k * N, 0.003, rng, "summary" if (i, k) == (2, 20) else "metrics")
    return root, truth


@pytest.mark.slow
def test_cli_task_fit_on_run_folders(task_sweep, tmp_path):
    root, truth = task_sweep
    out = tmp_path / "fit"
    r = cli(root, "--method", "task", "--metric", "task:wiki/acc_norm", "--out", out, "--bootstrap", "20",
            "--target", "2e10,4e11", "--target-flops", "1e22")
    assert r.returncode == 0, r.stderr
    doc = json.loads((out / "fit.json").read_text())
    assert doc["method"] == "task" and doc["metric"] == "task:wiki/acc_norm" and doc["n_points"] == 15
    # each point's metric is its run's last task:wiki record, or its summary.json tasks entry
    for p in doc["points"]:
        assert (p["loss"], p["metric"]) == pytest.approx(truth[p["label"]], rel=1e-9)
    sig = {k: doc["parameters"][f"sigmoid.{k}"] for k in ("a", "k", "L0", "b")}
    for (name, v), true in zip(sig.items(), SIG):
        assert v["value"] == pytest.approx(true, rel=0.15, abs=0.03), name
        assert v["ci_low"] <= v["value"] <= v["ci_high"]
    assert doc["parameters"]["loss.alpha"]["value"] == pytest.approx(ALPHA0, abs=0.05)
    preds = doc["predictions"]
    assert [p["how"] for p in preds] == ["given", "compute-optimal at C = 1e+22"]
    assert (preds[0]["N"], preds[0]["D"]) == (2e10, 4e11)
    for p in preds:
        want = float(acc_norm(law(p["N"], p["D"])))
        assert p["loss"]["value"] == pytest.approx(law(p["N"], p["D"]), rel=0.02)
        assert p["sigmoid"]["value"] == pytest.approx(want, abs=0.02)
        assert p["sigmoid"]["ci_low"] <= p["sigmoid"]["value"] <= p["sigmoid"]["ci_high"]
    assert preds[1]["flops"] == pytest.approx(1e22, rel=1e-6)
    assert doc["metric_laws"]["sigmoid"]["two_step_rmse"] < 0.01
    for png in ("metric_vs_loss.png", "two_step.png", "loss_vs_N.png", "loss_vs_D.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "predicted at N = 2e+10" in r.stdout


def test_metric_no_run_logged_is_one_line(task_sweep, tmp_path, capsys):
    root, _ = task_sweep
    line = cli_error(capsys, root, "--method", "task", "--metric", "task:hellaswag/acc_norm", "--out", tmp_path / "fit")
    assert "no run logged --metric task:hellaswag/acc_norm" in line
    assert '"split": "task:hellaswag"' in line and "train.eval_tasks" in line
    assert "task:wiki/acc, task:wiki/acc_norm" in line and "valid/loss" in line
    assert not (tmp_path / "fit").exists()


@pytest.mark.parametrize("args,want", [
    (["--method", "task"], "--method task needs --metric"),
    (["--method", "task", "--metric", "acc_norm"], "SPLIT/FIELD"),
    (["--method", "chinchilla", "--metric", "task:wiki/acc"], "--loss-metric"),
    (["--method", "task", "--metric", "task:wiki/acc", "--target", "1e9"], "--target '1e9': write N,D"),
])
def test_bad_task_flags(task_sweep, tmp_path, capsys, args, want):
    root, _ = task_sweep
    assert want in cli_error(capsys, root, *args, "--out", tmp_path / "fit")
    assert not (tmp_path / "fit").exists()


def test_reading_metrics_of_wsd_points_loss_metric_and_lr_grid_duplicates(task_sweep, tmp_path):
    root, truth = task_sweep
    # --loss-metric: the valid records of metrics.jsonl in place of summary.json's loss
    ld = read_runs(root, metric="task:wiki/acc", loss_metric="valid/loss")
    got = dict(zip(ld.points.labels, zip(ld.points.L, ld.points.M)))
    assert sorted(got) == sorted(truth)
    for k, (L, acc) in truth.items():
        assert got[k] == pytest.approx((L, acc - 0.02), rel=1e-12), k
    assert ld.loss_source == "valid/loss (--loss-metric)"
    # a WSD run with cooldown points: each point's metric is the record at its token count
    sw = tmp_path / "wsd"
    run = sw / "big"
    run.mkdir(parents=True)
    pts = [{"tokens": t, "flops": 6e9 * t, "valid_loss": 3.0 - t / 1e10} for t in (1000, 2000, 4000)]
    (run / "summary.json").write_text(json.dumps({"status": "finished", "n_params": 10**9, "tokens": 4000,
                                                  "points": pts}))
    recs = [{"step": s, "tokens": t, "split": "task:wiki", "acc": 0.3 + t / 1e4, "acc_norm": 0.4 + t / 1e4}
            for s, t in ((1, 1000), (3, 4000))]  # none at 2000 tokens
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    ld = read_runs(sw, metric="task:wiki/acc_norm")
    assert ld.points.labels == ["big@1000", "big@4000"] and ld.points.M.tolist() == [0.5, 0.8]
    assert ld.dropped == [{"label": "big@2000", "reason": "no task:wiki/acc_norm logged at 2000 tokens"}]
    # an LR grid: two runs at the same N and D count once, with the lower loss and its metric
    (sw / "big_lr2").mkdir()
    (sw / "big_lr2" / "summary.json").write_text(json.dumps(
        {"status": "finished", "n_params": 10**9, "tokens": 4000, "final_valid_loss": 2.5,
         "tasks": {"wiki": {"acc_norm": 0.9}}}))
    ld = best_of_duplicates(read_runs(sw, metric="task:wiki/acc_norm"))
    assert dict(zip(ld.points.labels, ld.points.M)) == {"big@1000": 0.5, "big_lr2": 0.9}
    assert any(d["label"] == "big@4000" and "big_lr2" in d["reason"] for d in ld.dropped)


def test_csv_metric_column_and_where_filters(tmp_path, capsys):
    ld = read_csv(GADRE_CSV, loss_col="loss_c4_val", metric_col="err_avg",
                  where=("dataset!=rpj", "tokens_per_param>=40"))
    want = [r for r in gadre_rows() if r["dataset"] != "rpj" and float(r["tokens_per_param"]) >= 40]
    assert 30 < len(want) < 104
    assert ld.points.M.tolist() == [float(r["err_avg"]) for r in want]
    assert ld.points.L.tolist() == [float(r["loss_c4_val"]) for r in want]
    err = cli_error(capsys, GADRE_CSV, "--method", "task", "--metric", "err_avg_typo", "--loss-col", "loss_c4_val",
                    "--out", tmp_path / "fit")
    assert "missing column(s) 'err_avg_typo'" in err and "--metric NAME" in err
    err = cli_error(capsys, GADRE_CSV, "--method", "task", "--metric", "err_avg", "--loss-col", "loss_c4_val",
                    "--where", "dataset=none", "--out", tmp_path / "fit")
    assert "no row matches --where dataset=none" in err


def test_too_few_points_for_the_loss_law_still_fits_the_metric():
    L = np.array([2.5, 2.8, 3.1, 3.5, 4.0])
    y = predict_metric("exponential", (0.85, 2.2, 0.7), L)
    pts = Points(np.ones(5) * 1e8, np.geomspace(1e9, 1e10, 5), np.ones(5), L)
    res = task.fit(pts, y, forms=("exponential",))
    assert res.loss_law_skipped and "predictions" not in res.to_json()
    assert res.parameters["exponential.gamma"].value == pytest.approx(0.7, rel=1e-6)
