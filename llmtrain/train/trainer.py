"""The training run: distributed set-up, the run folder, and the loop that ties together the
pieces beside it: engine.py (model, optimizer, schedule → DeepSpeed engine), step.py (one
optimizer step, evaluation), checkpoint.py (save, resume, shape check), metrics.py (logging).

Entry point: ``main(argv)``, used by launcher/pretrain.py.
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from llmtrain.config import REPO_ROOT, Config, ConfigError, dump_config, load_config
from llmtrain.data.dataset import DataBundle, load_data, padded_vocab, prepare_sample_data
from llmtrain.train.checkpoint import (Progress, check_checkpoint_shape, check_same_model, checkpoint_state,
                                      save_checkpoint, set_rng_state, truncate_metrics)
from llmtrain.train.engine import build_engine, data_parallel_rank
from llmtrain.train.step import any_rank, evaluate, train_step
from llmtrain.utils import atomic_write_json


class RunError(RuntimeError):
    """A problem found while running, reported as one line."""


# ----------------------------------------------------------------------------- arguments


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="pretrain.py",
        description="Train a GPT with DeepSpeed. With no arguments: the tiny default model on the bundled corpus.",
    )
    p.add_argument("--config", default=None, help="YAML experiment config (default: configs/tiny.yaml)")
    p.add_argument("--run-dir", default=None, help="run folder (default: a new folder under ./runs/); an existing one is resumed")
    p.add_argument("--deepspeed_config", default=None, help="DeepSpeed JSON (default: ds_configs/zero0.json)")
    p.add_argument("--deepspeed", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.max_steps=50")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- distributed


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> tuple[int, int, int, torch.device]:
    """Initialise torch.distributed through DeepSpeed (gloo on CPU, nccl on GPU); works under the
    deepspeed launcher and as a plain single process."""
    import deepspeed

    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(free_port())
    use_cuda = torch.cuda.is_available()
    local_rank = env_int("LOCAL_RANK", 0)
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    deepspeed.init_distributed(dist_backend="nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    return torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank, device


def set_cpu_threads(threads: int | None) -> int:
    """Give each rank on this node its share of the cores (oversubscription costs far more
    than it gains on CPU)."""
    local_size = env_int("LOCAL_SIZE", env_int("LOCAL_WORLD_SIZE", 1))
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        cores = os.cpu_count() or 1
    n = threads or max(1, cores // max(1, local_size))
    torch.set_num_threads(n)
    return n


# ----------------------------------------------------------------------------- run folder


def resolve_run_dir(args, cfg: Config, rank: int) -> Path:
    """Rank 0 picks the folder (a new timestamped one under ./runs unless --run-dir); every rank
    gets the same path."""
    import torch.distributed as dist

    if args.run_dir:
        path = str(Path(args.run_dir).resolve())
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = str((Path.cwd() / "runs" / f"{cfg.log.name}-{stamp}").resolve())
    obj = [path]
    dist.broadcast_object_list(obj, src=0)
    return Path(obj[0])


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else None
    except Exception:
        return None


def write_run_files(run_dir: Path, cfg: Config, ds_config: dict, data: DataBundle, extra: dict) -> None:
    import deepspeed

    dump_config(cfg, run_dir / "config.yaml")
    atomic_write_json(run_dir / "ds_config.json", ds_config)
    atomic_write_json(run_dir / "data_manifest.json", {"prefixes": data.prefixes, "weights": data.weights, "manifests": data.manifests})
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


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = parse_args(argv)
    rank_env = env_int("RANK", 0)
    try:
        cfg = load_config(args.config, args.overrides)
        from llmtrain.train.ds_config import load_ds_json

        user_ds, ds_path = load_ds_json(args.deepspeed_config)
        # validate the layout and the user's data before any process group or model exists
        config_path = args.config or "configs/tiny.yaml"
        ds_config = check_layout(cfg, user_ds, ds_path, config_path, env_int("WORLD_SIZE", 1))
        data = load_data(cfg, cfg.data.prefix, config_path) if cfg.data.prefix is not None else None
    except (ConfigError, ValueError, OSError) as e:
        if rank_env == 0:
            print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    try:
        return train(args, cfg, ds_config, data)
    except (ConfigError, RunError, ValueError) as e:
        if env_int("RANK", 0) == 0:
            print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def check_layout(cfg: Config, user_ds: dict, ds_path: str, config_path: str, world: int) -> dict:
    """The DeepSpeed config for ``world`` processes, or ConfigError when the layout cannot run."""
    from llmtrain.train.ds_config import build_ds_config

    if cfg.train.precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError(f"{config_path}: train.precision=fp16 is not supported on CPU by DeepSpeed; use bf16 or fp32")
    if world % cfg.parallel.pipeline_stages:
        raise ConfigError(f"{config_path}: parallel.pipeline_stages={cfg.parallel.pipeline_stages} does not divide "
                          f"the {world} processes; launch a multiple of the stage count")
    return build_ds_config(cfg, user_ds, ds_path, config_path, world // cfg.parallel.pipeline_stages)


class StopSignal:
    """Remembers a SIGTERM/SIGINT (preemption) so the loop can checkpoint and exit cleanly."""

    def __init__(self):
        self.received = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name


def train(args, cfg: Config, ds_config: dict, data: DataBundle | None) -> int:
    """The run, with the DeepSpeed config and (unless the bundled corpus is still to be
    prepared) the data already validated by main()."""
    import torch.distributed as dist

    from llmtrain.model.gpt import count_params, flops_per_token
    from llmtrain.train.ds_config import zero_stage
    from llmtrain.train.metrics import MetricsLogger, memory_stats, peak_flops

    stop = StopSignal()
    config_path = args.config or str(Path("configs") / "tiny.yaml")
    rank, world, local_rank, device = init_distributed()
    threads = set_cpu_threads(cfg.train.threads) if device.type == "cpu" else None
    is_main = rank == 0

    def say(msg: str) -> None:
        if is_main:
            print(msg, flush=True)

    if data is None:
        cfg.data.prefix = prepare_sample_data(cfg, rank)
        dist.barrier()
        data = load_data(cfg, cfg.data.prefix, config_path)
    if cfg.model.vocab_size is None:
        cfg.model.vocab_size = padded_vocab(data.vocab_size)

    pipeline = cfg.parallel.pipeline_stages > 1
    dp_world = world // cfg.parallel.pipeline_stages
    run_dir = resolve_run_dir(args, cfg, rank)
    ckpt_dir = run_dir / "checkpoints"
    resuming = cfg.checkpoint.resume and (ckpt_dir / "latest").is_file()
    if resuming:
        check_checkpoint_shape(ckpt_dir, cfg)
    init_file = None
    if not resuming and cfg.checkpoint.init_from:
        init = Path(cfg.checkpoint.init_from)
        if init.is_file():  # a consolidated checkpoint (python -m llmtrain.train.consolidate)
            init_file = torch.load(init, map_location="cpu", weights_only=False)
            check_same_model(init_file.get("model_config", {}), cfg, init, "")
        elif init.is_dir():
            check_checkpoint_shape(init.parent, cfg)
        else:
            raise ConfigError(f"{init}: checkpoint.init_from is neither a checkpoint folder (.../checkpoints/global_stepN) "
                              f"nor a consolidated .pt file")
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)

    tokens_per_step = cfg.train.global_batch_size * cfg.model.seq_len
    total_steps = cfg.train.max_steps
    if cfg.train.max_tokens:
        total_steps = min(total_steps, math.ceil(cfg.train.max_tokens / tokens_per_step))

    engine = build_engine(cfg, ds_config, total_steps, init_file["state_dict"] if init_file else None,
                          int(init_file.get("step") or 0) if init_file else 0)
    dp_rank = data_parallel_rank(engine, rank)
    micro, gas = engine.train_micro_batch_size_per_gpu(), engine.gradient_accumulation_steps()
    per_rank = micro * gas
    stage = zero_stage(ds_config)
    counts = count_params(cfg.model)
    fpt = flops_per_token(cfg.model)
    peak, peak_src = peak_flops(device, cfg.train.precision, cfg.train.peak_flops)

    prog = Progress()
    # Training randomness (dropout) starts from a known state whatever set-up consumed: a
    # per-rank seed, so data-parallel replicas draw different masks. Resume restores it.
    random.seed(cfg.train.seed + rank)
    np.random.seed(cfg.train.seed + rank)
    torch.manual_seed(cfg.train.seed * 1009 + rank)
    source = None
    if resuming:
        source = ckpt_dir / (ckpt_dir / "latest").read_text().strip()
    elif init_file is not None:
        prog.step, prog.tokens = int(init_file.get("step") or 0), int(init_file.get("tokens") or 0)
        say(f"started from {cfg.checkpoint.init_from} (weights; step {prog.step}; fresh optimizer state)")
    elif cfg.checkpoint.init_from:
        source = Path(cfg.checkpoint.init_from)
    if source is not None:
        load_path, client = engine.load_checkpoint(str(source.parent), tag=source.name)
        if load_path is None:
            raise RunError(f"{source}: checkpoint could not be loaded; remove {ckpt_dir / 'latest'} to start fresh")
        prog.step, prog.tokens, prog.wall_time = client["step"], client["tokens"], client["wall_time"]
        prog.bad_steps = client.get("bad_steps", 0)
        rngs = client["rng"]
        set_rng_state(rngs[rank] if len(rngs) == world else rngs[0])
        if not resuming:
            # A branch from another run's checkpoint follows this run's schedule and peak LR
            # from its first step (the loaded optimizer carries the source run's LR), and its
            # wall time counts only its own work.
            sched = engine.lr_scheduler
            sched.base_lrs = [cfg.train.lr for _ in sched.base_lrs]
            sched.last_epoch = prog.step
            for group, base in zip(engine.optimizer.param_groups, sched.base_lrs):
                group["lr"] = base * sched.lr_lambdas[0](prog.step)
            prog.wall_time = 0.0
        say(f"{'resumed' if resuming else 'started'} from {source} at step {prog.step}")

    logger = None
    if is_main:
        write_run_files(run_dir, cfg, ds_config, data, {
            "world_size": world, "zero_stage": stage, "pipeline_stages": cfg.parallel.pipeline_stages,
            "micro_batch": micro, "grad_accum": gas, "threads_per_rank": threads, "device": str(device),
            "peak_flops": peak, "peak_flops_source": peak_src,
        })
        if resuming:
            truncate_metrics(run_dir / "metrics.jsonl", prog.step)
        logger = MetricsLogger(run_dir, cfg.log.tensorboard, purge_step=prog.step + 1 if resuming else None)
        say(f"run folder: {run_dir}")
        say(
            f"model: {counts['n_params'] / 1e6:.2f}M params ({counts['n_params_non_embedding'] / 1e6:.2f}M non-embedding), "
            f"{cfg.model.n_layer}L d{cfg.model.d_model} h{cfg.model.n_head} T{cfg.model.seq_len} V{cfg.model.vocab_size}; "
            f"{world} rank(s), ZeRO-{stage}, {cfg.parallel.pipeline_stages} stage(s), micro {micro} x accum {gas} x dp "
            f"{dp_world} = {cfg.train.global_batch_size} seqs/step; {total_steps} steps "
            f"({total_steps * tokens_per_step / 1e6:.2f}M tokens); device {device}"
            + (f", {threads} threads/rank" if threads else "")
        )
    need_own_norm = stage == 0 and cfg.train.precision == "fp32" and not pipeline

    def state() -> dict:
        return checkpoint_state(prog, wall_before + time.time() - t_loop, world)

    engine.train()
    t_interval, interval_tokens = time.time(), 0
    wall_before, t_loop = prog.wall_time, time.time()
    status = "finished"
    while prog.step < total_steps:
        start = prog.step * cfg.train.global_batch_size + dp_rank * per_rank
        lr = engine.get_lr()[0]  # the LR this step uses
        loss_mean, grad_norm, skipped = train_step(engine, data.train, start, micro, gas, device, pipeline, world,
                                                   need_own_norm)
        prog.step += 1
        prog.tokens += tokens_per_step
        interval_tokens += tokens_per_step
        finite = math.isfinite(loss_mean)
        bad = skipped or not finite
        prog.bad_steps = prog.bad_steps + 1 if bad else 0
        if finite:
            prog.last_train_losses = (prog.last_train_losses + [loss_mean])[-cfg.train.log_interval:]

        if is_main and bad:
            what = "non-finite loss" if not finite else "non-finite gradients"
            logger.log({"step": prog.step, "tokens": prog.tokens, "event": what.replace(" ", "_"),
                        "loss": loss_mean if finite else None, "skipped": True, "bad_steps_in_a_row": prog.bad_steps})
            print(f"step {prog.step:>6}: {what}, step skipped ({prog.bad_steps} in a row)", flush=True)
        elif is_main and (prog.step % cfg.train.log_interval == 0 or prog.step == total_steps):
            dt = time.time() - t_interval
            tps = interval_tokens / dt
            achieved = tps * fpt / world
            rec = {
                "step": prog.step, "tokens": prog.tokens, "loss": loss_mean, "lr": lr, "grad_norm": grad_norm,
                "tokens_per_s": tps, "tflops_per_device": achieved / 1e12,
                "mfu": achieved / peak if peak else None, "elapsed_s": wall_before + time.time() - t_loop,
                **memory_stats(device),
            }
            logger.log(rec)
            eta = (total_steps - prog.step) * tokens_per_step / tps
            print(
                f"step {prog.step:>6}/{total_steps} loss {loss_mean:.4f} lr {lr:.2e} gnorm "
                f"{grad_norm if grad_norm is not None else float('nan'):.3f} {tps:,.0f} tok/s "
                f"mfu {rec['mfu'] or 0:.1%} eta {eta:,.0f}s",
                flush=True,
            )
            t_interval, interval_tokens = time.time(), 0
        if prog.bad_steps >= cfg.train.max_bad_steps:
            latest = (ckpt_dir / "latest").read_text().strip() if (ckpt_dir / "latest").exists() else None
            raise RunError(
                f"{prog.bad_steps} skipped steps (non-finite loss or gradients) in a row at step {prog.step}; last good checkpoint: "
                f"{ckpt_dir / latest if latest else 'none'}; lower train.lr or check the data"
            )
        if any_rank(stop.received is not None, world):
            say(f"received {stop.received or 'a stop signal'}: saving a checkpoint at step {prog.step} and exiting")
            status = "stopped"
            break
        if cfg.train.eval_interval and prog.step % cfg.train.eval_interval == 0 and prog.step < total_steps:
            vl = evaluate(engine, data, cfg, dp_rank, world, device, pipeline)
            if vl is not None:
                prog.last_valid_loss = vl
                if is_main:
                    logger.log({"step": prog.step, "tokens": prog.tokens, "split": "valid", "loss": vl})
                    print(f"step {prog.step:>6} valid loss {vl:.4f}", flush=True)
        periodic = cfg.checkpoint.interval and prog.step % cfg.checkpoint.interval == 0
        if (periodic or prog.step in cfg.checkpoint.save_steps) and prog.step < total_steps:
            save_checkpoint(engine, run_dir, prog.step, state(), rank)

    if status == "stopped":
        ckpt = save_checkpoint(engine, run_dir, prog.step, state(), rank)
        if is_main:
            logger.close()
            print(f"checkpoint: {ckpt}; relaunch the same command to resume", flush=True)
        dist.barrier()
        return 0

    # the end: final evaluation, checkpoint, summary
    vl = evaluate(engine, data, cfg, dp_rank, world, device, pipeline)
    wall = wall_before + time.time() - t_loop
    if vl is not None:
        prog.last_valid_loss = vl
        if is_main:
            logger.log({"step": prog.step, "tokens": prog.tokens, "split": "valid", "loss": vl})
    ckpt = save_checkpoint(engine, run_dir, prog.step, state(), rank) if cfg.checkpoint.save_final else None
    if is_main:
        summary = {
            "status": "finished",
            "name": cfg.log.name,
            "n_params": counts["n_params"],
            "n_params_non_embedding": counts["n_params_non_embedding"],
            "steps": prog.step,
            "tokens": prog.tokens,
            "flops": 6.0 * counts["n_params"] * prog.tokens,
            "flops_with_attention": fpt * prog.tokens,
            "flops_per_token": fpt,
            "final_train_loss": float(np.mean(prog.last_train_losses)) if prog.last_train_losses else None,
            "final_valid_loss": prog.last_valid_loss,
            "wall_time_s": wall,
            "world_size": world,
            "seq_len": cfg.model.seq_len,
            "global_batch_size": cfg.train.global_batch_size,
            "lr": cfg.train.lr,
            "checkpoint": ckpt,
        }
        atomic_write_json(run_dir / "summary.json", summary)
        hp = {f"model.{k}": v for k, v in cfg.to_dict()["model"].items()}
        hp.update({f"train.{k}": v for k, v in cfg.to_dict()["train"].items()})
        hp.update({"n_params": counts["n_params"], "tokens": prog.tokens})
        logger.log_hparams(hp, {"final_train_loss": summary["final_train_loss"], "final_valid_loss": vl})
        logger.close()
        print(
            f"done: {prog.step} steps, {prog.tokens / 1e6:.2f}M tokens in {wall:.0f}s; final train loss "
            f"{summary['final_train_loss']:.4f}" + (f", valid loss {vl:.4f}" if vl is not None else "")
        )
        print(f"checkpoint: {ckpt}")
        print(f"metrics: {run_dir / 'metrics.jsonl'}")
        print(f"TensorBoard: tensorboard --logdir {run_dir / 'tb'}", flush=True)
    dist.barrier()
    return 0
