"""muP learning-rate transfer, measured: an LR grid at several widths under muP and under the
standard parametrisation; where does the best LR sit at each width?

    python benchmarks/mup_transfer.py [--config configs/scaling/mup_transfer.yaml] \\
        [--widths 32 64 128] [--lrs 1.25e-3 2.5e-3 5e-3 1e-2 2e-2 4e-2] [--steps 100] [--workers 2] \\
        [--out benchmarks/mup_transfer]

Every run: the config's model at d_model = width (n_head fixed), AdamW with the training
engine's parameter groups (llmtrain.model.mup.mup_param_groups, so muP's per-layer LRs are
the ones a DeepSpeed run gets), the project's LR schedule (llmtrain.train.schedule), gradient
clipping, one process, one thread. All runs share the init seed and the order of training
windows (random windows of the bundled corpus' train split), so runs at one width differ only
in LR and parametrisation. Loss: mean cross-entropy on fixed held-out windows of the valid
split after the last step. muP's base width is model.mup_base_width (the smallest width by
default), where the two parametrisations are the same model.

Writes OUT/results.json (every final loss, the best grid LR per width and a parabola fit of
loss against log LR around it) and OUT/loss_vs_lr.png.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from pathlib import Path
from concurrent.futures import ProcessPoolExecutor


_TOKENS: dict = {}


def windows(cfg, split: str):
    """(every token of the split as int64, the model's vocabulary), read once per process."""
    import numpy as np

    if split in _TOKENS:
        return _TOKENS[split]

    from llmtrain.data.dataset import padded_vocab, read_manifest, split_shards
    from llmtrain_prep.sample import prepare_sample_data
    from llmtrain.data.indexed import IndexedDataset

    prefix = cfg.data.prefix or prepare_sample_data(cfg, 0)
    manifest, _ = read_manifest(prefix)
    tokens = np.concatenate([np.asarray(IndexedDataset(s).tokens) for s in split_shards(prefix, manifest, split)])
    _TOKENS[split] = tokens.astype(np.int64), padded_vocab(int(manifest["vocab_size"]))
    return _TOKENS[split]


def one_run(job: dict) -> dict:
    """Train one (parametrisation, width, LR) and return its held-out loss."""
    import numpy as np
    import torch

    from llmtrain.config import load_config
    from llmtrain.scaling.width import train_plain, width_config
    from llmtrain.train.schedule import lr_multiplier

    torch.set_num_threads(1)
    cfg = load_config(job["config"])
    train, vocab = windows(cfg, "train")
    valid, _ = windows(cfg, "valid")
    cfg = width_config(cfg, job["width"], job["parametrization"], job["base"], vocab_size=vocab, mup_base_head_dim=None)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=job["lr"]))
    t, T, B = cfg.train, cfg.model.seq_len, cfg.train.global_batch_size
    seed = job["seed"]
    rng = np.random.default_rng(seed)

    def next_batch():
        starts = rng.integers(0, len(train) - T - 1, B)
        return torch.from_numpy(np.stack([train[s:s + T + 1] for s in starts]))

    started = time.time()
    model, train_losses = train_plain(
        cfg, next_batch, job["steps"], seed,
        lambda s: lr_multiplier(s, job["steps"], t.schedule, t.warmup_steps, t.min_lr_ratio, t.decay_fraction))
    n = job["eval_windows"]
    vb = torch.from_numpy(np.stack([valid[i * T:i * T + T + 1] for i in range(n)]))
    with torch.no_grad():
        valid_loss = float(sum(model(vb[i:i + B, :-1], vb[i:i + B, 1:]) * len(vb[i:i + B]) for i in range(0, n, B)) / n)
    if not math.isfinite(valid_loss):
        valid_loss = float("nan")
    return {**{k: job[k] for k in ("parametrization", "width", "lr")}, "valid_loss": valid_loss,
            "train_loss_last5": sum(train_losses[-5:]) / 5, "seconds": round(time.time() - started, 1)}


def best(lrs: list[float], losses: list[float]) -> dict:
    """Best grid LR and the vertex of a parabola through the best point and its neighbours in
    log10 LR (None at the edge of the grid or for a non-convex triple)."""
    finite = [(lr, v) for lr, v in zip(lrs, losses) if math.isfinite(v)]
    i = min(range(len(finite)), key=lambda k: finite[k][1])
    out = {"grid_lr": finite[i][0], "grid_loss": finite[i][1], "fit_lr": None}
    if 0 < i < len(finite) - 1:
        (x0, y0), (x1, y1), (x2, y2) = [(math.log10(a), b) for a, b in finite[i - 1:i + 2]]
        denom = (x0 - x1) * (x0 - x2) * (x1 - x2)
        a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denom
        b = (x2 * x2 * (y0 - y1) + x1 * x1 * (y2 - y0) + x0 * x0 * (y1 - y2)) / denom
        if a > 0:
            out["fit_lr"] = 10 ** (-b / (2 * a))
    return out


def plot(res: dict, path: str) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from llmtrain.scaling.plot import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, kind in zip(axes, ("standard", "mup")):
        for w in res["widths"]:
            losses = res["valid_loss"][kind][str(w)]
            ax.plot(res["lrs"], losses, marker="o", label=f"d_model {w}")
            b = res["best"][kind][str(w)]
            ax.plot([b["grid_lr"]], [b["grid_loss"]], marker="*", ms=14, color=ax.lines[-1].get_color())
        ax.set_xscale("log")
        ax.set_xticks(res["lrs"], [f"{lr:g}" for lr in res["lrs"]], rotation=30)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("learning rate (train.lr)")
        name = f"muP (base width {res['base_width']})" if kind == "mup" else "standard"
        ax.set_title(f"{name}: "
                     f"{res['settings']['steps']} steps")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("held-out loss")
    finite = [v for k in res["valid_loss"].values() for ls in k.values() for v in ls if math.isfinite(v)]
    axes[0].set_ylim(min(finite) - 0.1, min(max(finite), min(finite) + 2.5) + 0.1)
    fig.tight_layout()
    save_figure(fig, Path(path))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/scaling/mup_transfer.yaml")
    ap.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--lrs", type=float, nargs="+", default=[1.25e-3, 2.5e-3, 5e-3, 1e-2, 2e-2, 4e-2])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--eval-windows", type=int, default=64, help="held-out windows of model.seq_len tokens")
    ap.add_argument("--seed", type=int, default=1234, help="init and data-order seed of every run")
    ap.add_argument("--workers", type=int, default=2, help="runs trained at once (one thread each)")
    ap.add_argument("--out", default="benchmarks/mup_transfer")
    ap.add_argument("--replot", action="store_true", help="only redraw OUT/loss_vs_lr.png from OUT/results.json")
    args = ap.parse_args(argv)
    if args.replot:
        with open(os.path.join(args.out, "results.json")) as fh:
            plot(json.load(fh), os.path.join(args.out, "loss_vs_lr.png"))
        return 0

    from llmtrain.config import load_config

    from benchutil import cpu_description

    cfg = load_config(args.config)
    base = cfg.model.mup_base_width or min(args.widths)
    jobs = [{"config": args.config, "parametrization": p, "width": w, "lr": lr, "base": base, "steps": args.steps,
             "eval_windows": args.eval_windows, "seed": args.seed}
            for w in sorted(args.widths, reverse=True) for p in ("standard", "mup") for lr in args.lrs]
    started, done = time.time(), []
    with ProcessPoolExecutor(args.workers) as pool:
        for r in pool.map(one_run, jobs):
            done.append(r)
            print(f"[{len(done)}/{len(jobs)} {time.time() - started:.0f}s] {r['parametrization']:8s} d{r['width']:<4d} "
                  f"lr {r['lr']:.0e}: valid loss {r['valid_loss']:.4f} ({r['seconds']}s)", flush=True)
    widths, lrs = sorted(args.widths), args.lrs
    res = {"widths": widths, "lrs": lrs, "base_width": base, "valid_loss": {}, "best": {}, "runs": done}
    for p in ("standard", "mup"):
        res["valid_loss"][p] = {str(w): [next(r["valid_loss"] for r in done if (r["parametrization"], r["width"],
                                                                                r["lr"]) == (p, w, lr)) for lr in lrs]
                                for w in widths}
        res["best"][p] = {str(w): best(lrs, res["valid_loss"][p][str(w)]) for w in widths}
    res["settings"] = {"config": args.config, "steps": args.steps, "eval_windows": args.eval_windows,
                       "n_layer": cfg.model.n_layer, "n_head": cfg.model.n_head, "seq_len": cfg.model.seq_len,
                       "global_batch_size": cfg.train.global_batch_size, "schedule": cfg.train.schedule,
                       "warmup_steps": cfg.train.warmup_steps, "machine": cpu_description(),
                       "workers": args.workers, "seed": args.seed, "wall_seconds": round(time.time() - started)}
    os.makedirs(args.out, exist_ok=True)
    from llmtrain.core.files import atomic_write_json

    atomic_write_json(os.path.join(args.out, "results.json"), res)
    plot(res, os.path.join(args.out, "loss_vs_lr.png"))
    for p in ("standard", "mup"):
        print(p, {w: (b["grid_lr"], None if b["fit_lr"] is None else float(f"{b['fit_lr']:.2g}"))
                  for w, b in res["best"][p].items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
