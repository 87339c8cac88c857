"""DeepSpeed checkpoints: saves with an atomic 'latest', the client state (step, tokens, RNG of
every rank), the layout that saved them (layout.json) and the layout-free state beside them, and
the checks before a resume (model shape, data settings, a finished run, which way to load)."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from llmtrain.config import Config
from llmtrain.core.errors import ConfigError
from llmtrain.core.files import atomic_write_json, atomic_write_text


def save_checkpoint(engine, run_dir: Path, step: int, client_state: dict, rank: int, layout: dict | None = None,
                    gpt_name=None) -> str:
    """DeepSpeed checkpoint under RUN/checkpoints/global_step{step}; with ``gpt_name`` (the
    module's parameter names -> the GPT's) also its layout-free state; ``layout``
    (train/ds_config.layout_of) is recorded as STEP/layout.json once every rank has written.
    'latest' is written only after every rank finished, through a rename, so an interrupted save
    never becomes latest."""
    import torch.distributed as dist

    from llmtrain.checkpoint import layout_free

    ckpt_dir = run_dir / "checkpoints"
    tag = f"global_step{step}"
    clear_stale_step(ckpt_dir, tag, rank)
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False)
    if gpt_name is not None:
        layout_free.save(engine, ckpt_dir / tag, rank, client_state, gpt_name)
    dist.barrier()
    if rank == 0:
        if layout is not None:
            atomic_write_json(ckpt_dir / tag / "layout.json", {
                **layout, "step": step, "tokens": client_state.get("tokens"), "skipped_steps": engine.skipped_steps,
                "layout_free": gpt_name is not None})
        atomic_write_text(ckpt_dir / "latest", tag)
    dist.barrier()
    return str(ckpt_dir / tag)


def clear_stale_step(ckpt_dir: Path, tag: str, rank: int) -> None:
    """A folder of this tag left by an earlier launch that died after it (it is not 'latest'),
    possibly on another layout: removed before saving, so that no file of the old layout (another
    rank's shard) stays beside the new ones."""
    import shutil

    import torch.distributed as dist

    latest = ckpt_dir / "latest"
    stale = (ckpt_dir / tag).is_dir() and not (latest.is_file() and latest.read_text().strip() == tag)
    if stale and rank == 0:
        shutil.rmtree(ckpt_dir / tag)
    dist.barrier()


# What decides whether DeepSpeed can load its own checkpoint: any difference, and the resume
# goes through the layout-free state.
LAYOUT_KEYS = ("world_size", "pipeline_stages", "zero_stage", "precision", "bf16", "offload_optimizer",
               "offload_param")


def same_layout(a: dict, b: dict) -> bool:
    """Whether DeepSpeed's own loader can take a checkpoint saved on layout ``a`` on layout ``b``.
    The gradient accumulation dtype counts only where it picks another optimizer: ZeRO-1 under
    DeepSpeed's bf16 (its bf16 optimizer for fp32 accumulation)."""
    def view(layout: dict) -> tuple:
        accum = layout.get("grad_accum_dtype") if layout.get("zero_stage") == 1 and layout.get("bf16") == "deepspeed" \
            else None
        return (*(layout.get(k) for k in LAYOUT_KEYS), layout.get("expert_parallel", 1), accum)

    return view(a) == view(b)


def describe_layout(layout: dict) -> str:
    """'2 ranks, ZeRO-2, fp32' / '2 ranks in 2 pipeline stages, ZeRO-0, bf16 (autocast)'."""
    n, stages = layout["world_size"], layout.get("pipeline_stages", 1)
    where = f"{n} rank{'s' if n != 1 else ''}" + (f" in {stages} pipeline stages" if stages > 1 else "")
    if layout.get("expert_parallel", 1) > 1:
        where += f" with experts split over {layout['expert_parallel']}"
    precision = layout.get("precision", "fp32") + (f" ({layout['bf16']})" if layout.get("bf16") == "autocast" else "")
    if layout.get("precision") == "bf16" and layout.get("grad_accum_dtype") == "bf16":
        precision += " with bf16 gradient accumulation"
    offload = ", optimizer offloaded" if layout.get("offload_optimizer") else ""
    return f"{where}, ZeRO-{layout.get('zero_stage', 0)}, {precision}{offload}"


def saved_layout(step_dir: Path) -> dict | None:
    """The layout that wrote ``step_dir``: its layout.json, or for a checkpoint from before that
    file, the run folder's env.json, ds_config.json and config.yaml (written by the launch that
    saved it, as far as anyone can tell); None when those are missing too."""
    path = step_dir / "layout.json"
    if path.is_file():
        return json.loads(path.read_text())
    run_dir = step_dir.parent.parent
    env, ds, cfg = run_dir / "env.json", run_dir / "ds_config.json", run_dir / "config.yaml"
    if not (env.is_file() and ds.is_file() and cfg.is_file()):
        return None
    import yaml

    e, d = json.loads(env.read_text()), json.loads(ds.read_text())
    train = (yaml.safe_load(cfg.read_text()) or {}).get("train", {})
    zero = d.get("zero_optimization", {})
    precision = train.get("precision", "fp32")
    return {"world_size": e.get("world_size", 1), "pipeline_stages": e.get("pipeline_stages", 1),
            "zero_stage": e.get("zero_stage", 0), "precision": precision,
            "bf16": "deepspeed" if precision == "bf16" else None,
            "grad_accum_dtype": "bf16" if precision == "bf16" else "fp32",
            "offload_optimizer": (zero.get("offload_optimizer") or {}).get("device"),
            "offload_param": (zero.get("offload_param") or {}).get("device"), "layout_free": False}


def deepspeed_can_reload(layout: dict) -> bool:
    """DeepSpeed's bf16 optimizer without ZeRO (the pipeline on ZeRO-0 in DeepSpeed's bf16) saves
    one data-parallel rank's optimizer partition and fails to load it back (KeyError: 0 in
    BF16_Optimizer.load_state_dict); everything else reloads on its own layout."""
    return not (layout.get("zero_stage") == 0 and layout.get("bf16") == "deepspeed"
                and layout.get("pipeline_stages", 1) > 1)


def resume_route(step_dir: Path, now: dict) -> tuple[str, dict | None]:
    """("deepspeed", saved layout) when DeepSpeed can load ``step_dir`` itself on the layout ``now``;
    ("layout_free", saved layout) when the layout changed (or DeepSpeed cannot reload it) and the
    step has a layout-free state; otherwise ConfigError, one line naming the layout that can."""
    saved = saved_layout(step_dir)
    if saved is None:
        return "deepspeed", None
    same = same_layout(saved, now)
    if same and deepspeed_can_reload(now):
        return "deepspeed", saved
    if saved.get("layout_free") and (step_dir / "layout_free").is_dir():
        return "layout_free", saved
    if not same:
        raise ConfigError(f"{step_dir}: the checkpoint was saved on {describe_layout(saved)} and this launch is on "
                          f"{describe_layout(now)}; it has no layout-free state (saved with checkpoint.layout_free="
                          f"false or by an earlier version), so only its own layout can resume it: relaunch on "
                          f"{describe_layout(saved)}")
    raise ConfigError(f"{step_dir}: the checkpoint was saved by DeepSpeed's bf16 optimizer without ZeRO "
                      f"({describe_layout(saved)}), which DeepSpeed cannot load back, and it has no layout-free "
                      f"state (saved with checkpoint.layout_free=false or by an earlier version); start again with "
                      f"checkpoint.layout_free=true")


def rng_state() -> dict:
    """Every random state a step draws from on this rank: Python, NumPy, torch's CPU generator
    and the accelerator's (GPU dropout), so a resumed run continues bit for bit."""
    from deepspeed.accelerator import get_accelerator

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    acc = get_accelerator()
    if acc.device_name() != "cpu":
        state["accelerator"] = acc.get_rng_state().cpu()
        state["accelerator_name"] = acc.device_name()
    return state


def set_rng_state(state: dict) -> None:
    from deepspeed.accelerator import get_accelerator

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    acc = get_accelerator()
    if "accelerator" in state and acc.device_name() == state.get("accelerator_name"):
        acc.set_rng_state(state["accelerator"])


def reseed(seed: int, rank: int, step: int) -> None:
    """A rank that has no saved RNG state (a resume on more ranks than saved): Python, NumPy,
    torch and the accelerator seeded from (seed, rank, step), so it neither repeats step 0's
    draws nor another rank's."""
    from deepspeed.accelerator import get_accelerator

    s = int(np.random.SeedSequence([seed, rank, step]).generate_state(1, dtype=np.uint64)[0] >> 1)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
    get_accelerator().manual_seed(s)


def check_same_model(old: dict, cfg: Config, source, hint: str) -> None:
    """Refuse, before loading, weights made by a model of another shape: every model field but
    dropout, z_loss (regularisers a continued run may change) and document_mask_token (where
    attention stops, not a weight) must match the saved ``old`` model section."""
    now = cfg.to_dict()["model"]
    free = ("dropout", "z_loss", "document_mask_token")
    diff = [k for k, v in now.items() if k not in free and k in old and old[k] != v]
    if diff:
        k = diff[0]
        raise ConfigError(f"{source}: the checkpoint is of another model shape (model.{k}={old[k]} there, "
                          f"{now[k]} now){hint}")


def check_checkpoint_shape(ckpt_dir: Path, cfg: Config) -> None:
    """check_same_model against the config.yaml of the run that wrote ``ckpt_dir``."""
    saved = ckpt_dir.parent / "config.yaml"
    if not saved.is_file():
        return
    import yaml

    old = (yaml.safe_load(saved.read_text()) or {}).get("model", {})
    check_same_model(old, cfg, ckpt_dir, f"; use a new --run-dir or the checkpoint's config {saved}")


# Settings a resume must keep for the data position to stay exact (model.seq_len, the positions,
# is checked with the model's shape; train.seq_len is the window). Raising max_steps or max_tokens is fine.
RESUME_FIXED = (("data", "prefix"), ("train", "global_batch_size"), ("train", "seed"), ("train", "seq_len"))


def check_resume_compatible(run_dir: Path, cfg: Config) -> None:
    """Refuse a resume whose data, global batch size or seed differ from the run's (the sample a
    step reads would change), unless checkpoint.allow_data_change=true."""
    saved = run_dir / "config.yaml"
    if cfg.checkpoint.allow_data_change or not saved.is_file():
        return
    import yaml

    old = yaml.safe_load(saved.read_text()) or {}
    now = cfg.to_dict()
    for section, key in RESUME_FIXED:
        was, is_ = (old.get(section) or {}).get(key), now[section][key]
        if (section, key) == ("train", "seq_len") and was is None:  # a run from before train.seq_len: its positions
            was = (old.get("model") or {}).get("seq_len")
        if section == "data" and was and is_ and Path(str(was)).resolve() == Path(str(is_)).resolve():
            continue
        if was is not None and was != is_:
            raise ConfigError(
                f"{saved}: the run was trained with {section}.{key}={was}, now {is_}; resuming would break the exact "
                f"data position. Keep {section}.{key}={was}, use a new --run-dir, or pass "
                f"checkpoint.allow_data_change=true to go on anyway"
            )
    check_stages_compatible(run_dir, cfg)


def _blend_key(spec: str):
    """A blend as what it reads: the shares and the resolved paths (spelling aside)."""
    from llmtrain.data.dataset import parse_blend

    try:
        weights, prefixes = parse_blend(spec)
    except ConfigError:
        return spec
    total = sum(weights)
    return [(round(w / total, 12), str(Path(p).resolve())) for w, p in zip(weights, prefixes)]


def check_stages_compatible(run_dir: Path, cfg: Config) -> None:
    """Refuse a resume whose data stages before the checkpoint's step differ from the ones the run
    read (data_manifest.json records the steps they resolved to): what the run trained on would no
    longer be what the sample positions say. A stage that starts at or after the checkpoint may
    change (a fraction moves with train.max_steps), unless checkpoint.allow_data_change=true."""
    manifest, latest = run_dir / "data_manifest.json", run_dir / "checkpoints" / "latest"
    if cfg.checkpoint.allow_data_change or not manifest.is_file() or not latest.is_file():
        return
    try:
        step = int(latest.read_text().strip().removeprefix("global_step"))
        recorded = json.loads(manifest.read_text()).get("stages") or []
    except (ValueError, json.JSONDecodeError, AttributeError):
        return  # not ours to judge here: the checkpoint readers name a malformed file
    was = [(int(st["step"]), st["prefix"]) for st in recorded if 0 < int(st["step"]) < step]
    now = [(s, st.prefix) for s, st in zip(cfg.stage_steps(), cfg.data.stages) if s < step]
    if [(s, _blend_key(p)) for s, p in was] == [(s, _blend_key(p)) for s, p in now]:
        return

    def show(stages):
        return "[" + ", ".join(f"step {s}: '{p}'" for s, p in stages) + "]" if stages else "none"

    raise ConfigError(
        f"{manifest}: before its checkpoint at step {step} the run read the data stages {show(was)}, now "
        f"{show(now)}; resuming would break the exact data position. Keep those stages at the steps they started "
        f"(a fraction moves with train.max_steps: give data.stages[i].at as that step), use a new --run-dir, or "
        f"pass checkpoint.allow_data_change=true to go on anyway")


def check_sample_order(run_dir: Path, cfg: Config) -> None:
    """Refuse to resume a run whose samples were read in another order than this code reads them
    (data_manifest.json's ``sample_order``, llmtrain.data.sampler.SAMPLE_ORDER; a run folder
    without it was read in order 1): the steps after the checkpoint would not read what the run
    would have. checkpoint.allow_data_change=true goes on from the checkpoint's step anyway."""
    from llmtrain.data.sampler import SAMPLE_ORDER

    path = run_dir / "data_manifest.json"
    if cfg.checkpoint.allow_data_change or not path.is_file():
        return
    try:
        was = json.loads(path.read_text()).get("sample_order", 1)
    except (json.JSONDecodeError, AttributeError):
        return  # not ours to judge here: the checkpoint readers name a malformed file
    if was != SAMPLE_ORDER:
        raise ConfigError(
            f"{path}: the run read its samples in order {was}, this llmtrain reads them in order {SAMPLE_ORDER} "
            f"(llmtrain/data/sampler.py), so a resume would not continue its data bit for bit. Resume it with the "
            f"llmtrain it was trained with, use a new --run-dir, or pass checkpoint.allow_data_change=true to go on "
            f"from its checkpoint in the new order")


def finished_step(run_dir: Path) -> int | None:
    """The step at which the run in ``run_dir`` finished (summary.json with status finished), or None."""
    path = run_dir / "summary.json"
    if not path.is_file():
        return None
    try:
        s = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return int(s["steps"]) if s.get("status") == "finished" and s.get("steps") is not None else None
