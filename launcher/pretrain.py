"""Train a GPT with DeepSpeed.

    deepspeed launcher/pretrain.py                       # tiny default model, bundled corpus
    deepspeed --num_gpus 2 launcher/pretrain.py --deepspeed_config ds_configs/zero2.json
    deepspeed launcher/pretrain.py --config configs/X.yaml --run-dir runs/x train.max_steps=50
    torchrun --nproc_per_node 2 launcher/pretrain.py ...
    accelerate launch --multi_gpu --num_processes 2 launcher/pretrain.py ...

Also runs as a single process without a launcher: python launcher/pretrain.py ...

Memory before launch (nothing is trained or written): the same config and overrides plus

    python launcher/pretrain.py --dry-run [--json] [--world-size N] [--gpu-memory 80GiB] ...

prints per rank the parameters, gradients, optimizer states and activations per micro-batch
(with and without activation checkpointing), whether they fit the GPU, and the largest
micro-batch that does (llmtrain/scaling/memory.py). Under a launcher the world size is the
launcher's; alone, --world-size (default 1).
"""
import argparse
import json
import os
import sys
from pathlib import Path

from llmtrain.core.signals import catch_stop_signals

# first thing: a scheduler's SIGTERM during the slow imports and set-up below is kept, not fatal
catch_stop_signals()
# configs/, ds_configs/ and the bundled corpus are found beside this script, wherever the
# package itself is installed
os.environ.setdefault("LLMTRAIN_HOME", str(Path(__file__).resolve().parents[1]))

from llmtrain.train.setup import run_training  # noqa: E402
from llmtrain_prep.sample import prepare_sample_data  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="pretrain.py",
        description="Train a GPT with DeepSpeed. With no arguments: the tiny default model on the bundled corpus.",
    )
    p.add_argument("--config", default=None, help="YAML experiment config (default: configs/tiny.yaml)")
    p.add_argument("--run-dir", default=None,
                   help="run folder (default: a new folder under ./runs/); an existing one is resumed")
    p.add_argument("--deepspeed_config", default=None, help="DeepSpeed JSON (default: ds_configs/zero0.json)")
    p.add_argument("--deepspeed", action="store_true", help=argparse.SUPPRESS)  # set by some launchers
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--dry-run", action="store_true",
                   help="print the memory plan per rank (parameters, gradients, optimizer, activations) and exit")
    p.add_argument("--json", action="store_true", help="with --dry-run: the plan as JSON")
    p.add_argument("--world-size", type=int, default=None,
                   help="with --dry-run alone: the processes to plan for (default 1; under a launcher, its count)")
    p.add_argument("--gpu-memory", default=None,
                   help="with --dry-run: memory per GPU, e.g. 80GiB (default: the visible device's)")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.max_steps=50")
    return p.parse_intermixed_args(argv)  # options may come after the overrides


def dry_run(args) -> int:
    """The memory plan of the run these arguments describe; exit 0, or 2 with one line for bad input."""
    from llmtrain.core.errors import ConfigError
    from llmtrain.data.dataset import padded_vocab
    from llmtrain.scaling.memory import parse_bytes, plan_memory
    from llmtrain.train.setup import report_error, validate

    rank, launched = int(os.environ.get("RANK", 0)), os.environ.get("WORLD_SIZE")
    try:
        if launched and args.world_size is not None and args.world_size != int(launched):
            raise ConfigError(f"--world-size {args.world_size} contradicts the launcher's {launched} processes; "
                              f"drop --world-size under a launcher")
        world = int(launched) if launched else (1 if args.world_size is None else args.world_size)
        if world < 1:
            raise ConfigError(f"--world-size must be >= 1 (got {world})")
        budget = parse_bytes(args.gpu_memory) if args.gpu_memory else None
        spec = validate(config=args.config, overrides=args.overrides, deepspeed_config=args.deepspeed_config,
                        world=world, prepare_sample=prepare_sample_data)
        cfg = spec.cfg
        if cfg.model.vocab_size is None:  # as the trainer pads the tokenizer's (the bundled corpus': sample size)
            cfg.model.vocab_size = padded_vocab(spec.data.vocab_size if spec.data else cfg.data.sample_vocab_size)
        plan = plan_memory(cfg, spec.ds_config, world, budget, local_ranks=int(os.environ.get("LOCAL_WORLD_SIZE",
                                                                                             world)))
    except (ConfigError, ValueError, OSError) as e:
        return report_error(e, rank)
    if rank == 0:
        print(json.dumps(plan.to_json(), indent=1) if args.json else plan.format(), flush=True)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        return dry_run(args)
    if args.json or args.world_size is not None or args.gpu_memory:
        print("error: --json, --world-size and --gpu-memory go with --dry-run", file=sys.stderr)
        return 2
    return run_training(dict(config=args.config, overrides=args.overrides, deepspeed_config=args.deepspeed_config,
                             run_dir=args.run_dir), prepare_sample=prepare_sample_data)


if __name__ == "__main__":
    sys.exit(main())
