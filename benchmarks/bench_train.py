"""Training throughput: the project's DeepSpeed path against the same model in a plain PyTorch
loop, and both against this machine's own fp32 matmul rate (MFU on CPU).

    python benchmarks/bench_train.py [--rounds 3] [--steps 20] [model.n_layer=4 ...]

Both paths train the same GPT (the tiny default config unless overridden) on the same
synthetic token batches with AdamW and gradient clipping, in one process, alternating in
rounds so that machine noise hits both alike. Prints a Markdown table for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import platform
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
from llmtrain.train.metrics import measure_matmul_flops  # noqa: E402


class RandomTokens:
    def __init__(self, vocab: int, seq_len: int, n: int = 4096, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.data = torch.randint(0, vocab, (n, seq_len + 1), generator=g).numpy()
        self.num_samples = n

    def __getitem__(self, i):
        return self.data[i % self.num_samples]


def plain_loop(cfg, data, steps: int, start_step: int, state: dict) -> float:
    """tokens/s of a minimal PyTorch training loop (no DeepSpeed)."""
    from llmtrain.data.sampler import batch

    if "model" not in state:
        model = GPT(cfg.model, seed=cfg.train.seed)
        decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
        other = [p for n, p in model.named_parameters() if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                                lr=cfg.train.lr, betas=(0.9, 0.95), fused=True)
        state.update(model=model, opt=opt)
    model, opt = state["model"], state["opt"]
    G = cfg.train.global_batch_size
    t0 = time.perf_counter()
    for s in range(start_step, start_step + steps):
        x, y = batch(data, s * G, G)
        loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        float(loss)
    return steps * G * cfg.model.seq_len / (time.perf_counter() - t0)


def deepspeed_path(cfg, engine, data, steps: int, start_step: int) -> float:
    G = cfg.train.global_batch_size
    t0 = time.perf_counter()
    for s in range(start_step, start_step + steps):
        train_step(engine, data, s * G, G, 1, torch.device("cpu"), False, 1, True)
    return steps * G * cfg.model.seq_len / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also time the DeepSpeed path with train.compile=true")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cfg = load_config(None, ["model.vocab_size=4096", *args.overrides])
    rank, world, _, device = T.init_distributed()
    threads = T.set_cpu_threads(cfg.train.threads)
    data = RandomTokens(cfg.model.vocab_size, cfg.model.seq_len)
    user, path = load_ds_json(None)
    engines = {"deepspeed": build_engine(cfg, build_ds_config(cfg, user, path, "bench", 1), 10**6)}
    if args.compile:
        cfg_c = load_config(None, ["model.vocab_size=4096", "train.compile=true", *args.overrides])
        engines["deepspeed + train.compile"] = build_engine(cfg_c, build_ds_config(cfg_c, user, path, "bench", 1), 10**6)
    state: dict = {}
    # warm up every path (allocator, kernels, compilation)
    plain_loop(cfg, data, args.warmup, 0, state)
    for eng in engines.values():
        deepspeed_path(cfg, eng, data, args.warmup, 0)
    peak = measure_matmul_flops(seconds=1.0)
    rates = {"plain": [], **{k: [] for k in engines}}
    for r in range(args.rounds):
        s0 = args.warmup + r * args.steps
        rates["plain"].append(plain_loop(cfg, data, args.steps, s0, state))
        for k, eng in engines.items():
            rates[k].append(deepspeed_path(cfg, eng, data, args.steps, s0))
        print(f"round {r}: " + ", ".join(f"{k} {v[-1]:,.0f} tok/s" for k, v in rates.items()), flush=True)
    peak = max(peak, measure_matmul_flops(seconds=1.0))
    fpt = flops_per_token(cfg.model)
    n = count_params(cfg.model)["n_params"]
    med = {k: sorted(v)[len(v) // 2] for k, v in rates.items()}
    print()
    print(f"machine: {platform.processor() or platform.machine()}, {threads} torch threads, torch {torch.__version__}")
    print(f"model: {n / 1e6:.2f}M params, {cfg.model.n_layer}L d{cfg.model.d_model} T{cfg.model.seq_len} "
          f"V{cfg.model.vocab_size}, batch {cfg.train.global_batch_size}x{cfg.model.seq_len}; "
          f"{fpt / 1e6:.2f} MFLOP/token (6N + attention)")
    print(f"fp32 matmul rate (1024^3, best of 2): {peak / 1e9:.0f} GFLOP/s")
    print()
    print("| path | tokens/s (median of rounds) | achieved GFLOP/s | MFU vs measured matmul | ratio vs plain |")
    print("|---|---|---|---|---|")
    for k in rates:
        g = med[k] * fpt
        print(f"| {k} | {med[k]:,.0f} | {g / 1e9:.0f} | {g / peak:.1%} | {med[k] / med['plain']:.2f}x |")


if __name__ == "__main__":
    main()
