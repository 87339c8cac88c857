"""One file of a checkpoint's weights, from any layout (ZeRO 0-3, offload, pipeline).

    python launcher/consolidate.py RUN_DIR_OR_CHECKPOINT --out model.safetensors   # or model.pt

The checkpoint is a run folder (its latest checkpoint), its checkpoints/ folder or a step folder
(checkpoints/global_stepN). See llmtrain/checkpoint/consolidate.py for the file's contents.
"""
import argparse
import sys
from pathlib import Path

from llmtrain.checkpoint.consolidate import META_KEYS, CheckpointError, consolidated_state, save_consolidated


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    try:
        rec = consolidated_state(args.checkpoint)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    save_consolidated(rec["state_dict"], {k: rec[k] for k in META_KEYS}, out)
    n = sum(v.numel() for v in rec["state_dict"].values())
    print(f"wrote {out}: {n:,} parameters from {rec['source']} (step {rec['step']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
