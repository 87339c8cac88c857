"""Coordinate check for muP (Yang et al., Tensor Programs V, section 5 / Fig. 5): train the model at
several widths for a few steps under muP and under the standard parametrisation, and plot the
size of each activation against width. Under muP the curves are flat; under the standard
parametrisation they grow with width (the logits first), which is why its best LR shifts.

    python launcher/coord_check.py [--config FILE] [section.key=value ...] --widths 64 128 256 512 \\
        --steps 5 --out DIR

Each width is the config's model with d_model = width (n_head fixed, so the head size grows),
muP's base width = model.mup_base_width when the config sets it, else the smallest width, so
the two parametrisations coincide there. Training: AdamW with the training engine's parameter
groups (llmtrain.model.mup.mup_param_groups), constant LR train.lr, train.global_batch_size
windows of model.seq_len tokens per step, one process. Data: the config's (data.prefix, or the
bundled corpus), or --synthetic tokens from a fixed random bigram chain (no files needed).

Measured after the last step, on one fixed batch, as the mean |x| over every coordinate:
``embed`` (token + position embedding), ``blockI.attn`` and ``blockI.mlp`` (each block's
attention and MLP outputs, before the residual add), ``blockI.out`` (the residual stream after
block I) and ``logits``; averaged over --seeds. Writes DIR/coord.json ({"widths": [...],
"mup": {NAME: [value per width]}, "standard": {...}, "settings": {...}}) and DIR/coord.png.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path


def token_source(cfg, synthetic: bool, seed: int):
    """(vocab_size, draw(batch, seq_len, generator) -> (B, T+1) token windows)."""
    import numpy as np
    import torch

    if synthetic:
        vocab = cfg.model.vocab_size or 512
        g = torch.Generator().manual_seed(seed)
        successors = torch.randint(0, vocab, (vocab, 4), generator=g)  # each token has 4 possible next tokens

        def draw(batch, T, gen):
            x = torch.empty(batch, T + 1, dtype=torch.long)
            x[:, 0] = torch.randint(0, vocab, (batch,), generator=gen)
            for t in range(T):
                x[:, t + 1] = successors[x[:, t], torch.randint(0, 4, (batch,), generator=gen)]
            return x
        return vocab, draw

    from llmtrain.data.dataset import padded_vocab, read_manifest, split_shards
    from llmtrain_prep.sample import prepare_sample_data
    from llmtrain.data.indexed import IndexedDataset

    prefix = cfg.data.prefix or prepare_sample_data(cfg, 0)
    manifest, _ = read_manifest(prefix)
    tokens = np.concatenate([np.asarray(IndexedDataset(s).tokens) for s in split_shards(prefix, manifest, "train")])
    vocab = cfg.model.vocab_size or padded_vocab(int(manifest["vocab_size"]))

    def draw(batch, T, gen):
        starts = torch.randint(0, len(tokens) - T - 1, (batch,), generator=gen).tolist()
        return torch.from_numpy(np.stack([tokens[s:s + T + 1].astype(np.int64) for s in starts]))
    return vocab, draw


def measure(model, idx) -> dict:
    """Mean |activation| of the named pieces of ``model`` on the batch ``idx``."""
    import torch

    out, hooks = {}, []

    def keep(name):
        def hook(_module, _inputs, output):
            out[name] = float(output.detach().abs().mean())
        return hook

    hooks.append(model.embed.register_forward_hook(keep("embed")))
    for i, blk in enumerate(model.blocks):
        hooks += [blk.attn.register_forward_hook(keep(f"block{i}.attn")),
                  blk.mlp.register_forward_hook(keep(f"block{i}.mlp")),
                  blk.register_forward_hook(keep(f"block{i}.out"))]
    try:
        with torch.no_grad():
            out["logits"] = float(model(idx).abs().mean())
    finally:
        for h in hooks:
            h.remove()
    return out


def train_and_measure(cfg, draw, steps: int, seed: int) -> dict:
    """Train a fresh GPT(cfg.model) ``steps`` AdamW steps (the engine's parameter groups, constant
    LR, gradient clipping as train.grad_clip) and measure it on a fixed batch."""
    import torch

    from llmtrain.scaling.width import train_plain

    gen = torch.Generator().manual_seed(seed)
    B, T = cfg.train.global_batch_size, cfg.train.seq_len
    probe = draw(B, T, torch.Generator().manual_seed(10_000 + seed))[:, :-1]
    model, _ = train_plain(cfg, lambda: draw(B, T, gen), steps, seed)
    return measure(model, probe)


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from llmtrain.scaling.plot import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, kind in zip(axes, ("standard", "mup")):
        for name, values in result[kind].items():
            style = dict(lw=2.5, color="black") if name == "logits" else dict(lw=1, alpha=0.8)
            ax.plot(result["widths"], values, marker="o", label=name, **style)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("width (d_model)")
        ax.set_title(f"{'muP' if kind == 'mup' else 'standard'}: mean |activation| after step "
                     f"{result['settings']['steps']}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean |x|")
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_figure(fig, Path(path))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="YAML config (default configs/tiny.yaml); its model options apply at every width")
    ap.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512])
    ap.add_argument("--steps", type=int, default=5, help="optimizer steps before measuring")
    ap.add_argument("--seeds", type=int, default=2, help="runs averaged per width and parametrisation")
    ap.add_argument("--base-width", type=int, help="muP base width (default model.mup_base_width, else the "
                                                   "smallest width)")
    ap.add_argument("--synthetic", action="store_true", help="tokens from a random bigram chain instead of the "
                                                              "config's data")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (small models run best on one)")
    ap.add_argument("--out", required=True, help="output folder for coord.json and coord.png")
    ap.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. model.n_layer=2 train.lr=1e-2")
    args = ap.parse_args(argv)

    import torch

    from llmtrain.config import load_config
    from llmtrain.core.errors import ConfigError
    from llmtrain.scaling.width import width_config
    from llmtrain.core.files import atomic_write_json

    if args.steps < 1 or args.seeds < 1 or min(args.widths) <= 0:
        raise ConfigError("--steps, --seeds and every --widths value must be > 0")
    overrides = list(args.overrides)
    if not any(o.startswith("model.seq_len=") for o in overrides):
        overrides.append("model.seq_len=64")  # short windows: a coordinate check needs few tokens
    cfg = load_config(args.config, overrides)
    widths = sorted(set(args.widths))
    base = args.base_width or cfg.model.mup_base_width or widths[0]
    vocab, draw = token_source(cfg, args.synthetic, cfg.train.seed)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab))
    torch.set_num_threads(args.threads)

    result = {"widths": widths, "mup": {}, "standard": {}}
    started = time.time()
    for kind in ("standard", "mup"):
        for w in widths:
            wcfg = width_config(cfg, w, kind, base)
            runs = [train_and_measure(wcfg, draw, args.steps, cfg.train.seed + s) for s in range(args.seeds)]
            for name in runs[0]:
                result[kind].setdefault(name, []).append(sum(r[name] for r in runs) / len(runs))
            print(f"{kind:8s} width {w:5d}: logits {result[kind]['logits'][-1]:.4f}  "
                  f"embed {result[kind]['embed'][-1]:.4f}  ({time.time() - started:.0f}s)", flush=True)
    result["settings"] = {"steps": args.steps, "seeds": args.seeds, "mup_base_width": base, "lr": cfg.train.lr,
                          "batch": cfg.train.global_batch_size, "seq_len": cfg.train.seq_len,
                          "n_layer": cfg.model.n_layer, "n_head": cfg.model.n_head, "vocab_size": vocab,
                          "data": "synthetic bigram chain" if args.synthetic else (cfg.data.prefix or "bundled corpus"),
                          "config": args.config or "configs/tiny.yaml", "overrides": overrides}
    os.makedirs(args.out, exist_ok=True)
    atomic_write_json(os.path.join(args.out, "coord.json"), result)
    plot(result, os.path.join(args.out, "coord.png"))
    for kind in ("standard", "mup"):
        v = result[kind]["logits"]
        print(f"{kind}: logits grow x{v[-1] / v[0]:.2f} from width {widths[0]} to {widths[-1]}")
    print(f"wrote {os.path.join(args.out, 'coord.json')} and coord.png")
    return 0


if __name__ == "__main__":
    from llmtrain.checkpoint.load import run_cli

    sys.exit(run_cli(main))
