"""Train a GPT with DeepSpeed.

    deepspeed launcher/pretrain.py                       # tiny default model, bundled corpus
    deepspeed --num_gpus 2 launcher/pretrain.py --deepspeed_config ds_configs/zero2.json
    deepspeed launcher/pretrain.py --config configs/X.yaml --run-dir runs/x train.max_steps=50
    torchrun --nproc_per_node 2 launcher/pretrain.py ...
    accelerate launch --multi_gpu --num_processes 2 launcher/pretrain.py ...

Also runs as a single process without a launcher: python launcher/pretrain.py ...
"""
import argparse
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
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.max_steps=50")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_training(dict(config=args.config, overrides=args.overrides, deepspeed_config=args.deepspeed_config,
                             run_dir=args.run_dir), prepare_sample=prepare_sample_data)


if __name__ == "__main__":
    sys.exit(main())
