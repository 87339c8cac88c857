"""Tokenising as a stage of the runner: unit I of N is tokenising task I (files dealt out whole,
every N-th; a datasets input shared, each task its own part), writing PREFIX.task-0000I_* (or,
with N = 1, PREFIX_*). A task already finished with the same inputs, tokenizer and options is
skipped (its manifest returned) unless ``overwrite``; a task killed half-way has no manifest and
is done again. One unit runs: read + encode (encode.py) → shards, with the loss mask for
prompt/response records (shards.py) → publish → the manifest, last (write.py).
"""
from __future__ import annotations

import time

from llmtrain.data.manifest import Manifest
from llmtrain_prep.executors import LocalExecutor
from llmtrain_prep.runner import Stage, Task, Unit, run_all, run_stage

from .encode import default_workers, encoded_batches
from .merge import MergeStage
from .options import Options
from .plan import Job, finished_task, plan, task_prefix
from .progress import Progress
from .write import build_manifest, publish, write_splits


class TokenizeStage(Stage):
    name, unit_name, verb = "tokenize", "task", "tokenise"

    def __init__(self, inputs, tokenizer_path: str, output_prefix: str, options: Options, num_tasks: int = 1, *,
                 overwrite: bool = False, progress_every: float = 10.0, quiet: bool = False,
                 command: list[str] | None = None):
        self.inputs, self.tokenizer_path, self.output_prefix = inputs, str(tokenizer_path), str(output_prefix)
        self.options, self.num_tasks, self.overwrite = options, num_tasks, overwrite
        self.progress_every, self.quiet, self.command = progress_every, quiet, command
        self.jobs: dict[int, Job] = {}
        self.skipped: dict[int, Manifest] = {}

    def job(self, index: int) -> Job:
        """Task ``index``'s checked plan (made once)."""
        if index not in self.jobs:
            self.jobs[index] = plan(self.inputs, self.tokenizer_path, self.output_prefix, self.options,
                                    Task(index, self.num_tasks))
        return self.jobs[index]

    def units(self) -> list[Unit]:
        return [Unit(task_prefix(self.output_prefix, t) if self.num_tasks > 1 else self.output_prefix, (t,))
                for t in range(self.num_tasks)]

    def is_done(self, unit: Unit) -> bool:
        job = self.job(unit.args[0])  # checks the inputs, before anything is written
        if not job.tasked or self.overwrite:
            return False
        done = finished_task(job)
        if done is not None:
            self.skipped[job.task_index] = done
        return done is not None

    def worker(self):
        return self

    def run(self, unit: Unit) -> dict:
        return tokenize_task(self.job(unit.args[0]), self.tokenizer_path, progress_every=self.progress_every,
                             quiet=self.quiet, command=self.command)

    def finish(self, result) -> list[dict]:
        """Every task's manifest (as dicts), the skipped ones' included, in task order."""
        for i, done in sorted(self.skipped.items()):
            if not self.quiet:
                print(f"tokenize_corpus: task {i}/{self.num_tasks} already finished ({done.path}: "
                      f"{done.documents:,} docs, {done.tokens:,} tokens); skipped", flush=True)
        made = [*result.results, *(m.to_dict() for m in self.skipped.values())]
        return sorted(made, key=lambda m: (m.get("task") or {}).get("index", 0))


def tokenize_task(job: Job, tokenizer_path: str, progress_every: float = 10.0, quiet: bool = False,
                  command: list[str] | None = None) -> dict:
    """One task: every document of the job's inputs into its shards, then its manifest. Any
    error leaves the previous output as it was: the shards are staged under temporary names and
    renamed only when every document is encoded, then the manifest is written."""
    options = job.options
    n_workers = options.workers or default_workers()
    progress = Progress(progress_every, sum(f["bytes"] for f in job.per_input), quiet)
    if not quiet:
        who = (f"task {job.task_index}/{job.num_tasks}: {len(job.inputs)} of {len(job.all_inputs)}" if job.tasked
               else f"{len(job.inputs)}")
        print(f"tokenize_corpus: {who} input(s), {progress.total_bytes / 1e6:.1f} MB, tokenizer {tokenizer_path} "
              f"(vocab {job.vocab_size}, {job.dtype}, end of document {options.eod_token!r} = {job.eod}), "
              f"{n_workers} worker(s) -> {job.prefix}_*", flush=True)
    # Wall seconds: encode_s in the encoder thread (0 with --workers > 1), the rest in this
    # thread (wait_s: waiting for the next batch from the stage before).
    timing = {"encode_s": 0.0, "wait_s": 0.0, "ids_to_array_s": 0.0, "write_s": 0.0}
    t0 = time.time()
    stream = encoded_batches(job, n_workers, progress, timing)
    try:
        writers = write_splits(job, stream, progress, timing)
    finally:
        stream.close()
    published = publish(job, writers, quiet)
    elapsed = time.time() - t0
    progress.maybe_print(force=True)
    manifest = build_manifest(job, published, n_workers, elapsed, timing, command)
    manifest.write(job.prefix)
    if not quiet:
        _report(job, manifest, elapsed)
    return manifest.to_dict()


def _report(job: Job, m: Manifest, elapsed: float) -> None:
    nsh = ", ".join(f"{s} {len(v.shards)} shard(s)" for s, v in m.splits.items())
    parts = ", ".join(f"{s} {v.documents:,} docs {v.tokens:,} tokens" for s, v in m.splits.items())
    print(f"tokenize_corpus: done in {elapsed:.1f} s ({m.tokens / max(elapsed, 1e-9):,.0f} tokens/s): {parts} "
          f"({nsh}) -> {m.path}", flush=True)
    if job.tasked:
        print(f"tokenize_corpus: when all {job.num_tasks} tasks have finished: python data_prep/tokenize_corpus.py "
              f"--output-prefix {job.base_prefix} --merge", flush=True)


def _options(options: Options | None, option_values: dict) -> Options:
    reader = {k: option_values.pop(k) for k in ("text_key", "id_key", "hf_config", "hf_split") if k in option_values}
    if options is None:
        options = Options(**option_values)
    elif option_values:
        raise TypeError(f"tokenize_corpus: pass options= or keywords, not both ({', '.join(option_values)})")
    if reader:
        options.reader = {**options.reader, **{k: v for k, v in reader.items() if v is not None}}
    options.check()
    return options


def tokenize_corpus(inputs, tokenizer_path: str, output_prefix: str, *, progress_every: float = 10.0,
                    quiet: bool = False, command: list[str] | None = None, task_index: int | None = 0,
                    num_tasks: int | None = 1, overwrite: bool = False, options: Options | None = None,
                    **option_values) -> dict:
    """Tokenise ``inputs`` (files, folders, save_to_disk folders, hf:NAMEs) with the tokenizer at
    ``tokenizer_path`` (tokenizer.json or a transformers folder) into
    OUTPUT_PREFIX_{train,valid}[_NNNNN].bin/.idx and OUTPUT_PREFIX_manifest.json.

    Options: an ``Options``, or its fields as keywords (valid_fraction, seed, max_shard_tokens,
    eod_token, workers, format, prompt_key, response_key; text_key, id_key, hf_config, hf_split go
    to the reader). Task ``task_index`` of ``num_tasks`` (None: the Slurm array's, else 0 of 1):
    with ``num_tasks`` > 1 only that task's inputs are read and the outputs are named
    OUTPUT_PREFIX.task-NNNNN_*; a task already finished with the same inputs, tokenizer and
    options is skipped (its manifest is returned) unless ``overwrite``.

    Returns the manifest as a dict (also written to disk). Raises InputError (one line naming
    the input, and the line for malformed input); nothing is half-written."""
    from llmtrain_prep.readers import InputError

    options = _options(options, option_values)
    try:
        task = Task.from_args(task_index, num_tasks)
    except ValueError as e:
        raise InputError(str(e)) from None
    stage = TokenizeStage(inputs, tokenizer_path, output_prefix, options, task.count, overwrite=overwrite,
                          progress_every=progress_every, quiet=quiet, command=command)
    return run_stage(stage, task, LocalExecutor(1)).finished[0]


def tokenize_every_task(inputs, tokenizer_path: str, output_prefix: str, executor, num_tasks: int = 1, *,
                        overwrite: bool = False, quiet: bool = False, command: list[str] | None = None,
                        options: Options | None = None, **option_values) -> dict:
    """Every task (0 .. num_tasks-1) through ``executor`` (Ray), then, with several, the merge:
    the files N tasks of an array and a merge write. Returns the dataset's manifest (a dict)."""
    options = _options(options, option_values)
    stage = TokenizeStage(inputs, tokenizer_path, output_prefix, options, num_tasks, overwrite=overwrite,
                          progress_every=0, quiet=True, command=command)
    made = run_all(stage, num_tasks, executor).finished
    if num_tasks == 1:
        return made[0]
    return run_stage(MergeStage(output_prefix, num_tasks, quiet), Task(), LocalExecutor()).finished
