"""The memory plan (llmtrain/scaling/memory.py) against measured memory on CPU.

    python benchmarks/bench_memory.py activations [--out FILE]   # in one process, the profiler's peak
    python benchmarks/bench_memory.py runs [--out FILE]          # real launches: peak RSS per rank
    python benchmarks/bench_memory.py zero3-rss [--out FILE]     # ZeRO-3 x2 built partitioned vs one process

**activations**: for each model option set, micro-batch and precision, with and without
activation checkpointing (as the trainer applies it), one forward and backward of the GPT on
CPU after a first one (so the gradients already exist): the peak of the bytes allocated above
the state before it, from torch.profiler's memory events (every allocation and free of the CPU
allocator, in order), against ``activation_bytes`` of the plan.

Every launch runs with MALLOC_MMAP_THRESHOLD_=131072: glibc then hands freed blocks of 128 KiB or
more back to the OS at once instead of keeping them in its heap (where a build that allocates a
module whole and frees it after partitioning leaves holes), so resident memory tracks live memory.

**runs**: ``launcher/pretrain.py`` launched for real (ZeRO-0 x1, ZeRO-2 x2, ZeRO-3 x2, pipeline
x2, each with and without activation checkpointing) on a 27M-parameter GPT: each rank's peak
RSS (the kernel's VmHWM, read every 0.1 s). The same launch of a 2-layer d64 model gives the
process's own baseline (torch, DeepSpeed, gloo, the data); measured = peak RSS - baseline,
against the plan's total per rank. RSS also holds what the allocator keeps after
freeing, so it can only exceed what was allocated at once.

**zero3-rss**: peak RSS per rank of a 105M-parameter GPT: one process (ZeRO-0, and ZeRO-3 x1)
against ZeRO-3 x2 (built under deepspeed.zero.Init), each less the same launch's baseline, once
the engine is built (model states, no step yet) and over the run; ``--repo`` also launches another
checkout (the commit before deepspeed.zero.Init).

**zero3-build**: 2 ranks build the 105M GPT the two ways, whole on every rank (as before) or
partitioned (deepspeed.zero.Init, a piece gathered at a time); each rank's peak RSS above its start.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from llmtrain.config import Config
from llmtrain.core.paths import REPO_ROOT
from llmtrain.core.tasks import free_port

MiB = 1024 ** 2

# model option sets for the activation check: (name, model overrides)
OPTION_SETS = [
    ("gpt2-style", ["model.n_layer=4", "model.d_model=256", "model.n_head=4", "model.vocab_size=4096"]),
    ("llama-style", ["model.n_layer=4", "model.d_model=256", "model.n_head=8", "model.n_kv_head=2",
                     "model.pos_encoding=rotary", "model.norm=rmsnorm", "model.mlp=swiglu", "model.vocab_size=4096",
                     "model.tie_embeddings=false"]),
    ("wide-vocab", ["model.n_layer=2", "model.d_model=128", "model.n_head=4", "model.vocab_size=32768"]),
    ("deep-narrow-vocab", ["model.n_layer=8", "model.d_model=384", "model.n_head=6", "model.vocab_size=512",
                           "model.parallel_residual=true", "model.qk_norm=true"]),
    ("dropout-docmask", ["model.n_layer=4", "model.d_model=256", "model.n_head=4", "model.vocab_size=4096",
                         "model.dropout=0.1", "model.document_mask_token=7", "model.pos_encoding=sinusoidal"]),
    ("mup-zloss-rms", ["model.n_layer=4", "model.d_model=256", "model.n_head=4", "model.vocab_size=4096",
                       "model.parametrization=mup", "model.mup_base_width=128", "model.z_loss=1e-4",
                       "model.norm=rmsnorm", "model.qk_norm=true"]),
]


def config(overrides: list[str]) -> Config:
    from llmtrain.config import load_config

    return load_config(None, overrides)


def peak_allocated(fn) -> int:
    """Peak bytes allocated (above the start) while ``fn`` runs, from the profiler's memory events."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    cur = peak = 0
    for e in events:
        cur += e.nbytes()
        peak = max(peak, cur)
    return peak


# precision modes as the trainer runs them: (train.precision, weights cast to bf16, forward under autocast)
PRECISIONS = {"fp32": ("fp32", False, False),
              "bf16": ("bf16", True, False),  # DeepSpeed's bf16 (ZeRO-1/2/3, pipeline on ZeRO-1)
              "bf16-autocast": ("bf16", False, True)}  # ZeRO-0 bf16: fp32 weights, torch autocast


def measure_activations(cfg: Config, micro: int, mode: str = "fp32") -> int:
    from llmtrain.model.gpt import GPT
    from llmtrain.train.engine import enable_activation_checkpointing

    _, cast, autocast = PRECISIONS[mode]
    model = GPT(cfg.model, seed=0)
    if cast:
        model = model.to(torch.bfloat16)
    if cfg.train.activation_checkpointing:
        enable_activation_checkpointing(model.blocks)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, cfg.model.vocab_size, (micro, cfg.train.seq_len + 1), generator=g)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):  # as DeepSpeed's torch_autocast
            loss = model(x[:, :-1], x[:, 1:])
        loss.backward()

    step()  # the gradients exist from here on, as in training
    return peak_allocated(step)


def planned_activations(cfg: Config, micro: int, mode: str = "fp32") -> int:
    from llmtrain.scaling.memory import Layout, activation_bytes, stage_params

    _, cast, autocast = PRECISIONS[mode]
    ds = {"train_micro_batch_size_per_gpu": micro, "zero_optimization": {"stage": 0}, "bf16": {"enabled": cast},
          "torch_autocast": {"enabled": autocast}}
    lay = Layout.of(cfg, ds, 1, "cpu")
    return activation_bytes(cfg, lay, stage_params(cfg)[0], micro, cfg.train.activation_checkpointing, "cpu")


def activations(args) -> list[dict]:
    torch.set_num_threads(1)
    rows = []
    for name, model in OPTION_SETS:
        for precision in PRECISIONS:
            for ckpt in (False, True):
                for micro, T in ((2, 128), (4, 256)):
                    cfg = config([*model, f"model.seq_len={T}", f"train.precision={PRECISIONS[precision][0]}",
                                  f"train.activation_checkpointing={str(ckpt).lower()}"])
                    measured = measure_activations(cfg, micro, precision)
                    planned = planned_activations(cfg, micro, precision)
                    row = {"model": name, "precision": precision, "checkpointing": ckpt, "micro": micro, "T": T,
                           "measured_mib": measured / MiB, "planned_mib": planned / MiB,
                           "planned_over_measured": planned / measured}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    return rows


# ----------------------------------------------------------------------------- real runs


def token_data(work: Path) -> str:
    """The bundled corpus tokenised with a 4096-token BPE (data_prep's scripts), once."""
    prefix = work / "tok" / "sample"
    if not Path(f"{prefix}_manifest.json").is_file():
        tok = work / "tok" / "tokenizer.json"
        tok.parent.mkdir(parents=True, exist_ok=True)
        sample = REPO_ROOT / "data" / "sample"
        for cmd in ([REPO_ROOT / "data_prep" / "train_tokenizer.py", "--input", sample, "--vocab-size", "4096",
                     "--output", tok],
                    [REPO_ROOT / "data_prep" / "tokenize_corpus.py", "--input", sample, "--tokenizer", tok,
                     "--output-prefix", prefix, "--valid-fraction", "0.02"]):
            subprocess.run([sys.executable, *map(str, cmd)], check=True, capture_output=True)
    return str(prefix)


COMMON = ["train.max_steps=3", "train.log_interval=1", "train.eval_interval=0", "train.eval_batches=1",
          "checkpoint.save_final=false", "log.tensorboard=false", "train.warmup_steps=1", "train.peak_flops=1e11"]
MODEL_30M = ["model.n_layer=8", "model.d_model=512", "model.n_head=8", "model.seq_len=256", "model.vocab_size=4096"]
MODEL_BASELINE = ["model.n_layer=2", "model.d_model=64", "model.n_head=4", "model.seq_len=256", "model.vocab_size=4096"]
RUN_LAYOUTS = [  # name, processes, DeepSpeed config, extra overrides
    ("zero0_x1", 1, "zero0.json", []),
    ("zero2_x2", 2, "zero2.json", []),
    ("zero3_x2", 2, "zero3.json", []),
    ("pipe_x2", 2, "zero1.json", ["parallel.pipeline_stages=2"]),
]


def peak_rss_gib(pid: int) -> float | None:
    """The kernel's high-water mark of a process's resident memory (VmHWM), in GiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024 ** 2
    except OSError:
        return None
    return None


class Launch:
    """One real launch of launcher/pretrain.py (from ``repo``: this checkout, or another one to
    compare with) under the deepspeed launcher. ``peaks``: each rank's VmHWM (GiB), read every
    0.1 s until it exits; ``built``: the same when rank 0 prints "run folder:" (the engine built,
    no step taken yet)."""

    def __init__(self, run_dir: Path, nproc: int, ds: str, overrides: list[str], repo: Path = REPO_ROOT):
        import psutil
        import threading

        cmd = ["deepspeed", "--num_gpus", str(nproc), "--master_port", str(free_port()),
               str(repo / "launcher" / "pretrain.py"), "--run-dir", str(run_dir), "--deepspeed_config",
               str(REPO_ROOT / "ds_configs" / ds), *overrides, "train.threads=1"]
        # glibc returns freed blocks of >= 128 KiB to the OS at once (instead of keeping them in its
        # heap, where interleaved frees leave holes), so the resident memory tracks what is live
        env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(repo), "MALLOC_MMAP_THRESHOLD_": "131072"}
        self.peaks: dict[int, float] = {}
        self.built: list[float] | None = None
        proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines: list[str] = []

        def read():
            for line in proc.stdout:
                lines.append(line)
                if line.startswith("run folder:") and self.built is None:
                    self.poll(psutil, proc.pid)
                    self.built = [self.peaks[r] for r in sorted(self.peaks)]

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        while proc.poll() is None:
            self.poll(psutil, proc.pid)
            time.sleep(0.1)
        reader.join(timeout=10)
        run_dir.with_suffix(".log").write_text("".join(lines))
        if proc.returncode != 0:
            raise SystemExit(f"{run_dir}: exit {proc.returncode}; see {run_dir.with_suffix('.log')}")
        self.rss = [self.peaks[r] for r in sorted(self.peaks)]

    def poll(self, psutil, pid: int) -> None:
        for p in psutil.Process(pid).children(recursive=True):
            try:
                rank = next(int(a.split("=")[1]) for a in p.cmdline() if a.startswith("--local_rank="))
                hwm = peak_rss_gib(p.pid)
                if hwm is not None:
                    self.peaks[rank] = max(self.peaks.get(rank, 0.0), hwm)
            except (psutil.Error, StopIteration, ValueError):
                pass


def launch(run_dir: Path, nproc: int, ds: str, overrides: list[str]) -> list[float]:
    return Launch(run_dir, nproc, ds, overrides).rss


def planned_total(overrides: list[str], nproc: int, ds: str) -> dict:
    from llmtrain.scaling.memory import plan_memory
    from llmtrain.train.ds_config import build_ds_config, load_ds_json

    cfg = config(overrides)
    user, path = load_ds_json(REPO_ROOT / "ds_configs" / ds)
    ds_cfg = build_ds_config(cfg, user, path, "bench", nproc // cfg.parallel.pipeline_stages)
    return plan_memory(cfg, ds_cfg, nproc, budget=1 << 40, device_type="cpu").to_json()


def runs(args) -> list[dict]:
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_memory_"))
    data = token_data(work)
    rows = []
    base_common = [f"data.prefix={data}", *COMMON, "train.global_batch_size=8", "train.micro_batch_size=4"]
    for name, nproc, ds, extra in RUN_LAYOUTS:
        if args.only and name not in args.only:
            continue
        baseline = launch(work / f"{name}_baseline", nproc, ds, [*base_common, *MODEL_BASELINE, *extra])
        for ckpt in ("false", "true"):
            ov = [*base_common, *MODEL_30M, *extra, f"train.activation_checkpointing={ckpt}"]
            rss = launch(work / f"{name}_{ckpt}", nproc, ds, ov)
            plan = planned_total([o for o in ov if not o.startswith("data.")], nproc, ds)
            measured = max(r - b for r, b in zip(rss, baseline)) * 1024  # MiB
            planned = plan["per_rank"]["total_bytes"] / MiB
            row = {"layout": name, "checkpointing": ckpt == "true", "rss_gib": rss, "baseline_gib": baseline,
                   "measured_mib": measured, "planned_mib": planned, "planned_over_measured": planned / measured,
                   "plan": plan["per_rank"]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


MODEL_105M = ["model.n_layer=8", "model.d_model=1024", "model.n_head=16", "model.seq_len=128",
              "model.vocab_size=4096"]


def zero3_rss(args) -> list[dict]:
    """Peak RSS per rank of a 105M-parameter GPT (fp32): one process (ZeRO-0 and ZeRO-3 x1) and
    ZeRO-3 x2, each at the engine's build and over the run, less the baseline of the same launch
    with a 2-layer d64 model; with --repo also the same launches of another checkout (before
    deepspeed.zero.Init)."""
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_memory_"))
    data = token_data(work)
    common = [f"data.prefix={data}", *COMMON, "train.max_steps=2", "train.global_batch_size=2",
              "train.micro_batch_size=1", "checkpoint.save_final=false"]
    repos = [("this", REPO_ROOT)] + ([("base", Path(args.repo).resolve())] if args.repo else [])
    rows = []
    for tag, repo in repos:
        for name, nproc, ds in (("zero0_x1", 1, "zero0.json"), ("zero3_x1", 1, "zero3.json"),
                                ("zero3_x2", 2, "zero3.json")):
            base = Launch(work / f"rss_{tag}_{name}_baseline", nproc, ds,
                          [*common, *MODEL_BASELINE[:-1], "model.seq_len=128"], repo)
            t0 = time.time()
            la = Launch(work / f"rss_{tag}_{name}", nproc, ds, [*common, *MODEL_105M], repo)
            plan = planned_total([*COMMON, *MODEL_105M, "train.global_batch_size=2", "train.micro_batch_size=1"],
                                 nproc, ds)
            row = {"code": tag, "layout": name, "rss_gib": la.rss, "built_gib": la.built,
                   "baseline_gib": base.rss, "baseline_built_gib": base.built,
                   "run_above_baseline_mib": [(r - b) * 1024 for r, b in zip(la.rss, base.rss)],
                   "built_above_baseline_mib": [(r - b) * 1024 for r, b in zip(la.built, base.built)],
                   "planned_mib": plan["per_rank"]["total_bytes"] / MiB,
                   "planned_states_mib": (plan["per_rank"]["total_bytes"] - plan["per_rank"]["activations_bytes"])
                   / MiB, "wall_s": time.time() - t0}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def vm_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build_rank(how: str) -> None:
    """One rank of ``zero3-build``: the 105M GPT built as ZeRO-3 builds it now (partitioned under
    deepspeed.zero.Init, each piece initialised while gathered) or as every rank built it before
    (the whole model, which DeepSpeed then partitions); prints this rank's peak RSS above its start."""
    from llmtrain.config import load_config
    from llmtrain.train.dist import init_distributed

    rank, _, _, _ = init_distributed()
    torch.set_num_threads(1)
    cfg = load_config(None, [*MODEL_105M, "train.global_batch_size=2"])
    ds = {"train_batch_size": 2, "train_micro_batch_size_per_gpu": 1,
          **json.loads((REPO_ROOT / "ds_configs" / "zero3.json").read_text())}
    start = vm_mib("VmRSS")
    if how == "partitioned":
        from llmtrain.train.engine import build_partitioned

        build_partitioned(cfg, ds, None)
    else:
        from llmtrain.model.gpt import GPT

        GPT(cfg.model, seed=cfg.train.seed)
    print(json.dumps({"rank": rank, "how": how, "start_mib": start, "peak_above_start_mib": vm_mib("VmHWM") - start,
                      "resident_above_start_mib": vm_mib("VmRSS") - start}), flush=True)


def zero3_build(args) -> list[dict]:
    rows = []
    for how in ("whole", "partitioned"):
        cmd = ["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), str(Path(__file__).resolve()),
               "_build_rank", how]
        env = {**os.environ, "DS_ACCELERATOR": "cpu", "MALLOC_MMAP_THRESHOLD_": "131072"}
        r = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
        found = [json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith('{"rank"')]
        if r.returncode != 0 or len(found) != 2:
            raise SystemExit(f"zero3-build {how}: exit {r.returncode}\n{r.stderr[-3000:]}")
        for row in sorted(found, key=lambda x: x["rank"]):
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main() -> int:
    argv = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]  # the deepspeed launcher adds it
    if argv and argv[0] == "_build_rank":  # a rank of zero3-build, under the launcher
        build_rank(argv[1])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["activations", "runs", "zero3-rss", "zero3-build"])
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    ap.add_argument("--work", default=None, help="folder for the data and run folders (default: a temp folder)")
    ap.add_argument("--only", nargs="*", default=None, help="runs: only these layouts (zero0_x1 zero2_x2 ...)")
    ap.add_argument("--repo", default=None, help="zero3-rss: also launch this other checkout (e.g. a worktree of "
                    "the commit before deepspeed.zero.Init) with the same arguments")
    args = ap.parse_args()
    modes = {"activations": activations, "runs": runs, "zero3-rss": zero3_rss, "zero3-build": zero3_build}
    rows = modes[args.what](args)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
