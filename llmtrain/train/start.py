"""Where a run starts from, decided in one place (``decide_start``, before the engine exists)
and applied in one place (``Start.apply``, once the engine and the Trainer exist):

    fresh     nothing to load: the position-seeded initial weights, step 0
    resume    this run's own latest checkpoint (RUN/checkpoints/latest): weights, optimizer,
              schedule, every rank's RNG, the data position and the callbacks' state; on the
              layout that saved it through DeepSpeed's own loader, on any other (another number
              of ranks, ZeRO stage, pipeline layout) from its layout-free state
              (checkpoint/layout_free.py), or refused in one line when it has none
    branch    another run's DeepSpeed step folder (checkpoint.init_from=.../global_stepN):
              weights, optimizer, RNG and data position; this run's schedule and peak LR from
              that step on (a WSD cooldown branch)
    weights   a consolidated file, an imported folder or a transformers folder: the weights
              only, at the step the file records (or checkpoint.init_step); fresh optimizer
    finished  this run already finished (summary.json) at or past its last step: nothing to do

A transformers folder also gives the model section (``model_from_hf_folder``, applied while
the config is validated, before anything else is built).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmtrain.checkpoint.ds import (
    check_checkpoint_shape,
    check_resume_compatible,
    check_same_model,
    check_sample_order,
    describe_layout,
    finished_step,
    resume_route,
    same_layout,
)
from llmtrain.config import Config
from llmtrain.core.errors import ConfigError, RunError
from llmtrain.data.dataset import DataBundle


@dataclass
class Start:
    kind: str  # fresh | resume | branch | weights | finished
    source: Path | None = None  # resume/branch: the step folder; weights: the file or folder
    state: dict | None = None  # weights: the GPT state dict copied into the model as it is built
    step: int = 0  # weights and layout-free: the schedule position to start at; finished: the step it finished at
    tokens: int = 0
    saved: dict | None = None  # resume/branch from the layout-free state: the layout that saved it

    def apply(self, t, say) -> None:
        """Load what this start point holds into the Trainer ``t`` (after its engine is built)."""
        if self.kind == "weights":
            t.step, t.tokens = self.step, self.tokens
            say(f"started from {t.cfg.checkpoint.init_from} (weights; step {t.step}; fresh optimizer state)")
        elif self.kind in ("resume", "branch"):
            client = self._load_layout_free(t) if self.saved is not None else self._load_deepspeed(t)
            resuming = self.kind == "resume"
            t.load_state_dict(client, exact=resuming)
            if resuming:
                t.resumed, t.last_checkpoint = True, str(self.source)
            else:
                restart_schedule_at(t.engine, t.cfg.train.lr, t.step)
            how = "" if self.saved is None else f" ({self.layout_note(t.layout)})"
            say(f"{'resumed' if resuming else 'started'} from {self.source} at step {t.step}{how}")

    def layout_note(self, now: dict) -> str:
        """Why and how a step folder is loaded from its layout-free state, for the one line."""
        moved = not same_layout(self.saved, now)
        why = (f"saved on {describe_layout(self.saved)}, now {describe_layout(now)}" if moved else
               "saved by DeepSpeed's bf16 optimizer without ZeRO, which DeepSpeed cannot reload")
        return (f"{why}: from its layout-free state, fp32 weights, Adam moments and step by parameter name; rank r "
                f"takes saved rank r's RNG, a rank the save did not have a fresh seed")

    def _load_deepspeed(self, t) -> dict:
        load_path, client = t.engine.load_checkpoint(str(self.source.parent), tag=self.source.name)
        if load_path is None:
            raise RunError(f"{self.source}: checkpoint could not be loaded; remove "
                           f"{t.run_dir / 'checkpoints' / 'latest'} to start fresh")
        return client

    def _load_layout_free(self, t) -> dict:
        from llmtrain.checkpoint import layout_free

        names = layout_free.gpt_names(t.cfg.parallel.pipeline_stages > 1, t.cfg.model.n_layer)
        client = layout_free.load(t.engine, self.source, int(self.saved["world_size"]), names)
        engine = t.engine  # DeepSpeed's own counters, as its loader would set them
        engine.global_steps = self.step
        engine.global_samples = self.step * t.cfg.train.global_batch_size
        engine.skipped_steps = int(self.saved.get("skipped_steps", 0))
        return client


def decide_start(cfg: Config, run_dir: Path, data: DataBundle, total_steps: int, layout: dict | None = None) -> Start:
    """Where the run in ``run_dir`` starts from; refuses (ConfigError, one line) a checkpoint of
    another model shape, a resume that would break the data position, a checkpoint of another
    ``layout`` (train/ds_config.layout_of) without a layout-free state, or an init_from that is
    none of the kinds above."""
    ckpt_dir = run_dir / "checkpoints"
    if cfg.checkpoint.resume and (ckpt_dir / "latest").is_file():
        check_checkpoint_shape(ckpt_dir, cfg)
        check_resume_compatible(run_dir, cfg)
        done = finished_step(run_dir)
        if done is not None and done >= total_steps:
            return Start("finished", step=done)
        check_sample_order(run_dir, cfg)
        return step_folder_start("resume", ckpt_dir / (ckpt_dir / "latest").read_text().strip(), layout)
    if not cfg.checkpoint.init_from:
        return Start("fresh")
    init = Path(cfg.checkpoint.init_from)
    state, meta = open_init_from(cfg, data)
    if state is None:
        if cfg.checkpoint.init_step is not None:
            raise ConfigError(f"{init}: checkpoint.init_step needs a consolidated file or an imported model; "
                              f"consolidate the step folder (python launcher/consolidate.py)")
        return step_folder_start("branch", init, layout)
    step = cfg.checkpoint.init_step if cfg.checkpoint.init_step is not None else int(meta.get("step") or 0)
    tokens = (step * cfg.train.global_batch_size * cfg.train.seq_len if cfg.checkpoint.init_step is not None
              else int(meta.get("tokens") or 0))
    return Start("weights", init, state, step, tokens)


def step_folder_start(kind: str, step_dir: Path, layout: dict | None) -> Start:
    """Resume or branch from a DeepSpeed step folder: through DeepSpeed's loader when it was saved
    on this very layout, else from its layout-free state at the step it records."""
    if layout is None:
        return Start(kind, step_dir)
    route, saved = resume_route(step_dir, layout)
    if route == "deepspeed":
        return Start(kind, step_dir)
    return Start(kind, step_dir, step=int(saved["step"]), tokens=int(saved.get("tokens") or 0), saved=saved)


def agree_on_start(cfg: Config, run_dir: Path, data: DataBundle, total_steps: int, rank: int,
                   layout: dict | None = None, weights_on_every_rank: bool = True) -> Start:
    """``decide_start`` on rank 0 only, told to every rank: on a shared filesystem another node may
    still see an older ``latest`` or no summary.json, and ranks that resumed from different steps
    would train apart. A refusal on rank 0 is raised on every rank (the same one line). The other
    ranks open a ``weights`` start's file themselves (its path is in the config, not decided),
    unless ``weights_on_every_rank`` is False (ZeRO-3: rank 0 fills every rank's partitions,
    train/engine.build_partitioned)."""
    from llmtrain.train.dist import broadcast_object

    start, refusal = None, None
    if rank == 0:
        try:
            start = decide_start(cfg, run_dir, data, total_steps, layout)
        except (ConfigError, RunError) as e:
            refusal = (type(e).__name__, str(e))
    told = None if start is None else (start.kind, None if start.source is None else str(start.source), start.step,
                                        start.tokens, start.saved)
    told, refusal = broadcast_object((told, refusal))
    if refusal is not None:
        raise {"ConfigError": ConfigError, "RunError": RunError}[refusal[0]](refusal[1])
    if rank == 0:
        return start
    kind, source, step, tokens, saved = told
    state = open_init_from(cfg, data)[0] if kind == "weights" and weights_on_every_rank else None
    return Start(kind, None if source is None else Path(source), state, step, tokens, saved)


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
            fix = (f"; to train on shorter windows set train.seq_len={getattr(cfg.model, key)} instead"
                   if key == "seq_len" else "")
            raise ConfigError(f"model.{key}={getattr(cfg.model, key)} (command line) conflicts with {source} "
                              f"({key}={value}), the model checkpoint.init_from starts from; remove the override"
                              + fix)
        if key != "dropout" or key not in given:
            setattr(cfg.model, key, value)
    cfg.model.validate(where)


def open_init_from(cfg: Config, data: DataBundle) -> tuple[dict | None, dict]:
    """checkpoint.init_from as (consolidated state dict, its metadata) for a consolidated file, an
    imported model folder or a transformers folder; (None, {}) for a DeepSpeed step folder (loaded
    by the engine). Refuses anything else."""
    from llmtrain.checkpoint.consolidate import is_consolidated, load_consolidated
    from llmtrain.checkpoint.hf import is_hf_folder, load_hf_folder
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
