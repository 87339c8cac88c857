"""Train a GPT with DeepSpeed.

    deepspeed launcher/pretrain.py                       # tiny default model, bundled corpus
    deepspeed --num_gpus 2 launcher/pretrain.py --deepspeed_config ds_configs/zero2.json
    deepspeed launcher/pretrain.py --config configs/X.yaml --run-dir runs/x train.max_steps=50

Also runs as a single process without the launcher: python launcher/pretrain.py ...
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmtrain.train.trainer import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
