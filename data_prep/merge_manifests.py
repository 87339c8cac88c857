"""Merge the manifests of N tokenisation tasks into one dataset manifest (no data is copied).

    python data_prep/merge_manifests.py PREFIX [--num-tasks N]
    python data_prep/tokenize_corpus.py --output-prefix PREFIX --merge      # the same

After ``tokenize_corpus.py --task-index I --num-tasks N --output-prefix PREFIX`` has finished for
every I, this reads PREFIX.task-00000_manifest.json ... PREFIX.task-{N-1}_manifest.json, checks
that they are all there and agree (same tokenizer, dtype, split options and input list), and
writes PREFIX_manifest.json whose ``splits.<split>.shards`` lists every task's shards in task
order, paths relative to the merged manifest's folder, with documents and tokens summed. The
trainer then reads ``data.prefix=PREFIX`` like any single-run dataset. Rerunning the merge
rewrites the same manifest (atomically).

    python data_prep/merge_manifests.py --blend PREFIX_A PREFIX_B [--split train]

prints a ``data.prefix`` blend weighting each dataset by its tokens in that split (Megatron's
"w1 P1 w2 P2" notation), to edit by hand for up- or down-sampling.
"""
from __future__ import annotations

import argparse
import sys

from llmtrain_prep.readers import InputError
from llmtrain_prep.tokens.merge import blend_spec, find_task_manifests, merge_manifests

__all__ = ["blend_spec", "find_task_manifests", "main", "merge_manifests"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Merge tokenize_corpus task manifests into PREFIX_manifest.json, "
                                             "or print a token-weighted blend.")
    ap.add_argument("prefix", nargs="+", help="the --output-prefix of the tasks (with --blend: datasets to blend)")
    ap.add_argument("--num-tasks", type=int, default=None, help="expected number of tasks (default: as the tasks say)")
    ap.add_argument("--blend", action="store_true", help="print a data.prefix blend weighted by tokens")
    ap.add_argument("--split", default="train", help="the split whose tokens weight --blend (default train)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    try:
        if args.blend:
            print(blend_spec(args.prefix, args.split))
        else:
            if len(args.prefix) != 1:
                ap.error("give one PREFIX to merge (several only with --blend)")
            merge_manifests(args.prefix[0], args.num_tasks, args.quiet)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
