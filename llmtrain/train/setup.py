"""Setting a run up, in two steps that launcher/pretrain.py, the tests and the benchmarks share:

- ``validate``: everything that can be checked before a process group or a model exists (the
  config, task files, the DeepSpeed config for this many processes, the data), each problem a
  one-line ConfigError naming the file and the fix;
- ``build_trainer``: the process group, the data, the run folder, where the run starts from
  (train/start.py), the engine, the train module of the layout, the callbacks, and the Trainer
  with its start point applied.

``run_training`` is the whole job: validate, build, fit, report; the exit code.
"""
from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from llmtrain.config import Config, dump_config, load_config
from llmtrain.core.errors import ConfigError, RunError
from llmtrain.core.files import atomic_write_json, atomic_write_text
from llmtrain.core.paths import REPO_ROOT
from llmtrain.data.dataset import DataBundle, load_data, padded_vocab
from llmtrain.data.sampler import SAMPLE_ORDER
from llmtrain.train.callbacks import Callback, StopOnSignal, default_callbacks
from llmtrain.train.dist import (apply_launcher_env, broadcast_object, env_int, init_distributed, keep_freed_memory,
                                 set_cpu_threads)
from llmtrain.train.ds_config import zero_stage
from llmtrain.train.start import Start, agree_on_start, model_from_hf_folder
from llmtrain.train.trainer import Trainer

# prepare_sample(cfg, rank) -> PREFIX: makes the bundled corpus's token data when data.prefix is
# unset (launcher/pretrain.py passes the data tools' own; the library never prepares data itself)
PrepareSample = Callable[[Config, int], str]


@dataclass
class RunSpec:
    """A validated run: its config, the DeepSpeed config for this layout, and its data (None
    while the bundled corpus is still to be prepared)."""

    cfg: Config
    ds_config: dict
    config_path: str
    data: DataBundle | None = None
    run_dir: str | None = None
    prepare_sample: PrepareSample | None = field(default=None, repr=False)
    # where each rank writes its traceback should the run fail: RUN/errors/<launch time>/ (set
    # once every rank knows the run folder)
    errors: Path | None = None


def validate(config: str | None = None, overrides: list[str] = (), deepspeed_config: str | None = None,
             run_dir: str | None = None, prepare_sample: PrepareSample | None = None,
             world: int | None = None) -> RunSpec:
    """The run's spec, checked before any process group or model exists (ConfigError, ValueError
    or OSError: one line naming the file and the fix)."""
    from llmtrain.train.ds_config import load_ds_json

    config_path = config or "configs/tiny.yaml"
    cfg = load_config(config, overrides,
                      before_validate=lambda c: model_from_hf_folder(c, list(overrides), config_path))
    if cfg.train.eval_tasks:  # every task file read and checked now, before any run folder is written
        from llmtrain.eval.tasks import load_tasks

        load_tasks(cfg.train.eval_tasks)
    if cfg.train.harness_tasks:  # lm-eval installed, every task found and its data readable, before any folder
        from llmtrain.eval.harness import load_tasks as load_harness_tasks

        load_harness_tasks(cfg.train.harness_tasks, cfg.train.harness_include_path or None, "train.harness_tasks",
                           quiet=True)
    if cfg.data.prefix is None and prepare_sample is None:
        raise ConfigError(f"{config_path}: data.prefix is not set; set it to token data made by "
                          f"data_prep/tokenize_corpus.py, or use launcher/pretrain.py for the bundled corpus")
    user_ds, ds_path = load_ds_json(deepspeed_config)
    ds_config = check_layout(cfg, user_ds, ds_path, config_path, world or env_int("WORLD_SIZE", 1))
    data = load_data(cfg, cfg.data.prefix, config_path) if cfg.data.prefix is not None else None
    return RunSpec(cfg, ds_config, config_path, data, run_dir, prepare_sample)


def check_layout(cfg: Config, user_ds: dict, ds_path: str, config_path: str, world: int) -> dict:
    """The DeepSpeed config for ``world`` processes, or ConfigError when the layout cannot run."""
    from llmtrain.train.ds_config import build_ds_config

    if cfg.train.precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError(f"{config_path}: train.precision=fp16 is not supported on CPU by DeepSpeed; use bf16 or fp32")
    if world % cfg.parallel.pipeline_stages:
        raise ConfigError(f"{config_path}: parallel.pipeline_stages={cfg.parallel.pipeline_stages} does not divide "
                          f"the {world} processes; launch a multiple of the stage count")
    ds = build_ds_config(cfg, user_ds, ds_path, config_path, world // cfg.parallel.pipeline_stages)
    if cfg.model.is_moe:
        check_moe_layout(cfg, ds, ds_path, config_path, world)
    return ds


def check_moe_layout(cfg: Config, ds: dict, ds_path: str, config_path: str, world: int) -> None:
    """Experts run with data parallelism and ZeRO-0/1/2 (llmtrain/model/parallel_moe.py); the
    rest is refused here, before start-up."""
    from llmtrain.train.ds_config import zero_stage

    ep = cfg.parallel.expert_parallel_size
    if world % ep:
        raise ConfigError(f"{config_path}: parallel.expert_parallel_size={ep} does not divide the {world} processes; "
                          f"launch a multiple of it")
    if zero_stage(ds) == 3:
        raise ConfigError(f"{ds_path}: ZeRO stage 3 with experts (model.moe_experts={cfg.model.moe_experts}): "
                          f"DeepSpeed does not support its MoE layers (which the experts are, for its engine) "
                          f"with ZeRO-3; use ds_configs/zero2.json (or zero0/zero1)")
    deepspeed_half = any(ds.get(k, {}).get("enabled") for k in ("bf16", "fp16"))  # not bf16 under autocast
    if zero_stage(ds) == 0 and deepspeed_half:
        fix = "train.grad_accum_dtype=fp32 (autocast) or " if cfg.train.precision == "bf16" else ""
        raise ConfigError(f"{ds_path}: train.precision={cfg.train.precision} without ZeRO and with experts runs "
                          f"DeepSpeed's {cfg.train.precision} optimizer, which leaves the experts out of the "
                          f"gradient-clipping norm; use {fix}ds_configs/zero1.json or zero2.json")


def total_steps_of(cfg: Config) -> int:
    """train.max_steps, or fewer when train.max_tokens is reached first (Config.total_steps)."""
    return cfg.total_steps()


def build_trainer(spec: RunSpec, callbacks: list[Callback] | None = None,
                  stop: StopOnSignal | None = None) -> tuple[Trainer | None, Start]:
    """The Trainer of ``spec``, with its start point applied, ready to ``fit``; (None, start)
    when the run already finished. ``callbacks``: instead of the default ones (benchmarks);
    ``stop``: the already-installed signal handler (default_callbacks includes it)."""
    import torch.distributed as dist

    from llmtrain.model.gpt import count_params, flops_per_token
    from llmtrain.train.ds_config import layout_of
    from llmtrain.train.engine import build_engine, data_parallel_rank, precision_in_use
    from llmtrain.train.loader import BatchPlan
    from llmtrain.train.metrics import peak_flops
    from llmtrain.train.module import train_module

    cfg = spec.cfg
    rank, world, _, device = init_distributed()
    threads = set_cpu_threads(cfg.train.threads) if device.type == "cpu" else None
    kept = device.type == "cpu" and cfg.train.keep_freed_memory and keep_freed_memory()
    say = print_on(rank)

    data = spec.data
    if data is None:
        cfg.data.prefix = spec.prepare_sample(cfg, rank)
        dist.barrier()
        data = load_data(cfg, cfg.data.prefix, spec.config_path)
    if cfg.model.vocab_size is None:
        cfg.model.vocab_size = padded_vocab(data.vocab_size)
    if cfg.data.document_mask:
        cfg.model.document_mask_token = data.end_of_document_id()

    run_dir, launch = resolve_run_dir(spec.run_dir, cfg)
    spec.run_dir, spec.errors = str(run_dir), run_dir / "errors" / launch
    total_steps = total_steps_of(cfg)
    layout = layout_of(cfg, spec.ds_config, world)
    start = agree_on_start(cfg, run_dir, data, total_steps, rank, layout,
                           weights_on_every_rank=zero_stage(spec.ds_config) != 3)
    if start.kind == "finished":
        say(f"{run_dir}: this run already finished at step {start.step} (summary.json); nothing to do. Raise "
            f"train.max_steps to train on, or use a new --run-dir")
        return None, start
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)

    engine = build_engine(cfg, spec.ds_config, total_steps, start.state, start.step)
    start.state = None  # copied into the model: do not keep a second copy of the weights
    dp_world = world // cfg.parallel.pipeline_stages
    plan = BatchPlan(cfg.train.global_batch_size, engine.train_micro_batch_size_per_gpu(),
                     engine.gradient_accumulation_steps(), data_parallel_rank(engine, rank))
    peak, peak_src = peak_flops(device, cfg.train.precision, cfg.train.peak_flops)
    if callbacks is None:
        callbacks = default_callbacks(cfg, run_dir, rank, stop or StopOnSignal())
    masked = data.has_loss_mask()  # prompt/response data: weigh tokens alike
    module = train_module(engine, cfg.parallel.pipeline_stages > 1, dp_world, masked)
    t = Trainer(cfg, run_dir, engine, module, data, callbacks, rank=rank, world=world, device=device,
                total_steps=total_steps, plan=plan, param_counts=count_params(cfg.model),
                flops_per_token=flops_per_token(cfg.model, cfg.train.seq_len), peak_flops=peak)
    t.layout = layout

    # Training randomness (dropout) starts from a known state whatever set-up consumed: a
    # per-rank seed, so data-parallel replicas draw different masks. Resume restores it.
    seed_everything(cfg.train.seed, rank)
    start.apply(t, say)
    if rank == 0:
        stage = zero_stage(spec.ds_config)
        write_run_files(run_dir, cfg, spec.ds_config, data, {
            "world_size": world, "zero_stage": stage, "pipeline_stages": cfg.parallel.pipeline_stages,
            "micro_batch": plan.micro, "grad_accum": plan.gas, "threads_per_rank": threads,
            "malloc_keeps_freed_memory": kept, "device": str(device),
            "peak_flops": peak, "peak_flops_source": peak_src, "precision": precision_in_use(engine),
        })
        say(f"run folder: {run_dir}")
        say(describe(t, stage, threads))
    t.module.train()
    return t, start


def run_training(spec_args: dict, prepare_sample: PrepareSample | None = None) -> int:
    """The whole job for launcher/pretrain.py: ``validate(**spec_args)``, build, fit, report.
    Exit code 0; 2 with one line "error: ..." for bad input or a run that cannot go on; 1 with
    one line naming the traceback's file for anything else that fails on any rank."""
    stop = StopOnSignal()
    stop.install()  # before anything slow: a preemption during start-up is not lost
    try:
        apply_launcher_env()  # srun / mpirun: RANK and WORLD_SIZE from their variables
        spec = validate(**spec_args, prepare_sample=prepare_sample)
    except (ConfigError, ValueError, OSError) as e:  # before RANK is known under mpirun, its own rank
        return report_error(e, env_int("RANK", env_int("OMPI_COMM_WORLD_RANK", 0)))
    try:
        t, _ = build_trainer(spec, stop=stop)
        if t is not None:
            finish(t, t.fit())
        import torch.distributed as dist

        dist.barrier()
        return 0
    except (ConfigError, RunError, ValueError) as e:
        return report_error(e, env_int("RANK", 0))
    except Exception as e:  # a DeepSpeed, NCCL, out-of-memory, ... error, on one rank or many
        return report_crash(e, spec.errors, env_int("RANK", 0))
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def finish(t: Trainer, status: str) -> None:
    """Rank 0: where the run's results are, or how to resume a stopped run."""
    if t.rank != 0:
        return
    if status == "stopped":
        print(f"checkpoint: {t.last_checkpoint}; relaunch the same command to resume", flush=True)
        return
    s = t.summary or {}
    vl, ftl = s.get("final_valid_loss"), s.get("final_train_loss")
    print(f"done: {t.step} steps, {t.tokens / 1e6:.2f}M tokens in {t.elapsed():.0f}s; final train loss "
          + (f"{ftl:.4f}" if ftl is not None else "n/a") + (f", valid loss {vl:.4f}" if vl is not None else ""))
    print(f"checkpoint: {t.last_checkpoint}")
    print(f"metrics: {t.run_dir / 'metrics.jsonl'}")
    print(f"TensorBoard: tensorboard --logdir {t.run_dir / 'tb'}", flush=True)


def report_error(e: Exception, rank: int) -> int:
    """Exit code 2 with one line "error: ..." from rank 0. Every rank meets the same bad input;
    the others wait a moment before exiting, because a launcher (deepspeed, torchrun) kills every
    rank as soon as one exits, which could otherwise cut rank 0 off before it prints."""
    if rank == 0:
        print(f"error: {e}", file=sys.stderr, flush=True)
    else:
        time.sleep(5)
    return 2


def report_crash(e: Exception, errors: Path | None, rank: int) -> int:
    """Exit code 1. Each failing rank writes its traceback to ERRORS/rank{R}.log; the first to
    fail (the first to create ERRORS/reported) prints the one line naming its file, so a failure
    on every rank is still one line. Before the run folder is known, the traceback is printed."""
    import traceback

    text = "".join(traceback.format_exception(e))
    if errors is None:
        print(f"rank {rank}:\n{text}", file=sys.stderr, flush=True)
        return 1
    log = errors / f"rank{rank}.log"
    try:
        errors.mkdir(parents=True, exist_ok=True)
        atomic_write_text(log, text)
        os.close(os.open(errors / "reported", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return 1  # another rank failed first and said so
    except OSError as write_error:
        print(f"rank {rank} (its traceback could not be written to {log}: {write_error}):\n{text}", file=sys.stderr,
              flush=True)
        return 1
    reason = (str(e).strip().splitlines() or [""])[0][:300]
    print(f"error: rank {rank} failed: {type(e).__name__}: {reason} (traceback: {log}; every failing rank's in "
          f"{errors})", file=sys.stderr, flush=True)
    return 1


# ----------------------------------------------------------------------------- helpers


def print_on(rank: int) -> Callable[[str], None]:
    def say(msg: str) -> None:
        if rank == 0:
            print(msg, flush=True)

    return say


def describe(t: Trainer, stage: int, threads: int | None) -> str:
    """The one-line description of the run printed at start."""
    cfg, counts, plan = t.cfg, t.param_counts, t.plan
    m = cfg.model
    moe = (f", {m.moe_experts} experts top-{m.moe_top_k} ({counts['n_params_active'] / 1e6:.2f}M active), expert "
           f"parallel {cfg.parallel.expert_parallel_size}" if m.is_moe else "")
    return (f"model: {counts['n_params'] / 1e6:.2f}M params ({counts['n_params_non_embedding'] / 1e6:.2f}M "
            f"non-embedding{moe}), {m.n_layer}L d{m.d_model} h{m.n_head} T{cfg.train.seq_len}"
            + (f" (of {m.seq_len} positions)" if cfg.train.seq_len != m.seq_len else "")
            + f" V{m.vocab_size}; {t.world} rank(s), "
            f"ZeRO-{stage}, {cfg.parallel.pipeline_stages} stage(s), micro {plan.micro} x accum {plan.gas} x dp "
            f"{t.world // cfg.parallel.pipeline_stages} = {cfg.train.global_batch_size} seqs/step; {t.total_steps} "
            f"steps ({t.total_steps * t.tokens_per_step / 1e6:.2f}M tokens); device {t.device}"
            + (f", {threads} threads/rank" if threads else ""))


def resolve_run_dir(run_dir: str | None, cfg: Config) -> tuple[Path, str]:
    """Rank 0 picks the folder (a new timestamped one under ./runs unless --run-dir) and names
    this launch (its start time, to file this launch's errors under); every rank gets the same."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if run_dir:
        path = str(Path(run_dir).resolve())
    else:
        path = str((Path.cwd() / "runs" / f"{cfg.log.name}-{stamp}").resolve())
    path, launch = broadcast_object((path, f"{stamp}-{os.getpid()}"))
    return Path(path), launch


def seed_everything(seed: int, rank: int) -> None:
    from deepspeed.accelerator import get_accelerator

    random.seed(seed + rank)
    np.random.seed(seed + rank)
    torch.manual_seed(seed * 1009 + rank)
    get_accelerator().manual_seed(seed * 1009 + rank)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else None
    except Exception:
        return None


def write_run_files(run_dir: Path, cfg: Config, ds_config: dict, data: DataBundle, extra: dict) -> None:
    """What a run did, recoverable from its folder: the resolved config, the DeepSpeed config
    actually used, the data manifests, and the versions, commit and command."""
    import deepspeed

    dump_config(cfg, run_dir / "config.yaml")
    atomic_write_json(run_dir / "ds_config.json", ds_config)
    atomic_write_json(run_dir / "data_manifest.json", {**data.record(), "sample_order": SAMPLE_ORDER})
    env = {
        "torch": torch.__version__,
        "deepspeed": deepspeed.__version__,
        "python": sys.version.split()[0],
        "git_commit": git_commit(),
        "command": sys.argv,
        "hostname": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }
    atomic_write_json(run_dir / "env.json", env)
