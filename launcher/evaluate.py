"""Loss, perplexity and bits per byte of a checkpoint on a .bin/.idx token dataset, or
lm-evaluation-harness tasks on it.

    python launcher/evaluate.py RUN_DIR_OR_CHECKPOINT [--data PREFIX] [--batches N] [--batch-size B] [--out FILE]
    python launcher/evaluate.py RUN_DIR_OR_CHECKPOINT --harness-tasks NAMES [--include-path DIR ...] --out FILE

Default data: the run's own valid split (every shard its manifest lists). --batches N evaluates the first
N x batch size non-overlapping seq_len windows (batch size: the run's train.global_batch_size),
the windows the trainer's validation uses with train.eval_batches=N; default: every window.
See llmtrain/eval/loss.py for how bytes are counted.

--harness-tasks a,b scores lm-eval tasks (by name: lm-eval's own, or those whose YAMLs are in
--include-path) with the project's own model, no export needed (llmtrain/eval/harness.py), and
writes lm-eval's results JSON to --out. --micro-batch-size is then the rows per forward pass.
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
    ap.add_argument("--micro-batch-size", type=int, default=8, help="windows (or harness rows) per forward pass")
    ap.add_argument("--tokenizer", help="tokenizer.json (default: the one the run was trained with)")
    ap.add_argument("--out", help="also write the result as JSON to this file (with --harness-tasks: lm-eval's "
                                  "results JSON)")
    h = ap.add_argument_group("lm-evaluation-harness (pip install -e '.[harness]')")
    h.add_argument("--harness-tasks", metavar="NAMES", help="comma-separated lm-eval task names to score instead")
    h.add_argument("--include-path", nargs="+", metavar="DIR", help="folders of task YAMLs (lm-eval's --include_path)")
    h.add_argument("--num-fewshot", type=int, default=None, help="shots (default: each task's own, else 0)")
    h.add_argument("--limit", type=float, default=None, help="examples per task (a fraction when < 1)")
    h.add_argument("--bootstrap-iters", type=int, default=100000, help="bootstrap draws for stderrs (0: none)")
    h.add_argument("--device", default=None, help="torch device (default: cuda when there is one, else cpu)")
    h.add_argument("--no-kv-cache", action="store_true",
                   help="generation re-runs each sequence in batches instead of using the KV cache")
    args = ap.parse_args(argv)
    if args.harness_tasks:
        return harness(args)
    harness_only = [f for f, v in (("--include-path", args.include_path), ("--num-fewshot", args.num_fewshot),
                                   ("--limit", args.limit), ("--device", args.device),
                                   ("--no-kv-cache", args.no_kv_cache)) if v]
    if harness_only:
        ap.error(f"{', '.join(harness_only)} apply only with --harness-tasks")
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


def harness(args) -> int:
    from llmtrain.core.errors import ConfigError

    loss_only = [f for f, v in (("--data", args.data), ("--batches", args.batches), ("--batch-size", args.batch_size))
                 if v is not None]
    if loss_only:
        raise ConfigError(f"{', '.join(loss_only)} apply to the loss evaluation, not to --harness-tasks; leave them "
                          f"out (--micro-batch-size sets the rows per forward pass)")
    if args.micro_batch_size < 1:
        raise ConfigError("--micro-batch-size must be >= 1")
    from lm_eval.utils import make_table

    from llmtrain.core.files import atomic_write_text
    from llmtrain.eval.harness import evaluate_checkpoint, results_json

    tasks = [t.strip() for t in args.harness_tasks.split(",") if t.strip()]
    limit = None if args.limit is None else (int(args.limit) if args.limit >= 1 else args.limit)
    r = evaluate_checkpoint(args.checkpoint, tasks, args.include_path, batch_size=args.micro_batch_size,
                            num_fewshot=args.num_fewshot, limit=limit, bootstrap_iters=args.bootstrap_iters,
                            device=args.device, tokenizer=args.tokenizer, kv_cache=not args.no_kv_cache)
    cfg = r["config"]
    print(f"{cfg.get('checkpoint')} (step {cfg.get('step')}): lm-evaluation-harness, max_length {cfg['max_length']}")
    print(make_table(r))
    if r.get("groups"):
        print(make_table(r, "groups"))
    if args.out:
        atomic_write_text(args.out, results_json(r))
        print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
