"""Loss, perplexity and bits per byte of a checkpoint on a .bin/.idx token dataset.

    python launcher/evaluate.py RUN_DIR_OR_CHECKPOINT [--data PREFIX] [--batches N] [--batch-size B] [--out FILE]

Default data: the run's own valid split (every shard its manifest lists). --batches N evaluates the first
N x batch size non-overlapping seq_len windows (batch size: the run's train.global_batch_size),
the windows the trainer's validation uses with train.eval_batches=N; default: every window.
See llmtrain/eval/loss.py for how bytes are counted.
"""
import argparse
import sys

from llmtrain.checkpoint.load import run_cli


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint",
                    help="a run folder (latest checkpoint), its checkpoints/ folder or checkpoints/global_stepN")
    ap.add_argument("--data", help="PREFIX of PREFIX.bin/.idx, or of a tokenised dataset (the valid split its "
                                   "manifest lists: one file, shards, or merged tasks' shards)")
    ap.add_argument("--batches", type=int, default=None, help="evaluate the first N batches of windows (default: all)")
    ap.add_argument("--batch-size", type=int, default=None, help="windows per batch (default: train.global_batch_size)")
    ap.add_argument("--micro-batch-size", type=int, default=8, help="windows per forward pass")
    ap.add_argument("--tokenizer", help="tokenizer.json (default: the one the run was trained with)")
    ap.add_argument("--out", help="also write the result as JSON to this file")
    args = ap.parse_args(argv)
    import json

    from llmtrain.core.files import atomic_write_json
    from llmtrain.eval.loss import evaluate

    r = evaluate(args.checkpoint, args.data, args.batches, args.batch_size, args.micro_batch_size, args.tokenizer)
    print(f"{r['data']}: {r['windows']} windows x {r['seq_len']} = {r['tokens']:,} tokens, {r['bytes']:,} bytes "
          f"(step {r['step']})")
    print(f"loss {r['loss']:.6f} nats/token   perplexity {r['perplexity']:.4f}   bits/byte {r['bits_per_byte']:.6f}"
          + (f"   (response tokens only: {r['loss_tokens']:,} counted)" if r.get("loss_mask") else ""))
    print(json.dumps(r))
    if args.out:
        atomic_write_json(args.out, r)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
