"""Train a GPT with DeepSpeed.

    deepspeed launcher/pretrain.py                       # tiny default model, bundled corpus
    deepspeed --num_gpus 2 launcher/pretrain.py --deepspeed_config ds_configs/zero2.json
    deepspeed launcher/pretrain.py --config configs/X.yaml --run-dir runs/x train.max_steps=50
    torchrun --nproc_per_node 2 launcher/pretrain.py ...
    accelerate launch --multi_gpu --num_processes 2 launcher/pretrain.py ...

Also runs as a single process without a launcher: python launcher/pretrain.py ...
"""
import os
import sys
from pathlib import Path

# configs/, ds_configs/ and the bundled corpus are found beside this script, wherever the
# package itself is installed
os.environ.setdefault("LLMTRAIN_HOME", str(Path(__file__).resolve().parents[1]))

from llmtrain.train.trainer import main  # noqa: E402
from llmtrain_prep.sample import prepare_sample_data  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prepare_sample=prepare_sample_data))
