"""The merge step: the manifests of N tokenising tasks → one dataset manifest, no data copied.

After task I of N has written PREFIX.task-0000I_manifest.json for every I, `merge_manifests`
checks that they are all there and agree (same tokenizer, dtype, split options and input list),
and writes PREFIX_manifest.json whose ``splits.<split>.shards`` lists every task's shards in task
order, paths relative to the merged manifest's folder, documents and tokens summed. The trainer
reads ``data.prefix=PREFIX`` like any single-run dataset. Merging again rewrites the same manifest.
`blend_spec` weights several datasets by their tokens for ``data.prefix``.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from llmtrain.data.manifest import Manifest, ManifestError, Shard, Split, manifest_file
from llmtrain_prep.executors import LocalExecutor
from llmtrain_prep.readers import InputError
from llmtrain_prep.runner import Stage, Task, Unit, run_stage

# What every task must agree on to be one dataset.
_SAME = ("dtype", "vocab_size", "eod_token", "eod_token_id", "tokenizer_sha256")
_SAME_OPTIONS = ("valid_fraction", "seed", "text_key", "id_key", "hf_config", "hf_split")


def _load(path: Path) -> Manifest:
    try:
        return Manifest.read(path)
    except ManifestError as e:
        raise InputError(f"{e}; rerun that task with --overwrite") from None


def find_task_manifests(prefix: str) -> dict[int, Path]:
    """{task index: PREFIX.task-NNNNN_manifest.json} of the finished tasks of ``prefix``."""
    folder, name = os.path.split(os.path.abspath(prefix))
    pat = re.compile(re.escape(name) + r"\.task-(\d{5,})_manifest\.json$")
    found = {}
    if os.path.isdir(folder):
        for f in os.listdir(folder):
            m = pat.fullmatch(f)
            if m:
                found[int(m.group(1))] = Path(folder) / f
    return found


def _task_manifests(prefix: str, num_tasks: int | None) -> tuple[dict[int, Manifest], int]:
    """The manifests of tasks 0 .. count-1, all present and agreeing; InputError otherwise."""
    found = find_task_manifests(prefix)
    if not found:
        raise InputError(f"{prefix}.task-*_manifest.json: no finished task; run python data_prep/tokenize_corpus.py "
                         f"--task-index I --num-tasks N --output-prefix {prefix} ... for every task first")
    manifests = {i: _load(p) for i, p in sorted(found.items())}
    counts = {(m.extra.get("task") or {}).get("count") for m in manifests.values()}
    if len(counts) != 1 or None in counts:
        raise InputError(f"{prefix}.task-*_manifest.json: the tasks were run with different --num-tasks "
                         f"({', '.join(sorted(str(c) for c in counts))}); remove the stale ones and merge again")
    count = counts.pop()
    if num_tasks is not None and num_tasks != count:
        raise InputError(f"--num-tasks {num_tasks} but the tasks of {prefix} were run with --num-tasks {count}")
    missing = [i for i in range(count) if i not in manifests]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise InputError(f"{prefix}: {len(missing)} of {count} tasks not finished (task {shown}: no "
                         f"{os.path.basename(prefix)}.task-{missing[0]:05d}_manifest.json); run them "
                         f"(finished tasks are skipped) and merge again")
    manifests = {i: m for i, m in manifests.items() if i < count}

    def facts(m: Manifest) -> dict:
        return {**{k: getattr(m, k) for k in _SAME},
                **{f"options.{k}": m.options.get(k) for k in _SAME_OPTIONS},
                "task.inputs_sha256": m.extra["task"].get("inputs_sha256"),
                "splits": sorted(m.splits)}

    ref = facts(manifests[0])
    for m in manifests.values():
        got = facts(m)
        for k in ref:
            if got[k] != ref[k]:
                what = {"task.inputs_sha256": "input list", "tokenizer_sha256": "tokenizer"}.get(k, k)
                raise InputError(f"{m.path}: {what} differs from task 0's ({manifests[0].path}); rerun that task with "
                                 f"the same --input, --tokenizer and options (and --overwrite)")
    return manifests, count


class MergeStage(Stage):
    """The merge as a stage of the runner: one unit, never skipped (it is cheap, and a task
    redone since must be listed anew), refused while a task is missing or they disagree."""

    name, unit_name, verb = "merge", "manifest", "write"

    def __init__(self, prefix: str, num_tasks: int | None = None, quiet: bool = False):
        self.prefix, self.num_tasks, self.quiet = str(prefix), num_tasks, quiet

    def units(self) -> list[Unit]:
        return [Unit(str(manifest_file(self.prefix)))]

    def is_done(self, unit: Unit) -> bool:
        return False

    def check_ready(self, todo) -> None:
        self.manifests, self.count = _task_manifests(self.prefix, self.num_tasks)

    def worker(self):
        return self

    def run(self, unit: Unit) -> dict:
        return write_merged(self.prefix, self.manifests, self.count, self.quiet)

    def finish(self, result) -> dict:
        return result.results[0]


def merge_manifests(prefix: str, num_tasks: int | None = None, quiet: bool = False) -> dict:
    """Write PREFIX_manifest.json from the finished tasks' manifests; returns it (a dict).
    InputError (one line) when a task is missing, a listed shard is gone, or the tasks disagree."""
    return run_stage(MergeStage(prefix, num_tasks, quiet), Task(), LocalExecutor()).finished


def write_merged(prefix: str, manifests: dict[int, Manifest], count: int, quiet: bool) -> dict:
    """The merged manifest of the agreeing task ``manifests``, written; returns it (a dict)."""
    first = manifests[0]
    out = manifest_file(prefix)
    out_dir = os.path.abspath(out.parent)
    splits = {s: Split() for s in first.splits}
    inputs, tasks = [], []
    for i, m in manifests.items():
        for s in splits:
            for sh, path in zip(m.splits[s].shards, m.shard_prefixes(s)):
                if not sh.documents:
                    continue  # an empty task's empty file holds nothing to list
                if not (os.path.isfile(f"{path}.idx") and os.path.isfile(f"{path}.bin")):
                    raise InputError(f"{path}.idx: listed in {m.path} but missing; rerun task {i} with --overwrite")
                splits[s].shards.append(Shard(os.path.relpath(os.path.abspath(path), out_dir), sh.documents,
                                              sh.tokens))
        inputs.extend(m.inputs)
        tasks.append({"index": i, "manifest": os.path.relpath(os.path.abspath(m.path), out_dir),
                      "documents": m.documents, "tokens": m.tokens, "elapsed_s": m.extra.get("elapsed_s")})
    if sum(v.documents for v in splits.values()) == 0:
        raise InputError(f"{prefix}: the {count} tasks found no documents at all; check the --input of the tasks")
    merged = Manifest(
        prefix=prefix, splits=splits, dtype=first.dtype, vocab_size=first.vocab_size, eod_token=first.eod_token,
        eod_token_id=first.eod_token_id, tokenizer_path=first.tokenizer_path, tokenizer_sha256=first.tokenizer_sha256,
        inputs=inputs, options={k: v for k, v in first.options.items() if k != "workers"},
        format_version=first.format_version,
        extra={"merged_from": {"num_tasks": count, "inputs_sha256": first.extra["task"].get("inputs_sha256"),
                               "tasks": tasks},
               "command": [sys.executable] + sys.argv},
    )
    merged.write(prefix)
    if not quiet:
        parts = ", ".join(f"{s} {v.documents:,} docs {v.tokens:,} tokens in {len(v.shards)} shard(s)"
                          for s, v in splits.items())
        print(f"merge_manifests: {count} tasks -> {out}: {parts}", flush=True)
    return merged.to_dict()


def blend_spec(prefixes: list[str], split: str = "train") -> str:
    """'w1 P1 w2 P2 ...' with each weight the dataset's share of the tokens in ``split``."""
    tokens = []
    for p in prefixes:
        path = manifest_file(p)
        if not path.is_file():
            raise InputError(f"{path}: manifest not found; tokenise {p} first")
        m = _load(path)
        if split not in m.splits:
            raise InputError(f"{path}: has no '{split}' split")
        tokens.append(m.splits[split].tokens)
    total = sum(tokens)
    if total == 0:
        raise InputError(f"no {split} tokens in {', '.join(prefixes)}")
    return " ".join(f"{t / total:.6g} {p}" for t, p in zip(tokens, prefixes))
