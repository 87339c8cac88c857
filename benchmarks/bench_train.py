"""Training throughput on CPU: the project's training path side by side with a nanoGPT-style
plain PyTorch loop, on the same model, weights, batches, optimizer settings and LR schedule.

    python benchmarks/bench_train.py [--rounds 5] [--steps 20] [model.n_layer=6 model.d_model=384 ...]
    python benchmarks/bench_train.py --in-process      # the loops alone: every path in one process
    python benchmarks/bench_train.py --profile 10      # where each path's time goes (cProfile; in one process)
    python benchmarks/bench_train.py --startup         # process start → first step of launcher/pretrain.py

Each path runs in a process of its own, set up as its program sets its process up (by default;
--in-process puts them all in this one, with the trainer's settings), taking turns in rounds
(the order rotates every round, one path computes at a time) so that machine noise hits them
alike:

- ``plain``: nanoGPT's train.py loop, rewritten here: the LR set on every param group from the
  schedule, forward, the next batch fetched right after the forward (synchronously, as nanoGPT's
  get_batch), backward through a (disabled, as for fp32) GradScaler, ``clip_grad_norm_``, fused
  AdamW step, ``zero_grad(set_to_none=True)``, ``loss.item()`` only at log steps. Its process as
  nanoGPT's: glibc's malloc defaults, the same torch thread count.
- ``trainer``: the project's ``Trainer.fit`` (llmtrain/train/trainer.py) over the DeepSpeed
  engine of ``build_engine`` and ``DenseTrainModule`` with the loader and the callbacks that act
  on every step of a default run (throughput/loss logging with its host read every
  log_interval steps, the non-finite guard, the stop signal); only the file sinks
  (metrics.jsonl, TensorBoard, console) are left out. Its process as launcher/pretrain.py's
  (build_trainer: threads, ``train.keep_freed_memory``).
- ``plain_tuned`` (attribution): the plain loop in a process with the trainer's malloc setting:
  the trainer against it is the loop alone.
- ``module`` (attribution): ``DenseTrainModule.train_batch`` alone, batches built synchronously,
  losses read every log_interval steps: the trainer minus its loader and callbacks.

Every path starts from the same weights (GPT(cfg.model, seed)) and reads the same samples of
the bundled corpus (tokenised on first use), so their per-step losses must agree; the script
reports the largest difference over the timed steps, and each model's valid loss at the end.
Prints Markdown rows for benchmarks/BENCHMARKS.md; --json writes the numbers.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from llmtrain.config import load_config
from llmtrain.core.paths import REPO_ROOT
from llmtrain.data.dataset import load_data, padded_vocab
from llmtrain_prep.sample import prepare_sample_data
from llmtrain.data.sampler import batch
from llmtrain.model.gpt import GPT, count_params, flops_per_token
from llmtrain.train.callbacks import Callback, NonFiniteGuard, StopOnSignal, Throughput
from llmtrain.train.dist import init_distributed, keep_freed_memory, set_cpu_threads
from llmtrain.train.ds_config import build_ds_config, load_ds_json
from llmtrain.train.engine import build_engine
from llmtrain.train.loader import BatchPlan, host_micro_batches, to_device
from llmtrain.train.metrics import measure_matmul_flops
from llmtrain.train.schedule import lr_multiplier


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


# ----------------------------------------------------------------------------- the plain loop


class PlainLoop:
    """nanoGPT's train.py loop (fp32 on CPU: autocast off, GradScaler disabled), on the project's
    GPT and the same samples the trainer reads."""

    def __init__(self, cfg, samples, plan: BatchPlan, total_steps: int):
        self.cfg, self.samples, self.plan, self.total_steps = cfg, samples, plan, total_steps
        self.model = GPT(cfg.model, seed=cfg.train.seed)
        self.model.train()
        t = cfg.train
        # nanoGPT's configure_optimizers: a decay and a no-decay group, fused AdamW. The groups are
        # the project's (nanoGPT also decays the learned position embedding): same optimizer maths.
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            (decay if p.dim() >= 2 and "wpe" not in name else no_decay).append(p)
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps, fused=True)
        self.scaler = torch.amp.GradScaler("cpu", enabled=False)
        self.step = 0
        self.losses: list[torch.Tensor] = []  # every step's loss (detached; read after timing)
        self.X, self.Y = self.get_batch(0, 0)

    def get_batch(self, step: int, micro: int):
        return batch(self.samples, self.plan.start(step, micro), self.plan.micro)

    def get_lr(self, it: int) -> float:
        t = self.cfg.train
        return t.lr * lr_multiplier(it, self.total_steps, t.schedule, t.warmup_steps, t.min_lr_ratio,
                                    t.decay_fraction)

    def run(self, steps: int) -> None:
        t, gas = self.cfg.train, self.plan.gas
        for _ in range(steps):
            lr = self.get_lr(self.step)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            for micro in range(gas):
                loss = self.model(self.X, self.Y)
                loss = loss / gas
                nxt = (self.step, micro + 1) if micro + 1 < gas else (self.step + 1, 0)
                self.X, self.Y = self.get_batch(*nxt)
                self.scaler.scale(loss).backward()
                self.losses.append(loss.detach())
            if t.grad_clip != 0.0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            if self.step % t.log_interval == 0:
                self.last_logged = loss.item() * gas
            self.step += 1

    def step_losses(self) -> list[float]:
        gas = self.plan.gas
        flat = torch.stack(self.losses).tolist() if self.losses else []
        return [sum(flat[i:i + gas]) for i in range(0, len(flat), gas)]

    @torch.no_grad()
    def valid_loss(self, valid, n_batches: int) -> float:
        self.model.eval()
        total = 0.0
        for b in range(n_batches):
            for x, y in host_micro_batches(valid, self.plan, b):
                total += float(self.model(x, y))
        self.model.train()
        return total / (n_batches * self.plan.gas)


# ----------------------------------------------------------------------------- the project's path


class RecordLosses(Callback):
    """Keeps every step's loss tensor (no host read) for the comparison after timing."""

    name = "bench_losses"

    def __init__(self):
        self.losses: list[torch.Tensor] = []

    def post_step(self, t, out) -> None:
        self.losses.append(out.loss)


class TrainerPath:
    """The project's own path: a Trainer built by llmtrain.train.setup.build_trainer (as
    launcher/pretrain.py builds it), with the loop's own callbacks (throughput, non-finite guard,
    stop signal) and none that write files."""

    def __init__(self, cfg, data, ds_config, total_steps: int, device, peak: float):
        from llmtrain.train.setup import RunSpec, build_trainer

        self.record = RecordLosses()
        callbacks = [Throughput(), NonFiniteGuard(cfg.train.max_bad_steps), StopOnSignal(), self.record]
        cfg.train.max_steps = total_steps  # the LR schedule's length, as the plain loop's
        spec = RunSpec(cfg, ds_config, "bench_train", data, run_dir=tempfile.mkdtemp(prefix="bench_train_"))
        self.trainer, _ = build_trainer(spec, callbacks=callbacks)
        self.engine, self.module, self.plan = self.trainer.engine, self.trainer.module, self.trainer.plan

    def run(self, steps: int) -> None:
        t = self.trainer
        t.total_steps = t.step + steps
        status = t.fit()
        assert status == "finished", status

    def step_losses(self) -> list[float]:
        return torch.stack(self.record.losses).tolist()

    def valid_loss(self, valid, n_batches: int) -> float:
        self.module.eval()
        total = sum(float(self.module.eval_batch(to_device(host_micro_batches(valid, self.plan, b),
                                                           self.trainer.device))) for b in range(n_batches))
        self.module.train()
        return total / n_batches


class ModulePath(TrainerPath):
    """DenseTrainModule.train_batch alone: synchronous batches, a host read every log_interval."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.step = 0
        self.pending: list[torch.Tensor] = []

    def run(self, steps: int) -> None:
        samples, log_every, device = self.trainer.data.train, self.trainer.cfg.train.log_interval, self.trainer.device
        for _ in range(steps):
            out = self.module.train_batch(to_device(host_micro_batches(samples, self.plan, self.step), device))
            self.step += 1
            self.record.losses.append(out.loss)
            self.pending.append(out.loss)
            if self.step % log_every == 0:
                torch.stack(self.pending).tolist()
                self.pending = []


# ----------------------------------------------------------------------------- start-up


OP_BUILD = re.compile(r"(Building extension|ninja|JIT|torch_extensions|Loading extension|Time to load \w+ op|"
                      r"Emitting ninja|Installed CUDA version|compiling)", re.I)


def startup(runs: int) -> dict:
    """Process start → first step of ``python launcher/pretrain.py train.max_steps=1`` (the tiny default
    run), from the console lines' arrival times; any sign of a DeepSpeed op build in the output."""
    out = []
    for i in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-u", str(REPO_ROOT / "launcher" / "pretrain.py"), "--run-dir", f"{tmp}/run",
                   "train.max_steps=1"]
            t0 = time.perf_counter()
            p = subprocess.Popen(cmd, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 env={**os.environ, "PYTHONUNBUFFERED": "1"})
            marks, lines = {}, []
            for line in p.stdout:
                dt = time.perf_counter() - t0
                lines.append(line.rstrip())
                if line.startswith("run folder:"):
                    marks.setdefault("run_folder_s", dt)
                if re.match(r"step\s+1/1 ", line):
                    marks.setdefault("first_step_s", dt)
            rc = p.wait()
            marks["exit_s"] = time.perf_counter() - t0
            builds = [ln for ln in lines if OP_BUILD.search(ln)]
            out.append({"run": i, "rc": rc, **marks, "op_build_lines": builds, "n_lines": len(lines)})
            print(json.dumps(out[-1]), flush=True)
            if rc != 0:
                print("\n".join(lines[-30:]), file=sys.stderr)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import deepspeed"], check=True, capture_output=True)
    imp = time.perf_counter() - t0
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=True, capture_output=True)
    imp_torch = time.perf_counter() - t0
    return {"runs": out, "python_import_deepspeed_s": imp, "python_import_torch_s": imp_torch}


# ----------------------------------------------------------------------------- per-step pieces


def overheads(cfg, data, ds_config, total_steps: int, device, peak: float, reps: int) -> dict:
    """CPU and wall time of each piece of per-step work the project's path does and the plain loop
    does not (or does differently), on the real model's gradients, interleaved ``reps`` times,
    medians. Pieces marked 'proposed' are cheaper replacements, for comparison."""
    import torch.distributed as dist

    from llmtrain.train.dist import all_reduce
    from llmtrain.train.module import poison_nonfinite

    tp = TrainerPath(cfg, data, ds_config, total_steps, device, peak)
    engine, plan = tp.engine, tp.plan
    params = [p for p in engine.module.parameters() if p.requires_grad]
    (x, y), = to_device(host_micro_batches(data.train, plan, 0), device)[:1]
    loss = engine(x, y)
    engine.backward(loss)  # gradients to work on
    grads = [p.grad for p in params]
    opt = engine.basic_optimizer
    clip = cfg.train.grad_clip
    plain_opt = torch.optim.AdamW([{"params": g["params"], "weight_decay": g["weight_decay"]}
                                   for g in opt.param_groups], lr=1e-9, fused=True)

    def ds_reduce():  # DeepSpeed ZeRO-0: flatten into buckets, all-reduce, copy back
        engine.buffered_allreduce_fallback(elements_per_buffer=500000000)

    def inplace_reduce():  # proposed: all-reduce every gradient in place (no flatten, no copy back)
        for g in grads:
            dist.all_reduce(g)
        torch._foreach_mul_(grads, 1.0 / dist.get_world_size())

    def engine_clip():  # the engine's clipping (keep_clip_norm: torch's foreach norm and scale on one replica)
        engine.clip_fp32_gradients()

    def ds_clip():  # DeepSpeed's own clip_grad_norm_ (per-tensor norm and mul_, norm all-reduce)
        from deepspeed.runtime.utils import clip_grad_norm_

        clip_grad_norm_(params, clip, mpu=engine.mpu)

    def torch_clip():  # the plain loop's: foreach norm and foreach scale
        torch.nn.utils.clip_grad_norm_(params, clip)

    def skip_adamw():  # SkipNonFiniteAdamW.step with the clip norm at hand: flag all-reduce + .item() + fused step
        opt.clip_norm = torch.tensor(1.0)
        opt.step()

    def fused_adamw():
        plain_opt.step()

    def step_extras():  # train_batch's own work per step: poison, loss/stop all-reduce, skip counters, get_lr
        total = torch.zeros(2, device=device)
        poison_nonfinite(loss.detach())
        total[0] += loss.detach()
        all_reduce(total)
        engine.get_lr()

    def batch_build():  # what the loader builds per step (in line on CPU, as the plain loop)
        host_micro_batches(data.train, plan, 1)

    pieces = {"DeepSpeed ZeRO-0 gradient all-reduce (flatten + all-reduce + copy back)": ds_reduce,
              "proposed: in-place all-reduce of each gradient": inplace_reduce,
              "the engine's clipping (keep_clip_norm: foreach on one replica)": engine_clip,
              "DeepSpeed clip_grad_norm_ (per-tensor norm and mul_, norm all-reduce)": ds_clip,
              "torch clip_grad_norm_ (foreach), as the plain loop": torch_clip,
              "SkipNonFiniteAdamW.step (flag all-reduce, host read, fused AdamW)": skip_adamw,
              "torch fused AdamW step, as the plain loop": fused_adamw,
              "train_batch extras (poison, loss all-reduce, get_lr)": step_extras,
              "one step's batch (host_micro_batches)": batch_build}
    cpu_t: dict[str, list[float]] = {k: [] for k in pieces}
    wall_t: dict[str, list[float]] = {k: [] for k in pieces}
    import random

    order = list(pieces.items())
    for _ in range(reps):
        random.shuffle(order)  # no piece always runs after the same other one (cache state)
        for k, fn in order:
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            cpu_t[k].append(time.process_time() - c0)
            wall_t[k].append(time.perf_counter() - t0)
    return {k: {"cpu_ms": statistics.median(cpu_t[k]) * 1e3, "wall_ms": statistics.median(wall_t[k]) * 1e3}
            for k in pieces}


def phases(cfg, data, ds_config, total_steps: int, steps: int) -> dict:
    """Forward, backward and optimizer step of the DeepSpeed engine and of the plain loop,
    alternating every step on the same batch (so both see the same machine load): wall ms,
    medians over the steps after the first two."""
    engine = build_engine(cfg, ds_config, total_steps)
    plan = BatchPlan(cfg.train.global_batch_size, engine.train_micro_batch_size_per_gpu(), 1, 0)
    plain = PlainLoop(cfg, data.train, plan, total_steps)
    t = {k: [] for k in ("engine forward", "engine.backward (with its gradient all-reduce)",
                         "engine.step (clip, skip check, AdamW, schedule)", "plain forward", "plain backward",
                         "plain clip + AdamW + zero_grad")}
    keys = list(t)
    for s in range(steps):
        (x, y), = host_micro_batches(data.train, plan, s)[:1]
        t0 = time.perf_counter()
        loss = engine(x, y)
        t1 = time.perf_counter()
        engine.backward(loss)
        t2 = time.perf_counter()
        engine.step()
        t3 = time.perf_counter()
        loss = plain.model(x, y)
        t4 = time.perf_counter()
        loss.backward()
        t5 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(plain.model.parameters(), cfg.train.grad_clip)
        plain.optimizer.step()
        plain.optimizer.zero_grad(set_to_none=True)
        t6 = time.perf_counter()
        for k, a, b in zip(keys, (t0, t1, t2, t3, t4, t5), (t1, t2, t3, t4, t5, t6)):
            t[k].append(b - a)
    return {k: statistics.median(v[2:]) * 1e3 for k, v in t.items()}


# ----------------------------------------------------------------------------- main


def profile_paths(paths: dict, steps: int, top: int) -> None:
    """cProfile of ``steps`` steps of each path: the functions with the most time of their own, and
    the cumulative time of the project's per-step pieces."""
    for name, p in paths.items():
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        p.run(steps)
        prof.disable()
        wall = time.perf_counter() - t0
        s = io.StringIO()
        st = pstats.Stats(prof, stream=s)
        st.sort_stats("tottime").print_stats(top)
        print(f"\n===== {name}: {steps} steps, {wall:.2f} s wall ({wall / steps * 1e3:.1f} ms/step) =====")
        print("\n".join(s.getvalue().splitlines()[:top + 12]))
        s = io.StringIO()
        st = pstats.Stats(prof, stream=s)
        st.sort_stats("cumulative").print_stats(r"llmtrain|deepspeed|bench_train|optim|clip_grad|autograd",
                                                top * 2)
        print(f"--- {name}: cumulative (project, deepspeed, optimizer) ---")
        print("\n".join(s.getvalue().splitlines()[:top * 2 + 12]))


def make_path(name: str, cfg, data, ds_config, total_steps: int, device, peak: float):
    if name in ("plain", "plain_tuned"):
        micro = cfg.train.micro_batch_size or cfg.train.global_batch_size
        plan = BatchPlan(cfg.train.global_batch_size, micro, cfg.train.global_batch_size // micro, 0)
        return PlainLoop(cfg, data.train, plan, total_steps)
    if name == "trainer":
        return TrainerPath(cfg, data, ds_config, total_steps, device, peak)
    if name == "module":
        return ModulePath(cfg, data, ds_config, total_steps, device, peak)
    raise SystemExit(f"--paths: unknown path {name!r} (plain, plain_tuned, trainer, module)")


def check_initial_weights(name: str, path, cfg) -> None:
    ref = GPT(cfg.model, seed=cfg.train.seed).state_dict()
    model = path.model if name.startswith("plain") else path.engine.module
    same = all(torch.equal(ref[k], v) for k, v in model.state_dict().items() if k in ref)
    assert same, f"{name}: initial weights differ from GPT(cfg.model, seed)"


class LocalRunner:
    """A path in this process."""

    def __init__(self, name: str, path):
        self.name, self.path = name, path

    def run(self, steps: int) -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        self.path.run(steps)
        return time.perf_counter() - t0, time.process_time() - c0

    def step_losses(self) -> list[float]:
        return self.path.step_losses()

    def valid_loss(self, valid, n_batches: int) -> float:
        return self.path.valid_loss(valid, n_batches)

    def close(self) -> None:
        pass


class ProcessRunner:
    """A path in a process of its own, set up as its program sets up its process: ``plain`` as
    nanoGPT's train.py runs (glibc's malloc defaults), ``trainer``/``module`` as
    launcher/pretrain.py (build_trainer: threads, train.keep_freed_memory), ``plain_tuned`` the
    plain loop with the trainer's malloc setting (what the loop alone costs). Commands and replies
    are JSON lines on the worker's stdin and its original stdout (its prints go to stderr); each
    run is timed inside the worker, so the pipe's latency is not counted."""

    def __init__(self, name: str, argv: list[str]):
        self.name = name
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name] + argv
        env = {k: v for k, v in os.environ.items()  # a process group of its own (this one's port is taken)
               if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_SIZE")}
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, env=env)
        self.ask({"op": "ready"})

    def ask(self, cmd: dict):
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"bench worker {self.name} exited with {self.proc.wait()} (its output is above)")
        return json.loads(line)

    def run(self, steps: int) -> tuple[float, float]:
        r = self.ask({"op": "run", "steps": steps})
        return r["wall"], r["cpu"]

    def step_losses(self) -> list[float]:
        return self.ask({"op": "losses"})

    def valid_loss(self, valid, n_batches: int) -> float:
        return self.ask({"op": "valid", "n_batches": n_batches})

    def close(self) -> None:
        self.ask({"op": "quit"})
        self.proc.wait()


def common_setup(args, apply_malloc: bool):
    """Config, data, DeepSpeed config and the schedule length of every path (the same in every
    process); the torch threads as the trainer picks them; glibc's malloc setting when asked."""
    cfg = load_config(None, args.overrides)
    if args.threads:
        cfg.train.threads = args.threads  # build_trainer sets the same count
    rank, world, _, device = init_distributed()
    threads = set_cpu_threads(cfg.train.threads)
    if apply_malloc and cfg.train.keep_freed_memory:
        keep_freed_memory()
    cfg.data.prefix = prepare_sample_data(cfg, rank)
    data = load_data(cfg, cfg.data.prefix, "bench_train")
    if cfg.model.vocab_size is None:
        cfg.model.vocab_size = padded_vocab(data.vocab_size)
    user, ds_path = load_ds_json(None)
    ds_config = build_ds_config(cfg, user, ds_path, "bench_train", 1)
    total_steps = args.warmup + args.rounds * args.steps + args.profile
    return cfg, data, ds_config, total_steps, device, threads


def worker(name: str, args) -> None:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # everything the path prints goes to stderr
    cfg, data, ds_config, total_steps, device, _ = common_setup(args, apply_malloc=name == "plain_tuned")
    path = make_path(name, cfg, data, ds_config, total_steps, device, 0.0)
    check_initial_weights(name, path, cfg)
    local = LocalRunner(name, path)
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "run":
            wall, cpu = local.run(cmd["steps"])
            reply = {"wall": wall, "cpu": cpu}
        elif op == "losses":
            reply = local.step_losses()
        elif op == "valid":
            reply = local.valid_loss(data.valid, cmd["n_batches"])
        else:
            reply = op
        proto.write(json.dumps(reply) + "\n")
        if op == "quit":
            break


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per path per round")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per path first")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: what the trainer picks)")
    ap.add_argument("--paths", default="plain,trainer,plain_tuned",
                    help="comma-separated subset of plain,plain_tuned,trainer,module")
    ap.add_argument("--in-process", action="store_true",
                    help="every path in this one process, with the trainer's process settings (malloc, threads) "
                         "for all: the loops alone, side by side")
    ap.add_argument("--profile", type=int, default=0, metavar="STEPS",
                    help="after the rounds, cProfile STEPS steps of each path (with --in-process)")
    ap.add_argument("--overheads", type=int, default=0, metavar="REPS",
                    help="only time the per-step pieces the project's path adds (REPS interleaved repetitions)")
    ap.add_argument("--phases", type=int, default=0, metavar="STEPS",
                    help="only time forward/backward/step of the engine and the plain loop, alternating every step")
    ap.add_argument("--startup", action="store_true", help="only measure start-up of launcher/pretrain.py")
    ap.add_argument("--startup-runs", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the results to this file")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. model.n_layer=6")
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args)
    from benchutil import cpu_description

    if args.startup:
        print(f"machine: {cpu_description()}; load average {load_average()}", flush=True)
        res = startup(args.startup_runs)
        res["load_average_end"] = load_average()
        print(json.dumps(res, indent=1))
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=1))
        return

    isolate = not (args.in_process or args.profile or args.phases or args.overheads)
    cfg, data, ds_config, total_steps, device, threads = common_setup(args, apply_malloc=not isolate)
    peak = max(measure_matmul_flops(seconds=0.3) for _ in range(3))

    if args.phases:
        load_start = load_average()
        res = phases(cfg, data, ds_config, total_steps + args.phases, args.phases)
        print(f"\nmachine: {cpu_description()}, {threads} torch threads; load average {load_start} at start, "
              f"{load_average()} at end; medians of {args.phases - 2} steps\n")
        print("| phase | wall ms |\n|---|---|")
        for k, v in res.items():
            print(f"| {k} | {v:.1f} |")
        eng = sum(v for k, v in res.items() if k.startswith("engine"))
        pl = sum(v for k, v in res.items() if k.startswith("plain"))
        print(f"| **engine total / plain total** | **{eng:.0f} / {pl:.0f} = {pl / eng:.3f}x** |")
        if args.json:
            Path(args.json).write_text(json.dumps({"load_average_start": load_start, "phases_ms": res}, indent=1))
        return
    if args.overheads:
        load_start = load_average()
        res = overheads(cfg, data, ds_config, total_steps, device, peak, args.overheads)
        n_params = count_params(cfg.model)["n_params"]
        print(f"\nmachine: {cpu_description()}, {threads} torch threads; load average {load_start} at start, "
              f"{load_average()} at end; model {n_params / 1e6:.2f}M params ({cfg.model.n_layer}L "
              f"d{cfg.model.d_model}); medians of {args.overheads} interleaved repetitions\n")
        print("| per-step piece | CPU ms (whole process) | wall ms |\n|---|---|---|")
        for k, v in res.items():
            print(f"| {k} | {v['cpu_ms']:.1f} | {v['wall_ms']:.1f} |")
        if args.json:
            Path(args.json).write_text(json.dumps({"load_average_start": load_start, "pieces": res}, indent=1))
        return

    names = [n.strip() for n in args.paths.split(",") if n.strip()]
    worker_argv = [f"--rounds={args.rounds}", f"--steps={args.steps}", f"--warmup={args.warmup}"]
    worker_argv += [f"--threads={args.threads}"] if args.threads else []
    worker_argv += args.overrides
    runners: dict = {}
    for name in names:
        if isolate:
            runners[name] = ProcessRunner(name, worker_argv)
        else:
            path = make_path(name, cfg, data, ds_config, total_steps, device, peak)
            check_initial_weights(name, path, cfg)
            runners[name] = LocalRunner(name, path)

    G, T = cfg.train.global_batch_size, cfg.train.seq_len
    load_start = load_average()
    for r in runners.values():
        r.run(args.warmup)
    rates: dict[str, list[float]] = {n: [] for n in runners}
    cpu: dict[str, list[float]] = {n: [] for n in runners}  # CPU seconds of the path's process per step
    order = list(runners)
    for rnd in range(args.rounds):
        for name in order[rnd % len(order):] + order[:rnd % len(order)]:
            wall, cpu_s = runners[name].run(args.steps)
            rates[name].append(args.steps * G * T / wall)
            cpu[name].append(cpu_s / args.steps)
        print(f"round {rnd} (load {load_average()}): " + ", ".join(f"{k} {v[-1]:,.0f} tok/s" for k, v in rates.items()),
              flush=True)
    load_end = load_average()

    # the losses of the timed steps, step by step, and each model's valid loss
    first = args.warmup
    losses = {n: r.step_losses()[: args.warmup + args.rounds * args.steps] for n, r in runners.items()}
    base = "plain" if "plain" in losses else names[0]
    loss_diff = {n: max(abs(a - b) for a, b in zip(losses[n][first:], losses[base][first:]))
                 for n in losses if n != base}
    n_valid = max(1, min(cfg.train.eval_batches, data.valid.num_samples // G)) if data.valid is not None else 0
    valid = {n: r.valid_loss(data.valid, n_valid) for n, r in runners.items()} if n_valid else {}
    if args.profile:
        profile_paths({n: r.path for n, r in runners.items()}, args.profile, 25)
    for r in runners.values():
        r.close()

    med = {k: statistics.median(v) for k, v in rates.items()}
    ratios = {k: statistics.median(a / b for a, b in zip(rates[k], rates[base])) for k in rates}
    cpu_med = {k: statistics.median(v) for k, v in cpu.items()}
    fpt = flops_per_token(cfg.model)
    n_params = count_params(cfg.model)["n_params"]
    micro = cfg.train.micro_batch_size or G
    result = {
        "machine": cpu_description(), "python": platform.python_version(), "torch": torch.__version__,
        "threads": threads, "processes": "one per path" if isolate else "one for all paths",
        "load_average_start": load_start, "load_average_end": load_end,
        "model": {"n_layer": cfg.model.n_layer, "d_model": cfg.model.d_model, "n_head": cfg.model.n_head,
                  "seq_len": T, "vocab_size": cfg.model.vocab_size, "n_params": n_params},
        "batch": G, "micro": micro, "rounds": args.rounds,
        "steps": args.steps, "warmup": args.warmup, "tokens_per_s_rounds": rates, "tokens_per_s_median": med,
        "cpu_s_per_step_rounds": cpu, "cpu_s_per_step_median": cpu_med,
        "ratio_vs_plain_median_of_rounds": ratios, "max_loss_diff_vs_plain_timed_steps": loss_diff,
        "loss_first_last_timed": {n: [v[first], v[-1]] for n, v in losses.items()}, "valid_loss": valid,
        "matmul_gflops": peak / 1e9, "flops_per_token": fpt,
    }
    print(json.dumps(result, indent=1))
    print(f"\nmachine: {cpu_description()}, {threads} torch threads, torch {torch.__version__}; "
          f"{result['processes']}; load average {load_start} at start, {load_end} at end")
    print(f"model: {n_params / 1e6:.2f}M params, {cfg.model.n_layer}L d{cfg.model.d_model} h{cfg.model.n_head} "
          f"T{T} V{cfg.model.vocab_size}, batch {G}x{T}; {fpt / 1e6:.2f} MFLOP/token; fp32 matmul "
          f"{peak / 1e9:.0f} GFLOP/s (best of 3 at start)\n")
    print("| path | tokens/s (median of rounds) | ratio vs plain (median of per-round ratios) | CPU s/step (median) "
          "| MFU vs measured matmul | max loss diff vs plain, timed steps | valid loss at end |")
    print("|---|---|---|---|---|---|---|")
    for k in rates:
        diff = f"{loss_diff[k]:.2e}" if k in loss_diff else "-"
        vl = f"{valid[k]:.4f}" if k in valid else "-"
        print(f"| {k} | {med[k]:,.0f} | {ratios[k]:.3f}x | {cpu_med[k]:.3f} | {med[k] * fpt / peak:.1%} | {diff} "
              f"| {vl} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
