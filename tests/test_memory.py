"""The memory plan before launch (llmtrain/scaling/memory.py): model states byte for byte against
what DeepSpeed really allocates on each of 2 ranks (gloo) and against DeepSpeed's own estimators,
and launcher/pretrain.py --dry-run (text, JSON, world size alone and under a launcher)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from trainutil import REPO, SMALL, assert_one_line_error, deepspeed_cmd, env, free_port, run_python

PRETRAIN = REPO / "launcher" / "pretrain.py"
TINY = ["model.n_layer=2", "model.d_model=64", "model.n_head=4", "model.seq_len=64", "model.vocab_size=512",
        "train.global_batch_size=4"]
ODD = ["model.n_layer=2", "model.d_model=40", "model.n_head=4", "model.seq_len=33", "model.vocab_size=509",
       "model.bias=true", "model.mlp=swiglu", "train.global_batch_size=4", "train.seq_len=16"]
BF16 = ["train.precision=bf16"]  # gradients accumulated and reduced in fp32 (train.grad_accum_dtype)
ACC16 = ["train.grad_accum_dtype=bf16"]
PIPE = ["parallel.pipeline_stages=2"]
CASES = {  # name: (overrides, DeepSpeed JSON)
    "zero0_fp32": (TINY, {"zero_optimization": {"stage": 0}}),
    "zero0_bf16": (TINY + BF16, {"zero_optimization": {"stage": 0}}),
    "zero1_bf16": (TINY + BF16, {"zero_optimization": {"stage": 1}}),
    "zero2_fp32_odd": (ODD, {"zero_optimization": {"stage": 2}}),
    "zero2_bf16": (TINY + BF16, {"zero_optimization": {"stage": 2}}),
    "zero3_fp32_odd": (ODD, {"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 5000}}),
    # in the setting of DeepSpeed's ZeRO-3 estimator: no persistent parameters, one layer gathered at a time
    "zero3_bf16": (TINY + BF16, {"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0,
                                                       "stage3_max_reuse_distance": 0}}),
    # bf16 with bf16 accumulation: DeepSpeed's own bf16 paths (ZeRO-0: its fp16-style optimizer; ZeRO-1: ZeRO's)
    "zero0_bf16acc": (TINY + BF16 + ACC16, {"zero_optimization": {"stage": 0}}),
    "zero1_bf16acc": (TINY + BF16 + ACC16, {"zero_optimization": {"stage": 1}}),
    "zero2_bf16acc": (TINY + BF16 + ACC16, {"zero_optimization": {"stage": 2}}),
    "pipe_zero1_fp32": (TINY + PIPE, {"zero_optimization": {"stage": 1}}),
    "pipe_zero1_bf16": (TINY + PIPE + BF16, {"zero_optimization": {"stage": 1}}),
    "pipe_zero0_bf16": (TINY + PIPE + BF16, {"zero_optimization": {"stage": 0}}),  # autocast: fp32 weights
    "pipe_zero0_bf16acc": (TINY + PIPE + BF16 + ACC16, {"zero_optimization": {"stage": 0}}),  # BF16_Optimizer
}


def planned(name: str):
    """(config, every stage's StageParams, Layout) of a case, planned for 2 processes."""
    from llmtrain.config import load_config
    from llmtrain.scaling.memory import Layout, stage_params
    from llmtrain.train.ds_config import build_ds_config

    overrides, ds = CASES[name]
    cfg = load_config(None, overrides)
    ds = build_ds_config(cfg, ds, "case", "case", 2 // cfg.parallel.pipeline_stages)
    return cfg, stage_params(cfg), Layout.of(cfg, ds, 2)


def parts_of(name: str, rank: int) -> dict:
    from llmtrain.scaling.memory import model_states

    _, stages, lay = planned(name)
    pipe = len(stages) > 1
    st = model_states(stages[rank] if pipe else stages[0], lay, 0 if pipe else rank)
    return {k: v for k, (_, v) in st.parts.items()}


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """Bytes DeepSpeed allocated per part on each of 2 ranks (tests/memory_partitions.py)."""
    out = tmp_path_factory.mktemp("partitions")
    cases = out / "cases.json"
    cases.write_text(json.dumps([{"name": k, "overrides": o, "ds": d} for k, (o, d) in CASES.items()]))
    cmd = ["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()),
           str(REPO / "tests" / "memory_partitions.py"), str(out), str(cases)]
    r = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    return [json.loads((out / f"rank{k}.json").read_text()) for k in (0, 1)]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_model_states_are_deepspeeds_allocations(measured, name):
    """Every part DeepSpeed allocated (16-bit parameters and their partitions, ZeRO-3's persistent
    parameters, gradient partitions, fp32 master partitions, AdamW moments, the pipeline's
    accumulator) has exactly the planned bytes on each rank. ZeRO-1's gradients are planned whole
    (as they are during the backward pass); at the step DeepSpeed holds only the partition's."""
    for rank in (0, 1):
        got, plan = dict(measured[rank][name]), parts_of(name, rank)
        stage_params = got.pop("stage_params", None)
        if name.startswith("zero1") and "grads16" in got:
            assert plan["grads16"] >= got.pop("grads16")
        assert got == {k: plan[k] for k in got}, (rank, got, plan)
        if stage_params is not None:
            _, stages, _ = planned(name)
            assert stages[rank].numel == stage_params


@pytest.mark.slow
def test_totals_against_deepspeeds_estimators(measured):
    """DeepSpeed's estimate_zero2/3_model_states_mem_needs (what its *_all_live functions print, fed
    with model_to_params of the real model): the plan's ZeRO-2 states are the estimate plus the
    gradients of the parameters that straddle the partition boundary (kept whole); its ZeRO-3 states
    are the estimate plus the 16-bit gradient partition (allocated, and left out of the estimate).
    The estimators' largest layer is the plan's largest module."""
    from deepspeed.runtime.zero import stage3, stage_1_and_2

    from llmtrain.model.gpt import GPT
    from llmtrain.scaling.memory import model_states

    cfg, stages, lay = planned("zero2_bf16acc")  # the estimator's bf16 gradients
    total = stage_1_and_2.model_to_params(GPT(cfg.model))
    _, est2 = stage_1_and_2.estimate_zero2_model_states_mem_needs(total, num_gpus_per_node=2, cpu_offload=False)
    for rank in (0, 1):
        got = measured[rank]["zero2_bf16acc"]
        part, straddling = got["master"] // 4, got["grads16"] // 2
        assert part * 2 == total  # no padding in this model: the estimate's Ψ/2 is the partition
        st = model_states(stages[0], lay, rank)
        assert st.total - st.buffers == est2 + 2 * (straddling - part)

    cfg, stages, lay = planned("zero3_bf16")
    total, largest = stage3.model_to_params(GPT(cfg.model))
    _, est3, _ = stage3.estimate_zero3_model_states_mem_needs(total, largest, num_gpus_per_node=2, cpu_offload=False,
                                                              cpu_offload_params=False, zero_init=True)
    assert stages[0].largest_module == largest
    for rank in (0, 1):
        st = model_states(stages[0], lay, rank)
        assert st.total - st.buffers == est3 + measured[rank]["zero3_bf16"]["grads16"]


def dry_run(token_data, *args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PRETRAIN), "--dry-run", f"data.prefix={token_data}", *SMALL, *args],
                          cwd=cwd or REPO, env=env(), capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_dry_run_plans_and_writes_nothing(token_data, tmp_path):
    from llmtrain.config import load_config
    from llmtrain.scaling.memory import plan_memory
    from llmtrain.train.ds_config import build_ds_config, load_ds_json

    ds = REPO / "ds_configs" / "zero3.json"
    r = dry_run(token_data, "--json", "--world-size", "2", "--deepspeed_config", ds, "--gpu-memory", "1GiB",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout)
    assert set(got["per_rank"]) == {"params_bytes", "grads_bytes", "optimizer_bytes", "activations_bytes",
                                    "total_bytes"}
    cfg = load_config(None, [f"data.prefix={token_data}", *SMALL, "model.vocab_size=512"])
    user, path = load_ds_json(ds)
    plan = plan_memory(cfg, build_ds_config(cfg, user, path, "x", 2), 2, 1 << 30).to_json()
    assert got["per_rank"] == plan["per_rank"] and got["fits"] is True and got["max_micro_batch"] == 4
    assert got["detail"]["zero_stage"] == 3 and got["detail"]["data_parallel"] == 2
    assert list(tmp_path.iterdir()) == []  # nothing written, no run folder

    r = dry_run(token_data, "--json", "--gpu-memory", "1MiB")  # one process, ZeRO-0
    got = json.loads(r.stdout)
    assert got["fits"] is False and got["max_micro_batch"] is None and got["detail"]["data_parallel"] == 1

    r = dry_run(token_data, "--world-size", "2", "--deepspeed_config", REPO / "ds_configs" / "zero1.json",
                "parallel.pipeline_stages=2", "train.activation_checkpointing=true")
    assert r.returncode == 0, r.stderr[-2000:]
    for words in ("ZeRO-1, 1 data-parallel x 2 pipeline stage(s)", "parameters", "gradients", "optimizer",
                  "activations", "checkpointing on (without:", "total", "largest micro-batch that fits", "stage 1:"):
        assert words in r.stdout, (words, r.stdout)


@pytest.mark.slow
def test_dry_run_under_a_launcher_takes_its_world(token_data):
    args = ["--dry-run", "--json", "--deepspeed_config", REPO / "ds_configs" / "zero2.json", "--gpu-memory", "8GiB",
            f"data.prefix={token_data}", *SMALL]
    r = subprocess.run(deepspeed_cmd(2, *args), cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [ln for ln in r.stdout.splitlines() if not ln.startswith("[")]
    got = json.loads("\n".join(lines[lines.index("{"):]))  # printed once, by rank 0
    alone = json.loads(dry_run(token_data, "--json", "--world-size", "2", *args[2:6]).stdout)
    assert got == alone and got["detail"]["data_parallel"] == 2


@pytest.mark.slow
def test_bad_dry_run_arguments_are_one_line(token_data):
    assert_one_line_error(dry_run(token_data, "--world-size", "0"), "--world-size must be >= 1")
    assert_one_line_error(dry_run(token_data, "--world-size", "3"), "global_batch_size=8", "3 data-parallel")
    r = run_python([PRETRAIN, "--json", f"data.prefix={token_data}"])
    assert_one_line_error(r, "--json, --world-size and --gpu-memory go with --dry-run")
    r = subprocess.run([sys.executable, str(PRETRAIN), "--dry-run", f"data.prefix={token_data}", *SMALL,
                        "--world-size", "3"], cwd=REPO, env={**env(), "WORLD_SIZE": "2"}, capture_output=True,
                       text=True, timeout=300)
    assert_one_line_error(r, "--world-size 3 contradicts the launcher's 2 processes")


@pytest.mark.slow
def test_the_window_not_the_positions_sizes_activations():
    """A Llama-3.1-8B-shaped model at 2048-token windows: its 131072 positions (rotary) change
    nothing; the plan builds the model on the meta device only."""
    from llmtrain.config import load_config
    from llmtrain.scaling.memory import plan_memory

    llama = ["model.n_layer=32", "model.d_model=4096", "model.n_head=32", "model.n_kv_head=8", "model.d_ff=14336",
             "model.pos_encoding=rotary", "model.norm=rmsnorm", "model.mlp=swiglu", "model.tie_embeddings=false",
             "model.vocab_size=128256", "train.seq_len=2048", "train.precision=bf16", "train.global_batch_size=8"]
    ds = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}
    plans = [plan_memory(load_config(None, [*llama, f"model.seq_len={n}"]), ds, 8, 80 << 30, "cuda")
             for n in (131072, 8192)]
    assert plans[0].to_json()["per_rank"] == plans[1].to_json()["per_rank"]
    assert plans[0].stages[0]["params"] == 8_030_261_248  # Llama 3.1 8B
    assert plans[0].activations > 0


@pytest.mark.slow
def test_a_plan_with_experts_says_what_it_leaves_out():
    from llmtrain.config import load_config
    from llmtrain.scaling.memory import plan_memory

    moe = ["model.n_layer=2", "model.d_model=64", "model.n_head=4", "model.vocab_size=512", "model.moe_experts=4",
           "model.moe_top_k=2", "train.global_batch_size=8"]
    ds = {"zero_optimization": {"stage": 2}}
    dense = plan_memory(load_config(None, moe[:4] + moe[-1:]), ds, 2, 1 << 30, "cuda")
    assert dense.notes == [] and "note:" not in dense.format()
    ep = plan_memory(load_config(None, [*moe, "parallel.expert_parallel_size=2"]), ds, 2, 1 << 30, "cuda")
    assert [n.split(":")[0].split(" (")[0] for n in ep.to_json()["detail"]["notes"]] == ["experts",
                                                                                         "expert parallelism"]
    assert "note: expert parallelism (parallel.expert_parallel_size=2) is not modelled" in ep.format()
