"""Generation speed with and without the KV cache (llmtrain/eval/generate.py's ``sample``).

    python benchmarks/bench_generate.py [--rounds 5] [--new-tokens 256] [--threads 2]
        [--n-layer 6 --d-model 384 --n-head 6 --seq-len 512 --vocab 8192]

One model (random weights, fp32, eval) and one prompt; greedy decoding of --new-tokens tokens
with the cache and without it, alternating in rounds (the order flips every round) so that
noise from other work on the machine hits both alike. Reports the median wall time of each and
the ratio of medians, and checks that both produced the same tokens. Prints a Markdown row for
benchmarks/BENCHMARKS.md; --json writes the numbers.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch


from benchutil import cpu_description

from llmtrain.config import ModelConfig
from llmtrain.eval.generate import sample
from llmtrain.model.gpt import GPT, count_params


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-layer", type=int, default=6)
    ap.add_argument("--d-model", type=int, default=384)
    ap.add_argument("--n-head", type=int, default=6)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--pos-encoding", default="rotary")
    ap.add_argument("--json", help="write the numbers to this file")
    args = ap.parse_args(argv)
    if args.prompt_tokens + args.new_tokens > args.seq_len:
        ap.error("--prompt-tokens + --new-tokens must fit in --seq-len (past it both paths re-read the window)")
    torch.set_num_threads(args.threads)
    cfg = ModelConfig(n_layer=args.n_layer, d_model=args.d_model, n_head=args.n_head, seq_len=args.seq_len,
                      vocab_size=args.vocab, pos_encoding=args.pos_encoding)
    model = GPT(cfg, seed=0).eval()
    context = torch.randint(0, args.vocab, (args.prompt_tokens,), generator=torch.Generator().manual_seed(0)).tolist()
    times = {"cache": [], "no_cache": []}
    tokens = {}
    sample(model, context, 8, temperature=0)  # warm-up
    for r in range(args.rounds):
        order = ["cache", "no_cache"] if r % 2 == 0 else ["no_cache", "cache"]
        for name in order:
            t0 = time.perf_counter()
            out = sample(model, context, args.new_tokens, temperature=0, kv_cache=name == "cache")
            times[name].append(time.perf_counter() - t0)
            tokens[name] = out
        print(f"round {r + 1}/{args.rounds}: cache {times['cache'][-1]:.2f} s, no cache {times['no_cache'][-1]:.2f} s",
              file=sys.stderr)
    med = {k: statistics.median(v) for k, v in times.items()}
    same = tokens["cache"] == tokens["no_cache"]
    res = {"machine": cpu_description(), "torch": torch.__version__, "threads": args.threads,
           "model": f"{args.n_layer}L d{args.d_model} h{args.n_head} T{args.seq_len} V{args.vocab} {args.pos_encoding}",
           "n_params": count_params(cfg)["n_params"], "prompt_tokens": args.prompt_tokens,
           "new_tokens": args.new_tokens, "rounds": args.rounds, "times": times, "median_s": med,
           "tokens_per_s": {k: args.new_tokens / v for k, v in med.items()},
           "speedup": med["no_cache"] / med["cache"], "same_tokens": same}
    print("| model | new tokens | no cache (median s) | cache (median s) | speed-up | same greedy tokens |")
    print("|---|---|---|---|---|---|")
    print(f"| {res['model']} ({res['n_params'] / 1e6:.1f}M) | {args.new_tokens} | {med['no_cache']:.2f} | "
          f"{med['cache']:.2f} | {res['speedup']:.2f}x | {'yes' if same else 'NO'} |")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
