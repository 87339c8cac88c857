"""What the layout-free state costs per checkpoint: a DeepSpeed checkpoint saved alone vs the
same checkpoint with its layout-free state beside it (llmtrain/checkpoint/layout_free.py), and
loading each back, in one process, alternating rounds, medians.

    python benchmarks/bench_checkpoint.py                                   # the default model (configs/tiny.yaml)
    python benchmarks/bench_checkpoint.py --rounds 3 model.n_layer=12 model.d_model=768 model.n_head=12 \\
        model.vocab_size=32768                                              # ~110M parameters

The engine is the trainer's own (build_engine, ZeRO-0 unless --deepspeed_config says otherwise),
after one optimizer step on random tokens so that Adam's moments exist. Saving: wall seconds of
llmtrain.checkpoint.ds.save_checkpoint (as in training) and the bytes written; loading:
DeepSpeed's load_checkpoint vs layout_free.load into the same engine. Ratios are the median over
rounds of the per-round ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import cpu_description  # noqa: E402


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: least disturbed by a busy machine)")
    ap.add_argument("--deepspeed_config", default=None)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    from llmtrain.checkpoint import layout_free
    from llmtrain.checkpoint.ds import rng_state, save_checkpoint
    from llmtrain.config import load_config
    from llmtrain.model.gpt import count_params
    from llmtrain.train.dist import init_distributed
    from llmtrain.train.ds_config import build_ds_config, layout_of, load_ds_json
    from llmtrain.train.engine import build_engine

    torch.set_num_threads(args.threads)
    cfg = load_config("configs/tiny.yaml", args.overrides)
    if cfg.model.vocab_size is None:
        cfg.model.vocab_size = 4096  # the bundled corpus's default vocabulary
    init_distributed()
    user, path = load_ds_json(args.deepspeed_config)
    ds = build_ds_config(cfg, user, path, "configs/tiny.yaml", dp_world=1)
    engine = build_engine(cfg, ds, total_steps=10)
    x = torch.randint(0, cfg.model.vocab_size, (engine.train_micro_batch_size_per_gpu(), cfg.model.seq_len))
    for _ in range(engine.gradient_accumulation_steps()):
        engine.backward(engine(x, x))
        engine.step()
    names = layout_free.gpt_names(cfg.parallel.pipeline_stages > 1, cfg.model.n_layer)
    layout = layout_of(cfg, ds, 1)
    client = {"step": 1, "tokens": 0, "rng": [rng_state()], "callbacks": {}}

    root = Path(tempfile.mkdtemp(prefix="bench_ckpt_", dir=os.environ.get("TMPDIR")))
    times = {"deepspeed": [], "with_layout_free": [], "load_deepspeed": [], "load_layout_free": []}
    sizes = {}
    try:
        for r in range(args.rounds):
            order = ["deepspeed", "with_layout_free"] if r % 2 == 0 else ["with_layout_free", "deepspeed"]
            for kind in order:
                run = root / f"{kind}_{r}"
                t0 = time.perf_counter()
                step_dir = Path(save_checkpoint(engine, run, 1, client, 0, layout,
                                                names if kind == "with_layout_free" else None))
                times[kind].append(time.perf_counter() - t0)
                sizes[kind] = folder_bytes(step_dir)
                if kind == "with_layout_free":
                    sizes["layout_free"] = folder_bytes(step_dir / layout_free.FOLDER)
                    t0 = time.perf_counter()
                    layout_free.load(engine, step_dir, 1, names)
                    times["load_layout_free"].append(time.perf_counter() - t0)
                else:
                    t0 = time.perf_counter()
                    engine.load_checkpoint(str(step_dir.parent), tag=step_dir.name)
                    times["load_deepspeed"].append(time.perf_counter() - t0)
                shutil.rmtree(run)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "machine": cpu_description(), "torch": torch.__version__, "n_params": count_params(cfg.model)["n_params"],
        "model": {k: getattr(cfg.model, k) for k in ("n_layer", "d_model", "n_head", "vocab_size")},
        "zero_stage": ds["zero_optimization"]["stage"], "rounds": args.rounds, "threads": args.threads,
        "median_s": med, "all_s": times, "bytes": sizes,
        "save_ratio": statistics.median(w / d for w, d in zip(times["with_layout_free"], times["deepspeed"])),
        "load_ratio": statistics.median(f / d for f, d in zip(times["load_layout_free"], times["load_deepspeed"])),
        "size_ratio": sizes["with_layout_free"] / sizes["deepspeed"],
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
