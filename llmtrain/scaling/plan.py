"""Sweep planning: a model ladder x token budgets → a list of training runs.

Shape rule: a target non-embedding size N ≈ 12·n_layer·d_model² is met at a fixed aspect ratio
d_model / n_layer (Kaplan et al. found loss flat over a wide band of shapes), d_model a
multiple of head_dim, n_head = d_model / head_dim. For a Mixture-of-Experts base model (its
``model.moe_*`` settings in the base config or the overrides) N is the active non-embedding size:
the ladder is a ladder of compute per token.

Token budgets: ``tokens_per_param`` (D = k·N for each k) or ``isoflop`` (D = C / (6N) for each
compute budget C and each ladder size whose D stays within [min_tokens_per_param,
max_tokens_per_param]·N), N by ``tokens.basis``: total, non_embedding, active or
active_non_embedding (the last two count only the experts a token uses; for a dense model they
are total and non_embedding). FLOPs are 6 x active parameters x D.

Hyperparameter rule: lr = lr · (lr_ref_params / N)^lr_exponent; global batch fixed (in
sequences); warmup = warmup_fraction of the shortest run of a size, clamped to
[warmup_min_steps, warmup_max_steps].

Learning-rate grid: ``hparams.lr_grid: [1e-3, 3e-3, 1e-2]`` (instead of ``lr``) plans every
size and token budget once per grid value, each value taking the place of ``lr`` in the rule
above (with the default lr_exponent 0 the value is the run's LR). Run names end in ``_lr<value>``
and each (size, LR) pair has its own trunk when branching.

One run, many points: with ``branch: true`` and schedule wsd, each size trains once to its
largest D at constant LR, saving checkpoints where the shorter budgets' cooldowns must start;
each shorter budget is a branch that starts from that checkpoint and cools down over its last
decay_fraction of steps, so it costs only its cooldown.

Cooling down on another mixture: ``cooldown_prefix: BLEND`` (schedule wsd) gives every run a data
stage (data.stages) that reads BLEND from the step its cooldown starts; a mapping
``cooldown_prefix: {plain: null, books: "0.3 A 0.7 B"}`` plans every budget once per entry (names
end in ``_cd-<label>``; null: no stage), all of a size's cooldowns branching from one trunk.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from llmtrain.config import ModelConfig
from llmtrain.core.errors import ConfigError
from llmtrain.core.paths import REPO_ROOT
from llmtrain.core.yamlconf import read_yaml
from llmtrain.model.gpt import count_params, flops_per_token

SWEEP_KEYS = {"name", "base", "deepspeed_config", "nproc", "vocab_size", "overrides", "ladder", "tokens", "hparams",
              "assumed_mfu", "cooldown_prefix"}
LADDER_KEYS = {"params", "aspect_ratio", "head_dim", "rows"}
TOKENS_KEYS = {"tokens_per_param", "isoflop", "basis"}
ISOFLOP_KEYS = {"flops", "min_tokens_per_param", "max_tokens_per_param"}
BASIS = {"total": "n_params", "non_embedding": "n_params_non_embedding", "active": "n_params_active",
         "active_non_embedding": "n_params_active_non_embedding"}  # tokens.basis -> count_params key
HP_KEYS = {"lr", "lr_grid", "lr_ref_params", "lr_exponent", "global_batch_size", "warmup_fraction", "warmup_min_steps",
           "warmup_max_steps", "schedule", "decay_fraction", "branch"}


@dataclass
class RunSpec:
    name: str
    size: str
    n_layer: int
    d_model: int
    n_head: int
    n_params: int
    n_params_non_embedding: int
    n_params_active: int  # n_params with only the experts a token uses (= n_params for a dense model)
    n_basis: int  # the N that token budgets are relative to (tokens.basis)
    tokens: int
    steps: int
    flops: float  # 6·N_active·D
    flops_with_attention: float
    lr: float
    global_batch_size: int
    warmup_steps: int
    compute_steps: int  # steps this run computes itself (a branch only its cooldown)
    init_from: str | None = None  # run name and step this branch starts from
    init_step: int = 0
    save_steps: list = field(default_factory=list)
    lr_grid_value: float | None = None  # the hparams.lr_grid entry this run was planned for (None: no grid)
    cooldown: str | None = None  # the cooldown_prefix label this run was planned for (None: no mapping)
    cooldown_prefix: str | None = None  # the blend its cooldown reads (None: the base config's data)
    cooldown_step: int | None = None  # the step that data stage starts at: where the cooldown starts

    def overrides(self, sweep: dict) -> list[str]:
        hp = sweep["hparams"]
        ov = [
            f"model.n_layer={self.n_layer}", f"model.d_model={self.d_model}", f"model.n_head={self.n_head}",
            f"train.max_steps={self.steps}", f"train.lr={self.lr}", f"train.global_batch_size={self.global_batch_size}",
            f"train.warmup_steps={self.warmup_steps}", f"train.schedule={hp['schedule']}",
            f"train.decay_fraction={hp['decay_fraction']}", f"log.name={self.name}",
        ]
        if sweep.get("vocab_size"):
            ov.append(f"model.vocab_size={sweep['vocab_size']}")
        if self.save_steps:
            ov.append("checkpoint.save_steps=" + ",".join(map(str, self.save_steps)))
        ov += list(sweep.get("overrides", []))
        if self.cooldown_prefix:  # after the sweep's own overrides: the cooldown's stage wins
            ov.append("data.stages=" + json.dumps([{"at": self.cooldown_step, "prefix": self.cooldown_prefix}]))
        return ov


def _check_keys(where: str, section: str, d: dict, allowed: set) -> None:
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: '{section}' must be a mapping")
    for k in d:
        if k not in allowed:
            raise ConfigError(f"{where}: unknown key '{section}.{k}' (known: {', '.join(sorted(allowed))})")


def _positive_list(where: str, key: str, value) -> list[float]:
    """A YAML list of positive numbers (PyYAML reads 1e5 without a dot as a string; float() takes it)."""
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: '{key}' must be a non-empty list of positive numbers, e.g. [5, 10, 20]; "
                          f"got {value!r}")
    out = []
    for v in value:
        try:
            x = float(v)
        except (TypeError, ValueError):
            x = float("nan")
        if not (math.isfinite(x) and x > 0) or isinstance(v, bool):
            raise ConfigError(f"{where}: '{key}' holds {v!r}; every entry must be a positive number")
        out.append(x)
    return out


def _number(where: str, key: str, value, lo: float = 0.0, hi: float = math.inf, lo_open: bool = False) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = float("nan")
    if isinstance(value, bool) or not math.isfinite(x) or x < lo or (lo_open and x == lo) or x > hi:
        rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        raise ConfigError(f"{where}: '{key}' is {value!r}; it must be a number in {rng}")
    return x


def load_sweep(path: str | Path) -> dict:
    path = Path(path)
    sw = read_yaml(path, "sweep config", "pass a sweep YAML such as configs/scaling/cpu_ladder.yaml")
    where = str(path)
    _check_keys(where, "(top level)", sw, SWEEP_KEYS)
    sw.setdefault("name", path.stem)
    sw.setdefault("base", "configs/tiny.yaml")
    sw.setdefault("deepspeed_config", "ds_configs/zero0.json")
    sw.setdefault("nproc", 1)
    sw.setdefault("overrides", [])
    sw.setdefault("assumed_mfu", 0.4)
    _check_keys(where, "ladder", sw.setdefault("ladder", {}), LADDER_KEYS)
    _check_keys(where, "tokens", sw.setdefault("tokens", {}), TOKENS_KEYS)
    _check_keys(where, "hparams", sw.setdefault("hparams", {}), HP_KEYS)
    lad, tok, hp = sw["ladder"], sw["tokens"], sw["hparams"]
    lad.setdefault("aspect_ratio", 32)
    lad.setdefault("head_dim", 32)
    if not lad.get("params") and not lad.get("rows"):
        raise ConfigError(f"{where}: ladder needs 'params' (target non-embedding sizes) or 'rows' (explicit shapes)")
    if bool(tok.get("tokens_per_param")) == bool(tok.get("isoflop")):
        raise ConfigError(f"{where}: tokens needs exactly one of 'tokens_per_param' or 'isoflop'")
    if tok.get("isoflop"):
        _check_keys(where, "tokens.isoflop", tok["isoflop"], ISOFLOP_KEYS)
    tok.setdefault("basis", "total")
    if tok["basis"] not in BASIS:
        raise ConfigError(f"{where}: tokens.basis must be one of {', '.join(BASIS)} (got {tok['basis']!r})")
    if "lr_grid" in hp:
        if "lr" in hp:
            raise ConfigError(f"{where}: hparams has both 'lr' and 'lr_grid'; keep one (lr_grid plans one run per "
                              "size and LR, each grid value in place of lr)")
        grid = _positive_list(where, "hparams.lr_grid", hp["lr_grid"])
        if len(set(grid)) != len(grid):
            raise ConfigError(f"{where}: 'hparams.lr_grid' repeats a value ({hp['lr_grid']!r}); list each LR once")
        if len({f"{g:g}" for g in grid}) != len(grid):
            raise ConfigError(f"{where}: 'hparams.lr_grid' values {hp['lr_grid']!r} are too close to name runs "
                              "apart (6 significant digits); space them further")
        hp["lr_grid"] = grid
        hp["lr"] = grid[0]  # for the range check below; the plan uses every grid value
    hp.setdefault("lr", 3e-3)
    hp.setdefault("lr_ref_params", 1e6)
    hp.setdefault("lr_exponent", 0.0)
    hp.setdefault("global_batch_size", 16)
    hp.setdefault("warmup_fraction", 0.05)
    hp.setdefault("warmup_min_steps", 5)
    hp.setdefault("warmup_max_steps", 500)
    hp.setdefault("schedule", "wsd")
    hp.setdefault("decay_fraction", 0.2)
    hp.setdefault("branch", hp["schedule"] == "wsd")
    if lad.get("params"):
        _positive_list(where, "ladder.params", lad["params"])
    if tok.get("tokens_per_param"):
        _positive_list(where, "tokens.tokens_per_param", tok["tokens_per_param"])
    if tok.get("isoflop"):
        _positive_list(where, "tokens.isoflop.flops", tok["isoflop"].get("flops"))
    for k, lo, hi, lo_open in (("lr", 0, math.inf, True), ("lr_ref_params", 0, math.inf, True),
                               ("lr_exponent", -math.inf, math.inf, False), ("global_batch_size", 1, math.inf, False),
                               ("warmup_fraction", 0, 1, False), ("warmup_min_steps", 0, math.inf, False),
                               ("warmup_max_steps", 0, math.inf, False), ("decay_fraction", 0, 1, True)):
        _number(where, f"hparams.{k}", hp[k], lo, hi, lo_open)
    if hp["branch"] and hp["schedule"] != "wsd":
        raise ConfigError(f"{where}: hparams.branch needs hparams.schedule: wsd (cooldown branches need a "
                          "constant-LR trunk)")
    sw["_cooldowns"] = _cooldowns(where, sw.get("cooldown_prefix"), hp["schedule"])
    sw["_path"] = where
    return sw


def _cooldowns(where: str, value, schedule: str) -> list[tuple[str | None, str | None]]:
    """cooldown_prefix as [(label, blend)]: [(None, None)] without it, [(None, BLEND)] for one blend
    for every run, [(label, BLEND or None), ...] for a mapping."""
    if value is None:
        return [(None, None)]
    if schedule != "wsd":
        raise ConfigError(f"{where}: cooldown_prefix needs hparams.schedule: wsd (the blend starts with the "
                          f"cooldown); remove it or use wsd")
    if isinstance(value, str) and value.strip():
        return [(None, value)]
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"{where}: cooldown_prefix must be a blend ('0.3 tok/web 0.7 tok/books') or a mapping of "
                          f"labels to blends (null: the base data), e.g. {{plain: null, books: tok/books}}")
    out = []
    for label, blend in value.items():
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(label)):
            raise ConfigError(f"{where}: cooldown_prefix label {label!r} names runs: use letters, digits, "
                              f"'_', '.', '-'")
        if blend is not None and (not isinstance(blend, str) or not blend.strip()):
            raise ConfigError(f"{where}: cooldown_prefix.{label} must be a blend or null (got {blend!r})")
        out.append((str(label), blend))
    return out


def shape_for(target_non_embedding: float, aspect_ratio: float, head_dim: int,
              base: ModelConfig | None = None) -> tuple[int, int, int]:
    """(n_layer, d_model, n_head) whose exact (active) non-embedding count is closest to the target,
    preferring d_model / n_layer near aspect_ratio: the score is |log(N/target)| +
    0.25·|log((d/L)/aspect_ratio)| over depths 1..128 and widths that are multiples of head_dim."""
    best, best_score = None, math.inf
    for L in range(1, 129):
        d0 = math.sqrt(target_non_embedding / (12.0 * L))
        widths = {max(head_dim, head_dim * f(d0 / head_dim)) for f in (math.floor, math.ceil)}
        for d in widths:
            if base is not None:
                mc = ModelConfig(**{**base.__dict__, "n_layer": L, "d_model": d, "n_head": d // head_dim,
                                    "vocab_size": base.vocab_size or 256, "d_ff": None,
                                    "moe_every": min(base.moe_every, L)})
                n = count_params(mc)["n_params_active_non_embedding"]
            else:
                n = 12 * L * d * d
            score = abs(math.log(n / target_non_embedding)) + 0.25 * abs(math.log((d / L) / aspect_ratio))
            if score < best_score:
                best, best_score = (L, d, d // head_dim), score
    return best


def plan(sw: dict, seq_len: int, vocab_size: int, base_model: ModelConfig) -> list[RunSpec]:
    lad, tok, hp = sw["ladder"], sw["tokens"], sw["hparams"]
    shapes = []
    if lad.get("rows"):
        for r in lad["rows"]:
            shapes.append((int(r["n_layer"]), int(r["d_model"]), int(r.get("n_head", r["d_model"] // lad["head_dim"]))))
    else:
        shapes = [shape_for(float(n), lad["aspect_ratio"], lad["head_dim"], base_model) for n in lad["params"]]
    G = int(hp["global_batch_size"])
    tokens_per_step = G * seq_len
    grid = hp.get("lr_grid")
    lr_values = [(float(g), f"_lr{float(g):g}") for g in grid] if grid else [(float(hp["lr"]), "")]
    runs: list[RunSpec] = []
    for L, d, h in shapes:
        mcfg = ModelConfig(**{**base_model.__dict__, "n_layer": L, "d_model": d, "n_head": h, "vocab_size": vocab_size})
        counts = count_params(mcfg)
        N = counts[BASIS[tok["basis"]]]
        if tok.get("tokens_per_param"):
            budgets = sorted({float(k) * N for k in tok["tokens_per_param"]})
        else:
            iso = tok["isoflop"]
            lo, hi = float(iso.get("min_tokens_per_param", 1)), float(iso.get("max_tokens_per_param", 200))
            budgets = sorted({float(C) / (6.0 * N) for C in iso["flops"] if lo * N <= float(C) / (6.0 * N) <= hi * N})
        steps_list = sorted({max(1, round(D / tokens_per_step)) for D in budgets})
        if not steps_list:
            continue
        shortest = steps_list[0]
        warmup = int(min(hp["warmup_max_steps"], max(hp["warmup_min_steps"], round(hp["warmup_fraction"] * shortest))))
        size = f"L{L}_d{d}"
        base = dict(size=size, n_layer=L, d_model=d, n_head=h, n_params=counts["n_params"],
                    n_params_non_embedding=counts["n_params_non_embedding"], n_params_active=counts["n_params_active"],
                    n_basis=N, global_batch_size=G, warmup_steps=warmup)
        fpt = flops_per_token(mcfg, seq_len)
        for lr0, suffix in lr_values:
            lr = lr0 * (float(hp["lr_ref_params"]) / N) ** float(hp["lr_exponent"])
            runs += _size_runs(sw, base, steps_list, tokens_per_step, fpt, lr, suffix,
                               lr0 if grid else None)
    if not runs:
        raise ConfigError(f"{sw['_path']}: the plan is empty: no size has a token budget in range")
    return runs


def _size_runs(sw: dict, base: dict, steps_list: list[int], tokens_per_step: int, fpt: float, lr: float,
               suffix: str, grid_value: float | None) -> list[RunSpec]:
    """The runs of one size at one LR: every budget (once per cooldown mixture) separately, or one
    trunk and its cooldown branches. The trunk cools down on the first cooldown mixture; the others
    of its own budget branch where its cooldown starts."""
    hp = sw["hparams"]
    size, warmup = base["size"], base["warmup_steps"]
    cooldowns = sw.get("_cooldowns") or [(None, None)]

    def decay_start(steps: int) -> int:
        return steps - max(1, round(hp["decay_fraction"] * steps))

    def spec(steps: int, cooldown: tuple[str | None, str | None], **kw) -> RunSpec:
        D = steps * tokens_per_step
        label, blend = cooldown
        return RunSpec(name=f"{size}_D{D}{suffix}" + (f"_cd-{label}" if label else ""), tokens=D, steps=steps,
                       flops=6.0 * base["n_params_active"] * D, flops_with_attention=fpt * D, lr=lr,
                       lr_grid_value=grid_value, cooldown=label, cooldown_prefix=blend,
                       cooldown_step=decay_start(steps) if blend else None, **base, **kw)

    longest = steps_list[-1]
    if not (hp["branch"] and (len(steps_list) > 1 or len(cooldowns) > 1)):
        return [spec(s, cd, compute_steps=s) for s in steps_list for cd in cooldowns]
    branched = steps_list[:-1] + ([longest] if len(cooldowns) > 1 else [])
    starts = {s: decay_start(s) for s in branched}
    for s, b in starts.items():
        if b <= warmup:
            raise ConfigError(
                f"{sw['_path']}: the {s}-step budget of {size} would branch at step {b}, inside the "
                f"{warmup}-step warmup; raise tokens.tokens_per_param or lower hparams.warmup_min_steps / "
                "warmup_fraction"
            )
    trunk = spec(longest, cooldowns[0], compute_steps=longest, save_steps=sorted(set(starts.values())))
    branches = [spec(s, cd, compute_steps=s - b, init_from=trunk.name, init_step=b)
                for s, b in starts.items() for cd in (cooldowns[1:] if s == longest else cooldowns)]
    return [trunk] + branches


def estimate_seconds(run: RunSpec, seq_len: int, rate_flops: float, assumed_mfu: float) -> float:
    per_step = run.flops_with_attention / run.steps
    return run.compute_steps * per_step / (rate_flops * assumed_mfu)


def format_table(runs: list[RunSpec], seq_len: int, rate_flops: float, assumed_mfu: float, nproc: int,
                 memory: list | None = None) -> str:
    """The plan as a Markdown table; ``memory``: each run's MemoryPlan (llmtrain/scaling/memory.py),
    shown as memory per rank, whether it fits and the largest micro-batch that does."""
    staged = any(r.cooldown_prefix for r in runs)  # a column for the cooldown's data when a run has one
    head = ("| run | L | d | N | N non-emb | D (tokens) | D/N | steps | FLOPs 6ND | lr | from | "
            + ("cooldown data | " if staged else "") + "est. time | N active |"
            + (" mem/rank | fits | max micro |" if memory else "") + "\n"
            + "|---" * (13 + staged + (3 if memory else 0)) + "|")
    rows, total = [head], 0.0
    for i, r in enumerate(runs):
        t = estimate_seconds(r, seq_len, rate_flops * nproc, assumed_mfu)
        total += t
        src = f"{r.init_from}@{r.init_step}" if r.init_from else "-"
        cd = (f"{r.cooldown_prefix} from step {r.cooldown_step} | " if r.cooldown_prefix else "- | ") if staged else ""
        rows.append(
            f"| {r.name} | {r.n_layer} | {r.d_model} | {r.n_params:,} | {r.n_params_non_embedding:,} | {r.tokens:,} | "
            f"{r.tokens / r.n_basis:.1f} | {r.steps} | {r.flops:.2e} | {r.lr:.2e} | {src} | {cd}{_fmt_time(t)} | "
            f"{r.n_params_active:,} |"
            + (f" {memory[i].total / 2**30:.2f} GiB | {'yes' if memory[i].fits else 'NO'} | "
               f"{memory[i].max_micro_batch or '-'} |" if memory else "")
        )
    rows.append(f"\n{len(runs)} runs; estimated total {_fmt_time(total)} at {assumed_mfu:.0%} of "
                f"{rate_flops / 1e9:,.0f} GFLOP/s per process x {nproc} (measured matmul rate)")
    if memory:
        rows.append(f"memory per rank against {memory[0].budget / 2**30:.2f} GiB ({memory[0].budget_source}); "
                    f"python launcher/pretrain.py --dry-run with a run's overrides shows its parts")
    return "\n".join(rows)


def _fmt_time(s: float) -> str:
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.1f}min"
    return f"{s / 3600:.1f}h"


def resolve(path: str, sweep_path: str) -> str:
    p = Path(path)
    if p.is_absolute():
        return str(p)
    for base in (Path(sweep_path).parent, REPO_ROOT, Path.cwd()):
        if (base / p).exists():
            return str((base / p).resolve())
    return str(p)


def seq_len_and_model(sw: dict) -> tuple[int, ModelConfig, str]:
    """(the window trained, train.seq_len; the base model; the base config's path)."""
    from llmtrain.config import load_config

    base = resolve(sw["base"], sw["_path"])
    cfg = load_config(base, [o for o in sw.get("overrides", []) if o.startswith(("model.", "train.", "data."))])
    return cfg.train.seq_len, cfg.model, base
