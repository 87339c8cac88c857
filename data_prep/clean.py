#!/usr/bin/env python
"""Clean raw web text into deduplicated JSONL.zst shards.

    python data_prep/clean.py INPUT... --output DIR [--config YAML] [--languages en,fr]
                              [--workers N] [--stage all|filter|dedup]
                              [--task-index I --num-tasks N]

INPUT: files or folders (searched recursively) of WARC/WET (.warc[.gz], .wet[.gz]), JSONL
(.jsonl[.gz|.zst], .json.gz/.zst), Parquet (.parquet) and plain text (.txt[.gz|.zst], one
document per file), mixed freely.

Stages: read → HTML to text → unicode repair (ftfy + NFC) → language ID → Gopher repetition
→ Gopher quality → C4 → FineWeb rules → exact dedup → MinHash near dedup → PII masking.

One machine: ``--stage all`` (the default) runs everything, over ``--workers`` processes.
Many machines: run ``--stage filter`` as N independent tasks (``--task-index/--num-tasks``,
or a SLURM array: SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT), all writing the same
``--output`` on a shared file system, then one ``--stage dedup`` job, which deduplicates
across every task's shards and writes the final data. See data_prep/slurm/clean.sbatch.

A rerun with the same --output skips every finished shard. Output: DIR/data/*.jsonl.zst,
DIR/stats.json, DIR/removed/<stage>.jsonl. Give DIR/data (not DIR) to the tokenizer.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from data_prep.cleaning.config import ConfigError, load_config  # noqa: E402
from data_prep.cleaning.pipeline import expand, read_manifest, run_dedup, run_filter  # noqa: E402
from data_prep.readers import InputError  # noqa: E402

log = logging.getLogger("data_prep.clean")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Config keys: see configs/data/clean_default.yaml")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="files or folders, any supported format")
    p.add_argument("--output", "-o", required=True, help="output folder (shared by all tasks)")
    p.add_argument("--config", help="pipeline YAML (default: built-in FineWeb recipe = configs/data/clean_default.yaml)")
    p.add_argument("--languages", help="comma-separated language codes to keep (lid.176 codes, e.g. en,de); "
                                       "'all' keeps every language above the threshold")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes on this machine (default: all cores)")
    p.add_argument("--stage", choices=("all", "filter", "dedup"), default="all")
    p.add_argument("--task-index", type=int, default=None, help="this task's index (default: $SLURM_ARRAY_TASK_ID or 0)")
    p.add_argument("--num-tasks", type=int, default=None, help="number of tasks (default: $SLURM_ARRAY_TASK_COUNT or 1)")
    p.add_argument("--quiet", action="store_true", help="only warnings")
    return p.parse_args(argv)


def _task(args):
    ti = args.task_index
    nt = args.num_tasks
    if ti is None:
        ti = int(os.environ.get("SLURM_ARRAY_TASK_ID", "0"))
        # arrays need not start at 0 (e.g. --array=1-8)
        ti -= int(os.environ.get("SLURM_ARRAY_TASK_MIN", "0"))
    if nt is None:
        nt = int(os.environ.get("SLURM_ARRAY_TASK_COUNT", "1"))
    if nt < 1 or not 0 <= ti < nt:
        raise InputError(f"--task-index {ti} is outside [0, --num-tasks {nt}); indices start at 0")
    return ti, nt


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    try:
        overrides = {}
        if args.languages:
            langs = [] if args.languages.strip().lower() == "all" else [s.strip() for s in args.languages.split(",") if s.strip()]
            overrides["language"] = {"languages": langs}
        cfg = load_config(args.config, overrides)
        ti, nt = _task(args)
        if args.stage in ("all", "filter"):
            if not args.inputs:
                raise InputError("no INPUT given; name files or folders to clean")
            if args.stage == "all" and nt > 1:
                raise InputError(f"--num-tasks {nt} needs --stage filter on each task, then one --stage dedup")
            files = expand(args.inputs)
            res = run_filter(files, args.output, cfg, workers=args.workers, task_index=ti, num_tasks=nt)
            log.info(f"filter: {res['processed']} shards processed, {res['skipped']} skipped (done before)")
        if args.stage in ("all", "dedup"):
            if args.stage == "dedup" and args.inputs:
                man = read_manifest(os.path.join(args.output, "work"))
                given = sorted(os.path.abspath(f) for f in expand(args.inputs))
                if given != sorted(man["inputs"]):
                    raise InputError(f"{args.output}: the INPUT list differs from the one the filter tasks used; "
                                     "give the same inputs or none")
            report = run_dedup(args.output, cfg, workers=args.workers)
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
