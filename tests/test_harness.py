"""lm-evaluation-harness on the project's own model (llmtrain/eval/harness.py), offline and in the
loop, with local task YAMLs (dataset_path: json) and the Hub switched off:

- on an exported folder, the adapter's numbers are lm-eval's own ``hf`` backend's (same requests,
  same token ids, same windows, same greedy generations) for a multiple-choice, a rolling
  perplexity and a generate-until task;
- in the loop, every layout logs harness:TASK records with lm-eval's metric names, the bundled
  cloze task gets the same accuracies as train.eval_tasks gives it, and the offline adapter on the
  run's own checkpoint (of that layout) gives the logged values;
- model options export refuses run without an export; fit_scaling.py reads the harness records;
  bad input is one line.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from trainutil import REPO, SMALL, assert_one_line_error, read_metrics, run_python, run_torchrun

from llmtrain.core.errors import ConfigError

PRETRAIN = REPO / "launcher" / "pretrain.py"
DIRS = [str(REPO / "data" / "tasks" / "harness"), str(REPO / "tests" / "data" / "harness")]
CLOZE, PPL, GEN = "python_docs_cloze", "python_docs_ppl", "python_docs_complete"
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module", autouse=True)
def offline():
    """No Hub: every task reads its local JSON Lines; relative data paths are the project's."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in OFFLINE.items():
            mp.setenv(k, v)
        mp.chdir(REPO)
        yield


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- runs in the loop

LAYOUTS = {  # processes, DeepSpeed config, overrides
    # seq_len 128: every cloze continuation fits (lm-eval's hf backend refuses longer ones); evaluations
    # at step 2 and at the end; the cloze task also through train.eval_tasks; one thread (two spin against each
    # other on a busy machine: 10x slower evaluations)
    "zero0": (1, [], ["model.seq_len=128", "train.max_steps=3", "train.eval_interval=2", "train.threads=1",
                      "train.eval_tasks=[data/tasks/python_docs_cloze.jsonl]"]),
    # seq_len 64: 4 continuations are longer than the context (scored on their last 64 tokens); the end only
    "zero2": (2, ["--deepspeed_config", REPO / "ds_configs" / "zero2.json"], ["train.max_steps=2"]),
    "pipeline": (2, ["--deepspeed_config", REPO / "ds_configs" / "zero1.json"],
                 ["train.max_steps=2", "parallel.pipeline_stages=2"]),
}
_RUNS: dict[str, tuple[Path, str]] = {}


def loop_run(layout: str, token_data: str, root: Path) -> tuple[Path, str]:
    """A short run of ``layout`` that scores the cloze and the perplexity task in the loop; run once."""
    if layout not in _RUNS:
        nproc, ds, overrides = LAYOUTS[layout]
        run = root / layout
        args = [*ds, "--run-dir", run, f"data.prefix={token_data}", *SMALL, f"train.harness_tasks=[{CLOZE},{PPL}]",
                f"train.harness_include_path=[{','.join(DIRS)}]", *overrides]
        r = run_python([PRETRAIN, *args]) if nproc == 1 else run_torchrun(nproc, *args)
        assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
        _RUNS[layout] = (run, r.stdout)
    return _RUNS[layout]


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("harness_runs")


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_layout_logs_lm_eval_metrics_of_its_own_weights(token_data, runs_root, layout, one_thread):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    from llmtrain.eval.harness import evaluate_checkpoint, task_metrics

    run, stdout = loop_run(layout, token_data, runs_root)
    steps = [2, 3] if layout == "zero0" else [2]  # every eval interval and the end
    recs = read_metrics(run)
    cloze = [r for r in recs if r.get("split") == f"harness:{CLOZE}"]
    ppl = [r for r in recs if r.get("split") == f"harness:{PPL}"]
    assert [r["step"] for r in cloze] == [r["step"] for r in ppl] == steps
    assert all(set(r) == {"step", "tokens", "split", "acc", "acc_norm"} for r in cloze)
    assert all(set(r) == {"step", "tokens", "split", "word_perplexity", "byte_perplexity", "bits_per_byte"}
               for r in ppl)
    assert f"step {steps[-1]:>6} harness:{CLOZE} acc" in stdout
    if layout == "zero0":  # the bundled cloze task: the same examples, the same accuracies through both scorers
        ours = [r for r in recs if r.get("split") == f"task:{CLOZE}"]
        assert [(r["acc"], r["acc_norm"]) for r in cloze] == [(r["acc"], r["acc_norm"]) for r in ours]
    else:
        assert "harness: 4 continuations longer than train.seq_len were scored on their last 64 tokens" in stdout

    summary = json.loads((run / "summary.json").read_text())
    assert summary["harness"] == {CLOZE: {k: cloze[-1][k] for k in ("acc", "acc_norm")},
                                  PPL: {k: ppl[-1][k] for k in ("word_perplexity", "byte_perplexity",
                                                                "bits_per_byte")}}
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    assert [e.value for e in acc.Scalars(f"harness:{PPL}/bits_per_byte")] == pytest.approx(
        [r["bits_per_byte"] for r in ppl])
    exp = plugin_data_pb2.HParamsPluginData.FromString(
        acc.PluginTagToContent("hparams")["_hparams_/experiment"]).experiment
    assert f"hparam/harness:{CLOZE}/acc" in {m.name.tag for m in exp.metric_infos}

    # the offline adapter on this layout's own checkpoint gives what the loop logged at the end
    if layout == "pipeline":  # through the command line: lm-eval's results JSON
        out = run / "harness.json"
        r = run_python([REPO / "launcher" / "evaluate.py", run, "--harness-tasks", f"{CLOZE},{PPL}", "--include-path",
                        *DIRS, "--micro-batch-size", "5", "--bootstrap-iters", "0", "--out", out])
        assert r.returncode == 0, r.stderr[-3000:]
        assert f"|{CLOZE}" in r.stdout and "acc_norm" in r.stdout  # lm-eval's table
        res = json.loads(out.read_text())
        assert set(res) >= {"results", "versions", "n-shot", "configs", "config"} and "samples" not in res
    else:
        res = evaluate_checkpoint(run, [CLOZE, PPL], DIRS, batch_size=5, bootstrap_iters=0)
    offline = task_metrics(res)
    assert (offline[CLOZE]["acc"], offline[CLOZE]["acc_norm"]) == (cloze[-1]["acc"], cloze[-1]["acc_norm"])
    for k in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        assert offline[PPL][k] == pytest.approx(ppl[-1][k], rel=1e-6), k
    assert res["config"]["step"] == steps[-1]


# ----------------------------------------------------------------------------- against lm-eval's hf backend


@pytest.mark.slow
def test_adapter_equals_lm_eval_hf_backend_on_the_exported_folder(token_data, runs_root, tmp_path, one_thread):
    """Same requests and token ids, per-request log-likelihoods within float tolerance, the same
    greedy flags, accuracies and generations exactly.

    Why the tolerance is right: export_hf.py checks that the exported model's logits differ from
    ours by at most 1e-4 (it measured 0.0: the same fp32 function), so each token's log-softmax
    differs by at most 2e-4; what remains here is fp32 rounding of batches of other shapes, about
    1e-7 relative per token, so sums agree to rtol 1e-5 (atol 1e-4 near 0). A different token, a
    different window or a different position shifts a sum by far more (ln of a probability ratio).

    HFLM runs with ``logits_cache=False``: with its default cache, two requests of different
    examples whose context + continuation[:-1] are the same tokens (consecutive cloze sentences of a
    paragraph do that) can get each other's scores (lm-eval issue #2984); without it HFLM scores
    every request on its own, as the adapter does."""
    from lm_eval.api.instance import Instance
    from lm_eval.evaluator import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    from llmtrain.checkpoint.hf.to_hf import export
    from llmtrain.eval.harness import HarnessLM, load_tasks

    run, _ = loop_run("zero0", token_data, runs_root)
    folder = tmp_path / "hf"
    export(run, folder, log=lambda *_: None)
    tm, _ = load_tasks([CLOZE, PPL, GEN], DIRS)
    ours = HarnessLM.from_checkpoint(run, batch_size=8)
    hf = HFLM(pretrained=str(folder), device="cpu", dtype="float32", batch_size=8, logits_cache=False)
    assert (ours.max_length, ours.eot_token_id, ours.prefix_token_id) == (hf.max_length, hf.eot_token_id,
                                                                            hf.prefix_token_id) == (128, 0, 0)
    kw = dict(tasks=[CLOZE, PPL, GEN], task_manager=tm, limit=120, bootstrap_iters=0, log_samples=True)
    r_ours, r_hf = simple_evaluate(model=ours, **kw), simple_evaluate(model=hf, **kw)

    strings = []
    for task in (CLOZE, PPL, GEN):
        a, b = r_ours["samples"][task], r_hf["samples"][task]
        assert [s["arguments"] for s in a] == [s["arguments"] for s in b]  # the same requests
        got, want = [], []
        for sa, sb in zip(a, b):
            for args, ra, rb in zip(sa["arguments"], sa["resps"], sb["resps"]):
                strings += [x for x in args if isinstance(x, str)]
                x, y = ra[0], rb[0]
                if task == CLOZE:  # (log-likelihood, is_greedy)
                    assert x[1] == y[1]
                    x, y = x[0], y[0]
                if task == GEN:
                    assert x == y, args  # the same greedy generation, cut at the same stop string
                else:
                    got.append(x)
                    want.append(y)
        if got:
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4, err_msg=task)
    for s in strings:  # the same token ids for every string lm-eval asked about
        assert ours.tok_encode(s) == hf.tok_encode(s)
    mo, mh = r_ours["results"], r_hf["results"]
    for key in ("acc,none", "acc_norm,none"):
        assert mo[CLOZE][key] == mh[CLOZE][key]
    assert mo[GEN]["exact_match,none"] == mh[GEN]["exact_match,none"]
    for key in ("word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none"):
        assert mo[PPL][key] == pytest.approx(mh[PPL][key], rel=1e-6)
    assert mo[CLOZE]["sample_len"] == 120 and mo[PPL]["sample_len"] == 12

    # stop strings: continue 6 prompts without a stop, then stop at a piece of what came out
    # (its third token's text): the adapter cuts where HFLM cuts, with and without the KV cache
    docs = [json.loads(ln) for ln in (REPO / "tests" / "data" / "harness" / f"{GEN}.jsonl").read_text().splitlines()]
    free = [Instance("generate_until", {}, (d["context"], {"until": [], "max_gen_toks": 8}), 0) for d in docs[:6]]
    first = ours.generate_until(free)
    assert first == hf.generate_until(free)
    stops = [ours.tok_decode(ours.tok_encode(t)[2:3]) or "." for t in first]
    stopped = [Instance("generate_until", {}, (d["context"], {"until": [s], "max_gen_toks": 8}), 0)
               for d, s in zip(docs, stops)]
    cut = ours.generate_until(stopped)
    assert cut == hf.generate_until(stopped)
    assert sum(len(c) < len(f) for c, f in zip(cut, first)) >= 3  # the stops did cut
    no_cache = HarnessLM.from_checkpoint(run, batch_size=4, kv_cache=False)
    assert no_cache.generate_until(stopped) == cut and no_cache.generate_until(free) == first


# ----------------------------------------------------------------------------- without an export


@pytest.mark.slow
def test_model_options_export_refuses_run_without_an_export(token_data, tmp_path, one_thread):
    """Sinusoidal positions with grouped-query attention: export_hf.py refuses the model, the
    adapter reads its consolidated file and scores what the plain GPT computes, request by request."""
    from lm_eval.api.instance import Instance

    from llmtrain.checkpoint.consolidate import save_consolidated
    from llmtrain.checkpoint.hf.to_hf import choose_architecture
    from llmtrain.checkpoint.load import ExportError
    from llmtrain.config import ModelConfig
    from llmtrain.eval.harness import HarnessLM
    from llmtrain.model.gpt import GPT

    cfg = ModelConfig(n_layer=2, d_model=32, n_head=4, n_kv_head=2, seq_len=24, vocab_size=512,
                      pos_encoding="sinusoidal")
    with pytest.raises(ExportError):
        choose_architecture(cfg)
    model = GPT(cfg, seed=5).eval()
    f = tmp_path / "model.safetensors"
    save_consolidated(model.state_dict(), {"model_config": cfg.__dict__, "step": 7, "tokens": 0, "source": "test"}, f)
    tokenizer = str(Path(token_data).parent / "tokenizer.json")
    lm = HarnessLM.from_checkpoint(f, batch_size=3, tokenizer=tokenizer)
    kv_off = HarnessLM.from_checkpoint(f, batch_size=2, tokenizer=tokenizer, kv_cache=False)

    def direct(ids: list[int], n: int) -> float:
        """log p of the last n of ids given the rest, one unpadded forward of the plain GPT."""
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor(ids[:-1])[None])[0].double(), dim=-1)
        return sum(float(lp[i - 1, ids[i]]) for i in range(len(ids) - n, len(ids)))

    pairs = [("The module", " defines a class."), ("", " Python"), ("A list is ", "mutable."),
             ("x " * 30 + "and then", " more text here")]  # the last one is cut from the left
    reqs = [Instance("loglikelihood", {}, p, 0) for p in pairs]
    got = lm.loglikelihood(reqs)
    for (ctx, cont), (ll, _) in zip(pairs, got):
        c = lm.tok_encode(ctx.rstrip()) if ctx else [lm.eod]  # lm-eval moves trailing spaces to the continuation
        w = lm.tok_encode(ctx + cont) if ctx else [lm.eod] + lm.tok_encode(cont)
        ids = w[-(cfg.seq_len + 1):]
        assert ll == pytest.approx(direct(ids, len(w) - len(c)), abs=1e-4), (ctx, cont)
    text = "Short enough for one window."
    (rolled,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    ids = [lm.eod] + lm.tok_encode(text)
    assert len(ids) <= cfg.seq_len + 1 and rolled == pytest.approx(direct(ids, len(ids) - 1), abs=1e-4)
    gen = [Instance("generate_until", {}, (p[0] or "The", {"until": ["\n"], "max_gen_toks": 6}), 0) for p in pairs]
    assert lm.generate_until(gen) == kv_off.generate_until(gen)
    assert lm.get_model_info()["step"] == 7


def _collective_rank(rank: int, world: int, port: int, ckpt: str, tokenizer: str, mode: str, reqs, out: str):
    """One rank of test_rows_and_generations_are_dealt_over_ranks (torch.multiprocessing.spawn)."""
    import torch.distributed as dist

    from llmtrain.eval.harness import Forward, HarnessLM

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        lm = HarnessLM.from_checkpoint(ckpt, batch_size=2, tokenizer=tokenizer, quiet=True)
        model, T = lm.fwd.model, lm.fwd.seq_len
        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}

        def logits(x):  # "stages": only the last rank of the replica holds the logits
            y = model(x)
            return y if mode == "dp" or rank == world - 1 else None

        dp = mode == "dp"
        lm.fwd = Forward(logits=logits, device=torch.device("cpu"), seq_len=T, batch_size=2,
                         width=None if dp else T, dp_rank=rank if dp else 0,
                         dp_world=world if dp else 1, reduce=lambda t, op="sum": dist.all_reduce(t, op=ops[op]))
        got = {kind: getattr(lm, kind)(r) for kind, r in reqs.items()}
        Path(out, f"{mode}{rank}.json").write_text(json.dumps(got))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_rows_and_generations_are_dealt_over_ranks(token_data, tmp_path):
    """Over a real gloo process group: two data-parallel ranks (each its share of the rows and of
    the generations, every result on both through the all-reduce), and two ranks of which only the
    last holds the logits (a pipeline's stages): every rank gets what one process computes."""
    from lm_eval.api.instance import Instance

    from llmtrain.checkpoint.consolidate import save_consolidated
    from llmtrain.config import ModelConfig
    from llmtrain.core.tasks import free_port
    from llmtrain.eval.harness import HarnessLM
    from llmtrain.model.gpt import GPT

    cfg = ModelConfig(n_layer=2, d_model=32, n_head=2, seq_len=32, vocab_size=512, pos_encoding="rotary")
    ckpt = tmp_path / "m.safetensors"
    save_consolidated(GPT(cfg, seed=2).state_dict(), {"model_config": cfg.__dict__, "step": 1, "tokens": 0,
                                                      "source": "test"}, ckpt)
    tokenizer = str(Path(token_data).parent / "tokenizer.json")
    data = REPO / "tests" / "data" / "harness"
    cloze = [json.loads(ln) for ln in (REPO / "data" / "tasks" / "python_docs_cloze.jsonl").read_text().splitlines()]
    docs = [json.loads(ln) for ln in (data / f"{PPL}.jsonl").read_text().splitlines()]
    prompts = [json.loads(ln) for ln in (data / f"{GEN}.jsonl").read_text().splitlines()]
    reqs = {"loglikelihood": [Instance("loglikelihood", {}, (e["context"], c), 0) for e in cloze[:5]
                              for c in e["choices"]],
            "loglikelihood_rolling": [Instance("loglikelihood_rolling", {}, (d["text"],), 0) for d in docs[:3]],
            "generate_until": [Instance("generate_until", {}, (p["context"], {"until": ["."], "max_gen_toks": 6}), 0)
                               for p in prompts[:7]]}
    one = HarnessLM.from_checkpoint(ckpt, batch_size=3, tokenizer=tokenizer, quiet=True)
    want = {kind: getattr(one, kind)(r) for kind, r in reqs.items()}
    for mode in ("dp", "stages"):
        torch.multiprocessing.spawn(_collective_rank, args=(2, free_port(), str(ckpt), tokenizer, mode, reqs,
                                                            str(tmp_path)), nprocs=2)
        for rank in range(2):
            got = json.loads((tmp_path / f"{mode}{rank}.json").read_text())
            assert got["generate_until"] == want["generate_until"], (mode, rank)
            assert [g[1] for g in got["loglikelihood"]] == [w[1] for w in want["loglikelihood"]]
            np.testing.assert_allclose([g[0] for g in got["loglikelihood"]], [w[0] for w in want["loglikelihood"]],
                                       rtol=1e-5, atol=1e-4)
            np.testing.assert_allclose(got["loglikelihood_rolling"], want["loglikelihood_rolling"], rtol=1e-5)


# ----------------------------------------------------------------------------- fits and bad input


@pytest.mark.slow
def test_fit_scaling_reads_harness_records(tmp_path, capsys):
    """fit_scaling.py --method task --metric harness:TASK/acc: the last harness record of each run
    (or its summary.json harness entry)."""
    import importlib.util

    from llmtrain.scaling.laws.task import predict_metric

    spec = importlib.util.spec_from_file_location("fit_scaling_cli", REPO / "launcher" / "fit_scaling.py")
    fit_scaling = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fit_scaling)

    def law(N, D):  # a Chinchilla-like loss surface
        return 1.82 + 482.0 / N ** 0.348 + 2085.0 / D ** 0.366

    def cli(*args) -> int:
        return fit_scaling.main([str(a) for a in args])

    sig = (-0.55, 2.5, 3.0, 0.8)
    rng = np.random.default_rng(1)
    root = tmp_path / "sweep"
    truth = {}
    for i, N in enumerate(np.geomspace(2e7, 2e9, 5)):
        for k in (5, 20, 80):
            run = root / f"n{i}_tpp{k}"
            run.mkdir(parents=True)
            D = k * N
            L = law(N, D) * np.exp(rng.normal(0, 0.002))
            acc = float(predict_metric("sigmoid", sig, L) + rng.normal(0, 0.003))
            recs = [{"step": 5, "tokens": int(D / 2), "split": f"harness:{CLOZE}", "acc": 0.1, "acc_norm": 0.1},
                    {"step": 10, "tokens": int(D), "split": "valid", "loss": L}]
            summary = {"status": "finished", "n_params": int(N), "n_params_non_embedding": int(N), "tokens": int(D),
                       "flops": 6.0 * N * int(D), "final_valid_loss": L}
            if (i, k) == (2, 20):
                summary["harness"] = {CLOZE: {"acc": acc, "acc_norm": acc}}
            else:
                recs.append({"step": 10, "tokens": int(D), "split": f"harness:{CLOZE}", "acc": acc, "acc_norm": 0.0})
            (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
            (run / "summary.json").write_text(json.dumps(summary))
            truth[run.name] = (L, acc)
    out = tmp_path / "fit"
    assert cli(root, "--method", "task", "--metric", f"harness:{CLOZE}/acc", "--out", out, "--bootstrap", "10") == 0
    doc = json.loads((out / "fit.json").read_text())
    assert doc["metric"] == f"harness:{CLOZE}/acc" and doc["n_points"] == 15
    for p in doc["points"]:
        assert (p["loss"], p["metric"]) == pytest.approx(truth[p["label"]], rel=1e-9)
    capsys.readouterr()
    assert cli(root, "--method", "task", "--metric", "harness:hellaswag/acc", "--out", out) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    for needle in ("no run logged --metric harness:hellaswag/acc", "train.harness_tasks", f"harness:{CLOZE}/acc"):
        assert needle in err, err


@pytest.mark.slow
def test_bad_input_is_one_line(tmp_path, token_data):
    from llmtrain.eval.harness import load_tasks, task_metrics

    with pytest.raises(ConfigError, match=r"^--harness-tasks: no task named nope in .*data/tasks/harness"):
        load_tasks(["nope"], DIRS[:1] + [DIRS[0]])  # not in the folders: lm-eval's own are searched too
    with pytest.raises(ConfigError, match="include path is not a folder"):
        load_tasks([CLOZE], [str(tmp_path / "missing")])
    yaml = (REPO / "data" / "tasks" / "harness" / f"{CLOZE}.yaml").read_text()
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "moved.yaml").write_text(yaml.replace(f"task: {CLOZE}", "task: moved")
                                               .replace("data/tasks/python_docs_cloze.jsonl", "not/here.jsonl"))
    with pytest.raises(ConfigError) as e:
        load_tasks(["moved"], [str(tmp_path / "t")], "train.harness_tasks")
    assert "\n" not in str(e.value) and "relative to the current folder" in str(e.value), e.value
    # lm-eval's keys become metric names; another filter keeps lm-eval's whole key
    assert task_metrics({"results": {"g": {"alias": "g", "exact_match,strict-match": 0.5, "acc,none": 1,
                                           "acc_stderr,none": 0.1, "bits_per_byte,none": "N/A"}}}) == {
        "g": {"exact_match,strict-match": 0.5, "acc": 1.0}}

    run = tmp_path / "run"  # a bad task stops the launcher before the run folder exists
    r = run_python([PRETRAIN, "--run-dir", run, f"data.prefix={token_data}", *SMALL, "train.max_steps=1",
                    f"train.harness_tasks=[{CLOZE}]", f"train.harness_include_path=[{tmp_path / 'nowhere'}]"],
                   timeout=300)
    assert_one_line_error(r, "nowhere: include path is not a folder (named by train.harness_tasks)")
    assert not run.exists()
    r = run_python([REPO / "launcher" / "evaluate.py", tmp_path, "--harness-tasks", CLOZE, "--data", "x"])
    assert_one_line_error(r, "--data apply to the loss evaluation")


@pytest.mark.slow
def test_shipped_test_data_is_rebuilt_exactly(tmp_path):
    d = REPO / "tests" / "data" / "harness"
    r = run_python([d / "build.py", tmp_path])
    assert r.returncode == 0, r.stderr
    for f in (f"{PPL}.jsonl", f"{GEN}.jsonl"):
        assert (tmp_path / f).read_bytes() == (d / f).read_bytes(), f
