"""The cleaning pipeline: per-shard filtering, corpus-wide dedup, the final rewrite.

Layout of an output folder ``OUT``::

    OUT/data/<shard>.jsonl.zst      clean documents {"id", "text", "source", "language", "language_score"}
    OUT/stats.json                  per stage, in order: documents and characters in/out, why removed;
                                    counts of bad input; per-file warnings
    OUT/removed/<stage>.jsonl       the first N documents each stage removed, for a person to read
    OUT/work/manifest.json          the input files and their shard names (same for every task)
    OUT/work/filter/<shard>.*       pass 1 output: filtered text, dedup keys, stats, a done marker
    OUT/work/dedup/                 pass 2 output: which documents are duplicates
    OUT/work/final/<shard>.done     pass 3 done markers

One input file is one shard. Every file is written under a temporary name and renamed when
complete; a shard's ``.done`` marker is written last, so a rerun skips exactly the finished
shards and a half-written file is never taken for a finished one.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from multiprocessing import get_context

import numpy as np

from data_prep.readers import ALL_SUFFIXES, expand_inputs, iter_documents

from .config import FILTER_ORDER, config_hash, dedup_hash, final_hash

log = logging.getLogger("data_prep.clean")

STAGES = ("read", "html_extract", "unicode") + FILTER_ORDER + ("exact_dedup", "near_dedup", "pii")
FILTER_PASS_STAGES = STAGES[:-3]


# ----------------------------------------------------------------------------- small helpers

def shard_name(path: str) -> str:
    """Stable name of an input file's shard: a short hash of its absolute path + its name."""
    ap = os.path.abspath(path)
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(ap))[:80]
    return f"{hashlib.sha1(ap.encode()).hexdigest()[:10]}-{base}"


def partition(files: list[str], task_index: int, num_tasks: int) -> list[str]:
    """The files task ``task_index`` of ``num_tasks`` owns: every num_tasks-th of the sorted list."""
    if num_tasks < 1 or not 0 <= task_index < num_tasks:
        raise ValueError(f"--task-index {task_index} must be in [0, --num-tasks {num_tasks})")
    return [f for i, f in enumerate(files) if i % num_tasks == task_index]


def atomic_write_bytes(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: str, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode())


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
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        try:
            self._zw.close()
            self._fh.close()
        finally:
            if os.path.exists(self.tmp):
                os.remove(self.tmp)


def iter_zst_jsonl(path: str):
    import io

    import zstandard

    with open(path, "rb") as fh:
        stream = io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(fh))
        for line in stream:
            yield json.loads(line)


def new_stats() -> dict:
    return {
        "stages": {s: {"docs_in": 0, "docs_out": 0, "chars_in": 0, "chars_out": 0, "removed": {}} for s in STAGES},
        "bad_input": {},
        "warnings": [],
        "files": 0,
        "bytes_in": 0,
    }


def merge_stats(into: dict, other: dict, max_warnings: int = 1000) -> dict:
    for s, st in other["stages"].items():
        dst = into["stages"][s]
        for k in ("docs_in", "docs_out", "chars_in", "chars_out"):
            dst[k] += st[k]
        for r, n in st["removed"].items():
            dst["removed"][r] = dst["removed"].get(r, 0) + n
    for k, n in other["bad_input"].items():
        into["bad_input"][k] = into["bad_input"].get(k, 0) + n
    room = max_warnings - len(into["warnings"])
    if room > 0:
        into["warnings"].extend(other["warnings"][:room])
    into["files"] += other.get("files", 0)
    into["bytes_in"] += other.get("bytes_in", 0)
    return into


class _WarningCollector(logging.Handler):
    """Keeps the reader's per-file warnings (they go in stats.json too)."""

    def __init__(self, limit: int = 100):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self.limit = limit

    def emit(self, record):
        if len(self.messages) < self.limit:
            self.messages.append(record.getMessage())


# ----------------------------------------------------------------------------- pass 1: filter

class ShardFilter:
    """Reads one input file and runs extraction, unicode repair and the filters on it."""

    def __init__(self, cfg: dict):
        from .dedup import MinHasher
        from .filters import C4, FineWebQuality, GopherQuality, GopherRepetition
        from .html import HtmlExtractor

        self.cfg = cfg
        self.html = HtmlExtractor(cfg["html"]["extractor"], cfg["html"]["main_content"]) if cfg["html"]["enabled"] else None
        self.filters = []
        for name in FILTER_ORDER:
            c = dict(cfg[name])
            if not c.pop("enabled"):
                continue
            if name == "language":
                from .langid import LanguageID

                self.filters.append((name, LanguageID(c["languages"], c["threshold"])))
            else:
                cls = {"gopher_repetition": GopherRepetition, "gopher_quality": GopherQuality, "c4": C4,
                       "fineweb_quality": FineWebQuality}[name]
                self.filters.append((name, cls(**c)))
        d = cfg["dedup"]
        self.minhash = MinHasher(d["ngram"], d["bands"], d["rows"], d["seed"]) if d["near"] else None
        self.need_keys = True  # row 0 (exact key) also counts the kept documents
        self.n_bands = d["bands"] if d["near"] else 0
        self.hash = config_hash(cfg)

    def run(self, path: str, shard: str, workdir: str) -> dict:
        from .dedup import exact_key
        from .text import fix_unicode, looks_binary, split_words

        cfg = self.cfg
        fdir = os.path.join(workdir, "filter")
        done = os.path.join(fdir, shard + ".done")
        stats = new_stats()
        stats["files"] = 1
        stats["bytes_in"] = os.path.getsize(path)
        S = stats["stages"]
        errors: dict = {}
        n_samples = cfg["output"]["removed_samples"]
        samples: dict[str, list] = {}

        def removed(stage, reason, doc, text):
            st = S[stage]["removed"]
            st[reason] = st.get(reason, 0) + 1
            lst = samples.setdefault(stage, [])
            if len(lst) < n_samples:
                lst.append({"id": doc["id"], "source": doc["source"], "reason": reason, "text": text[:20000]})

        collector = _WarningCollector()
        rlog = logging.getLogger("data_prep.readers")
        rlog.addHandler(collector)
        writer = ZstJsonlWriter(os.path.join(fdir, shard + ".jsonl.zst"), cfg["output"]["zstd_level"])
        keys: list[np.ndarray] = []
        max_ctrl = cfg["read"]["max_control_char_ratio"]
        t0 = t_last = time.time()
        try:
            for doc in iter_documents(path, strict=False, errors=errors, max_doc_bytes=cfg["read"]["max_doc_bytes"],
                                      text_key=cfg["read"]["text_key"], id_key=cfg["read"]["id_key"]):
                text = doc["text"]
                st = S["read"]
                st["docs_in"] += 1
                if st["docs_in"] % 1000 == 0 and time.time() - t_last > 60:  # a big file: say how it goes
                    t_last = time.time()
                    log.info(f"[filter] {os.path.basename(path)}: {st['docs_in']} documents read, "
                             f"{st['chars_in'] / 1e6:.0f}M characters, {t_last - t0:.0f}s")
                st["chars_in"] += len(text)
                if not text.strip():
                    errors["empty"] = errors.get("empty", 0) + 1
                    removed("read", "empty", doc, text)
                    continue
                if looks_binary(text, max_ctrl):
                    errors["binary"] = errors.get("binary", 0) + 1
                    removed("read", "binary", doc, text[:2000])
                    continue
                st["docs_out"] += 1
                st["chars_out"] += len(text)

                st = S["html_extract"]
                st["docs_in"] += 1
                st["chars_in"] += len(text)
                if doc.get("html"):
                    if self.html is None:
                        removed("html_extract", "html_extraction_disabled", doc, text)
                        continue
                    try:
                        text = self.html(text)
                    except Exception as e:  # a page the extractor chokes on is bad input, not a crash
                        errors["html_error"] = errors.get("html_error", 0) + 1
                        removed("html_extract", f"html_error:{type(e).__name__}", doc, text[:2000])
                        continue
                    if not text:
                        removed("html_extract", "no_main_content", doc, doc["text"][:5000])
                        continue
                st["docs_out"] += 1
                st["chars_out"] += len(text)

                st = S["unicode"]
                st["docs_in"] += 1
                st["chars_in"] += len(text)
                text = fix_unicode(text, cfg["unicode"]["fix"], cfg["unicode"]["normalization"]).strip()
                if not text:
                    removed("unicode", "empty", doc, text)
                    continue
                st["docs_out"] += 1
                st["chars_out"] += len(text)

                lang = None
                words = None
                words_of = None
                ok = True
                for name, f in self.filters:
                    st = S[name]
                    st["docs_in"] += 1
                    st["chars_in"] += len(text)
                    if name == "language":
                        ok, reason, new_text, lang = f(text)
                    else:
                        if words_of is not text:
                            words, words_of = split_words(text), text
                        ok, reason, new_text = f(text, words)
                    if not ok:
                        removed(name, reason, doc, text)
                        break
                    text = new_text
                    st["docs_out"] += 1
                    st["chars_out"] += len(text)
                if not ok:
                    continue
                out = {"id": doc["id"], "text": text, "source": doc["source"]}
                if lang is not None:
                    out["language"], out["language_score"] = lang[0], round(lang[1], 4)
                writer.write(out)
                if self.need_keys:
                    k = np.empty(1 + self.n_bands, dtype=np.uint64)
                    k[0] = exact_key(text)
                    if self.minhash is not None:
                        k[1:] = self.minhash.band_keys(text)
                    keys.append(k)
            # keys: row 0 the exact key, rows 1.. band keys; one column per kept document
            karr = np.stack(keys, axis=1) if keys else np.zeros((1 + self.n_bands, 0), dtype=np.uint64)
            kpath = os.path.join(fdir, shard + ".keys.npy")
            ktmp = f"{kpath}.tmp-{os.getpid()}.npy"
            np.save(ktmp, karr)
            os.replace(ktmp, kpath)
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        finally:
            rlog.removeHandler(collector)
        stats["bad_input"] = errors
        stats["warnings"] = collector.messages
        atomic_write_json(os.path.join(fdir, shard + ".removed.json"), samples)
        atomic_write_json(os.path.join(fdir, shard + ".stats.json"), stats)
        atomic_write_json(done, {"config_hash": self.hash, "source": path, "kept": int(karr.shape[1])})
        return stats


def shard_done(workdir: str, shard: str, cfg_hash: str, kind: str = "filter") -> dict | None:
    p = os.path.join(workdir, kind, shard + ".done")
    try:
        with open(p, encoding="utf-8") as fh:
            d = json.load(fh)
    except (OSError, ValueError):
        return None
    if d.get("config_hash") != cfg_hash:
        log.warning(f"{p}: made with a different config; this shard is redone")
        return None
    return d


_WORKER: dict = {}


def _init_worker(cfg, kind):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    _WORKER["obj"] = ShardFilter(cfg) if kind == "filter" else ShardFinal(cfg)


def _run_filter(job):
    path, shard, workdir = job
    t = time.time()
    stats = _WORKER["obj"].run(path, shard, workdir)
    return path, stats, time.time() - t


def _run_final(job):
    t = time.time()
    return job[1], _WORKER["obj"].run(*job), time.time() - t


def _progress(tag, i, n, nbytes, t0):
    el = time.time() - t0
    rate = nbytes / el / 1e6 if el > 0 else 0.0
    eta = el / i * (n - i) if i else 0.0
    log.info(f"[{tag}] {i}/{n} shards, {nbytes / 1e6:.1f} MB in {el:.0f}s ({rate:.2f} MB/s), ETA {eta:.0f}s")


def _pool_map(fn, jobs, cfg, kind, workers, sizes, tag):
    """Run jobs inline (workers == 1) or over a process pool; yields results as they come."""
    t0 = time.time()
    done_bytes = 0
    if workers <= 1 or len(jobs) <= 1:
        _init_worker(cfg, kind)
        it = map(fn, jobs)
        pool = None
    else:
        pool = get_context("spawn" if os.environ.get("CLEAN_SPAWN") else "fork").Pool(
            min(workers, len(jobs)), initializer=_init_worker, initargs=(cfg, kind), maxtasksperchild=50)
        it = pool.imap_unordered(fn, jobs)
    try:
        for i, res in enumerate(it, 1):
            done_bytes += sizes.get(res[0], 0)
            _progress(tag, i, len(jobs), done_bytes, t0)
            yield res
    finally:
        if pool is not None:
            pool.close()
            pool.join()


# ----------------------------------------------------------------------------- manifest

def write_manifest(workdir: str, files: list[str]) -> dict:
    """Record the full input list (every task computes the same); refuse a different one."""
    os.makedirs(workdir, exist_ok=True)
    man = {"inputs": [os.path.abspath(f) for f in files], "shards": [shard_name(f) for f in files]}
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


# ----------------------------------------------------------------------------- run: filter

def run_filter(files: list[str], out: str, cfg: dict, workers: int = 1, task_index: int = 0,
               num_tasks: int = 1) -> dict:
    """Pass 1 over this task's share of ``files``. Returns the merged stats of its shards."""
    workdir = os.path.join(out, "work")
    os.makedirs(os.path.join(workdir, "filter"), exist_ok=True)
    write_manifest(workdir, files)
    mine = partition(files, task_index, num_tasks)
    h = config_hash(cfg)
    todo, skipped = [], 0
    for f in mine:
        s = shard_name(f)
        if shard_done(workdir, s, h):
            skipped += 1
        else:
            todo.append((f, s, workdir))
    log.info(f"filter: task {task_index}/{num_tasks} owns {len(mine)} of {len(files)} files; "
             f"{skipped} already done, {len(todo)} to do, {workers} worker(s)")
    sizes = {f: os.path.getsize(f) for f, _, _ in todo}
    todo.sort(key=lambda j: -sizes[j[0]])  # big files first: better packing over workers
    total = new_stats()
    for _path, st, _dt in _pool_map(_run_filter, todo, cfg, "filter", workers, sizes, "filter"):
        merge_stats(total, st)
    return {"owned": len(mine), "skipped": skipped, "processed": len(todo), "stats": total}


# ----------------------------------------------------------------------------- run: dedup + final

class ShardFinal:
    """Pass 3: rewrite one filtered shard without its duplicates, masking PII."""

    def __init__(self, cfg: dict):
        from .pii import PiiMasker

        self.cfg = cfg
        p = dict(cfg["pii"])
        self.pii = PiiMasker(**{k: v for k, v in p.items() if k != "enabled"}) if p.pop("enabled") else None
        self.hash = final_hash(cfg)

    def run(self, shard: str, workdir: str, out: str, exact_dup: np.ndarray, near_dup: np.ndarray) -> dict:
        stats = new_stats()
        S = stats["stages"]
        n_samples = self.cfg["output"]["removed_samples"]
        samples: dict[str, list] = {}
        writer = ZstJsonlWriter(os.path.join(out, "data", shard + ".jsonl.zst"), self.cfg["output"]["zstd_level"])
        emails = ips = 0
        i = -1
        try:
            for i, doc in enumerate(iter_zst_jsonl(os.path.join(workdir, "filter", shard + ".jsonl.zst"))):
                n = len(doc["text"])
                dropped = False
                for stage, mask in (("exact_dedup", exact_dup), ("near_dedup", near_dup)):
                    st = S[stage]
                    st["docs_in"] += 1
                    st["chars_in"] += n
                    if mask[i]:
                        st["removed"]["duplicate"] = st["removed"].get("duplicate", 0) + 1
                        lst = samples.setdefault(stage, [])
                        if len(lst) < n_samples:
                            lst.append({"id": doc["id"], "source": doc["source"], "reason": "duplicate",
                                        "text": doc["text"][:20000]})
                        dropped = True
                        break
                    st["docs_out"] += 1
                    st["chars_out"] += n
                if dropped:
                    continue
                st = S["pii"]
                st["docs_in"] += 1
                st["chars_in"] += n
                if self.pii is not None:
                    doc["text"], ne, ni = self.pii(doc["text"])
                    emails += ne
                    ips += ni
                st["docs_out"] += 1
                st["chars_out"] += len(doc["text"])
                writer.write(doc)
            if i + 1 != len(exact_dup):
                raise RuntimeError(f"{shard}: filtered shard has {i + 1} documents but its keys say {len(exact_dup)}")
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        S["pii"]["masked"] = {"email": emails, "ip": ips}
        fdir = os.path.join(workdir, "final")
        atomic_write_json(os.path.join(fdir, shard + ".removed.json"), samples)
        atomic_write_json(os.path.join(fdir, shard + ".stats.json"), stats)
        atomic_write_json(os.path.join(fdir, shard + ".done"), {"config_hash": self.hash})
        return stats


def run_dedup(out: str, cfg: dict, workers: int = 1) -> dict:
    """Passes 2 and 3 over every shard named in the manifest, then stats.json and removed/."""
    workdir = os.path.join(out, "work")
    man = read_manifest(workdir)
    h = config_hash(cfg)
    shards = man["shards"]
    missing = [f for f, s in zip(man["inputs"], shards) if not shard_done(workdir, s, h)]
    if missing:
        raise RuntimeError(f"{len(missing)} of {len(shards)} shards have not finished the filter stage "
                           f"(first: {missing[0]}); run the missing filter tasks first (a rerun skips finished shards)")
    key_files = [os.path.join(workdir, "filter", s + ".keys.npy") for s in shards]
    counts = [int(np.load(f, mmap_mode="r").shape[1]) for f in key_files]
    ddir = os.path.join(workdir, "dedup")
    os.makedirs(ddir, exist_ok=True)
    os.makedirs(os.path.join(workdir, "final"), exist_ok=True)
    os.makedirs(os.path.join(out, "data"), exist_ok=True)
    dmark = os.path.join(ddir, "dups.done")
    dpath = os.path.join(ddir, "dups.npz")
    sig = hashlib.sha1(json.dumps([shards, counts, dedup_hash(cfg)]).encode()).hexdigest()
    prev = None
    if os.path.exists(dmark) and os.path.exists(dpath):
        with open(dmark, encoding="utf-8") as fh:
            prev = json.load(fh).get("signature")
    if prev == sig:
        z = np.load(dpath)
        exact_dup, near_dup = z["exact"], z["near"]
        log.info("dedup: clusters already computed; reusing them")
    else:
        from .dedup import find_duplicates

        t = time.time()
        exact_dup, near_dup = find_duplicates(key_files, counts, cfg["dedup"]["exact"], cfg["dedup"]["near"],
                                              log=log.info)
        log.info(f"dedup: {sum(counts)} documents, {int(exact_dup.sum())} exact and {int(near_dup.sum())} "
                 f"near duplicates, {time.time() - t:.1f}s")
        tmp = dpath + f".tmp-{os.getpid()}.npz"
        np.savez(tmp, exact=exact_dup, near=near_dup)
        os.replace(tmp, dpath)
        # any earlier final pass used other clusters: forget it
        for s in shards:
            p = os.path.join(workdir, "final", s + ".done")
            if os.path.exists(p):
                os.remove(p)
        atomic_write_json(dmark, {"signature": sig})
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    jobs, skipped = [], 0
    for i, s in enumerate(shards):
        if shard_done(workdir, s, final_hash(cfg), "final"):
            skipped += 1
            continue
        a, b = offsets[i], offsets[i + 1]
        jobs.append((s, workdir, out, exact_dup[a:b].copy(), near_dup[a:b].copy()))
    log.info(f"final: {len(shards)} shards, {skipped} already done, {len(jobs)} to write")
    sizes = {s: os.path.getsize(os.path.join(workdir, "filter", s + ".jsonl.zst")) for s, *_ in jobs}
    for _ in _pool_map(_run_final, jobs, cfg, "final", workers, sizes, "final"):
        pass
    return write_report(out, man, cfg)


def write_report(out: str, man: dict, cfg: dict) -> dict:
    """stats.json (stages in order) and removed/<stage>.jsonl from every shard's pieces."""
    workdir = os.path.join(out, "work")
    total = new_stats()
    masked = {"email": 0, "ip": 0}
    n_samples = cfg["output"]["removed_samples"]
    samples: dict[str, list] = {}
    for kind in ("filter", "final"):
        for s in man["shards"]:
            with open(os.path.join(workdir, kind, s + ".stats.json"), encoding="utf-8") as fh:
                st = json.load(fh)
            merge_stats(total, st)
            if kind == "final":
                for k in masked:
                    masked[k] += st["stages"]["pii"].get("masked", {}).get(k, 0)
            with open(os.path.join(workdir, kind, s + ".removed.json"), encoding="utf-8") as fh:
                for stage, docs in json.load(fh).items():
                    lst = samples.setdefault(stage, [])
                    lst.extend(docs[: max(0, n_samples - len(lst))])
    total["stages"]["pii"]["masked"] = masked
    rdir = os.path.join(out, "removed")
    os.makedirs(rdir, exist_ok=True)
    for stage in STAGES:  # a stage that removed nothing this time leaves no file from an earlier run
        docs = samples.get(stage)
        path = os.path.join(rdir, stage + ".jsonl")
        if docs:
            atomic_write_bytes(path, "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs).encode())
        elif os.path.exists(path):
            os.remove(path)
    report = {
        "inputs": len(man["inputs"]),
        "bytes_in": total["bytes_in"],
        "documents_out": total["stages"]["pii"]["docs_out"],
        "characters_out": total["stages"]["pii"]["chars_out"],
        "stages": [{"stage": s, **total["stages"][s]} for s in STAGES],
        "bad_input": total["bad_input"],
        "warnings": total["warnings"],
        "config": cfg,
    }
    atomic_write_json(os.path.join(out, "stats.json"), report)
    return report


def expand(inputs: list[str]) -> list[str]:
    return expand_inputs(inputs, suffixes=ALL_SUFFIXES)
