"""Encode documents into Megatron .bin/.idx token shards with a train/valid split: the command
line of llmtrain_prep.tokens (its names are importable from here too).

    python data_prep/tokenize_corpus.py --input data/sample --tokenizer tokenizer.json \\
        --output-prefix data/tok/sample [--valid-fraction 0.01] [--workers N] [--seed 0] \\
        [--eod-token '<|endoftext|>'] [--text-key text] [--id-key id] [--hf-config C] [--hf-split S] \\
        [--max-shard-tokens 1000000000] [--task-index I --num-tasks N] [--overwrite] \\
        [--format prompt-response --prompt-key prompt --response-key response] [--executor ray]
    python data_prep/tokenize_corpus.py --output-prefix data/tok/sample --merge   # after N tasks

Inputs: JSONL(.gz/.zst), Parquet, datasets ``save_to_disk`` folders and ``hf:NAME`` (streamed
with datasets.load_dataset; see data_prep/readers/); --text-key/--id-key name the columns.
The tokenizer is a tokenizer.json or a transformers folder holding one (llmtrain.tokenizer).

writes PREFIX_train.bin/.idx, PREFIX_valid.bin/.idx (when --valid-fraction > 0) and, last,
PREFIX_manifest.json (llmtrain.data.manifest.Manifest). Every document becomes one sequence
with the end-of-document token (--eod-token, default <|endoftext|>; it must be in the
tokenizer's vocabulary) appended. A document goes to the valid split when a keyed hash of its
id and text falls below --valid-fraction: the split does not depend on the order, the number
of workers or tasks, or chance, and --seed picks a different (equally deterministic) split.

Prompt/response data (``--format prompt-response``): every record has a ``prompt`` and a
``response`` field (--prompt-key/--response-key; JSONL, Parquet or datasets inputs) and becomes
one sequence, prompt tokens + response tokens + end of document. Beside each token shard P.bin/.idx
a loss mask P_mask.bin/.idx (same layout, one uint8 per token) holds 1 on the response tokens and
the end of document, 0 on the prompt; the manifest records ``"loss_mask"``, and the trainer then
counts only the response tokens in the loss. The split hashes the id and the prompt.

Shards: a split of more than --max-shard-tokens tokens is written as PREFIX_train_00000.bin/.idx,
PREFIX_train_00001..., each of at most that many tokens (a single longer document gets a shard
of its own); a split that fits is one PREFIX_train.bin/.idx. Either way the manifest lists every
shard under ``splits.<split>.shards`` as ``{"prefix", "documents", "tokens"}``, ``prefix``
relative to the manifest's folder.

Many machines: ``--task-index I --num-tasks N`` (default: SLURM_ARRAY_TASK_ID minus
SLURM_ARRAY_TASK_MIN, SLURM_ARRAY_TASK_COUNT) takes every N-th input of the sorted list and
writes PREFIX.task-0000I_{train,valid}[_SSSSS].bin/.idx and PREFIX.task-0000I_manifest.json.
Rerunning a task whose manifest exists (same inputs, tokenizer and options) skips it; a task
killed half-way has no manifest and is done again. When all N have finished, ``--merge`` (or
python data_prep/merge_manifests.py PREFIX) writes PREFIX_manifest.json listing every task's
shards; no data is copied. On SLURM:

    sbatch --array=0-31 --cpus-per-task=32 --wrap "python data_prep/tokenize_corpus.py --input /shared/clean \
        --tokenizer tok.json --output-prefix /shared/tok/web --workers 31"
    python data_prep/tokenize_corpus.py --output-prefix /shared/tok/web --merge   # once all have finished

Ray (``--executor ray``, the ``ray`` extra): every one of the --num-tasks tasks runs on a Ray
cluster (--ray-address, else a local one of --workers CPUs), then the merge; the files are those
the same tasks write as a Slurm array, byte for byte.

This is the command line; the work is done by llmtrain_prep.tokens (plan, encode, shards, the
manifest, the merge), as stages of the task runner. A progress line with docs/s, tokens/s and an
ETA is printed every --progress-every seconds. Any error leaves the previous output as it was:
the shards are written under temporary names and renamed only when all documents are encoded,
then the manifest is written.
"""
from __future__ import annotations

import argparse
import os
import sys

from llmtrain.data.manifest import ManifestError
from llmtrain.tokenizer import EOD_TOKEN
from llmtrain_prep.executors import add_executor_args, make_executor
from llmtrain_prep.readers import InputError, add_input_args, reader_options
from llmtrain.core.tasks import partition
from llmtrain_prep.tokens import (DEFAULT_MAX_SHARD_TOKENS, DEFAULT_VALID_FRACTION, FORMATS, Job, Options,
                                  build_manifest, is_valid_doc, load_tokenizer, merge_manifests,
                                  plan, split_key, task_prefix, tokenize_corpus, tokenize_every_task)

__all__ = ["EOD_TOKEN", "Job", "Options", "build_manifest", "is_valid_doc", "load_tokenizer", "main", "partition",
           "plan", "split_key", "task_prefix", "tokenize_corpus"]


# ---- command line --------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Encode documents into Megatron .bin/.idx shards with a "
                                             "deterministic train/valid split and a manifest.")
    ap.add_argument("--input", nargs="+", help="files or folders of .jsonl(.gz/.zst)/.parquet, datasets "
                                               "save_to_disk folders, or hf:NAME (streamed with datasets)")
    ap.add_argument("--tokenizer", help="tokenizer.json (data_prep/train_tokenizer.py) or a transformers folder")
    ap.add_argument("--output-prefix", required=True,
                    help="writes PREFIX_train.*, PREFIX_valid.*, PREFIX_manifest.json")
    ap.add_argument("--eod-token", default=EOD_TOKEN,
                    help=f"the end-of-document token appended to every document (default {EOD_TOKEN}); "
                         f"must be in the tokenizer's vocabulary, e.g. '<|end_of_text|>' for Llama 3, '</s>'")
    ap.add_argument("--valid-fraction", type=float, default=DEFAULT_VALID_FRACTION,
                    help=f"share of documents in the valid split (default {DEFAULT_VALID_FRACTION}; 0: none)")
    ap.add_argument("--workers", type=int, default=None,
                    help="encoding processes (default: 1 = in-process threads on <= 4 cores, else cores-1); with "
                         "--executor ray and no --ray-address: the CPUs of the local Ray cluster (default: all)")
    ap.add_argument("--seed", type=int, default=0, help="salt of the split hash (default 0)")
    ap.add_argument("--max-shard-tokens", type=float, default=DEFAULT_MAX_SHARD_TOKENS,
                    help=f"most tokens per .bin shard; a bigger split is written as PREFIX_train_00000, ... "
                         f"(default {DEFAULT_MAX_SHARD_TOKENS:.0e})")
    ap.add_argument("--task-index", type=int, default=None,
                    help="this task's index (default: $SLURM_ARRAY_TASK_ID - $SLURM_ARRAY_TASK_MIN, or 0)")
    ap.add_argument("--num-tasks", type=int, default=None,
                    help="tasks sharing the inputs (default: $SLURM_ARRAY_TASK_COUNT, or 1)")
    ap.add_argument("--overwrite", action="store_true", help="redo a task even when its manifest exists")
    ap.add_argument("--merge", action="store_true",
                    help="after all --num-tasks tasks: write PREFIX_manifest.json listing every task's shards")
    ap.add_argument("--progress-every", type=float, default=10.0, help="seconds between progress lines")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    ap.add_argument("--format", choices=FORMATS, default="text",
                    help="text: one document per record (--text-key); prompt-response: records with a prompt and "
                         "a response, written with a loss mask (only the response counts in the loss)")
    ap.add_argument("--prompt-key", default="prompt", help="the prompt field with --format prompt-response")
    ap.add_argument("--response-key", default="response", help="the response field with --format prompt-response")
    add_executor_args(ap, local="this task here (a Slurm array task included)",
                      ray="every one of --num-tasks tasks on a Ray cluster, then the merge")
    add_input_args(ap)
    args = ap.parse_args(argv)
    try:
        if args.merge:
            merge_manifests(args.output_prefix, num_tasks=args.num_tasks, quiet=args.quiet)
            return 0
        if not args.input or not args.tokenizer:
            ap.error("--input and --tokenizer are required (except with --merge)")
        opts = Options(valid_fraction=args.valid_fraction, seed=args.seed, max_shard_tokens=args.max_shard_tokens,
                       eod_token=args.eod_token, reader=reader_options(args), workers=args.workers,
                       format=args.format, prompt_key=args.prompt_key, response_key=args.response_key)
        opts.check()
        opts.max_shard_tokens = int(opts.max_shard_tokens)
        command = [sys.executable] + sys.argv
        if args.executor == "ray":
            if args.task_index is not None:
                raise InputError("--executor ray runs every task itself; leave out --task-index")
            cpus = args.workers or os.cpu_count() or 1
            opts.workers = 1  # each task encodes in its Ray worker (on tokenizers' threads); Ray spreads the tasks
            with make_executor("ray", cpus, args.ray_address) as executor:
                tokenize_every_task(args.input, args.tokenizer, args.output_prefix, executor, args.num_tasks or 1,
                                    options=opts, overwrite=args.overwrite, quiet=args.quiet, command=command)
        else:
            tokenize_corpus(args.input, args.tokenizer, args.output_prefix, options=opts,
                            progress_every=args.progress_every, quiet=args.quiet, command=command,
                            task_index=args.task_index, num_tasks=args.num_tasks, overwrite=args.overwrite)
    except (InputError, ManifestError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; the previous output (if any) is unchanged", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
