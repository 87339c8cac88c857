"""Predictions at given sizes (fit_scaling.py --target N,D) under every method, checked on data
drawn from a known law: the point estimate is close to the truth and the bootstrap interval holds
it (in most data sets: a 95% interval is allowed to miss now and then); and fit.json read back
into the typed results gives the same document and the same plots."""
from __future__ import annotations

import json

import numpy as np
import pytest

from llmtrain.scaling import plot
from llmtrain.scaling.laws import chinchilla, isoflop, kaplan
from llmtrain.scaling.results import read_fit
from llmtrain.scaling.sources import load
from test_task_fit import GADRE_CSV
from test_scaling_fit import A0, ALPHA0, B0, BETA0, cli, grid_points, isoflop_points, law, sweep  # noqa: F401


def inside(e, truth) -> bool:
    return e.ci_low <= truth <= e.ci_high


@pytest.mark.slow
def test_chinchilla_predicts_the_loss_at_targets():
    """49 points (N 1e7-1e10, D 1e8-1e11, 0.5% noise) from eight data sets: at a target 3x past
    the largest N and 6x past the largest D, and at one inside the grid."""
    targets = [(3e10, 6e11), (2e8, 5e9)]
    hits = np.zeros(len(targets), int)
    for seed in range(8):
        res = chinchilla.fit(grid_points(noise=0.005, seed=seed), n_boot=100, seed=seed, targets=targets)
        assert [(p.N, p.D, p.how) for p in res.predictions] == [(N, D, "given") for N, D in targets]
        for i, p in enumerate(res.predictions):
            truth, e = law(p.N, p.D), p["loss"]
            assert e.value == pytest.approx(truth, rel=0.02)
            assert 0 < e.ci_high - e.ci_low < 0.05 * e.value and e.se > 0
            hits[i] += inside(e, truth)
            assert p.flops == 6 * p.N * p.D
    assert (hits >= 6).all(), hits
    # the loss predicted at the compute-optimal model is the compute-optimal loss
    res = chinchilla.fit(grid_points(noise=0.005, seed=0), target_flops=1e22, targets=[(3e10, 6e11)])
    co = res.compute_optimal
    again = chinchilla.fit(grid_points(noise=0.005, seed=0), targets=[(co["N"].value, co["D"].value)])
    assert again.predictions[0]["loss"].value == pytest.approx(co["loss"].value, rel=1e-9)
    assert again.predictions[0]["loss"].ci_low is None  # no bootstrap, no interval


@pytest.mark.slow
def test_kaplan_predicts_each_frontiers_loss():
    """On the grid the N frontier is the largest D (1e11) and the D frontier the largest N (1e10):
    loss_N at N = 3e10 is the law at (3e10, 1e11), loss_D at D = 6e11 the law at (1e10, 6e11)."""
    hits = {"loss_N": 0, "loss_D": 0}
    for seed in range(4):
        res = kaplan.fit(grid_points(noise=0.005, seed=seed), n_boot=50, seed=seed, targets=[(3e10, 6e11)])
        p = res.predictions[0]
        assert set(p.estimates) == {"loss_N", "loss_D", "loss_C"}
        for key, truth in (("loss_N", law(3e10, 1e11)), ("loss_D", law(1e10, 6e11))):
            assert p[key].value == pytest.approx(truth, rel=0.02), key
            assert 0 < p[key].ci_high - p[key].ci_low < 0.05 * truth
            hits[key] += inside(p[key], truth)
        # the compute frontier at C = 6 N D: no lower than the best any model of the law reaches there
        Ns = np.geomspace(1e6, 1e14, 20001)
        best = law(Ns, 6 * 3e10 * 6e11 / (6 * Ns)).min()
        assert best * 0.98 < p["loss_C"].value < best * 1.05
    assert min(hits.values()) >= 3, hits


@pytest.mark.parametrize("n_boot", [0, 200])
def test_isoflop_predicts_the_optimum_at_the_targets_compute(n_boot):
    """Budgets 1e17-1e21; the target, a model twice the optimal size at C = 1e23: N_opt and D_opt
    of that budget and N / N_opt = 2, with bootstrap intervals (or the regression's without)."""
    G = (ALPHA0 * A0 / (BETA0 * B0)) ** (1 / (ALPHA0 + BETA0))
    hits = 0
    for seed in range(4):
        pts, a = isoflop_points(ALPHA0, BETA0, [0.3, 0.1, -0.1, -0.3], noise=0.001, seed=seed, width=1.0, n=9)
        C = 1e23
        N_opt = G * (C / 6) ** a
        N, D = 2 * N_opt, C / (12 * N_opt)
        res = isoflop.fit(pts, n_boot=n_boot, seed=seed, targets=[(N, D)], target_flops=C)
        p = res.predictions[0]
        assert p.flops == pytest.approx(C, rel=1e-12)
        assert p["N_opt"].value == pytest.approx(N_opt, rel=0.1)  # a step of 100x in C past the data
        assert p["D_opt"].value == pytest.approx(C / (6 * N_opt), rel=0.1)
        assert p["N_over_N_opt"].value == pytest.approx(2.0, rel=0.1)
        assert 1 < p["N_opt"].ci_high / p["N_opt"].ci_low < 2
        assert p["N_over_N_opt"].value == pytest.approx(N / p["N_opt"].value, rel=1e-12)
        # the same optimum as --target-flops for that budget
        assert p["N_opt"].value == pytest.approx(res.compute_optimal["N"].value, rel=1e-12)
        assert (p["N_opt"].ci_low, p["N_opt"].ci_high) == pytest.approx(
            (res.compute_optimal["N"].ci_low, res.compute_optimal["N"].ci_high), rel=1e-12)
        hits += inside(p["N_opt"], N_opt) and inside(p["N_over_N_opt"], 2.0)
    assert hits >= 3


@pytest.mark.slow
def test_cli_target_for_every_method_and_fit_json_read_back(sweep, tmp_path):  # noqa: F811 (the fixture)
    """--target under chinchilla, kaplan and isoflop: predictions in fit.json and on stdout; the
    typed result read back from fit.json writes the same document and draws the same plots."""
    csv = tmp_path / "iso.csv"
    pts, _ = isoflop_points(ALPHA0, BETA0, [0.3, 0.1, -0.1, -0.3], noise=0.001, seed=3, width=1.0, n=9)
    csv.write_text("params,tokens,loss\n" + "".join(f"{n},{d},{lo}\n" for n, d, lo in zip(pts.N, pts.D, pts.L)))
    want = {"chinchilla": {"loss"}, "kaplan": {"loss_N", "loss_D", "loss_C"},
            "isoflop": {"N_opt", "D_opt", "tokens_per_param", "N_over_N_opt"}}
    plots = {"chinchilla": plot.chinchilla_plots, "kaplan": plot.kaplan_plots, "isoflop": plot.isoflop_plots}
    for method, source in (("chinchilla", sweep), ("kaplan", sweep), ("isoflop", csv)):
        out = tmp_path / method
        r = cli(source, "--method", method, "--out", out, "--bootstrap", "20", "--target-flops", "1e22",
                "--target", "2e10,4e11", "--target", "1e9,2e10")
        assert r.returncode == 0, r.stderr
        doc = json.loads((out / "fit.json").read_text())
        preds = doc["predictions"]
        assert [(p["N"], p["D"], p["how"]) for p in preds] == [(2e10, 4e11, "given"), (1e9, 2e10, "given")]
        for p in preds:
            assert set(p) - {"N", "D", "flops", "how"} == want[method]
            for k in want[method]:
                assert p[k]["ci_low"] <= p[k]["value"] <= p[k]["ci_high"], (method, k)
        assert "predicted at N = 2e+10, D = 4e+11 (given):" in r.stdout
        res = read_fit(doc)
        assert type(res).method == method
        assert res.to_json() == {k: doc[k] for k in res.to_json()}
        again = tmp_path / f"{method}_again"
        ld = load(str(source))
        for name in plots[method](again, ld.points, res):
            assert (again / name).read_bytes() == (out / name).read_bytes(), (method, name)
    # without --target and bootstrap: no predictions, no intervals; and the task method's document
    r = cli(sweep, "--method", "chinchilla", "--out", tmp_path / "plain", "--no-plots")
    doc = json.loads((tmp_path / "plain" / "fit.json").read_text())
    assert "predictions" not in doc and "bootstrap" not in doc
    assert read_fit(doc).to_json() == {k: doc[k] for k in read_fit(doc).to_json()}
    gadre = ("--loss-col", "loss_c4_val", "--metric", "err_avg_subset", "--where", "dataset=rpj", "--where",
             "params<1e9")
    out = tmp_path / "task"
    r = cli(GADRE_CSV, "--method", "task", *gadre, "--bootstrap", "5", "--target", "1.4e9,9e11", "--out", out)
    assert r.returncode == 0, r.stderr
    doc = json.loads((out / "fit.json").read_text())
    res = read_fit(doc)
    assert res.to_json() == {k: doc[k] for k in res.to_json()}
    ld = load(str(GADRE_CSV), loss_col="loss_c4_val", metric="err_avg_subset", where=gadre[5::2])
    for name in plot.task_plots(tmp_path / "task_again", ld.points, res, "err_avg_subset"):
        assert (tmp_path / "task_again" / name).read_bytes() == (out / name).read_bytes(), name


@pytest.mark.slow
def test_bad_target_is_one_line_for_every_method(sweep, tmp_path):  # noqa: F811 (the fixture)
    for method in ("chinchilla", "kaplan", "isoflop"):
        r = cli(sweep, "--method", method, "--out", tmp_path / "fit", "--target", "1e9,-5")
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
        assert "--target '1e9,-5': N and D must be positive numbers" in r.stderr
        assert not (tmp_path / "fit").exists()
