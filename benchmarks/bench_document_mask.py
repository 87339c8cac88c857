"""What document masking (data.document_mask) costs on CPU: one training step (forward, backward,
AdamW) of the same model on the same packed windows with the mask off and on, alternating in
rounds (the order rotates), medians and their ratio.

    python benchmarks/bench_document_mask.py [--rounds 7] [--steps 5] [--batch 16] [--doc-tokens 0]
        [model.n_layer=4 ...]

The windows are the bundled corpus as the trainer packs it (its documents are long: a few
separators per window), or with --doc-tokens N the same tokens cut into documents of N tokens
(more separators, the fine-tuning case). On CPU the mask is the dense one through
scaled_dot_product_attention; on a GPU the kernel is flex attention (benchmarks/gpu_check.py
times it).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import numpy as np
import torch
from benchutil import cpu_description  # benchmarks/ is this script's folder

from llmtrain.config import load_config
from llmtrain.data.dataset import padded_vocab, read_manifest, split_shards
from llmtrain_prep.sample import prepare_sample_data
from llmtrain.data.indexed import IndexedDataset
from llmtrain.model.gpt import GPT


def windows(cfg, n: int, doc_tokens: int, eod: int) -> torch.Tensor:
    prefix = prepare_sample_data(cfg, 0)
    m, _ = read_manifest(prefix)
    tokens = np.concatenate([IndexedDataset(s).tokens for s in split_shards(prefix, m, "train")])
    T = cfg.model.seq_len
    x = torch.from_numpy(tokens[: n * (T + 1)].astype(np.int64)).view(n, T + 1)
    if doc_tokens:
        x[:, ::doc_tokens] = eod
    return x


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--doc-tokens", type=int, default=0, help="cut the windows into documents of N tokens")
    ap.add_argument("--json", default=None)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cfg = load_config(None, args.overrides)
    prefix = prepare_sample_data(cfg, 0)
    m, _ = read_manifest(prefix)
    eod = int(m["eod_token_id"])
    cfg.model.vocab_size = padded_vocab(int(m["vocab_size"]))
    data = windows(cfg, args.batch * args.steps, args.doc_tokens, eod)
    seps = float((data[:, :-1] == eod).sum(dim=1).float().mean())
    models = {}
    for name, token in (("off", None), ("on", eod)):
        mc = dataclasses.replace(cfg.model, document_mask_token=token)
        model = GPT(mc, seed=0)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        models[name] = (model, opt)

    def run(name: str) -> float:
        model, opt = models[name]
        t = time.perf_counter()
        for s in range(args.steps):
            b = data[s * args.batch:(s + 1) * args.batch]
            loss = model(b[:, :-1], b[:, 1:])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return (time.perf_counter() - t) / args.steps

    for name in models:  # warm-up
        run(name)
    times = {"off": [], "on": []}
    for r in range(args.rounds):
        for name in (("off", "on") if r % 2 == 0 else ("on", "off")):
            times[name].append(run(name))
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = [on / off for on, off in zip(times["on"], times["off"])]
    res = {"machine": cpu_description(), "threads": torch.get_num_threads(), "model": dataclasses.asdict(cfg.model),
           "batch": args.batch, "separators_per_window": seps, "doc_tokens": args.doc_tokens,
           "step_s_median": med, "ratio_on_off_median": statistics.median(ratios), "rounds": times}
    print(f"| {cfg.model.n_layer}L d{cfg.model.d_model} T{cfg.model.seq_len}, batch {args.batch} | "
          f"{seps:.1f} | {med['off'] * 1e3:.0f} ms | {med['on'] * 1e3:.0f} ms | "
          f"{res['ratio_on_off_median']:.3f}x |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
