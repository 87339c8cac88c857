"""What the cleaning stages count: per stage documents and characters in and out, why they
were removed and the seconds spent (kept by the steps' base class), bad input, the reader's
warnings; merged over shards into OUT/stats.json with samples of what each stage removed."""
from __future__ import annotations

import json
import logging
import os

from llmtrain.core.files import atomic_write_bytes, atomic_write_json

from .config import FILTER_ORDER
from .layout import piece
from .steps import PipelineStep, new_stage_stats

STAGES = ("read", "html_extract", "unicode") + FILTER_ORDER + ("exact_dedup", "near_dedup", "pii")


def new_stats() -> dict:
    return {"stages": {s: new_stage_stats() for s in STAGES}, "bad_input": {}, "warnings": [], "files": 0,
            "bytes_in": 0}


def merge_stats(into: dict, other: dict, max_warnings: int = 1000) -> dict:
    for s, st in other["stages"].items():
        dst = into["stages"][s]
        for k in ("docs_in", "docs_out", "chars_in", "chars_out", "seconds"):
            dst[k] += st.get(k, 0)
        for r, n in st["removed"].items():
            dst["removed"][r] = dst["removed"].get(r, 0) + n
        if "masked" in st:
            m = dst.setdefault("masked", {})
            for k, n in st["masked"].items():
                m[k] = m.get(k, 0) + n
    for k, n in other["bad_input"].items():
        into["bad_input"][k] = into["bad_input"].get(k, 0) + n
    room = max_warnings - len(into["warnings"])
    if room > 0:
        into["warnings"].extend(other["warnings"][:room])
    into["files"] += other.get("files", 0)
    into["bytes_in"] += other.get("bytes_in", 0)
    return into


def collect(steps: list[PipelineStep], stats: dict, samples: dict) -> None:
    """Each step's counts, bad input and removed samples into a shard's stats and samples."""
    for step in steps:
        stats["stages"][step.name] = step.stats
        for k, n in step.bad_input.items():
            stats["bad_input"][k] = stats["bad_input"].get(k, 0) + n
        if step.samples:
            samples[step.name] = step.samples


class WarningCollector(logging.Handler):
    """Keeps the reader's per-file warnings (they go in stats.json too)."""

    def __init__(self, limit: int = 100):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self.limit = limit

    def emit(self, record):
        if len(self.messages) < self.limit:
            self.messages.append(record.getMessage())


def write_report(out: str, man: dict, cfg) -> dict:
    """stats.json (stages in order) and removed/<stage>.jsonl from every shard's pieces."""
    total = new_stats()
    n_samples = cfg.output.removed_samples
    samples: dict[str, list] = {}
    for kind in ("filter", "final"):
        for s in man["shards"]:
            with open(piece(out, kind, s, ".stats.json"), encoding="utf-8") as fh:
                merge_stats(total, json.load(fh))
            with open(piece(out, kind, s, ".removed.json"), encoding="utf-8") as fh:
                for stage, docs in json.load(fh).items():
                    lst = samples.setdefault(stage, [])
                    lst.extend(docs[: max(0, n_samples - len(lst))])
    total["stages"]["pii"].setdefault("masked", {"email": 0, "ip": 0})
    rdir = os.path.join(out, "removed")
    os.makedirs(rdir, exist_ok=True)
    for stage in STAGES:  # a stage that removed nothing this time leaves no file from an earlier run
        docs = samples.get(stage)
        path = os.path.join(rdir, stage + ".jsonl")
        if docs:
            atomic_write_bytes(path, "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs).encode())
        elif os.path.exists(path):
            os.remove(path)
    for st in total["stages"].values():
        st["seconds"] = round(st["seconds"], 3)
    report = {
        "inputs": len(man["inputs"]),
        "bytes_in": total["bytes_in"],
        "documents_out": total["stages"]["pii"]["docs_out"],
        "characters_out": total["stages"]["pii"]["chars_out"],
        "stages": [{"stage": s, **total["stages"][s]} for s in STAGES],
        "bad_input": total["bad_input"],
        "warnings": total["warnings"],
        "config": cfg.to_dict(),
    }
    atomic_write_json(os.path.join(out, "stats.json"), report)
    return report
