"""Start-up of the data on one rank, on a synthetic index of 10M documents and 10B tokens.

    python benchmarks/bench_startup.py [--folder /tmp/startup10b] [--before 187972b] [--rounds 3]
        [--seq-len 2048 256] [--json out.json]

The dataset is written once into --folder through the project's own format module
(``llmtrain.data.indexed.write_index``: 10M documents of 0..2000 tokens, exactly 10B in all, a
sparse 20 GB .bin of uint16 zeros, so it costs 200 MB of disk) with a format-2 manifest and a
tiny byte-level tokenizer.

Each measurement is a fresh Python process doing what every rank does before its first step,
after its imports: ``load_data`` (open and check the manifest, the .idx and the .bin; build the
windows and the blend), the old code's blend order (``prepare``, into an empty run folder, as a
first start does), then reading its share of one global batch midway through the run (a resume):
8 data-parallel ranks, micro-batch 8, global batch 512, ``train.max_steps`` for 10B tokens. It
reports the seconds this took and the peak RSS above the RSS after the imports (the model comes
on top of both). Two data specs: the dataset alone, and a blend of it with itself
("0.7 P 0.3 P", which builds the blend order).

``--before REV`` measures the code of that git revision too (``git archive`` of its llmtrain/
into a temporary folder, put first on the child's PYTHONPATH), alternating rounds with the
working tree; medians of --rounds. Prints Markdown rows for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

CHILD = r"""
import json, math, os, sys, tempfile, time
import numpy as np, torch, tokenizers  # the imports every rank has anyway
from deepspeed.accelerator import get_accelerator
get_accelerator()
import llmtrain
from llmtrain.config import load_config
from llmtrain.data.dataset import load_data
from llmtrain.train.loader import BatchPlan, host_micro_batches

def rss_kb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])

spec, seq_len, tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
G, micro, ranks = 512, 8, 8
steps = math.ceil(tokens / (G * seq_len))
cfg = load_config(None, [f"model.seq_len={seq_len}", f"train.global_batch_size={G}", f"train.max_steps={steps}"])
base = rss_kb("VmRSS")
t0 = time.perf_counter()
data = load_data(cfg, spec, "bench_startup")
if hasattr(data.train, "prepare"):  # the code before issue 19: the blend order, built on every rank
    with tempfile.TemporaryDirectory() as tmp:
        data.train.prepare(steps * G, cache_dir=os.path.join(tmp, "data_order"))
plan = BatchPlan(G, micro, G // (micro * ranks), 0)
batches = host_micro_batches(data.train, plan, steps // 2)
seconds = time.perf_counter() - t0
assert sum(x.shape[0] for x, _ in batches) == G // ranks and batches[0][0].shape[1] == seq_len
print(json.dumps({"seconds": seconds, "peak_mb": (rss_kb("VmHWM") - base) / 1024, "rss_mb": (rss_kb("VmRSS") - base)
                  / 1024, "steps": steps, "module": llmtrain.__file__}))
"""


def make_dataset(folder: Path, docs: int, tokens: int, seed: int = 0) -> str:
    """PREFIX of the synthetic dataset (written once; kept for later calls)."""
    from llmtrain.core.files import sha256_file
    from llmtrain.data.indexed import write_index
    from llmtrain.data.manifest import Manifest, Shard, Split

    prefix = folder / "synth"
    if Path(f"{prefix}_manifest.json").is_file():
        return str(prefix)
    folder.mkdir(parents=True, exist_ok=True)
    tok_path = folder / "tokenizer.json"
    vocab = make_tokenizer(tok_path)
    if tokens % docs:
        raise SystemExit(f"--tokens {tokens} must be a multiple of --docs {docs}")
    mean = tokens // docs
    d = np.random.default_rng(seed).integers(0, mean // 2 + 1, size=docs, dtype=np.int64)
    sizes = (mean + d - np.roll(d, 1)).astype(np.int32)  # 0..2*mean tokens each, summing to exactly `tokens`
    assert int(sizes.sum(dtype=np.int64)) == tokens
    name = f"{prefix}_train"
    write_index(f"{name}.idx.tmp", sizes, np.uint16)
    with open(f"{name}.bin.tmp", "wb") as fh:
        fh.truncate(tokens * 2)  # sparse: token 0 everywhere, no disk blocks
    os.replace(f"{name}.bin.tmp", f"{name}.bin")
    os.replace(f"{name}.idx.tmp", f"{name}.idx")
    Manifest(prefix=str(prefix), splits={"train": Split([Shard("synth_train", docs, tokens)])}, dtype="uint16",
             vocab_size=vocab, eod_token="<|endoftext|>", eod_token_id=0, tokenizer_path=str(tok_path),
             tokenizer_sha256=sha256_file(tok_path), options={"synthetic": "benchmarks/bench_startup.py"}).write()
    return str(prefix)


def make_tokenizer(path: Path) -> int:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(["start-up does not grow with the corpus"] * 20, trainers.BpeTrainer(
        vocab_size=512, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(path))
    return tok.get_vocab_size()


def export_revision(rev: str, into: Path) -> Path:
    """llmtrain/ and configs/ of git revision ``rev`` under ``into`` (from the object store; no checkout)."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "llmtrain", "configs"], check=True,
                             capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def measure(code: Path, spec: str, seq_len: int, tokens: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code)}
    r = subprocess.run([sys.executable, "-c", CHILD, spec, str(seq_len), str(tokens)], env=env, capture_output=True,
                       text=True, timeout=1800, cwd=code.parent)  # not the repository: its llmtrain/ would come first
    if r.returncode:
        raise SystemExit(f"measurement failed ({code}):\n{r.stderr[-3000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    if not out["module"].startswith(str(code)):
        raise SystemExit(f"the child imported {out['module']}, not the code under {code}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", default=os.path.join(tempfile.gettempdir(), "llmtrain_startup10b"))
    ap.add_argument("--docs", type=int, default=10_000_000)
    ap.add_argument("--tokens", type=int, default=10_000_000_000)
    ap.add_argument("--seq-len", type=int, nargs="+", default=[2048, 256])
    ap.add_argument("--before", help="a git revision to measure too (e.g. the commit before issue 19)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args()

    prefix = make_dataset(Path(args.folder), args.docs, args.tokens)
    with tempfile.TemporaryDirectory() as tmp:
        codes = {"after": REPO}
        if args.before:
            codes = {"before": export_revision(args.before, Path(tmp)), **codes}
        results = []
        for seq_len in args.seq_len:
            for kind, spec in (("one dataset", prefix), ("blend 0.7/0.3", f"0.7 {prefix} 0.3 {prefix}")):
                runs = {name: [] for name in codes}
                for _ in range(args.rounds):  # alternate the contenders round by round
                    for name, code in codes.items():
                        runs[name].append(measure(code, spec, seq_len, args.tokens))
                row = {"seq_len": seq_len, "data": kind, "steps": runs["after"][0]["steps"]}
                for name, rs in runs.items():
                    for key in ("seconds", "peak_mb", "rss_mb"):
                        row[f"{name}_{key}"] = statistics.median(r[key] for r in rs)
                        row[f"{name}_{key}_all"] = [round(r[key], 3) for r in rs]
                results.append(row)
                print(json.dumps(row), flush=True)
    print("\n| seq_len | data | steps | " + " | ".join(f"{n}: seconds, peak RSS MB" for n in codes) + " |")
    print("|---|---|---|" + "---|" * len(codes))
    for r in results:
        cells = " | ".join(f"{r[f'{n}_seconds']:.2f} s, {r[f'{n}_peak_mb']:.0f} MB" for n in codes)
        print(f"| {r['seq_len']} | {r['data']} | {r['steps']:,} | {cells} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"docs": args.docs, "tokens": args.tokens, "rounds": args.rounds,
                                               "before": args.before, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
