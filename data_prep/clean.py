#!/usr/bin/env python
"""Clean raw web text into deduplicated JSONL.zst shards.

    python data_prep/clean.py INPUT... --output DIR [--config YAML] [--languages en,fr]
                              [--workers N] [--stage all|list|filter|buckets|clusters|write]
                              [--task-index I --num-tasks N]

INPUT: files or folders (searched recursively) of WARC/WET (.warc[.gz], .wet[.gz]), JSONL
(.jsonl[.gz|.zst], .json.gz/.zst), Parquet (.parquet) and plain text (.txt[.gz|.zst], one
document per file), folders written by datasets' save_to_disk, and hf:NAME (a Hugging Face
data set, streamed), mixed freely. --text-key/--id-key name the text and id columns.

Steps: read → HTML to text → unicode repair (ftfy + NFC) → language ID → Gopher repetition
→ Gopher quality → C4 → FineWeb rules → exact dedup → MinHash near dedup → PII masking.

One machine: ``--stage all`` (the default) runs everything, over ``--workers`` processes.
Many machines: run the stages in order (``--stage list`` prints them), each as N independent
tasks (``--task-index/--num-tasks``, or a Slurm array: SLURM_ARRAY_TASK_ID /
SLURM_ARRAY_TASK_COUNT), all writing the same ``--output`` on a shared file system; a stage
starts when every task of the one before has finished (data_prep/slurm/clean.sbatch). Or
``--executor ray``: every task of every stage asked for runs on a Ray cluster (``--ray-address``,
else a local one of ``--workers`` CPUs), ``--num-tasks`` (default: --workers) key ranges for
buckets and clusters:

    filter    extraction and filters, per input file; each kept document's dedup keys
    buckets   exact and MinHash band buckets, split by key range
    clusters  duplicate clusters; each task writes its shards' removal lists
    write     each shard without its duplicates, PII masked; the last task writes stats.json

N tasks of a stage write exactly what one would. A rerun with the same --output skips every
finished piece made with the same settings and redoes the others. Output: DIR/data/*.jsonl.zst,
DIR/stats.json, DIR/removed/<stage>.jsonl. Give DIR/data (not DIR) to the tokenizer.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from llmtrain.core.errors import ConfigError
from llmtrain_prep.cleaning.config import load_config
from llmtrain_prep.cleaning.pipeline import (TASK_STAGES, canonical, expand, read_manifest, run_buckets, run_clusters,
                                             run_every_task, run_filter, run_write)
from llmtrain_prep.executors import add_executor_args, make_executor
from llmtrain_prep.readers import DEFAULT_TEXT_KEY, InputError, add_input_args, reader_options
from llmtrain_prep.runner import Task

log = logging.getLogger("llmtrain_prep.clean")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Config keys: see configs/data/clean_default.yaml")
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="files or folders (any supported format), datasets save_to_disk folders, hf:NAME")
    p.add_argument("--output", "-o", help="output folder (shared by all tasks)")
    p.add_argument("--config",
                   help="pipeline YAML (default: the built-in FineWeb recipe = configs/data/clean_default.yaml)")
    p.add_argument("--languages", help="comma-separated language codes to keep (lid.176 codes, e.g. en,de); "
                                       "'all' keeps every language above the threshold")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="processes on this machine for the filter and write stages (default: all cores)")
    p.add_argument("--stage", choices=("all", "list") + TASK_STAGES, default="all",
                   help="'list' prints the stages in the order they run")
    p.add_argument("--task-index", type=int, default=None,
                   help="this task's index (default: $SLURM_ARRAY_TASK_ID or 0)")
    p.add_argument("--num-tasks", type=int, default=None,
                   help="number of tasks (default: $SLURM_ARRAY_TASK_COUNT or 1)")
    add_executor_args(p, local="this task's share here, over --workers processes (a Slurm array task included)",
                      ray="every task on a Ray cluster")
    p.add_argument("--quiet", action="store_true", help="only warnings")
    add_input_args(p)
    return p.parse_args(argv)


def _check_inputs(args) -> None:
    """Later stages need no INPUT; when one is given it must be the list the filter tasks used."""
    man = read_manifest(args.output)
    given = sorted(canonical(f) for f in expand(args.inputs))
    if given != sorted(man["inputs"]):
        raise InputError(f"{args.output}: the INPUT list differs from the one the filter tasks used; "
                         "give the same inputs or none")


def _run_local(args, cfg) -> dict | None:
    """This task's share of the stage asked for (all four in turn with --stage all)."""
    t = Task.from_args(args.task_index, args.num_tasks)
    ti, nt = t.index, t.count
    if args.stage == "all" and nt > 1:
        raise InputError(f"--num-tasks {nt} needs one stage at a time: --stage filter on each task, then "
                         f"{', '.join(TASK_STAGES[1:])} in turn (see --stage list)")
    if args.stage in ("all", "filter"):
        if not args.inputs:
            raise InputError("no INPUT given; name files or folders to clean")
        res = run_filter(expand(args.inputs), args.output, cfg, workers=args.workers, task_index=ti, num_tasks=nt)
        log.info(f"filter: {res['processed']} shards processed, {res['skipped']} skipped (done before)")
    elif args.inputs:
        _check_inputs(args)
    if args.stage in ("all", "buckets"):
        run_buckets(args.output, cfg, ti, nt)
    if args.stage in ("all", "clusters"):
        run_clusters(args.output, cfg, ti, nt)
    if args.stage in ("all", "write"):
        return run_write(args.output, cfg, ti, nt, workers=args.workers)
    return None


def _run_ray(args, cfg) -> dict | None:
    """Every task of the stage(s) asked for, on a Ray cluster."""
    if args.task_index is not None:
        raise InputError("--executor ray runs every task itself; leave out --task-index")
    stages = list(TASK_STAGES) if args.stage == "all" else [args.stage]
    files = None
    if "filter" in stages:
        if not args.inputs:
            raise InputError("no INPUT given; name files or folders to clean")
        files = expand(args.inputs)
    elif args.inputs:
        _check_inputs(args)
    parts = args.num_tasks or args.workers
    if parts < 1:
        raise InputError(f"--num-tasks {parts} must be >= 1")
    with make_executor("ray", args.workers, args.ray_address) as executor:
        results = run_every_task(stages, args.output, cfg, executor, files, parts)
    return results["write"].finished if "write" in results else None


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.stage == "list":
        print("\n".join(TASK_STAGES))
        return 0
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    try:
        if not args.output:
            raise InputError("--output is required: the folder the cleaned shards go to (shared by all tasks)")
        overrides = {}
        if args.languages:
            langs = args.languages.split(",") if args.languages.strip().lower() != "all" else []
            overrides["language"] = {"languages": [x.strip() for x in langs if x.strip()]}
        # the input flags override the YAML's read section where given (the text key where not the default)
        read = {k: v for k, v in reader_options(args).items() if v is not None}
        if read.get("text_key") == DEFAULT_TEXT_KEY:
            del read["text_key"]
        if read:
            overrides["read"] = read
        cfg = load_config(args.config, overrides)
        if args.executor == "ray":
            report = _run_ray(args, cfg)
        else:
            report = _run_local(args, cfg)
        if report is not None:
            st = {s["stage"]: s for s in report["stages"]}
            print(json.dumps({"documents_in": st["read"]["docs_in"], "documents_out": report["documents_out"],
                              "characters_out": report["characters_out"], "bad_input": report["bad_input"],
                              "stats": os.path.join(args.output, "stats.json")}))
    except (InputError, ConfigError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
