"""Tokenising: documents → Megatron .bin/.idx token shards with a deterministic train/valid
split and a manifest, as stages of the task runner.

=============  ==================================================================
options.py     what a run is asked to do (`Options`), the formats, the defaults
plan.py        a task's checked plan (`Job`): inputs, tokenizer, output names; a finished task
split.py       the train/valid split by a keyed hash of each document
encode.py      the encode step: read → split → ids (a reader thread, an encoder thread or processes)
shards.py      one split's shards, and the loss-mask side file beside each (`SplitWriter`)
write.py       batches into shards, publishing them, the manifest
stage.py       tokenising as a runner stage (one unit per task); `tokenize_corpus`
merge.py       the merge step: N tasks' manifests → one dataset manifest; blends
=============  ==================================================================
"""
from .encode import BATCH_CHARS, BATCH_DOCS, default_workers
from .merge import MergeStage, blend_spec, find_task_manifests, merge_manifests
from .options import (DEFAULT_MAX_SHARD_TOKENS, DEFAULT_VALID_FRACTION, FORMATS, PROMPT_RESPONSE, SPLITS,
                      Options)
from .plan import Job, finished_task, load_tokenizer, plan, task_prefix
from .split import is_valid_doc, split_key
from .stage import TokenizeStage, tokenize_corpus, tokenize_every_task
from .write import build_manifest

__all__ = ["BATCH_CHARS", "BATCH_DOCS", "DEFAULT_MAX_SHARD_TOKENS", "DEFAULT_VALID_FRACTION", "FORMATS",
           "PROMPT_RESPONSE", "SPLITS", "Job", "MergeStage", "Options", "TokenizeStage", "blend_spec",
           "build_manifest", "default_workers", "find_task_manifests", "finished_task", "is_valid_doc",
           "load_tokenizer", "merge_manifests", "plan", "split_key", "task_prefix", "tokenize_corpus",
           "tokenize_every_task"]
