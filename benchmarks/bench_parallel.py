"""Parallel layouts on CPU: throughput relative to one process, and per-rank memory of model
and optimizer states under ZeRO-1/2/3 against the expected 1/N shrink.

    python benchmarks/bench_parallel.py throughput [--steps 40]
    python benchmarks/bench_parallel.py memory [--ranks 2 4]
    python benchmarks/bench_parallel.py configs [--rounds 3 --steps 10]

throughput: the tiny default model on the bundled corpus, trained by launcher/pretrain.py as a
user would, 1 process vs ZeRO-3 x2 vs pipeline x2 (+ZeRO-1), same global batch; tokens/s is
the median of the logged intervals after the first.

memory: a ~20M-parameter GPT under deepspeed.initialize with each ZeRO stage and rank count;
after one optimizer step every rank counts the bytes it holds of fp32 parameters (its ZeRO-3
partition, or all of them) and of AdamW state (exp_avg, exp_avg_sq, and the fp32 master
partition where ZeRO keeps one).

configs: the shipped ds_configs/zero2.json and zero3.json (set for GPUs: overlapped
communication, 2e8-element ZeRO-2 buckets, DeepSpeed's ZeRO-3 defaults) against the CPU-tuned
values they replaced (no overlap, 5e7 buckets, a 5e6 prefetch bucket), each x2 on CPU with a
4 x 256 GPT, in alternating rounds; tokens/s medians and the per-round ratio, and the losses
(which must be equal).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from llmtrain.core.tasks import free_port

REPO = Path(__file__).resolve().parents[1]


def run(cmd, env=None):
    r = subprocess.run(cmd, cwd=REPO, env=env or os.environ.copy(), capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"failed: {' '.join(map(str, cmd))}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def throughput(steps: int) -> None:
    out = Path(tempfile.mkdtemp(prefix="bench_par_"))
    common = [f"train.max_steps={steps}", "train.log_interval=5", "train.eval_interval=0",
              "checkpoint.save_final=false"]
    script = str(REPO / "launcher" / "pretrain.py")
    layouts = {
        "1 process (ZeRO-0)": [sys.executable, script, "--run-dir", out / "single"],
        "ZeRO-3 x2": ["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), script, "--deepspeed_config",
                      REPO / "ds_configs/zero3.json", "--run-dir", out / "zero3"],
        "pipeline x2 (+ZeRO-1)": ["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), script,
                                  "--deepspeed_config", REPO / "ds_configs/zero1.json", "--run-dir", out / "pipe",
                                  "parallel.pipeline_stages=2", "train.micro_batch_size=2"],
    }
    rates = {}
    for name, cmd in layouts.items():
        run([*map(str, cmd), *common])
        run_dir = Path(cmd[cmd.index("--run-dir") + 1])
        recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        tps = [r["tokens_per_s"] for r in recs if "tokens_per_s" in r][1:]
        rates[name] = statistics.median(tps)
        print(f"{name}: {rates[name]:,.0f} tok/s", flush=True)
    base = rates["1 process (ZeRO-0)"]
    print("\n| layout | tokens/s | vs 1 process |\n|---|---|---|")
    for name, r in rates.items():
        print(f"| {name} | {r:,.0f} | {r / base:.2f}x |")


CPU_TUNED = {  # what ds_configs/zero2.json and zero3.json held before they were set for GPUs
    "zero2": {"stage": 2, "overlap_comm": False, "contiguous_gradients": True, "reduce_scatter": True,
              "reduce_bucket_size": 50000000, "allgather_bucket_size": 50000000},
    "zero3": {"stage": 3, "overlap_comm": False, "contiguous_gradients": True, "reduce_bucket_size": 50000000,
              "stage3_prefetch_bucket_size": 5000000, "stage3_param_persistence_threshold": 10000},
}


def configs(rounds: int, steps: int) -> None:
    out = Path(tempfile.mkdtemp(prefix="bench_cfg_"))
    script = str(REPO / "launcher" / "pretrain.py")
    common = ["model.n_layer=4", "model.d_model=256", "model.n_head=4", "model.seq_len=128",
              "train.global_batch_size=16", f"train.max_steps={steps}", "train.log_interval=1", "train.eval_interval=0",
              "train.warmup_steps=2", "checkpoint.save_final=false", "log.tensorboard=false", "train.peak_flops=1e11"]
    rates: dict[tuple[str, str], list[float]] = {}
    losses: dict[tuple[str, str], list[float]] = {}
    for rnd in range(rounds):
        for stage, old in CPU_TUNED.items():
            for which in (("shipped", "cpu-tuned") if rnd % 2 == 0 else ("cpu-tuned", "shipped")):
                ds = REPO / "ds_configs" / f"{stage}.json"
                if which == "cpu-tuned":
                    ds = out / f"{stage}_cpu.json"
                    ds.write_text(json.dumps({"zero_optimization": old}))
                run_dir = out / f"{stage}_{which}_{rnd}"
                run(["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), script, "--deepspeed_config",
                     str(ds), "--run-dir", str(run_dir), *common])
                recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
                recs = [r for r in recs if "tokens_per_s" in r]
                rates.setdefault((stage, which), []).append(statistics.median(r["tokens_per_s"] for r in recs[2:]))
                losses[(stage, which)] = [r["loss"] for r in recs]
                print(f"round {rnd} {stage} {which}: {rates[(stage, which)][-1]:,.0f} tok/s", flush=True)
    print("\n| layout | shipped (GPU) tok/s | CPU-tuned tok/s | per-round ratio | median ratio | losses equal |")
    print("|---|---|---|---|---|---|")
    for stage in CPU_TUNED:
        a, b = rates[(stage, "shipped")], rates[(stage, "cpu-tuned")]
        ratios = [x / y for x, y in zip(a, b)]
        print(f"| {stage} x2 | {statistics.median(a):,.0f} | {statistics.median(b):,.0f} | "
              f"{', '.join(f'{r:.2f}' for r in ratios)} | {statistics.median(ratios):.2f}x | "
              f"{losses[(stage, 'shipped')] == losses[(stage, 'cpu-tuned')]} |")


MEMORY_WORKER = r'''
import json, os, sys, torch, deepspeed
from llmtrain.config import ModelConfig
from llmtrain.model.gpt import GPT
stage = int(sys.argv[-1])
deepspeed.init_distributed(dist_backend="gloo")
torch.set_num_threads(1)
cfg = ModelConfig(n_layer=6, d_model=512, n_head=8, seq_len=64, vocab_size=4096)
model = GPT(cfg)
n_total = sum(p.numel() for p in model.parameters())
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
ds = {"train_batch_size": 2 * int(os.environ["WORLD_SIZE"]), "train_micro_batch_size_per_gpu": 2,
      "zero_optimization": {"stage": stage, "reduce_bucket_size": 5e6, "stage3_param_persistence_threshold": 0},
      "steps_per_print": 10**9}
eng, *_ = deepspeed.initialize(model=model, optimizer=opt, config=ds)
x = torch.randint(0, 4096, (2, 64))
loss = eng(x, x)
eng.backward(loss)
eng.step()
def nbytes(ts):
    return sum(t.numel() * t.element_size() for t in ts if torch.is_tensor(t))
params = []
for p in eng.module.parameters():
    params.append(p.ds_tensor if hasattr(p, "ds_tensor") else p.data)
inner = getattr(eng.optimizer, "optimizer", eng.optimizer)
states = [v for s in inner.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0]
master = []
if stage in (1, 2):
    master = list(getattr(eng.optimizer, "single_partition_of_fp32_groups", []))
elif stage == 3:
    master = list(getattr(eng.optimizer, "fp32_partitioned_groups_flat", []))
rec = {"rank": int(os.environ["RANK"]), "world": int(os.environ["WORLD_SIZE"]), "stage": stage, "n_params": n_total,
       "param_bytes": nbytes(params), "optimizer_state_bytes": nbytes(states), "master_bytes": nbytes(master)}
print("MEM " + json.dumps(rec), flush=True)
'''


def memory(ranks: list[int]) -> None:
    worker = Path(tempfile.mkdtemp(prefix="bench_mem_")) / "worker.py"
    worker.write_text(MEMORY_WORKER)
    rows = []
    for world in ranks:
        for stage in (0, 1, 2, 3):
            r = run(["deepspeed", "--num_gpus", str(world), "--master_port", str(free_port()),
                     str(worker), str(REPO), str(stage)])
            recs = [json.loads(ln.split("MEM ", 1)[1]) for ln in r.stdout.splitlines() if "MEM {" in ln]
            rec = max(recs, key=lambda d: d["param_bytes"] + d["optimizer_state_bytes"] + d["master_bytes"])
            rows.append(rec)
            print(json.dumps(rec), flush=True)
    print("\n| ranks | ZeRO | params held (MB/rank) | optimizer states (MB/rank) | fp32 master (MB/rank) | "
          "states vs ZeRO-0 | expected |\n|---|---|---|---|---|---|---|")
    for rec in rows:
        base = next(r for r in rows if r["world"] == rec["world"] and r["stage"] == 0)
        ratio = rec["optimizer_state_bytes"] / base["optimizer_state_bytes"]
        expected = "1" if rec["stage"] == 0 else f"1/{rec['world']} = {1 / rec['world']:.2f}"
        print(f"| {rec['world']} | {rec['stage']} | {rec['param_bytes'] / 2**20:.1f} | "
              f"{rec['optimizer_state_bytes'] / 2**20:.1f} | {rec['master_bytes'] / 2**20:.1f} | {ratio:.2f} | "
              f"{expected} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["throughput", "memory", "configs"])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ranks", type=int, nargs="+", default=[2, 4])
    a = ap.parse_args()
    if a.what == "configs":
        configs(a.rounds, a.steps)
    else:
        throughput(a.steps) if a.what == "throughput" else memory(a.ranks)


if __name__ == "__main__":
    main()
