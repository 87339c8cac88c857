"""Sample text from a checkpoint with the project's own GPT and the run's tokenizer.

    python launcher/generate.py RUN_DIR_OR_CHECKPOINT [--prompt TEXT] [--max-new-tokens N]
        [--temperature T] [--top-k K] [--top-p P] [--seed S] [--num-samples N] [--json] [--no-kv-cache]

--temperature 0 is greedy. The same seed gives the same samples. The checkpoint may also be a
consolidated file or a folder written by launcher/import_hf.py. A KV cache is used unless
--no-kv-cache (the same tokens, slower: for comparison).
"""
import argparse
import json
import sys

from llmtrain.checkpoint.load import run_cli


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="a run folder (latest checkpoint), its checkpoints/ folder, checkpoints/"
                                       "global_stepN, a consolidated file or an imported folder")
    ap.add_argument("--prompt", default="", help="text to continue (default: start a new document)")
    ap.add_argument("--max-new-tokens", type=int, default=100)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=None)
    ap.add_argument("--top-p", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-samples", type=int, default=1)
    ap.add_argument("--tokenizer", help="tokenizer.json (default: the one the run was trained with)")
    ap.add_argument("--json", action="store_true", help="print one JSON object (prompt, samples, token ids)")
    ap.add_argument("--no-kv-cache", action="store_true", help="re-run the whole context each step (for comparison)")
    args = ap.parse_args(argv)
    import torch

    from llmtrain.eval.generate import generate

    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    out = generate(args.checkpoint, args.prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                   args.seed, args.num_samples, args.tokenizer, kv_cache=not args.no_kv_cache)
    if args.json:
        print(json.dumps(out, ensure_ascii=False))
        return 0
    for i, text in enumerate(out["samples"]):
        if args.num_samples > 1:
            print(f"----- sample {i + 1} -----")
        print(args.prompt + text)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
