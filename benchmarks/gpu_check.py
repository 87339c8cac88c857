"""One call on a GPU machine: check the training path is correct, then report tokens/s and
MFU for a ~350M-parameter GPT in bf16 through the project's DeepSpeed path.

    python benchmarks/gpu_check.py                  # 350M model (24L d1024 T2048 V50304), bf16, ZeRO-0
    python benchmarks/gpu_check.py --smoke          # a tiny model: checks the script itself (CPU is fine)
    python benchmarks/gpu_check.py model.n_layer=12 train.micro_batch_size=8 ...

Checks: (1) the first-step loss through DeepSpeed bf16 matches the plain fp32 model's on the
same batch within bf16 tolerance, and is near ln(V) at initialisation; (2) the model can
overfit one repeated batch (loss falls by > 30% in 30 steps). Then it times steps after a
warmup and prints a Markdown row for benchmarks/BENCHMARKS.md. MFU uses the datasheet peak
(llmtrain/train/metrics.py) and the 6N + attention FLOPs per token.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from llmtrain.config import load_config  # noqa: E402
from llmtrain.model.gpt import GPT, count_params, flops_per_token  # noqa: E402
from llmtrain.train import trainer as T  # noqa: E402
from llmtrain.train.engine import build_engine  # noqa: E402
from llmtrain.train.step import train_step  # noqa: E402
from llmtrain.train.ds_config import build_ds_config, load_ds_json  # noqa: E402
from llmtrain.train.metrics import peak_flops  # noqa: E402

MODEL_350M = ["model.n_layer=24", "model.d_model=1024", "model.n_head=16", "model.seq_len=2048",
              "model.vocab_size=50304", "model.pos_encoding=rotary", "model.norm=rmsnorm", "model.mlp=swiglu",
              "train.precision=bf16", "train.global_batch_size=8", "train.micro_batch_size=8", "train.compile=true"]
SMOKE = ["model.n_layer=2", "model.d_model=64", "model.n_head=4", "model.seq_len=64", "model.vocab_size=512",
         "train.global_batch_size=4", "train.precision=bf16"]


class Repeat:
    def __init__(self, rows):
        self.rows, self.num_samples = rows, len(rows)

    def __getitem__(self, i):
        return self.rows[i % self.num_samples]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--deepspeed_config", default=None)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cfg = load_config(None, (SMOKE if args.smoke else MODEL_350M) + ["train.warmup_steps=0", "train.schedule=constant",
                                                                     "train.lr=1e-3"] + args.overrides)
    rank, world, _, device = T.init_distributed()
    if device.type == "cpu":
        T.set_cpu_threads(None)
    torch.backends.cuda.matmul.allow_tf32 = True
    user, path = load_ds_json(args.deepspeed_config)
    ds = build_ds_config(cfg, user, path, "gpu_check", world)
    engine = build_engine(cfg, ds, 10**6)
    micro, gas = engine.train_micro_batch_size_per_gpu(), engine.gradient_accumulation_steps()
    V, Tn = cfg.model.vocab_size, cfg.model.seq_len
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(0, V, (cfg.train.global_batch_size, Tn + 1), generator=g).numpy()
    data = Repeat(rows)

    # (1) first-step loss vs the plain fp32 model on the same batch
    ref = GPT(cfg.model, seed=cfg.train.seed).to(device)
    x = torch.from_numpy(rows[:micro, :-1]).long().to(device)
    y = torch.from_numpy(rows[:micro, 1:]).long().to(device)
    with torch.no_grad():
        ref_loss = float(ref(x, y))
    del ref
    losses = []
    for s in range(args.steps):
        loss, _, _ = train_step(engine, data, s * cfg.train.global_batch_size + rank * micro * gas, micro, gas,
                                  device, False, world, False)
        losses.append(loss)
    checks = {
        "first_loss_vs_fp32": abs(losses[0] - ref_loss) < 0.05,
        "init_loss_near_lnV": abs(losses[0] - math.log(V)) < 0.5,
        "overfits_one_batch": losses[-1] < 0.7 * losses[0],
    }

    # (2) timing on fresh random batches
    rows = torch.randint(0, V, (cfg.train.global_batch_size * 64, Tn + 1), generator=g).numpy()
    data = Repeat(rows)
    for s in range(args.warmup):
        train_step(engine, data, s * cfg.train.global_batch_size, micro, gas, device, False, world, False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for s in range(args.steps):
        train_step(engine, data, (args.warmup + s) * cfg.train.global_batch_size + rank * micro * gas, micro, gas,
                     device, False, world, False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    tps = args.steps * cfg.train.global_batch_size * Tn / dt
    fpt = flops_per_token(cfg.model)
    peak, src = peak_flops(device, cfg.train.precision, cfg.train.peak_flops)
    mfu = tps * fpt / world / peak if peak else float("nan")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    n = count_params(cfg.model)["n_params"]
    result = {"device": name, "world": world, "n_params": n, "tokens_per_s": tps, "mfu": mfu, "peak_flops": peak,
              "peak_source": src, "checks": checks, "first_losses": losses[:3], "ref_fp32_loss": ref_loss,
              "mem_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}
    if rank == 0:
        print(json.dumps(result, indent=2))
        print(f"| {name} x{world} | {n / 1e6:.0f}M | {cfg.train.precision} | {tps:,.0f} tok/s | MFU {mfu:.1%} | "
              f"checks {'pass' if all(checks.values()) else 'FAIL ' + str(checks)} |")
    if not all(checks.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
