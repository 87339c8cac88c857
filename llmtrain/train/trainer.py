"""The training run: set-up (config, data, run folder, engine, resume), then ``Trainer.fit``, a
short loop with callbacks around it (callbacks.py: metrics, console, non-finite guard, stop
signal, evaluation, checkpoints, summary, W&B, profiler).

Beside it: dist.py (process group, collectives), engine.py (model, optimizer, schedule →
DeepSpeed engine), module.py (one optimizer step per layout), loader.py (batches prepared
ahead), checkpoint.py (save, resume checks, RNG).

Entry point: ``main(argv)``, used by launcher/pretrain.py.
"""
from __future__ import annotations

import argparse
import math
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from llmtrain.checkpoint.ds import (check_checkpoint_shape, check_resume_compatible, check_same_model, finished_step,
                                   rng_state, save_checkpoint, set_rng_state)
from llmtrain.config import Config, dump_config, load_config
from llmtrain.core.errors import ConfigError, RunError
from llmtrain.core.files import atomic_write_json
from llmtrain.core.paths import REPO_ROOT
from llmtrain.data.dataset import DataBundle, load_data, padded_vocab
from llmtrain.train.callbacks import Callback, StopOnSignal, default_callbacks
from llmtrain.train.dist import broadcast_object, env_int, init_distributed, set_cpu_threads
from llmtrain.train.loader import BatchPlan, PrefetchLoader, host_micro_batches, to_device

__all__ = ["main", "Trainer", "RunError"]


# ----------------------------------------------------------------------------- arguments


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="pretrain.py",
        description="Train a GPT with DeepSpeed. With no arguments: the tiny default model on the bundled corpus.",
    )
    p.add_argument("--config", default=None, help="YAML experiment config (default: configs/tiny.yaml)")
    p.add_argument("--run-dir", default=None,
                   help="run folder (default: a new folder under ./runs/); an existing one is resumed")
    p.add_argument("--deepspeed_config", default=None, help="DeepSpeed JSON (default: ds_configs/zero0.json)")
    p.add_argument("--deepspeed", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.max_steps=50")
    return p.parse_args(argv)


def report_error(e: Exception, rank: int) -> int:
    """Exit code 2 with one line "error: ..." from rank 0. Every rank meets the same bad input;
    the others wait a moment before exiting, because a launcher (deepspeed, torchrun) kills every
    rank as soon as one exits, which could otherwise cut rank 0 off before it prints."""
    if rank == 0:
        print(f"error: {e}", file=sys.stderr, flush=True)
    else:
        time.sleep(5)
    return 2


def main(argv=None, prepare_sample=None) -> int:
    """``prepare_sample(cfg, rank) -> PREFIX``: makes the bundled corpus's token data when
    data.prefix is unset (launcher/pretrain.py passes the data tools' own; the library never
    prepares data itself)."""
    args = parse_args(argv)
    rank_env = env_int("RANK", 0)
    try:
        cfg = load_config(args.config, args.overrides)
        if cfg.train.eval_tasks:  # every task file read and checked now, before any run folder is written
            from llmtrain.eval.tasks import load_tasks

            load_tasks(cfg.train.eval_tasks)
        if cfg.data.prefix is None and prepare_sample is None:
            raise ConfigError(f"{args.config or 'configs/tiny.yaml'}: data.prefix is not set; set it to token "
                              f"data made by data_prep/tokenize_corpus.py, or use launcher/pretrain.py for the "
                              f"bundled corpus")
        from llmtrain.train.ds_config import load_ds_json

        user_ds, ds_path = load_ds_json(args.deepspeed_config)
        # validate the layout and the user's data before any process group or model exists
        config_path = args.config or "configs/tiny.yaml"
        model_from_hf_folder(cfg, args.overrides, config_path)
        ds_config = check_layout(cfg, user_ds, ds_path, config_path, env_int("WORLD_SIZE", 1))
        data = load_data(cfg, cfg.data.prefix, config_path) if cfg.data.prefix is not None else None
    except (ConfigError, ValueError, OSError) as e:
        return report_error(e, rank_env)
    try:
        return run(args, cfg, ds_config, data, prepare_sample)
    except (ConfigError, RunError, ValueError) as e:
        return report_error(e, env_int("RANK", 0))
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


# ----------------------------------------------------------------------------- run folder


def resolve_run_dir(args, cfg: Config) -> Path:
    """Rank 0 picks the folder (a new timestamped one under ./runs unless --run-dir); every rank
    gets the same path."""
    if args.run_dir:
        path = str(Path(args.run_dir).resolve())
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = str((Path.cwd() / "runs" / f"{cfg.log.name}-{stamp}").resolve())
    return Path(broadcast_object(path))


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
    import deepspeed

    dump_config(cfg, run_dir / "config.yaml")
    atomic_write_json(run_dir / "ds_config.json", ds_config)
    atomic_write_json(run_dir / "data_manifest.json",
                      {"prefixes": data.prefixes, "weights": data.weights, "manifests": data.manifests})
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


# ----------------------------------------------------------------------------- the trainer


class Trainer:
    """The loop and the state callbacks read: step, tokens, the engine and its train module."""

    def __init__(self, cfg: Config, run_dir: Path, engine, module, data: DataBundle, callbacks: list[Callback], *,
                 rank: int, world: int, device: torch.device, total_steps: int, plan: BatchPlan,
                 param_counts: dict, flops_per_token: float, peak_flops: float):
        self.cfg, self.run_dir, self.engine, self.module, self.data = cfg, run_dir, engine, module, data
        self.callbacks = callbacks
        self.rank, self.world, self.device = rank, world, device
        self.total_steps, self.plan = total_steps, plan
        self.tokens_per_step = cfg.train.global_batch_size * cfg.model.seq_len
        self.param_counts, self.flops_per_token, self.peak_flops = param_counts, flops_per_token, peak_flops
        self.step = self.tokens = 0
        self.wall_before = 0.0
        self.resumed = False
        self.status = "running"
        self.stop_reason: str | None = None
        self.last_checkpoint: str | None = None
        self.last_lr = 0.0
        self.summary: dict | None = None
        self._t_start = time.time()

    # --- the loop

    def fit(self) -> str:
        """Train to total_steps (or a stop request); returns "finished" or "stopped"."""
        self._t_start = time.time()
        self._each("pre_train")
        loader = PrefetchLoader(self.data.train, self.plan, self.step, self.device)
        try:
            while self.step < self.total_steps and not self.stop_reason:
                micro_batches = next(loader)
                self._each("pre_step")
                self.last_lr = self.engine.get_lr()[0]  # the LR this step uses
                stop = getattr(self.callback("stop_signal"), "received", None) is not None
                out = self.module.train_batch(micro_batches, stop_flag=stop)
                self.step += 1
                self.tokens += self.tokens_per_step
                self._each("post_step", out)
            self.status = "stopped" if self.stop_reason else "finished"
            self._each("post_train")
        except BaseException as e:
            self._each("on_error", e)
            raise
        finally:
            loader.close()
            self._each("close")
        return self.status

    def _each(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    # --- services for callbacks

    def callback(self, name: str) -> Callback | None:
        return next((cb for cb in self.callbacks if cb.name == name), None)

    def log(self, record: dict) -> None:
        self._each("log_metrics", record)

    def request_stop(self, reason: str) -> None:
        if not self.stop_reason:
            self.stop_reason = reason
            if self.rank == 0:
                print(f"{reason}: saving a checkpoint at step {self.step} and exiting", flush=True)

    def elapsed(self) -> float:
        return self.wall_before + time.time() - self._t_start

    def evaluate(self) -> float | None:
        """Mean loss over the first eval_batches x global_batch_size windows of the valid split
        (the same windows every time), over every data-parallel rank: one pass over all their
        micro-batches, so that with a loss mask it is the mean over every counted target."""
        valid = self.data.valid
        if valid is None:
            return None
        G = self.cfg.train.global_batch_size
        n_batches = max(1, min(self.cfg.train.eval_batches, valid.num_samples // G))
        self.module.eval()
        micro = [mb for b in range(n_batches) for mb in host_micro_batches(valid, self.plan, b)]
        loss = self.module.eval_batch(to_device(micro, self.device))
        self.module.train()
        return float(loss)

    def save_checkpoint(self) -> str:
        if self.last_checkpoint and self.last_checkpoint.endswith(f"global_step{self.step}"):
            return self.last_checkpoint
        path = save_checkpoint(self.engine, self.run_dir, self.step, self.state_dict(), self.rank)
        self.last_checkpoint = path
        self._each("on_checkpoint", path)
        return path

    # --- state

    def state_dict(self) -> dict:
        import torch.distributed as dist

        rngs = [None] * self.world
        dist.all_gather_object(rngs, rng_state())
        return {"step": self.step, "tokens": self.tokens, "wall_time": self.elapsed(), "rng": rngs,
                "callbacks": {cb.name: cb.state_dict() for cb in self.callbacks}}

    def load_state_dict(self, client: dict, exact: bool) -> None:
        """Restore step, tokens and this rank's RNG from a checkpoint's client state; ``exact`` (a
        resume of this run, not a branch from another): also the wall time and every callback's state."""
        self.step, self.tokens = int(client["step"]), int(client["tokens"])
        rngs = client["rng"]
        set_rng_state(rngs[self.rank] if len(rngs) == self.world else rngs[0])
        if not exact:  # a branch counts only its own wall time and starts its own monitors
            return
        self.wall_before = float(client.get("wall_time", 0.0))
        states = client.get("callbacks", {})
        legacy = {"nonfinite": {"bad_steps": client.get("bad_steps", 0)}}
        for cb in self.callbacks:
            cb.load_state_dict(states.get(cb.name, legacy.get(cb.name, {})))


# ----------------------------------------------------------------------------- set-up


def run(args, cfg: Config, ds_config: dict, data: DataBundle | None, prepare_sample=None) -> int:
    """Set up and train, with the DeepSpeed config and (unless the bundled corpus is still to be
    prepared) the data already validated by main()."""
    import torch.distributed as dist

    from llmtrain.model.gpt import count_params, flops_per_token
    from llmtrain.train.ds_config import zero_stage
    from llmtrain.train.engine import build_engine, data_parallel_rank
    from llmtrain.train.metrics import peak_flops
    from llmtrain.train.module import train_module

    stop = StopOnSignal()
    stop.install()
    config_path = args.config or str(Path("configs") / "tiny.yaml")
    rank, world, _, device = init_distributed()
    threads = set_cpu_threads(cfg.train.threads) if device.type == "cpu" else None
    is_main = rank == 0

    def say(msg: str) -> None:
        if is_main:
            print(msg, flush=True)

    if data is None:
        cfg.data.prefix = prepare_sample(cfg, rank)
        dist.barrier()
        data = load_data(cfg, cfg.data.prefix, config_path)
    if cfg.model.vocab_size is None:
        cfg.model.vocab_size = padded_vocab(data.vocab_size)
    if cfg.data.document_mask:
        cfg.model.document_mask_token = data.end_of_document_id()

    pipeline = cfg.parallel.pipeline_stages > 1
    dp_world = world // cfg.parallel.pipeline_stages
    run_dir = resolve_run_dir(args, cfg)
    ckpt_dir = run_dir / "checkpoints"
    tokens_per_step = cfg.train.global_batch_size * cfg.model.seq_len
    total_steps = cfg.train.max_steps
    if cfg.train.max_tokens:
        total_steps = min(total_steps, math.ceil(cfg.train.max_tokens / tokens_per_step))

    resuming = cfg.checkpoint.resume and (ckpt_dir / "latest").is_file()
    if resuming:
        check_checkpoint_shape(ckpt_dir, cfg)
        check_resume_compatible(run_dir, cfg)
        done = finished_step(run_dir)
        if done is not None and done >= total_steps:
            say(f"{run_dir}: this run already finished at step {done} (summary.json); nothing to do. Raise "
                f"train.max_steps to train on, or use a new --run-dir")
            return 0
    init_state, init_meta = None, {}
    if not resuming and cfg.checkpoint.init_from:
        init_state, init_meta = open_init_from(cfg, data)
        if cfg.checkpoint.init_step is not None:
            if init_state is None:
                raise ConfigError(f"{cfg.checkpoint.init_from}: checkpoint.init_step needs a consolidated file or an "
                                  f"imported model; consolidate the step folder (python launcher/consolidate.py)")
            step0 = cfg.checkpoint.init_step
            init_meta = {**init_meta, "step": step0, "tokens": step0 * tokens_per_step}
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)

    engine = build_engine(cfg, ds_config, total_steps, init_state, int(init_meta.get("step") or 0))
    dp_rank = data_parallel_rank(engine, rank)
    plan = BatchPlan(cfg.train.global_batch_size, engine.train_micro_batch_size_per_gpu(),
                     engine.gradient_accumulation_steps(), dp_rank)
    stage = zero_stage(ds_config)
    counts = count_params(cfg.model)
    peak, peak_src = peak_flops(device, cfg.train.precision, cfg.train.peak_flops)
    callbacks = default_callbacks(cfg, run_dir, rank, stop)
    masked = any(m.get("loss_mask") for m in data.manifests)  # prompt/response data: weigh tokens alike
    t = Trainer(cfg, run_dir, engine, train_module(engine, pipeline, dp_world, masked), data, callbacks, rank=rank,
                world=world, device=device, total_steps=total_steps, plan=plan, param_counts=counts,
                flops_per_token=flops_per_token(cfg.model), peak_flops=peak)

    # Training randomness (dropout) starts from a known state whatever set-up consumed: a
    # per-rank seed, so data-parallel replicas draw different masks. Resume restores it.
    seed_everything(cfg.train.seed, rank)
    if init_state is not None:
        t.step, t.tokens = int(init_meta.get("step") or 0), int(init_meta.get("tokens") or 0)
        say(f"started from {cfg.checkpoint.init_from} (weights; step {t.step}; fresh optimizer state)")
    source = (ckpt_dir / (ckpt_dir / "latest").read_text().strip()) if resuming else (
        Path(cfg.checkpoint.init_from) if cfg.checkpoint.init_from and init_state is None else None)
    if source is not None:
        load_path, client = engine.load_checkpoint(str(source.parent), tag=source.name)
        if load_path is None:
            raise RunError(f"{source}: checkpoint could not be loaded; remove {ckpt_dir / 'latest'} to start fresh")
        t.load_state_dict(client, exact=resuming)
        if resuming:
            t.resumed, t.last_checkpoint = True, str(source)
        else:
            restart_schedule_at(engine, cfg.train.lr, t.step)
        say(f"{'resumed' if resuming else 'started'} from {source} at step {t.step}")
    t.data.train.prepare(total_steps * cfg.train.global_batch_size, cache_dir=run_dir / "data_order")

    if is_main:
        write_run_files(run_dir, cfg, ds_config, data, {
            "world_size": world, "zero_stage": stage, "pipeline_stages": cfg.parallel.pipeline_stages,
            "micro_batch": plan.micro, "grad_accum": plan.gas, "threads_per_rank": threads, "device": str(device),
            "peak_flops": peak, "peak_flops_source": peak_src,
        })
        say(f"run folder: {run_dir}")
        say(
            f"model: {counts['n_params'] / 1e6:.2f}M params ({counts['n_params_non_embedding'] / 1e6:.2f}M "
            f"non-embedding), {cfg.model.n_layer}L d{cfg.model.d_model} h{cfg.model.n_head} T{cfg.model.seq_len} "
            f"V{cfg.model.vocab_size}; {world} rank(s), ZeRO-{stage}, {cfg.parallel.pipeline_stages} stage(s), "
            f"micro {plan.micro} x accum {plan.gas} x dp {dp_world} = {cfg.train.global_batch_size} seqs/step; "
            f"{total_steps} steps ({total_steps * tokens_per_step / 1e6:.2f}M tokens); device {device}"
            + (f", {threads} threads/rank" if threads else "")
        )

    engine.train()
    status = t.fit()
    if is_main:
        if status == "stopped":
            print(f"checkpoint: {t.last_checkpoint}; relaunch the same command to resume", flush=True)
        else:
            s = t.summary or {}
            vl = s.get("final_valid_loss")
            ftl = s.get("final_train_loss")
            print(f"done: {t.step} steps, {t.tokens / 1e6:.2f}M tokens in {t.elapsed():.0f}s; final train loss "
                  + (f"{ftl:.4f}" if ftl is not None else "n/a") + (f", valid loss {vl:.4f}" if vl is not None else ""))
            print(f"checkpoint: {t.last_checkpoint}")
            print(f"metrics: {run_dir / 'metrics.jsonl'}")
            print(f"TensorBoard: tensorboard --logdir {run_dir / 'tb'}", flush=True)
    dist.barrier()
    return 0


def seed_everything(seed: int, rank: int) -> None:
    from deepspeed.accelerator import get_accelerator

    random.seed(seed + rank)
    np.random.seed(seed + rank)
    torch.manual_seed(seed * 1009 + rank)
    get_accelerator().manual_seed(seed * 1009 + rank)


def model_from_hf_folder(cfg: Config, overrides: list[str], where: str) -> None:
    """checkpoint.init_from=HF_DIR (a transformers folder): the model section comes from the
    folder; a model.* override on the command line that contradicts it is an error naming both."""
    from llmtrain.checkpoint.hf import is_hf_folder, model_config_from_hf, read_hf_config

    init = cfg.checkpoint.init_from
    if not init or not is_hf_folder(init):
        return
    source = str(Path(init) / "config.json")
    folder = model_config_from_hf(read_hf_config(init), source)
    given = {o.split("=", 1)[0].strip()[len("model."):] for o in overrides if o.strip().startswith("model.")}
    for key, value in folder.items():
        if key in given and key != "dropout" and getattr(cfg.model, key) != value:
            raise ConfigError(f"model.{key}={getattr(cfg.model, key)} (command line) conflicts with {source} "
                              f"({key}={value}), the model checkpoint.init_from starts from; remove the override")
        if key != "dropout" or key not in given:
            setattr(cfg.model, key, value)
    cfg.model.validate(where)


def open_init_from(cfg: Config, data: DataBundle) -> tuple[dict | None, dict]:
    """checkpoint.init_from as (consolidated state dict, its metadata) for a consolidated file, an
    imported model folder or a transformers folder; (None, {}) for a DeepSpeed step folder (loaded
    by the engine). Refuses anything else."""
    from llmtrain.checkpoint.hf import is_hf_folder, load_hf_folder
    from llmtrain.checkpoint.consolidate import is_consolidated, load_consolidated
    from llmtrain.core.files import sha256_file

    init = Path(cfg.checkpoint.init_from)
    if init.is_dir() and any(init.glob("*model_states.pt")):
        check_checkpoint_shape(init.parent, cfg)
        return None, {}
    if is_hf_folder(init):
        model_cfg, state, tok_path = load_hf_folder(init)
        check_same_model(model_cfg, cfg, init, "")
        if sha256_file(tok_path) != sha256_file(data.tokenizer_path):
            raise ConfigError(f"{data.tokenizer_path}: the data was tokenised with another tokenizer than {tok_path}, "
                              f"the one of checkpoint.init_from; tokenise it with --tokenizer {init}")
        return state, {"model_config": model_cfg, "step": 0, "tokens": 0, "source": str(init)}
    if init.exists() and is_consolidated(init):
        state, meta = load_consolidated(init)
        check_same_model(meta.get("model_config", {}), cfg, init, "")
        return state, meta
    raise ConfigError(f"{init}: checkpoint.init_from is neither a checkpoint folder (.../checkpoints/global_stepN) "
                      f"nor a consolidated file (python launcher/consolidate.py) nor a model folder "
                      f"(launcher/import_hf.py output or a transformers folder with config.json)")


def restart_schedule_at(engine, lr: float, step: int) -> None:
    """A branch from another run's checkpoint follows this run's schedule and peak LR from its
    first step (the loaded optimizer carries the source run's LR)."""
    sched = engine.lr_scheduler
    sched.base_lrs = [lr * g.get("lr_scale", 1.0) for g in sched.optimizer.param_groups]  # muP's per-group factors
    sched.last_epoch = step
    for group, base in zip(engine.optimizer.param_groups, sched.base_lrs):
        group["lr"] = base * sched.lr_lambdas[0](step)
