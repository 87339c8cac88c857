"""Sample text from a checkpoint with the project's own GPT and the run's tokenizer.

    python launcher/generate.py RUN_DIR_OR_CHECKPOINT [--prompt TEXT] [--max-new-tokens N]
        [--temperature T] [--top-k K] [--top-p P] [--seed S] [--num-samples N] [--json]

--temperature 0 is greedy. The same seed gives the same samples.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmtrain.export.runinfo import run_cli  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="a run folder (latest checkpoint), its checkpoints/ folder or checkpoints/global_stepN")
    ap.add_argument("--prompt", default="", help="text to continue (default: start a new document)")
    ap.add_argument("--max-new-tokens", type=int, default=100)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=None)
    ap.add_argument("--top-p", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-samples", type=int, default=1)
    ap.add_argument("--tokenizer", help="tokenizer.json (default: the one the run was trained with)")
    ap.add_argument("--json", action="store_true", help="print one JSON object (prompt, samples, token ids)")
    args = ap.parse_args(argv)
    import torch

    from llmtrain.export.generate import generate

    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    out = generate(args.checkpoint, args.prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                   args.seed, args.num_samples, args.tokenizer)
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
