"""One call on a GPU machine: the training path checked end to end through launcher/pretrain.py,
then tokens/s and MFU of a 355M GPT.

    python benchmarks/gpu_check.py [--out gpu_check.json] [--budget 570]
    python benchmarks/gpu_check.py --smoke          # a tiny model, 2 CPU processes (gloo): checks the script

Every run is a real launch, exactly as a user types it: ``python launcher/pretrain.py ...`` on one
GPU, ``deepspeed --num_gpus N launcher/pretrain.py ...`` on N (NCCL), on a synthetic token dataset
written with the project's own writer (IndexedDatasetWriter + manifest, a tiny byte-level BPE
tokenizer.json; the model's vocabulary is padded to 50,304). Checks:

1. ZeRO 0, 1, 2, 3 in bf16 and ZeRO-0 in fp32, a few steps each: every run exits 0 with finite
   losses, and all first-step losses agree with the fp32 one within bf16 tolerance.
2. Exact resume with dropout on: an uninterrupted run, and the same run SIGKILLed on one rank
   after a checkpoint and relaunched with the same command; the losses are compared step by step
   (the steps before the kill, both uninterrupted, give the run-to-run noise floor).
3. Throughput: the 355M GPT (24 layers, d_model 1024, 16 heads, seq 2048, vocab 50,304, rotary,
   RMSNorm, SwiGLU, bf16, ZeRO-0) with and without train.compile=true: the median of the logged
   ``tokens_per_s`` and ``mfu`` (datasheet peak) of metrics.jsonl after the first records. Then
   its Mixture-of-Experts twin at the same active compute (8 experts of half the MLP width, top-2,
   dropless; 964M parameters, 355M active) on ZeRO-1 (bf16 with experts needs ZeRO-1/2), the experts
   spread over every GPU (parallel.expert_parallel_size = GPUs): its MFU counts active FLOPs.

4. Document masking (data.document_mask): the compiled flex-attention kernel against SDPA with
   the dense mask (outputs and gradients, bf16, grouped-query heads, T=2048), their forward +
   backward times beside plain causal flash SDPA; then the training path with the mask, eager
   and train.compile=true, whose first-step losses must agree.
5. In-process on the flex path: a pipeline stage (a real PipelineModule on a one-rank group)
   builds one block mask per micro-batch, not one per block; task evaluation calls the model in
   at most 4 fixed shapes (micro x seq_len tokens each) whatever the examples' lengths, so the
   compiled kernel compiles in the first evaluation and never after, and its scores equal each
   row's run alone on the CPU.
6. The memory plan (llmtrain/scaling/memory.py, what ``launcher/pretrain.py --dry-run`` prints)
   against ``torch.cuda.max_memory_allocated`` (the ``mem_allocated_gb`` of metrics.jsonl, the
   peak since start) of the check-1 runs (ZeRO 0-3, bf16, fp32) and of one more ZeRO-0 bf16 run
   with activation checkpointing: each planned total per rank within MEMORY_TOL of the measured
   peak. No extra GPU time but that one run.

Writes one JSON file (--out), prints Markdown rows for benchmarks/BENCHMARKS.md, and exits 1 when
a check fails. Under 10 minutes on one H200 (--budget caps the whole script; a part that no
longer fits is reported as not run, and fails the check).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from llmtrain.core.paths import REPO_ROOT
from llmtrain.core.files import sha256_file
from llmtrain.core.tasks import free_port

PRETRAIN = REPO_ROOT / "launcher" / "pretrain.py"
DS = REPO_ROOT / "ds_configs"

MODEL_355M = ["model.n_layer=24", "model.d_model=1024", "model.n_head=16", "model.seq_len=2048",
              "model.vocab_size=50304", "model.pos_encoding=rotary", "model.norm=rmsnorm", "model.mlp=swiglu",
              "model.tie_embeddings=true"]
# the correctness checks use a GPT-2-small shape: start-up dominates, not the steps
MODEL_CHECK = ["model.n_layer=12", "model.d_model=768", "model.n_head=12", "model.seq_len=1024",
               "model.vocab_size=50304", "model.pos_encoding=rotary", "model.norm=rmsnorm", "model.mlp=swiglu"]
MODEL_SMOKE = ["model.n_layer=2", "model.d_model=64", "model.n_head=4", "model.seq_len=64",
               "model.pos_encoding=rotary", "model.norm=rmsnorm", "model.mlp=swiglu"]
COMMON = ["train.eval_interval=0", "train.eval_batches=1", "train.warmup_steps=2", "train.lr=1e-3",
          "log.tensorboard=false"]

MEMORY_TOL = 0.25  # |planned / measured peak - 1| per run (the CUDA context is outside both)
BF16_FIRST_LOSS_TOL = 0.05  # |first-step loss - fp32's| for bf16 (ln V ~ 10.8 at init; bf16 keeps ~3 digits)


# ----------------------------------------------------------------------------- data


def make_tokenizer(path: Path) -> tuple[int, int]:
    """A tiny byte-level BPE tokenizer.json (HF tokenizers); returns (vocab size, eod id)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = ["the quick brown fox jumps over the lazy dog", "a GPU check writes synthetic tokens",
            "pretraining language models at scale"] * 50
    tok.train_from_iterator(text, trainer)
    tok.save(str(path))
    return tok.get_vocab_size(), tok.token_to_id("<|endoftext|>")


def make_dataset(folder: Path, train_tokens: int, valid_tokens: int, seed: int = 0) -> str:
    """PREFIX of a synthetic dataset in the trainer's format: documents that repeat a random
    pattern (learnable, so the loss moves), ended by the end-of-document token."""
    from llmtrain.data.indexed import IndexedDatasetWriter
    from llmtrain.data.manifest import Manifest, Shard, Split

    folder.mkdir(parents=True, exist_ok=True)
    tok_path = folder / "tokenizer.json"
    vocab, eod = make_tokenizer(tok_path)
    rng = np.random.default_rng(seed)
    splits = {}
    for split, n_tokens in (("train", train_tokens), ("valid", valid_tokens)):
        docs = written = 0
        with IndexedDatasetWriter(folder / f"synth_{split}", np.uint16) as w:
            while written < n_tokens:
                period, length = int(rng.integers(4, 64)), int(rng.integers(256, 4096))
                pattern = rng.integers(0, vocab, size=period)
                pattern[pattern == eod] = 0
                doc = np.append(np.resize(pattern, length), eod).astype(np.uint16)
                w.add_document(doc)
                docs, written = docs + 1, written + len(doc)
        splits[split] = Split([Shard(f"synth_{split}", docs, written)])
    # PREFIX: train + valid; PREFIX_trainonly: the same train shard alone (runs without a final evaluation)
    for name, sp in (("synth", splits), ("synth_trainonly", {"train": splits["train"]})):
        Manifest(prefix=str(folder / name), splits=sp, dtype="uint16", vocab_size=vocab, eod_token="<|endoftext|>",
                 eod_token_id=eod, tokenizer_path=str(tok_path), tokenizer_sha256=sha256_file(tok_path),
                 options={"synthetic": "benchmarks/gpu_check.py", "seed": seed}).write()
    return str(folder / "synth")


# ----------------------------------------------------------------------------- launching


class Clock:
    def __init__(self, budget: float):
        self.t0, self.budget = time.perf_counter(), budget

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)


def launch_cmd(nproc: int, smoke: bool, run_dir: Path, ds_json: str, overrides: list[str]) -> list[str]:
    args = [str(PRETRAIN), "--run-dir", str(run_dir), "--deepspeed_config", str(DS / ds_json), *overrides,
            *smoke_args(smoke)]
    if nproc == 1 and not smoke:
        return [sys.executable, "-u", *args]
    return ["deepspeed", "--num_gpus", str(nproc), "--master_port", str(free_port()), *args]


def smoke_args(smoke: bool) -> list[str]:
    """On CPU, a fixed peak for MFU: measuring a bf16 matmul there (no bf16 units) takes minutes."""
    return ["train.peak_flops=1e11"] if smoke else []


def run_env(smoke: bool) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if smoke:
        env["DS_ACCELERATOR"] = "cpu"
    return env


LIVE: list[Launch] = []  # launches still running (killed if this script is interrupted)
LOG_DIR: Path | None = None


class Launch:
    """One launch of the trainer: its output read line by line in a thread (so that a caller can
    act on a line: the resume check kills a rank), its exit code and wall time; the output is
    kept in WORK/logs/<name>.log."""

    def __init__(self, cmd: list[str], env: dict, on_line=None, name: str = "run"):
        self.cmd, self.lines, self.on_line, self.name = cmd, [], on_line, name
        self.t0 = time.perf_counter()
        LIVE.append(self)
        self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if self.on_line is not None:
                self.on_line(self, line)

    def wait(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            self.kill_all()
            rc = self.proc.wait()
            self.lines.append(f"[gpu_check] killed after {timeout:.0f} s (time budget)")
            rc = rc if rc else -9
        self.reader.join(timeout=10)
        self.wall = time.perf_counter() - self.t0
        if self in LIVE:
            LIVE.remove(self)
        if LOG_DIR is not None:
            LOG_DIR.mkdir(parents=True, exist_ok=True)
            safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in self.name)
            (LOG_DIR / f"{safe}.log").write_text(" ".join(self.cmd) + "\n" + "\n".join(self.lines) + "\n")
        return rc

    def kill_all(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def rank_pids(self) -> list[int]:
        """The training processes: the ranks the deepspeed launcher started (``--local_rank=N`` in their
        command line), or the process itself for a plain ``python launcher/pretrain.py``."""
        import psutil

        kids = []
        for p in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                if any(a.startswith("--local_rank") for a in p.cmdline()):
                    kids.append(p.pid)
            except psutil.Error:  # gone meanwhile
                pass
        return kids or [self.proc.pid]

    def tail(self, n: int = 25) -> str:
        return "\n".join(self.lines[-n:])


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def train_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir)
            if r.get("split") is None and not r.get("event") and r.get("loss") is not None}


def run_once(name: str, cmd: list[str], env: dict, clock: Clock, cap: float, log: dict) -> tuple[int, Launch | None]:
    if clock.left() < 20:
        log[name] = {"rc": None, "error": "not run: time budget spent"}
        print(f"[gpu_check] {name}: not run (time budget spent)", flush=True)
        return -1, None
    print(f"[gpu_check] {name}: {' '.join(cmd)}", flush=True)
    la = Launch(cmd, env, name=name)
    rc = la.wait(min(cap, clock.left()))
    print(f"[gpu_check] {name}: rc {rc} in {la.wall:.0f} s", flush=True)
    if rc != 0:
        print(la.tail(), flush=True)
    return rc, la


# ----------------------------------------------------------------------------- the checks


def check_zero(work: Path, data: str, nproc: int, smoke: bool, clock: Clock, out: dict) -> bool:
    model = MODEL_SMOKE if smoke else MODEL_CHECK
    micro = 4 if smoke else 8
    steps = 3
    base = [f"data.prefix={data}", *model, *COMMON, f"train.max_steps={steps}", "train.log_interval=1",
            f"train.global_batch_size={micro * nproc}", f"train.micro_batch_size={micro}",
            "checkpoint.save_final=false"]
    layouts = [("fp32-zero0", "fp32", "zero0.json"), ("bf16-zero0", "bf16", "zero0.json"),
               ("bf16-zero1", "bf16", "zero1.json"), ("bf16-zero2", "bf16", "zero2.json"),
               ("bf16-zero3", "bf16", "zero3.json")]
    res = out.setdefault("zero", {})
    for name, prec, ds in layouts:
        run_dir = work / f"zero_{name}"
        rc, la = run_once(name, launch_cmd(nproc, smoke, run_dir, ds, base + [f"train.precision={prec}"]),
                          run_env(smoke), clock, 240, res)
        if la is None:
            continue
        losses = train_losses(run_dir)
        res[name] = {"rc": rc, "wall_s": la.wall, "losses": [losses.get(s) for s in range(1, steps + 1)],
                     "overrides": base + [f"train.precision={prec}"], "ds": ds, "run_dir": str(run_dir)}
        if rc != 0:
            res[name]["tail"] = la.tail()
    ref = (res.get("fp32-zero0") or {}).get("losses") or [None]
    ok = True
    for name, _, _ in layouts:
        r = res.get(name, {})
        losses = r.get("losses") or []
        finite = len(losses) == steps and all(v is not None and math.isfinite(v) for v in losses)
        diff = abs(losses[0] - ref[0]) if finite and ref[0] is not None else None
        r["first_loss_diff_vs_fp32"] = diff
        r["ok"] = r.get("rc") == 0 and finite and diff is not None and diff <= BF16_FIRST_LOSS_TOL
        ok &= r["ok"]
    firsts = [res[n]["losses"][0] for n, _, _ in layouts if res.get(n, {}).get("ok")]
    out["zero_first_loss_spread"] = max(firsts) - min(firsts) if firsts else None
    return ok


def peak_allocated_gib(run_dir: Path) -> float | None:
    """The last mem_allocated_gb logged (torch.cuda.max_memory_allocated since start, GiB)."""
    mem = [r["mem_allocated_gb"] for r in read_metrics(run_dir) if r.get("mem_allocated_gb") is not None]
    return mem[-1] if mem else None


def planned_gib(overrides: list[str], ds_json: str, nproc: int) -> float:
    """The memory plan's total per rank (GiB) for a launch's overrides on nproc GPUs."""
    from llmtrain.config import load_config
    from llmtrain.scaling.memory import plan_memory
    from llmtrain.train.ds_config import build_ds_config, load_ds_json

    cfg = load_config(None, overrides)
    cfg.model.vocab_size = cfg.model.vocab_size or 512  # the smoke model: the synthetic tokenizer's 512
    user, path = load_ds_json(DS / ds_json)
    ds = build_ds_config(cfg, user, path, "gpu_check", nproc // cfg.parallel.pipeline_stages)
    return plan_memory(cfg, ds, nproc, budget=1 << 50, device_type="cuda").total / 2**30


def check_memory(work: Path, nproc: int, smoke: bool, clock: Clock, out: dict) -> bool:
    """Planned memory per rank against the measured peak of the check-1 runs and one more with
    activation checkpointing (on CPU, --smoke: the plans only, nothing to compare)."""
    res = out.setdefault("memory", {})
    runs = {n: r for n, r in out.get("zero", {}).items() if isinstance(r, dict) and r.get("rc") == 0}
    if "bf16-zero0" in runs:
        name, r0 = "bf16-zero0-ckpt", runs["bf16-zero0"]
        ov = r0["overrides"] + ["train.activation_checkpointing=true"]
        run_dir = work / "memory_ckpt"
        rc, la = run_once(name, launch_cmd(nproc, smoke, run_dir, "zero0.json", ov), run_env(smoke), clock, 240, res)
        if la is not None and rc == 0:
            runs[name] = {"overrides": ov, "ds": "zero0.json", "run_dir": str(run_dir)}
    ok = bool(runs)
    for name, r in runs.items():
        planned = planned_gib(r["overrides"], r["ds"], nproc)
        measured = None if smoke else peak_allocated_gib(Path(r["run_dir"]))
        ratio = planned / measured if measured else None
        res[name] = {"planned_gib": planned, "measured_gib": measured, "planned_over_measured": ratio}
        ok &= smoke or (ratio is not None and abs(ratio - 1) <= MEMORY_TOL)
    print(f"[gpu_check] memory: {res}", flush=True)
    return ok


def check_resume(work: Path, data: str, nproc: int, smoke: bool, clock: Clock, out: dict) -> bool:
    model = MODEL_SMOKE if smoke else MODEL_CHECK
    micro = 4 if smoke else 8
    steps, every = (12, 4) if smoke else (30, 10)
    overrides = [f"data.prefix={data}", *model, *COMMON, "model.dropout=0.1", "train.precision=bf16",
                 f"train.max_steps={steps}", "train.log_interval=1", f"checkpoint.interval={every}",
                 f"train.global_batch_size={micro * nproc}", f"train.micro_batch_size={micro}"]
    res = out.setdefault("resume", {})
    full_dir, cut_dir = work / "resume_full", work / "resume_killed"
    rc_full, la = run_once("resume: uninterrupted", launch_cmd(nproc, smoke, full_dir, "zero1.json", overrides),
                           run_env(smoke), clock, 240, res)
    if la is None:
        return False
    res["uninterrupted"] = {"rc": rc_full, "wall_s": la.wall}

    killed: dict = {}

    def kill_after_checkpoint(launch: Launch, line: str) -> None:
        """On the first logged step after a checkpoint exists: SIGKILL the last rank."""
        if killed or not line.lstrip().startswith("step"):
            return
        latest = cut_dir / "checkpoints" / "latest"
        if not latest.is_file():
            return
        ckpt = latest.read_text().strip()
        try:
            step = int(line.split()[1].split("/")[0])
        except (IndexError, ValueError):
            return
        if step <= int(ckpt.replace("global_step", "")):
            return
        pids = launch.rank_pids()
        try:
            os.kill(pids[-1], signal.SIGKILL)
        except ProcessLookupError:  # it finished first: reported as "no kill"
            return
        killed.update(pid=pids[-1], at_step=step, checkpoint=ckpt, n_ranks=len(pids))

    if clock.left() < 40:
        res["error"] = "not run: time budget spent"
        return False
    cmd = launch_cmd(nproc, smoke, cut_dir, "zero1.json", overrides)
    print(f"[gpu_check] resume: killed run: {' '.join(cmd)}", flush=True)
    la = Launch(cmd, run_env(smoke), on_line=kill_after_checkpoint, name="resume_killed")
    rc_kill = la.wait(min(240, clock.left()))
    la.kill_all()  # a launcher that outlived its rank
    res["killed"] = {"rc": rc_kill, "wall_s": la.wall, **killed}
    print(f"[gpu_check] resume: killed run ended rc {rc_kill} ({killed or 'no kill: it finished first'})", flush=True)
    rc_res, la = run_once("resume: relaunch", launch_cmd(nproc, smoke, cut_dir, "zero1.json", overrides),
                          run_env(smoke), clock, 240, res)
    if la is None:
        return False
    resumed_line = next((ln for ln in la.lines if "resumed from" in ln), None)
    res["relaunch"] = {"rc": rc_res, "wall_s": la.wall, "resumed_line": resumed_line}
    a, b = train_losses(full_dir), train_losses(cut_dir)
    common = sorted(set(a) & set(b))
    k = int(killed["checkpoint"].replace("global_step", "")) if killed else 0
    before = [abs(a[s] - b[s]) for s in common if s <= k]
    after = [abs(a[s] - b[s]) for s in common if s > k]
    res.update({
        "steps_compared": len(common), "resumed_at": k,
        "max_diff_before_kill": max(before) if before else None, "max_diff_after_resume": max(after) if after else None,
        "bitwise_equal_after_resume": bool(after) and max(after) == 0.0,
        "losses_uninterrupted": [a.get(s) for s in range(1, steps + 1)],
        "losses_resumed": [b.get(s) for s in range(1, steps + 1)],
    })
    # exact on CPU; on GPUs allow the run-to-run noise of non-deterministic kernels (atomics in
    # the embedding backward), measured on the steps before the kill, and never more than 1e-3
    tol = 0.0 if smoke else min(1e-3, max(1e-5, 4 * (max(before) if before else 0.0)))
    res["tolerance"] = tol
    res["ok"] = (rc_full == 0 and bool(killed) and rc_kill != 0 and rc_res == 0 and resumed_line is not None
                 and len(common) == steps and bool(after) and max(after) <= tol)
    return res["ok"]


def throughput(work: Path, data: str, nproc: int, smoke: bool, clock: Clock, out: dict, compile_too: bool,
               moe_too: bool = True) -> bool:
    model = MODEL_SMOKE if smoke else MODEL_355M
    micro = 4 if smoke else 8
    steps, log_every = (12, 2) if smoke else (50, 5)
    # train only: the timed runs end at their last step (no final evaluation, which a compiled model
    # would first compile again for no_grad)
    base = [f"data.prefix={data}_trainonly", *model, *COMMON, "train.precision=bf16", f"train.max_steps={steps}",
            f"train.log_interval={log_every}", f"train.global_batch_size={2 * micro * nproc}",
            f"train.micro_batch_size={micro}", "checkpoint.save_final=false"]
    res = out.setdefault("throughput", {})
    ok = True
    runs = [("eager", "zero0.json", []), ("compile", "zero0.json", ["train.compile=true"])][: 2 if compile_too else 1]
    if moe_too:  # the same active compute: 8 experts of half the MLP width, top-2; experts over every GPU
        runs.append(("moe 8x top-2, eager", "zero1.json", ["model.moe_experts=8", "model.moe_top_k=2",
                                                          "model.moe_granularity=2",
                                                          f"parallel.expert_parallel_size={nproc}"]))
    for name, ds_json, extra in runs:
        run_dir = work / f"speed_{name.split()[0]}"
        rc, la = run_once(f"throughput {name}", launch_cmd(nproc, smoke, run_dir, ds_json, base + extra),
                          run_env(smoke), clock, 420, res)
        if la is None:
            ok = False
            continue
        recs = [r for r in read_metrics(run_dir) if r.get("split") is None and r.get("tokens_per_s")]
        timed = recs[2:] if len(recs) > 3 else recs[1:]  # the first records hold start-up and compilation
        tps = statistics.median(r["tokens_per_s"] for r in timed) if timed else None
        mfus = [r["mfu"] for r in timed if r.get("mfu") is not None]
        mem = [r.get("mem_allocated_gb") for r in recs if r.get("mem_allocated_gb") is not None]
        res[name] = {"rc": rc, "wall_s": la.wall, "tokens_per_s": tps,
                     "mfu": statistics.median(mfus) if mfus else None, "records": len(recs),
                     "timed_records": len(timed), "max_mem_allocated_gb": max(mem) if mem else None,
                     "first_record_tokens_per_s": recs[0]["tokens_per_s"] if recs else None,
                     "final_loss": recs[-1]["loss"] if recs else None}
        if rc != 0:
            res[name]["tail"] = la.tail()
        ok &= rc == 0 and tps is not None
    return ok


def timed_ms(fn, reps: int, sync) -> float:
    fn()
    sync()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def check_document_kernel(smoke: bool, out: dict) -> bool:
    """Compiled flex attention with the block mask vs SDPA with the dense mask, in-process."""
    import torch
    import torch.nn.functional as F

    from llmtrain.model.gpt import Documents, document_attention, flex_document_attention

    dev = "cpu" if smoke else "cuda"
    B, H, KV, T, hd = (2, 4, 2, 200, 16) if smoke else (4, 16, 4, 2048, 64)
    g = torch.Generator(device="cpu").manual_seed(0)
    tokens = torch.randint(1, 1000, (B, T), generator=g)
    tokens[torch.rand(B, T, generator=g) < 4.0 / 512] = 0  # documents of ~128 tokens on average
    docs = Documents.from_tokens(tokens.to(dev), 0)
    dtype = torch.float32 if smoke else torch.bfloat16
    q = torch.randn(B, H, T, hd, generator=g).to(dev, dtype).requires_grad_(not smoke)
    k, v = (torch.randn(B, KV, T, hd, generator=g).to(dev, dtype).requires_grad_(not smoke) for _ in range(2))
    res = out.setdefault("document_kernel", {"shape": [B, H, KV, T, hd], "dtype": str(dtype)})
    try:
        ref = document_attention(q.float(), k.float(), v.float(), docs, 0.0)  # fp32 dense-mask reference
        got = flex_document_attention(q, k, v, docs, compiled=not smoke)
        res["max_abs_diff_out"] = (got.float() - ref).abs().max().item()
        tol = 1e-4 if smoke else 3e-2
        ok = res["max_abs_diff_out"] <= tol
        if not smoke:
            grads = torch.autograd.grad(got.float().square().sum(), (q, k, v))
            qf, kf, vf = (t.detach().float().requires_grad_() for t in (q, k, v))
            ref_grads = torch.autograd.grad(document_attention(qf, kf, vf, docs, 0.0).square().sum(), (qf, kf, vf))
            res["max_rel_diff_grads"] = max(((a.float() - b).abs().max() / b.abs().max()).item()
                                            for a, b in zip(grads, ref_grads))
            ok &= res["max_rel_diff_grads"] <= 5e-2

            def fwd_bwd(attn):
                def step():
                    y = attn()
                    torch.autograd.grad(y.sum(), (q, k, v))
                return step

            sync = torch.cuda.synchronize
            res["ms_flex_block_mask"] = timed_ms(fwd_bwd(lambda: flex_document_attention(q, k, v, docs)), 20, sync)
            dense = docs.dense_mask()
            res["ms_sdpa_dense_mask"] = timed_ms(
                fwd_bwd(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=dense, enable_gqa=True)), 20, sync)
            res["ms_sdpa_causal_flash"] = timed_ms(
                fwd_bwd(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)), 20, sync)
            res["ms_block_mask_build"] = timed_ms(lambda: Documents(docs.ids).block_mask(), 20, sync)
        res["ok"] = bool(ok)
    except Exception as e:  # reported, not raised: the other checks still run
        res.update(ok=False, error=f"{type(e).__name__}: {e}"[:2000])
    print(f"[gpu_check] document kernel: {res}", flush=True)
    return res["ok"]


@contextlib.contextmanager
def one_rank_group():
    """torch.distributed with this process as the only rank (a PipelineModule needs a group);
    the environment is restored after, so later launches pick their own ports."""
    import torch

    from llmtrain.train.dist import init_distributed

    saved = dict(os.environ)
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    init_distributed()
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()
        os.environ.clear()
        os.environ.update(saved)


def check_mask_once_and_task_shapes(work: Path, smoke: bool, clock: Clock, out: dict) -> bool:
    """In-process, on the flex-attention path (GPU, document masking): (a) a pipeline stage holding
    the embedding and every block builds one block mask per micro-batch (forward and backward),
    not one per block; (b) task evaluation calls the model in at most SHAPES fixed shapes of
    micro x seq_len tokens whatever the examples' lengths, so the compiled flex kernel compiles
    in the first evaluation and never again, and its scores equal those of each row run alone
    on the CPU (SDPA with the dense mask, fp32)."""
    import torch
    import torch.nn.attention.flex_attention as fa
    from torch._dynamo.utils import counters

    import llmtrain.model.pipeline as pipeline
    from llmtrain.config import ModelConfig
    from llmtrain.eval.tasks import SHAPES, TaskScorer, batch_scores, load_task
    from llmtrain.model.gpt import GPT, lm_loss
    from llmtrain.tokenizer import load_tokenizer

    dev = torch.device("cpu" if smoke else "cuda")
    res = out.setdefault("mask_once_task_shapes", {})
    if clock.left() < 90:  # three kernel compilations on a GPU: about a minute
        res.update(ok=False, error=f"not run: {clock.left():.0f} s of the budget left")
        return False
    built = []
    real_create = fa.create_block_mask

    def counting_create(*a, **kw):
        built.append(1)
        return real_create(*a, **kw)

    try:
        tok_path = work / "data" / "tokenizer.json"
        tok, eod = load_tokenizer(str(tok_path), "<|endoftext|>")
        L, T, micro = (2, 64, 2) if smoke else (6, 512, 8)
        cfg = ModelConfig(n_layer=L, d_model=64 if smoke else 256, n_head=4, seq_len=T, vocab_size=512,
                          pos_encoding="rotary", norm="rmsnorm", mlp="swiglu", document_mask_token=eod)
        fa.create_block_mask = counting_create
        g = torch.Generator().manual_seed(0)
        with one_rank_group():  # (a) a real PipelineModule stage, forward + backward of 2 micro-batches
            stage = pipeline.gpt_pipeline(cfg, num_stages=1, seed=1).to(dev)
            for _ in range(2):
                ids = torch.randint(0, 512, (micro, T + 1), generator=g)
                ids[torch.rand(micro, T + 1, generator=g) < 1 / 64] = eod
                ids = ids.to(dev)
                lm_loss(stage(ids[:, :-1]), ids[:, 1:]).backward()
        res["stage_block_masks_per_micro_batch"] = len(built) / 2
        res["stage_blocks"] = L
        ok = smoke or len(built) == 2  # on CPU the dense mask is used: no block mask to count

        # (b) task evaluation: the shipped task's first examples, every length
        task = load_task(REPO_ROOT / "data" / "tasks" / "python_docs_cloze.jsonl")
        task.examples = task.examples[:48]
        model = GPT(cfg, seed=2).eval()
        ref = GPT(cfg, seed=2).eval()  # the CPU reference: each row alone, SDPA with the dense mask
        model.to(dev)
        shapes = []

        @torch.no_grad()
        def logits(x):
            shapes.append(tuple(x.shape))
            return model(x)

        sc = TaskScorer([task], tok, eod, T, micro)  # built once, as the trainer does, and run at every evaluation
        torch._dynamo.reset()  # forget earlier checks' kernels: count this one's compilations only
        before = counters["stats"]["unique_graphs"]
        sc.run(logits, dev)  # the first evaluation compiles the kernel once per shape
        graphs = counters["stats"]["unique_graphs"]
        res["compiled_in_first_evaluation"] = graphs - before
        sc.run(logits, dev)
        sc.run(logits, dev)
        res["recompiles_after_first_evaluation"] = counters["stats"]["unique_graphs"] - graphs
        res["shapes"] = sorted(set(shapes))
        ok &= len(res["shapes"]) <= SHAPES and all(b * w == micro * T for b, w in res["shapes"])
        ok &= res["recompiles_after_first_evaluation"] == 0
        ok &= smoke or res["compiled_in_first_evaluation"] >= 1  # the compiled kernel ran, not an eager fallback
        worst = 0.0
        with torch.no_grad():
            for b in sc.batches[:2]:
                got = batch_scores(model(b.x.to(dev)), b).cpu()
                for i, r in enumerate(b.rows):
                    row = sc.rows[r]
                    alone = torch.tensor(row.tokens)[None]
                    lp = torch.log_softmax(ref(alone[:, :-1]).float(), dim=-1)[0]
                    n = row.n_cont
                    want = lp[-n:].gather(-1, alone[0, -n:, None]).sum()
                    worst = max(worst, abs(float(got[i]) - float(want)))
        res["max_abs_score_diff"] = worst
        ok &= worst <= 1e-3
        res["ok"] = bool(ok)
    except Exception as e:  # reported, not raised: the other checks still run
        res.update(ok=False, error=f"{type(e).__name__}: {e}"[:2000])
    finally:
        fa.create_block_mask = real_create
    print(f"[gpu_check] mask once, task shapes: {res}", flush=True)
    return res["ok"]


def check_document_training(work: Path, data: str, nproc: int, smoke: bool, clock: Clock, out: dict) -> bool:
    model = MODEL_SMOKE if smoke else MODEL_CHECK
    micro = 4 if smoke else 8
    base = [f"data.prefix={data}", *model, *COMMON, "train.max_steps=3", "train.log_interval=1",
            f"train.global_batch_size={micro * nproc}", f"train.micro_batch_size={micro}",
            "checkpoint.save_final=false", "train.precision=bf16", "data.document_mask=true"]
    res = out.setdefault("document_training", {})
    for name, extra in (("eager", []), ("compile", ["train.compile=true"])):
        run_dir = work / f"docmask_{name}"
        rc, la = run_once(f"document mask {name}", launch_cmd(nproc, smoke, run_dir, "zero1.json", base + extra),
                          run_env(smoke), clock, 300, res)
        if la is None:
            continue
        losses = train_losses(run_dir)
        res[name] = {"rc": rc, "wall_s": la.wall, "losses": [losses.get(s) for s in (1, 2, 3)]}
        if rc != 0:
            res[name]["tail"] = la.tail()
    firsts = []
    for name in ("eager", "compile"):
        r = res.get(name) or {}
        ls = r.get("losses") or []
        r_ok = r.get("rc") == 0 and len(ls) == 3 and all(v is not None and math.isfinite(v) for v in ls)
        firsts += [ls[0]] if r_ok else []
        res.setdefault(name, {})["ok"] = r_ok
    res["first_loss_diff"] = abs(firsts[0] - firsts[1]) if len(firsts) == 2 else None
    return len(firsts) == 2 and res["first_loss_diff"] <= BF16_FIRST_LOSS_TOL


# ----------------------------------------------------------------------------- main


def device_summary(smoke: bool) -> tuple[str, int]:
    if smoke:
        return "CPU (smoke: gloo, 2 processes)", 2
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA GPU visible; use --smoke to check the script on CPU")
    n = torch.cuda.device_count()
    return f"{torch.cuda.get_device_name(0)} x{n}, torch {torch.__version__}", n


def markdown(out: dict) -> list[str]:
    rows = ["| check | result | details |", "|---|---|---|"]
    z = out.get("zero", {})
    for name, r in z.items():
        if not isinstance(r, dict):
            continue
        losses = ", ".join(f"{v:.4f}" if v is not None else "-" for v in r.get("losses") or [])
        d = r.get("first_loss_diff_vs_fp32")
        detail = f"losses {losses}; first-step diff vs fp32 {d:.2e}" if d is not None else (
            r.get("error") or f"rc {r.get('rc')}; losses {losses or '-'}")
        rows.append(f"| {name} | {'pass' if r.get('ok') else 'FAIL'} | {detail} |")
    r = out.get("resume", {})
    if r:
        rows.append(f"| SIGKILL + resume (dropout 0.1) | {'pass' if r.get('ok') else 'FAIL'} | killed rank at step "
                    f"{r.get('killed', {}).get('at_step')}, resumed from step {r.get('resumed_at')}; "
                    f"{r.get('steps_compared')} steps compared; max diff after resume "
                    f"{r.get('max_diff_after_resume')}, before the kill (noise) {r.get('max_diff_before_kill')} |")
    k = out.get("document_kernel")
    if k:
        times = ", ".join(f"{n[3:]} {k[n]:.2f} ms" for n in ("ms_flex_block_mask", "ms_sdpa_dense_mask",
                                                             "ms_sdpa_causal_flash", "ms_block_mask_build") if n in k)
        rows.append(f"| document mask kernel {k.get('shape')} {k.get('dtype')} | {'pass' if k.get('ok') else 'FAIL'} | "
                    f"out diff {k.get('max_abs_diff_out')}, grad rel diff {k.get('max_rel_diff_grads')}; "
                    f"fwd+bwd {times or '-'} {k.get('error', '')} |")
    for name, m in (out.get("memory") or {}).items():
        if isinstance(m, dict) and "planned_gib" in m:
            meas, ratio = m.get("measured_gib"), m.get("planned_over_measured")
            verdict = ("plan only (CPU)" if out.get("smoke") else
                       "pass" if ratio and abs(ratio - 1) <= MEMORY_TOL else "FAIL")
            rows.append(f"| memory plan {name} | {verdict} | "
                        f"planned {m['planned_gib']:.2f} GiB, max_memory_allocated "
                        f"{f'{meas:.2f} GiB' if meas else '-'}, ratio {f'{ratio:.3f}' if ratio else '-'} |")
    d = out.get("document_training")
    if d:
        rows.append(f"| document mask training, eager / compile | "
                    f"{'pass' if out['checks'].get('document_training') else 'FAIL'} | "
                    f"losses {(d.get('eager') or {}).get('losses')} / {(d.get('compile') or {}).get('losses')} |")
    m = out.get("mask_once_task_shapes")
    if m:
        verdict = "pass" if m.get("ok") else "FAIL"
        rows.append(f"| block mask once per micro-batch; task eval in fixed shapes | {verdict} | "
                    f"{m.get('stage_block_masks_per_micro_batch')} block masks per micro-batch for a stage of "
                    f"{m.get('stage_blocks')} blocks; task shapes {m.get('shapes')}, compiled in the first evaluation "
                    f"{m.get('compiled_in_first_evaluation')}, after it {m.get('recompiles_after_first_evaluation')}; "
                    f"max score diff vs each row alone on CPU "
                    f"{m.get('max_abs_score_diff')} {m.get('error', '')} |")
    rows += ["", "| model | compile | tokens/s | MFU | peak memory | device |", "|---|---|---|---|---|---|"]
    for name, r in out.get("throughput", {}).items():
        if not isinstance(r, dict):
            continue
        tps, mfu, mem = r.get("tokens_per_s"), r.get("mfu"), r.get("max_mem_allocated_gb")
        rows.append(f"| {out['throughput_model']} | {name} | {f'{tps:,.0f}' if tps else '-'} | "
                    f"{f'{mfu:.1%}' if mfu is not None else '-'} | {f'{mem:.1f} GiB' if mem else '-'} | "
                    f"{out['device']} |")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny model on CPU, 2 processes (gloo)")
    ap.add_argument("--out", default="gpu_check.json", help="the JSON result file")
    ap.add_argument("--work", default=None, help="folder for the data and run folders (default: a new temp folder)")
    ap.add_argument("--budget", type=float, default=570.0, help="seconds for the whole script")
    ap.add_argument("--skip", nargs="*", default=[],
                    choices=["zero", "resume", "throughput", "compile", "moe", "docmask", "memory"])
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return check_all(args)
    finally:
        for la in list(LIVE):  # launches run in their own sessions: end them with this script
            la.kill_all()


def check_all(args) -> int:
    global LOG_DIR
    clock = Clock(args.budget)
    device, nproc = device_summary(args.smoke)
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu_check_"))
    LOG_DIR = work / "logs"
    print(f"[gpu_check] {device}; work folder {work}", flush=True)
    t0 = time.perf_counter()
    data = make_dataset(work / "data", 400_000 if args.smoke else 8_000_000, 50_000 if args.smoke else 200_000)
    out: dict = {"device": device, "n_processes": nproc, "smoke": args.smoke, "work": str(work),
                 "data_prefix": data, "data_s": time.perf_counter() - t0,
                 "throughput_model": "tiny 2L d64 (smoke)" if args.smoke else
                 "355M: 24L d1024 h16 T2048 V50304 rotary rmsnorm swiglu bf16",
                 "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "checks": {}}
    if "zero" not in args.skip:
        out["checks"]["zero_stages_agree"] = check_zero(work, data, nproc, args.smoke, clock, out)
    if "zero" not in args.skip and "memory" not in args.skip:
        out["checks"]["memory_plan"] = check_memory(work, nproc, args.smoke, clock, out)
    if "resume" not in args.skip:
        out["checks"]["sigkill_resume_exact"] = check_resume(work, data, nproc, args.smoke, clock, out)
    if "docmask" not in args.skip:
        out["checks"]["document_kernel"] = check_document_kernel(args.smoke, out)
    if "throughput" not in args.skip:
        out["checks"]["throughput_runs"] = throughput(work, data, nproc, args.smoke, clock, out,
                                                      "compile" not in args.skip, "moe" not in args.skip)
    if "docmask" not in args.skip:
        out["checks"]["document_training"] = check_document_training(work, data, nproc, args.smoke, clock, out)
        out["checks"]["mask_once_task_shapes"] = check_mask_once_and_task_shapes(work, args.smoke, clock, out)
    out["wall_s"] = time.perf_counter() - clock.t0
    Path(args.out).write_text(json.dumps(out, indent=1))
    print("\n".join(markdown(out)))
    print(f"\n[gpu_check] {out['wall_s']:.0f} s; checks: {out['checks']}; results: {args.out}", flush=True)
    return 0 if out["checks"] and all(out["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
