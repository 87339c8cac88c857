"""The layout-free state of a checkpoint: what a run needs to go on, keyed by the GPT's own
parameter names instead of by how ranks held it, so that any layout can load it.

    STEP/layout_free/rank00000.safetensors ...   one file per rank of the run that saved it
    STEP/layout_free/client.pt                   step, tokens, every rank's RNG, the callbacks' state
    STEP/layout.json                             the layout that saved it (written last: the marker)

For every parameter (``embed.wte.weight``, ``blocks.3.attn.qkv.weight``, ...): the fp32 master
weight, Adam's ``exp_avg`` and ``exp_avg_sq``, and Adam's step. Each rank writes the pieces it
holds, with no communication: the flat fp32 tensors its optimizer steps ("masters", with their
two moments) and an index in the file's metadata, one row per piece,

    [name, shape, start, numel, master, offset]

meaning elements [start, start + numel) of the flattened parameter ``name`` are elements
[offset, offset + numel) of master ``master``. A ZeRO-1/2/3 rank holds a slice of many
parameters; a rank without ZeRO holds whole parameters (only data-parallel rank 0 writes them);
a pipeline stage holds its own layers (both ends hold the tied embedding: either copy is read); an
expert-parallel rank holds its experts, a contiguous run of each GPT expert tensor [E, ...]
(``Named.base``; the first rank holding each expert writes it without ZeRO).

Loading is the same walk in the other direction on the new layout: each rank reads, from
whichever files hold them, exactly the slices its own masters need, writes the weights into its
masters and its module's (bf16 or fp32) parameters, and gives its torch optimizer the moments
and step as torch's own ``load_state_dict`` would place them. The learning-rate schedule follows the step (the engine is
built at it) and the data position is the step; ``client.pt`` brings the rest.

DeepSpeed's optimizers are read through the attributes they use themselves for their universal
checkpoints (``_hp_mapping`` fragments on ZeRO-1/2 and the bf16 optimizer, ``grad_position`` and
the fp32 partitions on ZeRO-3); ``pieces`` is the one place that knows them.
"""
from __future__ import annotations

import contextlib
import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from llmtrain.core.errors import ConfigError
from llmtrain.core.files import atomic_path

FOLDER = "layout_free"
MOMENTS = ("exp_avg", "exp_avg_sq")
META_KEY = "llmtrain_layout_free"
FORMAT = 1

GptName = Callable[[str], "str | None"]  # the engine module's parameter name -> the GPT's (None: skip)


class LayoutFreeError(ConfigError):
    """One line: what the layout-free state lacks, or a layout it cannot describe."""


@dataclass
class Piece:
    name: str  # the GPT's parameter name
    shape: tuple[int, ...]  # the whole parameter's shape
    start: int  # first element of the flattened parameter held here
    numel: int
    master: torch.Tensor  # the fp32 tensor the torch optimizer steps
    offset: int  # where the piece starts in master.view(-1)
    expert: bool = False  # one of an expert-parallel rank's experts


def gpt_names(pipeline: bool, n_layer: int) -> GptName:
    """The mapping from the engine module's parameter names to the GPT's."""
    if not pipeline:
        return lambda name: name
    from llmtrain.model.pipeline import pipeline_key_to_gpt

    return lambda name: pipeline_key_to_gpt(name, n_layer)


# ----------------------------------------------------------------------------- the optimizers


@dataclass
class Named:
    """A module parameter as part of the GPT's: the whole GPT parameter's name and shape, and
    the element of its flattened form where this one starts (non-zero for the experts an
    expert-parallel rank holds: a run of the GPT's [E, ...] expert tensor)."""
    name: str
    param: torch.nn.Parameter
    shape: tuple[int, ...]
    base: int = 0
    expert: bool = False


def _named(engine, gpt_name: GptName) -> list[Named]:
    from llmtrain.model.parallel_moe import expert_places

    experts = expert_places(engine.module)
    out = []
    for name, p in engine.module.named_parameters():
        if id(p) in experts:
            g, shape, base = experts[id(p)]
            out.append(Named(g, p, shape, base, expert=True))
            continue
        g = gpt_name(name)
        if g is not None and p.requires_grad:
            out.append(Named(g, p, tuple(getattr(p, "ds_shape", p.shape))))
    return out


def optimizer_kind(engine) -> str:
    """plain (the torch optimizer steps the module's own fp32 parameters: no ZeRO, fp32 or bf16
    under autocast), fragments (ZeRO-1/2 and DeepSpeed's bf16 optimizer), zero3, or copies
    (DeepSpeed's fp16/bf16 optimizer without ZeRO: an fp32 copy of each parameter);
    LayoutFreeError for anything else."""
    from deepspeed.runtime.bf16_optimizer import BF16_Optimizer
    from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer
    from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    opt = engine.optimizer
    if opt is engine.basic_optimizer and isinstance(opt, torch.optim.Optimizer):
        return "plain"
    if type(opt) in (DeepSpeedZeroOptimizer, BF16_Optimizer):
        return "fragments"
    if type(opt) is DeepSpeedZeroOptimizer_Stage3 and not getattr(opt, "swap_optimizer", False):
        return "zero3"
    if type(opt) is FP16_UnfusedOptimizer:
        return "copies"
    raise LayoutFreeError(f"the layout-free state does not cover DeepSpeed's {type(opt).__name__} (NVMe offload, "
                          f"ZenFlow, ...); set checkpoint.layout_free=false and resume on the same layout")


def pieces(engine, gpt_name: GptName) -> tuple[str, list[Piece]]:
    """(kind, the pieces this rank's optimizer holds), in a fixed order."""
    kind = optimizer_kind(engine)
    named = _named(engine, gpt_name)
    opt, out = engine.optimizer, []
    if kind == "plain":
        out = [Piece(n.name, n.shape, n.base, n.param.numel(), n.param, 0, n.expert) for n in named]
    elif kind == "fragments":
        groups = engine.basic_optimizer.param_groups
        for n in named:
            m = getattr(n.param, "_hp_mapping", None)
            if m is not None and m.lp_fragment_address.numel:
                out.append(Piece(n.name, n.shape, n.base + m.lp_fragment_address.start, m.lp_fragment_address.numel,
                                 groups[m.param_group_index]["params"][0], m.hp_fragment_address.start,
                                 n.expert))
    elif kind == "zero3":
        import torch.distributed as dist

        name_of = {id(n.param): n.name for n in named}
        for i, group in enumerate(opt.fp16_groups):
            master = opt.fp32_partitioned_groups_flat[i]
            for p in group:
                if id(p) not in name_of:
                    continue
                _, offset, part = opt.grad_position[opt.get_param_id(p)]
                start = dist.get_rank(group=getattr(p, "ds_process_group", opt.dp_process_group)) * part
                numel = max(0, min(part, p.ds_numel - start))
                if numel:
                    out.append(Piece(name_of[id(p)], tuple(p.ds_shape), start, numel, master, offset))
    else:  # copies: fp32_groups[i][j] is the fp32 copy of the module's fp16_groups[i][j]
        of = {id(n.param): n for n in named}
        for lp_group, hp_group in zip(opt.fp16_groups, opt.fp32_groups):
            out += [Piece(of[id(p)].name, of[id(p)].shape, of[id(p)].base, p.numel(), hp, 0, of[id(p)].expert)
                    for p, hp in zip(lp_group, hp_group) if id(p) in of]
    return kind, out


def _masters(engine, kind: str) -> list[tuple[torch.Tensor, dict]]:
    """(tensor the torch optimizer steps, its param group), for every such tensor. ZeRO-3 puts
    each fp32 partition into its group only while stepping it."""
    base = engine.basic_optimizer
    if kind == "zero3":
        opt = engine.optimizer
        return [(m, base.param_groups[opt.sub_group_to_group_id[i]])
                for i, m in enumerate(opt.fp32_partitioned_groups_flat)]
    return [(p, group) for group in base.param_groups for p in group["params"]]


def _adam_state(group: dict, master: torch.Tensor, step: float, moments: dict[str, torch.Tensor]) -> dict:
    """torch's AdamW state for ``master`` as its own ``load_state_dict`` would place it: the step
    an fp32 tensor on the parameter's device when fused or capturable, on the CPU otherwise."""
    on_device = group.get("fused") or group.get("capturable")
    return {"step": torch.tensor(step, dtype=torch.float32, device=master.device if on_device else "cpu"),
            **{f: moments[f].to(master.device).view_as(master) for f in MOMENTS}}


def _data_parallel_rank(engine) -> int:
    import torch.distributed as dist

    grid = getattr(engine, "grid", None)
    return grid.get_data_parallel_rank() if grid is not None else dist.get_rank()


def _expert_data_parallel_rank(engine) -> int:
    """This rank's place among the ranks holding the same experts (0 without expert parallelism)."""
    from llmtrain.model.parallel_moe import ExpertParallelMoE

    moe = next((m for m in engine.module.modules() if isinstance(m, ExpertParallelMoE)), None)
    if moe is None:
        return 0
    from deepspeed.utils import groups

    return groups._get_expert_data_parallel_rank(moe.expert_group_name)


# ----------------------------------------------------------------------------- saving


def save(engine, step_dir: Path, rank: int, client_state: dict, gpt_name: GptName) -> None:
    """Write this rank's file of the layout-free state (every rank writes one; rank 0 also the
    client state). No communication; the caller's barrier and layout.json make it complete."""
    from safetensors.torch import save_file

    kind, held = pieces(engine, gpt_name)
    if kind in ("plain", "copies"):  # whole parameters, the same on every data-parallel rank: the first writes them
        first = _data_parallel_rank(engine) == 0, _expert_data_parallel_rank(engine) == 0
        held = [p for p in held if first[p.expert]]
    base = engine.basic_optimizer
    masters = {id(m): m for m, _ in _masters(engine, kind)}
    used = list(dict.fromkeys(id(p.master) for p in held))
    number = {key: k for k, key in enumerate(used)}
    tensors, steps = {}, set()
    for key in used:
        m, k = masters[key], number[key]
        state = base.state.get(m, {})
        tensors[f"{k}.weight"] = m.detach().reshape(-1)
        for field in MOMENTS:
            tensors[f"{k}.{field}"] = (state[field].detach().reshape(-1) if field in state
                                       else torch.zeros(m.numel(), dtype=torch.float32))
        if "step" in state:
            steps.add(float(state["step"]))
    if len(steps) > 1:
        raise LayoutFreeError(f"{step_dir}: the optimizer's tensors are at different Adam steps {sorted(steps)}")
    index = [[p.name, list(p.shape), p.start, p.numel, number[id(p.master)], p.offset] for p in held]
    meta = {"format": FORMAT, "kind": kind, "adam_step": steps.pop() if steps else 0.0, "pieces": index}
    folder = step_dir / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / f"rank{rank:05d}.safetensors") as tmp:
        save_file(_unshared({k: v.float().cpu() for k, v in tensors.items()}), str(tmp),
                  metadata={META_KEY: json.dumps(meta)})
    if rank == 0:
        with atomic_path(folder / "client.pt") as tmp:
            torch.save(_plain(client_state), tmp)


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (a view of a flat buffer): copy those."""
    seen, out = set(), {}
    for k, t in tensors.items():
        ptr = t.untyped_storage().data_ptr()
        out[k] = t.contiguous() if ptr not in seen else t.clone()
        seen.add(ptr)
    return out


def _plain(obj):
    """The client state with NumPy arrays and scalars as tensors and numbers, so that it loads
    with ``torch.load(weights_only=True)``."""
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": torch.from_numpy(obj.copy())}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return obj


def _unplain(obj):
    if isinstance(obj, dict):
        if set(obj) == {"__ndarray__"}:
            return obj["__ndarray__"].numpy()
        return {k: _unplain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_unplain(v) for v in obj)
    return obj


# ----------------------------------------------------------------------------- reading


class Store:
    """Every rank file of a step's layout-free state, opened lazily (memory-mapped): ``read``
    assembles any slice of any parameter from the files that hold it."""

    def __init__(self, step_dir: Path, world: int):
        from safetensors import safe_open

        folder = Path(step_dir) / FOLDER
        files = [folder / f"rank{r:05d}.safetensors" for r in range(world)]
        missing = [f.name for f in files if not f.is_file()]
        if missing or not (folder / "client.pt").is_file():
            raise LayoutFreeError(f"{folder}: incomplete layout-free state (missing "
                                  f"{(missing or ['client.pt'])[0]}); resume on the layout that saved it")
        self.folder = folder
        self._stack = contextlib.ExitStack()
        self.handles = [self._stack.enter_context(safe_open(str(f), framework="pt")) for f in files]
        self.index: dict[str, list[tuple[int, int, int, int, int]]] = defaultdict(list)
        self.shapes: dict[str, tuple[int, ...]] = {}
        steps = set()
        for h, handle in enumerate(self.handles):
            meta = json.loads((handle.metadata() or {}).get(META_KEY, "{}"))
            if meta.get("format") != FORMAT:
                raise LayoutFreeError(f"{files[h]}: not a layout-free state file of format {FORMAT}")
            if meta["pieces"]:
                steps.add(float(meta["adam_step"]))
            for name, shape, start, numel, master, offset in meta["pieces"]:
                self.index[name].append((h, master, offset, start, numel))
                self.shapes[name] = tuple(shape)
        for pieces_of in self.index.values():
            pieces_of.sort(key=lambda e: e[3])
        if len(steps) > 1:
            raise LayoutFreeError(f"{folder}: the ranks saved different Adam steps {sorted(steps)}")
        self.adam_step = steps.pop() if steps else 0.0

    def close(self) -> None:
        self._stack.close()

    def client_state(self) -> dict:
        return _unplain(torch.load(self.folder / "client.pt", map_location="cpu", weights_only=True))

    def read(self, name: str, field: str, start: int = 0, numel: int | None = None) -> torch.Tensor:
        """Elements [start, start + numel) of the flattened parameter ``name``'s ``field``
        (weight, exp_avg or exp_avg_sq), fp32."""
        if name not in self.shapes:
            raise LayoutFreeError(f"{self.folder}: has no parameter {name}; the checkpoint is of another model shape")
        if numel is None:
            numel = int(np.prod(self.shapes[name])) - start
        out, end, filled = torch.empty(numel, dtype=torch.float32), start + numel, start
        for h, master, offset, s, n in self.index[name]:  # sorted by start; a piece may repeat (tied weights)
            if filled == end:
                break
            lo, hi = max(s, filled), min(s + n, end)
            if lo > filled:
                break  # a gap: nothing saved covers element ``filled``
            if lo < hi:
                part = self.handles[h].get_slice(f"{master}.{field}")
                out[lo - start:hi - start] = part[offset + lo - s:offset + hi - s]
                filled = hi
        if filled == end:
            return out
        raise LayoutFreeError(f"{self.folder}: {name} is incomplete (element {filled} of {name} not saved); resume "
                              f"on the layout that saved it")

    def full(self, name: str, field: str = "weight") -> torch.Tensor:
        return self.read(name, field).view(self.shapes[name])


def read_state(step_dir: Path, world: int) -> tuple[dict[str, dict[str, torch.Tensor]], float]:
    """({name: {"weight", "exp_avg", "exp_avg_sq"}} as whole fp32 tensors, Adam's step) of a
    step folder's layout-free state saved by ``world`` ranks."""
    store = Store(step_dir, world)
    try:
        state = {n: {f: store.full(n, f) for f in ("weight", *MOMENTS)} for n in sorted(store.shapes)}
        return state, store.adam_step
    finally:
        store.close()


# ----------------------------------------------------------------------------- loading


@torch.no_grad()
def load(engine, step_dir: Path, world: int, gpt_name: GptName) -> dict:
    """Load a step's layout-free state (saved by ``world`` ranks, in any layout) into ``engine``:
    the fp32 masters and the module's parameters, Adam's moments and step. Returns the client
    state (step, tokens, RNG per saved rank, callbacks)."""
    store = Store(step_dir, world)
    try:
        kind, held = pieces(engine, gpt_name)
        masters = _masters(engine, kind)
        moments = {id(m): {f: torch.zeros(m.numel(), dtype=torch.float32) for f in MOMENTS} for m, _ in masters}
        for p in held:
            end = p.offset + p.numel
            p.master.detach().view(-1)[p.offset:end].copy_(store.read(p.name, "weight", p.start, p.numel))
            for f in MOMENTS:
                moments[id(p.master)][f][p.offset:end] = store.read(p.name, f, p.start, p.numel)
        _load_module_weights(kind, engine, store, gpt_name, held)
        state = engine.basic_optimizer.state
        for m, group in masters:
            state[m] = _adam_state(group, m, store.adam_step, moments[id(m)])
        return store.client_state()
    finally:
        store.close()


def _load_module_weights(kind: str, engine, store: Store, gpt_name: GptName, held: list[Piece]) -> None:
    """The module's own (low-precision) copy of the weights, from the fp32 ones: whole
    parameters where every rank holds them, this rank's partition on ZeRO-3."""
    if kind == "plain":
        return  # the masters are the module's parameters
    named = _named(engine, gpt_name)
    if kind != "zero3":
        for n in named:
            n.param.data.copy_(store.read(n.name, "weight", n.base, n.param.numel()).view_as(n.param))
        return
    import torch.distributed as dist

    for g, p in ((n.name, n.param) for n in named):
        part = p.ds_tensor.numel()
        start = dist.get_rank(group=p.ds_process_group) * part
        numel = max(0, min(part, p.ds_numel - start))
        if numel:
            p.ds_tensor.data.view(-1)[:numel].copy_(store.read(g, "weight", start, numel))
        if p.data.numel() == p.ds_numel:  # a persistent parameter, gathered for good
            p.data.copy_(store.full(g).to(p.dtype))
