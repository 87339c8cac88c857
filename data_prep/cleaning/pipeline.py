"""The cleaning pipeline as four stages, each split into tasks: filter, buckets, clusters, write.

=========  ==========================================  ===================================
stage      one task does                               tasks split by
=========  ==========================================  ===================================
filter     read → HTML → unicode → filters, per shard;  input files (one file, one shard)
           writes the kept text and its dedup keys
buckets    exact-key groups and MinHash band buckets    key ranges (``key % N``)
           of the keys it owns, over every shard
clusters   joins every task's buckets into duplicate    shards (each task writes its own
           clusters; the shard's removal lists          shards' lists)
write      rewrites a shard without its duplicates,     shards
           masks PII; the last task writes stats.json
=========  ==========================================  ===================================

(datatrove's four-stage MinHash is the reference design.) The union of N tasks of a stage
is exactly what one task writes; a stage refuses to start before the one it reads is
complete, naming what is missing.

Layout of an output folder ``OUT``::

    OUT/data/<shard>.jsonl.zst      clean documents {"id", "text", "source", "language", "language_score"}
    OUT/stats.json                  per stage, in order: documents and characters in/out, why removed,
                                    seconds; counts of bad input; per-file warnings
    OUT/removed/<stage>.jsonl       the first N documents each stage removed, for a person to read
    OUT/work/manifest.json          the input files and their shard names (same for every task)
    OUT/work/filter/<shard>.*       kept text, dedup keys, stats, removed samples, a done marker
    OUT/work/buckets/part-T-of-N.*  one buckets task's exact duplicates and near groups
    OUT/work/clusters/<shard>.*     the positions of a shard's exact and near duplicates
    OUT/work/final/<shard>.*        the write stage's stats, samples and done markers

Every file is written under a temporary name and renamed when complete; each piece's
``.done`` marker is written last and holds the hash of the settings that stage depends on
(config.py), so a rerun skips exactly the finished pieces made with the same settings.
"""
from __future__ import annotations

import glob
import hashlib
import io
import json
import logging
import os
import re
import time
from multiprocessing import get_context

import numpy as np

from llmtrain_prep.readers import ALL_SUFFIXES, check_input, expand_inputs, input_bytes, is_hf_name, iter_documents
from llmtrain.core.files import atomic_write_bytes, atomic_write_json
from llmtrain.core.tasks import partition

from .config import FILTER_ORDER, dedup_hash, filter_hash, final_hash
from .steps import FILTERS, BaseFilter, Document, PipelineStep, chain, new_stage_stats

log = logging.getLogger("llmtrain_prep.clean")

STAGES = ("read", "html_extract", "unicode") + FILTER_ORDER + ("exact_dedup", "near_dedup", "pii")
FILTER_PASS_STAGES = STAGES[:-3]
# The command line's stages, in the order they run.
TASK_STAGES = ("filter", "buckets", "clusters", "write")


# ----------------------------------------------------------------------------- small helpers

def canonical(path: str) -> str:
    """An input as the manifest records it: an absolute path, or hf:NAME as given."""
    return path if is_hf_name(path) else os.path.abspath(path)


def shard_name(path: str) -> str:
    """Stable name of an input's shard: a short hash of its absolute path (or hf:NAME) + its name."""
    ap = canonical(path)
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(ap))[:80]
    return f"{hashlib.sha1(ap.encode()).hexdigest()[:10]}-{base}"


class ZstJsonlWriter:
    """Write JSON lines to ``path`` through zstd, under a temporary name until `commit`."""

    def __init__(self, path: str, level: int = 3):
        import zstandard

        self.path = path
        self.tmp = f"{path}.tmp-{os.getpid()}"
        self._fh = open(self.tmp, "wb")
        self._zw = zstandard.ZstdCompressor(level=level).stream_writer(self._fh, closefd=False)

    def write(self, obj: dict) -> None:
        self._zw.write(json.dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n")

    def commit(self) -> None:
        self._zw.close()
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.chmod(self.tmp, 0o644)
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        try:
            self._zw.close()
            self._fh.close()
        finally:
            if os.path.exists(self.tmp):
                os.remove(self.tmp)


def iter_zst_jsonl(path: str):
    import zstandard

    with open(path, "rb") as fh:
        stream = io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(fh))
        for line in stream:
            yield json.loads(line)


def _save_npz(path: str, **arrays) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


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


def _collect(steps: list[PipelineStep], stats: dict, samples: dict) -> None:
    """Each step's counts, bad input and removed samples into a shard's stats and samples."""
    for step in steps:
        stats["stages"][step.name] = step.stats
        for k, n in step.bad_input.items():
            stats["bad_input"][k] = stats["bad_input"].get(k, 0) + n
        if step.samples:
            samples[step.name] = step.samples


class _WarningCollector(logging.Handler):
    """Keeps the reader's per-file warnings (they go in stats.json too)."""

    def __init__(self, limit: int = 100):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self.limit = limit

    def emit(self, record):
        if len(self.messages) < self.limit:
            self.messages.append(record.getMessage())


def _read_done(path: str, cfg_hash: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as fh:
            d = json.load(fh)
    except (OSError, ValueError):
        return None
    if d.get("config_hash") != cfg_hash:
        log.warning(f"{path}: made with different settings; this piece is redone")
        return None
    return d


def shard_done(workdir: str, shard: str, cfg_hash: str, kind: str = "filter") -> dict | None:
    return _read_done(os.path.join(workdir, kind, shard + ".done"), cfg_hash)


# ----------------------------------------------------------------------------- steps of the filter pass

class ReadCheck(BaseFilter):
    """Drops empty documents and bytes that are not text (both counted as bad input)."""

    name = "read"
    sample_chars = 2000

    def bad_input_key(self, reason):
        return reason

    def filter(self, doc: Document):
        from .text import looks_binary

        if not doc.text.strip():
            return "empty"
        if looks_binary(doc.text, self.cfg.max_control_char_ratio):
            return "binary"
        return True


class UnicodeFix(BaseFilter):
    """ftfy's mojibake repair and a normal form (config ``unicode``)."""

    name = "unicode"

    def filter(self, doc: Document):
        from .text import fix_unicode

        doc.text = fix_unicode(doc.text, self.cfg.fix, self.cfg.normalization).strip()
        return True if doc.text else "empty"


def filter_steps(cfg) -> list[PipelineStep]:
    """The filter pass's steps, built from the config's sections: the fixed ones, then every
    enabled filter of the registry, in order."""
    from .html import HtmlExtract

    n = cfg.output.removed_samples
    steps: list[PipelineStep] = [ReadCheck(cfg.read, n), HtmlExtract(cfg.html, n), UnicodeFix(cfg.unicode, n)]
    for name, fcfg in cfg.filter_configs():
        if fcfg.enabled:
            steps.append(FILTERS[name](fcfg, n))
    return steps


class DuplicateRemoval(BaseFilter):
    """Drops the documents whose positions in the shard the clusters stage listed."""

    def __init__(self, name: str, positions, max_samples: int = 100):
        super().__init__(None, max_samples)
        self.name = name
        self.positions = set(int(i) for i in positions)

    def filter(self, doc: Document):
        return "duplicate" if doc.pos in self.positions else True


# ----------------------------------------------------------------------------- stage 1: filter

class ShardFilter:
    """Reads one input file and runs extraction, unicode repair and the filters on it; writes
    the kept documents and, for each, its exact key and MinHash band keys."""

    def __init__(self, cfg):
        from .dedup import MinHasher

        self.cfg = cfg
        d = cfg.dedup
        self.minhash = MinHasher(d.ngram, d.bands, d.rows, d.seed) if d.near else None
        self.n_bands = d.bands if d.near else 0
        self.hash = filter_hash(cfg)

    def _documents(self, path: str, errors: dict):
        t0 = t_last = time.time()
        docs = iter_documents(path, strict=False, errors=errors, max_doc_bytes=self.cfg.read.max_doc_bytes,
                              **self.cfg.reader_options())
        for i, d in enumerate(docs, 1):
            if i % 1000 == 0 and time.time() - t_last > 60:  # a big file: say how it goes
                t_last = time.time()
                log.info(f"[filter] {os.path.basename(path)}: {i} documents read, {t_last - t0:.0f}s")
            yield Document.from_reader(d)

    def run(self, path: str, shard: str, workdir: str) -> dict:
        from .dedup import exact_key

        fdir = os.path.join(workdir, "filter")
        stats = new_stats()
        stats["files"] = 1
        stats["bytes_in"] = input_bytes(path)
        errors: dict = {}
        steps = filter_steps(self.cfg)
        collector = _WarningCollector()
        rlog = logging.getLogger("llmtrain_prep.readers")
        rlog.addHandler(collector)
        writer = ZstJsonlWriter(os.path.join(fdir, shard + ".jsonl.zst"), self.cfg.output.zstd_level)
        keys: list[np.ndarray] = []
        try:
            for doc in chain(self._documents(path, errors), steps):
                writer.write(doc.to_json())
                k = np.empty(1 + self.n_bands, dtype=np.uint64)
                k[0] = exact_key(doc.text)
                if self.minhash is not None:
                    k[1:] = self.minhash.band_keys(doc.text)
                keys.append(k)
            # keys: row 0 the exact key, rows 1.. band keys; one column per kept document
            karr = np.stack(keys, axis=1) if keys else np.zeros((1 + self.n_bands, 0), dtype=np.uint64)
            buf = io.BytesIO()
            np.save(buf, karr)
            atomic_write_bytes(os.path.join(fdir, shard + ".keys.npy"), buf.getvalue())
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        finally:
            rlog.removeHandler(collector)
        samples: dict = {}
        stats["bad_input"] = errors
        _collect(steps, stats, samples)
        stats["warnings"] = collector.messages
        atomic_write_json(os.path.join(fdir, shard + ".removed.json"), samples)
        atomic_write_json(os.path.join(fdir, shard + ".stats.json"), stats)
        atomic_write_json(os.path.join(fdir, shard + ".done"),
                          {"config_hash": self.hash, "source": path, "kept": int(karr.shape[1])})
        return stats


# ----------------------------------------------------------------------------- worker pool

_WORKER: dict = {}


def _init_worker(cfg, kind):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    _WORKER["obj"] = ShardFilter(cfg) if kind == "filter" else ShardFinal(cfg)


def _run_job(job):
    t = time.time()
    return job[0], _WORKER["obj"].run(*job[1:]), time.time() - t


def _progress(tag, i, n, nbytes, t0):
    el = time.time() - t0
    rate = nbytes / el / 1e6 if el > 0 else 0.0
    eta = el / i * (n - i) if i else 0.0
    log.info(f"[{tag}] {i}/{n} shards, {nbytes / 1e6:.1f} MB in {el:.0f}s ({rate:.2f} MB/s), ETA {eta:.0f}s")


def _pool_map(jobs, cfg, kind, workers, sizes):
    """Run jobs (key, *args) inline (workers == 1) or over a process pool; yields results."""
    t0 = time.time()
    done_bytes = 0
    if workers <= 1 or len(jobs) <= 1:
        _init_worker(cfg, kind)
        it = map(_run_job, jobs)
        pool = None
    else:
        pool = get_context("spawn" if os.environ.get("CLEAN_SPAWN") else "fork").Pool(
            min(workers, len(jobs)), initializer=_init_worker, initargs=(cfg, kind), maxtasksperchild=50)
        it = pool.imap_unordered(_run_job, jobs)
    try:
        for i, res in enumerate(it, 1):
            done_bytes += sizes.get(res[0], 0)
            _progress(kind, i, len(jobs), done_bytes, t0)
            yield res
    finally:
        if pool is not None:
            pool.close()
            pool.join()


# ----------------------------------------------------------------------------- manifest

def write_manifest(workdir: str, files: list[str]) -> dict:
    """Record the full input list (every task computes the same); refuse a different one."""
    os.makedirs(workdir, exist_ok=True)
    man = {"inputs": [canonical(f) for f in files], "shards": [shard_name(f) for f in files]}
    p = os.path.join(workdir, "manifest.json")
    if os.path.exists(p):
        with open(p, encoding="utf-8") as fh:
            old = json.load(fh)
        if old != man:
            raise RuntimeError(f"{p}: this output folder was made from a different list of inputs "
                               f"({len(old['inputs'])} files, now {len(files)}); use a new --output folder")
        return man
    if len(set(man["shards"])) != len(man["shards"]):
        raise RuntimeError("two input files map to one shard name; this should not happen, please report it")
    atomic_write_json(p, man)
    return man


def read_manifest(workdir: str) -> dict:
    p = os.path.join(workdir, "manifest.json")
    try:
        with open(p, encoding="utf-8") as fh:
            return json.load(fh)
    except OSError:
        raise RuntimeError(f"{p}: missing; run the filter stage (--stage filter) on this --output first") from None


def run_filter(files: list[str], out: str, cfg, workers: int = 1, task_index: int = 0, num_tasks: int = 1) -> dict:
    """Stage 1 over this task's share of ``files``. Returns the merged stats of its shards."""
    mine = partition(files, task_index, num_tasks)
    for f in mine:  # a missing or non-text column: one line naming the input, before anything is written
        check_input(f, **cfg.reader_options())
    workdir = os.path.join(out, "work")
    os.makedirs(os.path.join(workdir, "filter"), exist_ok=True)
    write_manifest(workdir, files)
    h = filter_hash(cfg)
    todo, skipped = [], 0
    for f in mine:
        s = shard_name(f)
        if shard_done(workdir, s, h):
            skipped += 1
        else:
            todo.append((f, f, s, workdir))
    log.info(f"filter: task {task_index}/{num_tasks} owns {len(mine)} of {len(files)} files; "
             f"{skipped} already done, {len(todo)} to do, {workers} worker(s)")
    sizes = {f: input_bytes(f) for f, *_ in todo}
    todo.sort(key=lambda j: -sizes[j[0]])  # big files first: better packing over workers
    total = new_stats()
    for _path, st, _dt in _pool_map(todo, cfg, "filter", workers, sizes):
        merge_stats(total, st)
    return {"owned": len(mine), "skipped": skipped, "processed": len(todo), "stats": total}


# ----------------------------------------------------------------------------- stage 2: buckets

def _filtered_shards(workdir: str, cfg) -> tuple[dict, list[int]]:
    """The manifest and each shard's kept-document count; an error if a filter task is missing."""
    man = read_manifest(workdir)
    h = filter_hash(cfg)
    counts, missing = [], []
    for f, s in zip(man["inputs"], man["shards"]):
        d = shard_done(workdir, s, h)
        if d is None:
            missing.append(f)
        else:
            counts.append(int(d["kept"]))
    if missing:
        raise RuntimeError(f"{len(missing)} of {len(man['shards'])} shards have not finished the filter stage "
                           f"(first: {missing[0]}); run the missing filter tasks first (a rerun skips finished shards)")
    return man, counts


def _part(workdir: str, t: int, n: int) -> str:
    return os.path.join(workdir, "buckets", f"part-{t:05d}-of-{n:05d}")


def run_buckets(out: str, cfg, task_index: int = 0, num_tasks: int = 1) -> dict:
    """Stage 2: this task's key range of the exact keys and of every band's keys."""
    from .dedup import bucket_task

    workdir = os.path.join(out, "work")
    man, counts = _filtered_shards(workdir, cfg)
    os.makedirs(os.path.join(workdir, "buckets"), exist_ok=True)
    h = dedup_hash(cfg)
    base = _part(workdir, task_index, num_tasks)
    if _read_done(base + ".done", h):
        log.info(f"buckets: task {task_index}/{num_tasks} already done")
        return {"processed": 0, "skipped": 1}
    t = time.time()
    key_files = [os.path.join(workdir, "filter", s + ".keys.npy") for s in man["shards"]]
    res = bucket_task(key_files, counts, task_index, num_tasks, cfg.dedup.exact, cfg.dedup.near)
    _save_npz(base + ".npz", **res)
    atomic_write_json(base + ".done", {"config_hash": h, "documents": int(sum(counts))})
    log.info(f"buckets: task {task_index}/{num_tasks}: {sum(counts)} documents, {len(res['exact_dups'])} exact "
             f"duplicates, {len(res['members'])} documents in shared buckets, {time.time() - t:.1f}s")
    return {"processed": 1, "skipped": 0}


# ----------------------------------------------------------------------------- stage 3: clusters

def _bucket_parts(workdir: str, h: str) -> list[str]:
    """The parts of one complete buckets run with these settings (any task count)."""
    found: dict[int, set] = {}
    for p in glob.glob(os.path.join(workdir, "buckets", "part-*-of-*.done")):
        m = re.search(r"part-(\d+)-of-(\d+)\.done$", p)
        if m and _read_done(p, h):
            found.setdefault(int(m.group(2)), set()).add(int(m.group(1)))
    for n, got in sorted(found.items()):
        if len(got) == n:
            return [_part(workdir, t, n) + ".npz" for t in range(n)]
    if not found:
        raise RuntimeError(f"{os.path.join(workdir, 'buckets')}: no finished buckets task with these settings; "
                           "run --stage buckets first")
    n, got = max(found.items(), key=lambda kv: len(kv[1]))
    missing = sorted(set(range(n)) - got)
    raise RuntimeError(f"buckets: {len(missing)} of {n} tasks have not finished (first: --task-index {missing[0]} "
                       f"--num-tasks {n}); run them first")


def _local(ids: np.ndarray, a: int, b: int) -> np.ndarray:
    """The global ids in [a, b), as positions from a."""
    return ids[(ids >= a) & (ids < b)] - a


def run_clusters(out: str, cfg, task_index: int = 0, num_tasks: int = 1) -> dict:
    """Stage 3: every task joins all buckets into clusters (small: only documents that share a
    bucket) and writes the duplicate positions of the shards it owns."""
    from .dedup import find_clusters

    workdir = os.path.join(out, "work")
    man, counts = _filtered_shards(workdir, cfg)
    h = dedup_hash(cfg)
    cdir = os.path.join(workdir, "clusters")
    os.makedirs(cdir, exist_ok=True)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    mine = partition(list(range(len(man["shards"]))), task_index, num_tasks)
    todo = [i for i in mine if not shard_done(workdir, man["shards"][i], h, "clusters")]
    log.info(f"clusters: task {task_index}/{num_tasks} owns {len(mine)} shards; {len(mine) - len(todo)} already "
             f"done, {len(todo)} to do")
    if not todo:
        return {"processed": 0, "skipped": len(mine)}
    t = time.time()
    exact, members, groups, off = [], [], [], 0
    for p in _bucket_parts(workdir, h):
        with np.load(p) as z:
            exact.append(z["exact_dups"])
            members.append(z["members"])
            groups.append(z["groups"] + off)
            off += int(z["groups"].max()) + 1 if len(z["groups"]) else 0
    exact_ids = np.sort(np.concatenate(exact))
    near_ids = find_clusters(exact_ids, np.concatenate(members), np.concatenate(groups)) if cfg.dedup.near \
        else np.zeros(0, np.int64)
    log.info(f"clusters: {len(exact_ids)} exact and {len(near_ids)} near duplicates, {time.time() - t:.1f}s")
    for i in todo:
        a, b = offsets[i], offsets[i + 1]
        s = man["shards"][i]
        _save_npz(os.path.join(cdir, s + ".npz"), exact=_local(exact_ids, a, b), near=_local(near_ids, a, b))
        atomic_write_json(os.path.join(cdir, s + ".done"), {"config_hash": h})
    return {"processed": len(todo), "skipped": len(mine) - len(todo)}


# ----------------------------------------------------------------------------- stage 4: write

class ShardFinal:
    """Rewrites one filtered shard without its duplicates, masking PII."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.hash = final_hash(cfg)

    def run(self, shard: str, workdir: str, out: str) -> dict:
        from .pii import PiiMask

        with np.load(os.path.join(workdir, "clusters", shard + ".npz")) as z:
            exact, near = z["exact"], z["near"]
        n = self.cfg.output.removed_samples
        pii = PiiMask(self.cfg.pii, n)
        steps = [DuplicateRemoval("exact_dedup", exact, n), DuplicateRemoval("near_dedup", near, n), pii]
        stats = new_stats()
        writer = ZstJsonlWriter(os.path.join(out, "data", shard + ".jsonl.zst"), self.cfg.output.zstd_level)

        def documents():
            for i, d in enumerate(iter_zst_jsonl(os.path.join(workdir, "filter", shard + ".jsonl.zst"))):
                doc = Document.from_json(d)
                doc.pos = i
                yield doc

        try:
            for doc in chain(documents(), steps):
                writer.write(doc.to_json())
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        samples: dict = {}
        _collect(steps, stats, samples)
        stats["stages"]["pii"]["masked"] = dict(pii.masked)
        fdir = os.path.join(workdir, "final")
        atomic_write_json(os.path.join(fdir, shard + ".removed.json"), samples)
        atomic_write_json(os.path.join(fdir, shard + ".stats.json"), stats)
        atomic_write_json(os.path.join(fdir, shard + ".done"), {"config_hash": self.hash})
        return stats


def run_write(out: str, cfg, task_index: int = 0, num_tasks: int = 1, workers: int = 1) -> dict | None:
    """Stage 4 over this task's shards; then, if every shard is written (by any task),
    stats.json and removed/. Returns the report when it wrote one."""
    workdir = os.path.join(out, "work")
    man = read_manifest(workdir)
    h, hd = final_hash(cfg), dedup_hash(cfg)
    shards = man["shards"]
    mine = partition(shards, task_index, num_tasks)
    missing = [s for s in mine if not shard_done(workdir, s, hd, "clusters")]
    if missing:
        raise RuntimeError(f"{len(missing)} of this task's {len(mine)} shards have no duplicate lists "
                           f"(first: {missing[0]}); run --stage clusters first")
    os.makedirs(os.path.join(workdir, "final"), exist_ok=True)
    os.makedirs(os.path.join(out, "data"), exist_ok=True)
    jobs = [(s, s, workdir, out) for s in mine if not shard_done(workdir, s, h, "final")]
    log.info(f"write: task {task_index}/{num_tasks} owns {len(mine)} shards; {len(mine) - len(jobs)} already done, "
             f"{len(jobs)} to write")
    sizes = {s: os.path.getsize(os.path.join(workdir, "filter", s + ".jsonl.zst")) for s, *_ in jobs}
    for _ in _pool_map(jobs, cfg, "final", workers, sizes):
        pass
    if all(shard_done(workdir, s, h, "final") for s in shards):
        return write_report(out, man, cfg)
    log.info("write: other tasks' shards are not written yet; the last task to finish writes stats.json")
    return None


def run_dedup(out: str, cfg, workers: int = 1) -> dict:
    """Stages 2-4 in one process (after the filter stage): buckets, clusters, write."""
    run_buckets(out, cfg)
    run_clusters(out, cfg)
    return run_write(out, cfg, workers=workers)


def write_report(out: str, man: dict, cfg) -> dict:
    """stats.json (stages in order) and removed/<stage>.jsonl from every shard's pieces."""
    workdir = os.path.join(out, "work")
    total = new_stats()
    n_samples = cfg.output.removed_samples
    samples: dict[str, list] = {}
    for kind in ("filter", "final"):
        for s in man["shards"]:
            with open(os.path.join(workdir, kind, s + ".stats.json"), encoding="utf-8") as fh:
                merge_stats(total, json.load(fh))
            with open(os.path.join(workdir, kind, s + ".removed.json"), encoding="utf-8") as fh:
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


def expand(inputs: list[str]) -> list[str]:
    return expand_inputs(inputs, suffixes=ALL_SUFFIXES)
