"""lm-evaluation-harness: the project's adapter (llmtrain/eval/harness.py) vs lm-eval's own ``hf``
backend on the folder export_hf.py writes, per request type.

    python benchmarks/bench_harness.py [--rounds 5] [--threads 1] [--batch-size 16] [--no-kv-cache]
        [--n-layer 4 --d-model 128 --n-head 4 --seq-len 256 --vocab 2048]

One GPT with random weights (fp32, learned positions: exportable as GPT-2), a byte-level BPE
trained on the bundled corpus, exported; the requests of the bundled cloze task
(loglikelihood), the perplexity task and the generation task of tests/data/harness
(loglikelihood_rolling, generate_until) are built once by lm-eval. Each round times
``loglikelihood``, ``loglikelihood_rolling`` and ``generate_until`` of both models, alternating
the order every round so that noise from other work hits both alike; reports medians, the ratio
of medians, and whether the results agree (greedy flags and generations exactly, log-likelihoods
to 1e-4). HFLM runs with its defaults except the batch size, fp32 and ``logits_cache=False``
(its cache of one-token continuations saves nothing on these multi-token continuations, and it
can mix up requests that share their input tokens: lm-eval issue #2984); the adapter with the KV
cache for generation, and --no-kv-cache adds its batched re-run path.
Prints Markdown rows for benchmarks/BENCHMARKS.md; --json writes the numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchutil import cpu_description

REPO = Path(__file__).resolve().parents[1]
TASKS = ["python_docs_cloze", "python_docs_ppl", "python_docs_complete"]
DIRS = [str(REPO / "data" / "tasks" / "harness"), str(REPO / "tests" / "data" / "harness")]


def build_folder(tmp: Path, args) -> tuple[Path, Path]:
    """(a consolidated checkpoint with random weights, its exported transformers folder)."""
    import subprocess

    from llmtrain.checkpoint.consolidate import save_consolidated
    from llmtrain.checkpoint.hf.to_hf import export
    from llmtrain.config import ModelConfig
    from llmtrain.model.gpt import GPT

    tok = tmp / "tokenizer.json"
    subprocess.run([sys.executable, str(REPO / "data_prep" / "train_tokenizer.py"), "--input",
                    str(REPO / "data" / "sample"), "--vocab-size", str(args.vocab), "--output", str(tok)],
                   check=True, capture_output=True)
    cfg = ModelConfig(n_layer=args.n_layer, d_model=args.d_model, n_head=args.n_head, seq_len=args.seq_len,
                      vocab_size=args.vocab)
    ckpt = tmp / "model.safetensors"
    save_consolidated(GPT(cfg, seed=0).state_dict(), {"model_config": cfg.__dict__, "step": 0, "tokens": 0,
                                                      "source": "bench"}, ckpt)
    export(ckpt, tmp / "hf", tokenizer=str(tok), log=lambda *_: None)
    return ckpt, tok


def requests_by_type() -> dict[str, list]:
    from llmtrain.eval.harness import load_tasks, prepare_tasks

    _, loaded = load_tasks(TASKS, DIRS, quiet=True)
    prepare_tasks(loaded)
    out: dict[str, list] = {}
    for task in loaded["tasks"].values():
        task.build_all_requests(rank=0, world_size=1)
        for inst in task.instances:
            out.setdefault(inst.request_type, []).append(inst)
    return out


def agree(kind: str, a: list, b: list) -> bool:
    if kind == "generate_until":
        return a == b
    if kind == "loglikelihood":
        return all(x[1] == y[1] for x, y in zip(a, b)) and np.allclose([x[0] for x in a], [y[0] for y in b],
                                                                       rtol=1e-5, atol=1e-4)
    return bool(np.allclose(a, b, rtol=1e-5, atol=1e-4))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (on a busy 2-core machine 2 threads spin "
                                                          "against each other: ~10x slower small ops)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--no-kv-cache", action="store_true", help="also time the adapter's generation without the cache")
    ap.add_argument("--kinds", default="loglikelihood,loglikelihood_rolling,generate_until",
                    help="the request types to time (comma-separated)")
    ap.add_argument("--json", help="write the numbers to this file")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.chdir(REPO)  # the task YAMLs' data paths are relative to the project folder
    torch.set_num_threads(args.threads)
    from lm_eval.models.huggingface import HFLM

    from llmtrain.eval.harness import HarnessLM

    with tempfile.TemporaryDirectory() as d:
        ckpt, tok = build_folder(Path(d), args)
        models = {"adapter": HarnessLM.from_checkpoint(ckpt, batch_size=args.batch_size, tokenizer=str(tok),
                                                       device="cpu", quiet=True),
                  "hf": HFLM(pretrained=str(Path(d) / "hf"), device="cpu", dtype="float32",
                             batch_size=args.batch_size, logits_cache=False)}
        if args.no_kv_cache:
            models["adapter_no_cache"] = HarnessLM.from_checkpoint(ckpt, batch_size=args.batch_size,
                                                                   tokenizer=str(tok), device="cpu",
                                                                   kv_cache=False, quiet=True)
        reqs = {k: v for k, v in requests_by_type().items() if k in args.kinds.split(",")}
        times = {(m, k): [] for m in models for k in reqs if m != "adapter_no_cache" or k == "generate_until"}
        results = {}
        for r in range(args.rounds):
            order = list(models) if r % 2 == 0 else list(reversed(models))
            for kind in reqs:
                for name in order:
                    if name == "adapter_no_cache" and kind != "generate_until":
                        continue
                    t0 = time.perf_counter()
                    out = getattr(models[name], kind)(reqs[kind], disable_tqdm=True)
                    times[(name, kind)].append(time.perf_counter() - t0)
                    results[(name, kind)] = out
                    print(f"round {r + 1} {kind:<22} {name:<17} {times[(name, kind)][-1]:8.2f} s", file=sys.stderr,
                          flush=True)
    load = os.getloadavg()[0]
    print(f"\n{cpu_description()}, load average {load:.1f}, torch {torch.__version__}, {args.threads} threads, "
          f"batch {args.batch_size}, {args.n_layer}L d{args.d_model} h{args.n_head} T{args.seq_len} V{args.vocab}\n")
    print("| request type | requests | hf backend (median s) | adapter (median s) | speed-up | same results |")
    print("|---|---|---|---|---|---|")
    rows = []
    for kind in reqs:
        hf, ours = statistics.median(times[("hf", kind)]), statistics.median(times[("adapter", kind)])
        same = agree(kind, results[("adapter", kind)], results[("hf", kind)])
        rows.append({"kind": kind, "requests": len(reqs[kind]), "hf_s": hf, "adapter_s": ours, "ratio": hf / ours,
                     "same": same, "hf_rounds": times[("hf", kind)], "adapter_rounds": times[("adapter", kind)]})
        print(f"| {kind} | {len(reqs[kind])} | {hf:.2f} | {ours:.2f} | {hf / ours:.2f}x | {'yes' if same else 'NO'} |")
        if ("adapter_no_cache", kind) in times:
            nc = statistics.median(times[("adapter_no_cache", kind)])
            same_nc = results[("adapter_no_cache", kind)] == results[("adapter", kind)]
            rows.append({"kind": kind + " (no cache)", "adapter_s": nc, "ratio": hf / nc, "same": same_nc,
                         "adapter_rounds": times[("adapter_no_cache", kind)]})
            print(f"| {kind}, adapter without KV cache | {len(reqs[kind])} | {hf:.2f} | {nc:.2f} | {hf / nc:.2f}x | "
                  f"{'yes' if same_nc else 'NO'} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "load": load, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
