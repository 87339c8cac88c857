"""How much accelerator memory one rank of a run needs, worked out before launch.

``plan_memory(cfg, ds_config, world)`` counts, for the rank that needs the most:

- model states, as DeepSpeed 0.19 allocates them for the layout (ZeRO stage, CPU offload of the
  optimizer and of the parameters, pipeline stages, precision): the parameters in the compute
  precision (ZeRO-3: each parameter's partition, the parameters under the persistence threshold
  whole, and the parameters gathered at once); the gradients (whole, or the rank's partition,
  plus the fp32 partition made for the step); the optimizer (the fp32 master partition and
  AdamW's two moments). Partition sizes follow DeepSpeed's own rules: ZeRO-1/2 flatten each
  optimizer group and pad it to a multiple of 2 x data-parallel ranks, ZeRO-3 pads each
  parameter to a multiple of the ranks. The element counts come from the model built on the
  meta device (nothing is allocated, whatever its size). The precision is the DeepSpeed config's
  as build_ds_config derives it: under bf16, ZeRO-0 keeps fp32 weights and runs under autocast,
  ZeRO-1 with fp32 accumulation gets DeepSpeed's BF16_Optimizer (whole fp32 gradients), ZeRO-2/3
  keep fp32 gradient partitions;
- communication buffers (gradient buckets; ZeRO-3's prefetch bucket; without ZeRO, the copy of
  the gradients DeepSpeed flattens for their all-reduce), shown with the parameters;
- activations per micro-batch of ``train.seq_len`` tokens: what each block saves for its
  backward pass (the whole set, or only its input under activation checkpointing, plus one
  block recomputed), the head, and the peak of the fp32 loss at the start of the backward pass
  (the log-softmax saved and two gradients of the logits' size). Attention is counted as the
  fused kernels save it (output and log-sum-exp); the unfused cases (dropout on CPU, a dense
  document mask) add their (T x T) matrices. A pipeline stage keeps as many micro-batches in
  flight as DeepSpeed's 1F1B schedule: min(stages - stage, accumulation steps). Under autocast the
  residual stream stays fp32 and a bf16 copy of every matrix weight lives through the forward pass.

The total is the peak, not the sum: the states alive through the step, plus the larger of the
activations (with the gradients of earlier micro-batches under accumulation) and what the
backward pass and the step make as the activations are freed (gradients, buckets, the step's
fp32 gradients). Not counted: the CUDA context and the allocator's fragmentation (a few hundred
MiB to a few GiB on a GPU), a collective's own temporaries, torch.compile's workspace; leave
that margin in ``--gpu-memory``. Checked against DeepSpeed's real allocations and estimators
(tests/test_memory.py) and measured memory (benchmarks/bench_memory.py, gpu_check.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from llmtrain.config import Config

GiB = 1024 ** 3
BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
DTYPE_BYTES = {"fp32": 4, "float32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2}
ALLREDUCE_BUCKET = 500_000_000  # elements DeepSpeed flattens per gradient all-reduce without ZeRO (fixed)
LOSS_BYTES_PER_LOGIT = 12  # fp32 log-softmax saved + its gradient + the logits' gradient, at the backward's start
LOGIT_FORWARD_BYTES = 10  # the loss in the forward pass: bf16 logits, their fp32 copy, the fp32 log-softmax saved
Z_LOSS_BYTES_PER_LOGIT = 8  # z-loss: the fp32 logits logsumexp saves, and its gradient (measured on CPU)


@dataclass
class Layout:
    """What of the DeepSpeed config and the run's shape decides memory."""

    zero: int
    dp: int  # data-parallel ranks (the ZeRO partition count)
    stages: int
    lp: int  # bytes per parameter as DeepSpeed holds it (2 under its bf16/fp16, else 4)
    acc: int  # bytes per gradient element as accumulated (data_types.grad_accum_dtype, else lp)
    offload_optimizer: bool
    offload_params: bool
    reduce_bucket: int
    overlap_comm: bool
    contiguous_gradients: bool
    prefetch_bucket: int
    persistence_threshold: int
    max_live: int  # ZeRO-3: parameters kept gathered at most (stage3_max_live_parameters)
    reuse_distance: int  # ZeRO-3: a parameter used again within this many is kept gathered
    micro: int
    gas: int  # gradient accumulation steps
    lazy_buffers: bool = False  # CPU: a bucket's pages are resident only once written
    autocast: bool = False  # fp32 weights, the forward and backward under torch autocast to bf16 (ZeRO-0 bf16)

    @classmethod
    def of(cls, cfg: Config, ds: dict, world: int, device_type: str = "cuda") -> Layout:
        z = ds.get("zero_optimization") or {}
        stage = int(z.get("stage", 0))
        # the precision sections build_ds_config derives (train/ds_config.set_precision); a DeepSpeed
        # JSON without them: train.precision for the weights and the activations alike
        derived = any(k in ds for k in ("bf16", "fp16", "torch_autocast"))
        half = any((ds.get(k) or {}).get("enabled") for k in ("bf16", "fp16"))
        lp = (2 if half else 4) if derived else BYTES[cfg.train.precision]
        acc = (ds.get("data_types") or {}).get("grad_accum_dtype")
        dp = world // cfg.parallel.pipeline_stages
        micro = int(ds.get("train_micro_batch_size_per_gpu") or cfg.train.micro_batch_size
                    or cfg.train.global_batch_size // dp)
        return cls(
            zero=stage, dp=dp, stages=cfg.parallel.pipeline_stages, lp=lp, acc=DTYPE_BYTES.get(str(acc), lp),
            offload_optimizer=(z.get("offload_optimizer") or {}).get("device", "none") in ("cpu", "nvme"),
            offload_params=(z.get("offload_param") or {}).get("device", "none") in ("cpu", "nvme"),
            reduce_bucket=int(float(z.get("reduce_bucket_size", 5e8))),
            overlap_comm=bool(z.get("overlap_comm", stage == 3)),
            contiguous_gradients=bool(z.get("contiguous_gradients", True)),
            prefetch_bucket=int(float(z.get("stage3_prefetch_bucket_size", 5e7))),
            persistence_threshold=int(float(z.get("stage3_param_persistence_threshold", 1e5))),
            max_live=int(float(z.get("stage3_max_live_parameters", 1e9))),
            reuse_distance=int(float(z.get("stage3_max_reuse_distance", 1e9))),
            micro=micro, gas=max(1, cfg.train.global_batch_size // (micro * dp)), lazy_buffers=device_type != "cuda",
            autocast=bool((ds.get("torch_autocast") or {}).get("enabled")),
        )

    @property
    def act(self) -> int:
        """Bytes per activation element: the compute precision (autocast computes in bf16)."""
        return 2 if self.autocast else self.lp

    @property
    def bf16_optimizer(self) -> bool:
        """DeepSpeed picks its BF16_Optimizer (bf16 weights, fp32 master partitions, whole flat
        gradients in the accumulation dtype): ZeRO-1 accumulating bf16 in fp32 without offload,
        and the pipeline on ZeRO-0 in bf16."""
        return self.lp == 2 and ((self.zero == 1 and self.acc == 4 and not self.offload_optimizer)
                                 or (self.zero == 0 and self.stages > 1))

    def bucket(self, elements: int, numel: int) -> int:
        """Elements of a communication bucket that take memory: all on a GPU; on CPU only what the
        gradients of ``numel`` parameters fill."""
        return min(elements, numel) if self.lazy_buffers else elements


@dataclass
class StageParams:
    """The parameters one rank holds (the whole model, or one pipeline stage's pieces)."""

    groups: list[list[int]]  # element counts per optimizer group, in DeepSpeed's order
    largest_module: int  # most parameters of one module (its own, not its children's)
    largest_param: int
    n_blocks: int  # transformer blocks on this stage
    stage: int
    n_stages: int

    @property
    def first(self) -> bool:  # holds the embedding's input (token ids)
        return self.stage == 0

    @property
    def last(self) -> bool:  # computes the logits and the loss
        return self.stage == self.n_stages - 1

    @property
    def numel(self) -> int:
        return sum(sum(g) for g in self.groups)


@dataclass
class States:
    """Bytes of one rank's model states, by part: ``parts`` maps a name to (role, bytes), where role
    is params, grads, optimizer or buffers (on the accelerator) or host (offloaded), and ``phase``
    maps it to when it is alive: "always"; "backward" (made during the backward pass, as the
    activations are freed: gradients, buckets) or "step" (made after it: the step's fp32
    gradients, the all-reduce's copy). With gradient accumulation the gradients of the earlier
    micro-batches are alive beside the activations of the next (``accumulating``)."""

    parts: dict[str, tuple[str, int]] = field(default_factory=dict)
    phase: dict[str, str] = field(default_factory=dict)
    accumulating: bool = False

    def add(self, role: str, name: str, nbytes: int, phase: str = "always") -> None:
        if nbytes:
            self.parts[name] = (role, int(nbytes))
            self.phase[name] = phase

    def of_phase(self, phase: str) -> int:
        return sum(n for k, (r, n) in self.parts.items() if r != "host" and self.phase[k] == phase)

    def peak_with(self, activations: int) -> int:
        """The peak on the accelerator with ``activations`` at the start of the backward pass: the
        states always alive, plus the larger of the activations (with the gradients kept from
        earlier micro-batches) and what the backward pass and the step make as they go."""
        kept = (self.parts["grads16"][1] if self.accumulating and self.phase.get("grads16") == "backward"
                and self.parts["grads16"][0] != "host" else 0)
        later = self.of_phase("backward") + self.of_phase("step") - kept
        return self.of_phase("always") + kept + max(activations, later)

    def role(self, role: str) -> int:
        return sum(n for r, n in self.parts.values() if r == role)

    params = property(lambda self: self.role("params"))
    grads = property(lambda self: self.role("grads"))
    optimizer = property(lambda self: self.role("optimizer"))
    buffers = property(lambda self: self.role("buffers"))
    host = property(lambda self: self.role("host"))

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer + self.buffers


@dataclass
class MemoryPlan:
    layout: Layout
    states: States
    activations: int  # per micro-batch in flight, as configured (checkpointed or not)
    activations_plain: int
    activations_checkpointed: int
    checkpointing: bool
    budget: int
    budget_source: str
    max_micro_batch: int | None
    stages: list[dict] = field(default_factory=list)  # per pipeline stage: its states and activations
    notes: list[str] = field(default_factory=list)  # what the plan leaves out for this run

    @property
    def total(self) -> int:
        """The peak per rank: model states, and the larger of the activations (the backward pass)
        and the parts made at the step (the step's fp32 gradients, the all-reduce's copy)."""
        return self.states.peak_with(self.activations)

    @property
    def fits(self) -> bool:
        return self.total <= self.budget

    def to_json(self) -> dict:
        s = self.states
        return {
            "per_rank": {"params_bytes": s.params + s.buffers, "grads_bytes": s.grads, "optimizer_bytes": s.optimizer,
                         "activations_bytes": self.activations, "total_bytes": self.total},
            "fits": self.fits,
            "max_micro_batch": self.max_micro_batch,
            "gpu_memory_bytes": self.budget,
            "gpu_memory_source": self.budget_source,
            "detail": {"buffers_bytes": s.buffers, "host_bytes": s.host,
                       "activations_bytes_without_checkpointing": self.activations_plain,
                       "activations_bytes_with_checkpointing": self.activations_checkpointed,
                       "activation_checkpointing": self.checkpointing, "micro_batch": self.layout.micro,
                       "zero_stage": self.layout.zero, "data_parallel": self.layout.dp,
                       "pipeline_stages": self.layout.stages, "stages": self.stages, "notes": self.notes},
        }

    def format(self) -> str:
        lay, s = self.layout, self.states
        off = [w for w, on in (("optimizer", lay.offload_optimizer), ("parameters", lay.offload_params)) if on]
        head = (f"memory per rank: ZeRO-{lay.zero}, {lay.dp} data-parallel x {lay.stages} pipeline stage(s), "
                f"{'fp32' if lay.act == 4 else '16-bit'} compute{' (autocast)' if lay.autocast else ''}, "
                f"micro-batch {lay.micro}"
                + (f", {' and '.join(off)} offloaded to the host" if off else ""))
        ckpt = "on" if self.checkpointing else "off"
        rows = [
            head,
            f"  parameters   {gib(s.params):>10}"
            + (f"  (+ {gib(s.buffers)} communication buffers)" if s.buffers else ""),
            f"  gradients    {gib(s.grads):>10}",
            f"  optimizer    {gib(s.optimizer):>10}",
            f"  activations  {gib(self.activations):>10}  per micro-batch in flight, checkpointing {ckpt} "
            f"(without: {gib(self.activations_plain)}, with: {gib(self.activations_checkpointed)})",
            f"  total        {gib(self.total):>10}  of {gib(self.budget)} ({self.budget_source}): "
            + ("fits" if self.fits else "does NOT fit"),
        ]
        if s.host:
            rows.append(f"  host memory  {gib(s.host):>10}  per rank (offloaded states)")
        mm = self.max_micro_batch
        rows.append("  largest micro-batch that fits: " + (str(mm) if mm else "none (even 1 does not fit)")
                    + " (a divisor of the sequences per rank)")
        if len(self.stages) > 1:
            rows += [f"  stage {st['stage']}: {gib(st['total_bytes'])} ({st['blocks']} blocks, "
                     f"{st['in_flight']} micro-batch(es) in flight)" for st in self.stages]
        rows += [f"  note: {n}" for n in self.notes]
        return "\n".join(rows)


def gib(n: int) -> str:
    return f"{n / GiB:.2f} GiB"


# ----------------------------------------------------------------------------- parameters


def stage_params(cfg: Config) -> list[StageParams]:
    """The parameters of each pipeline stage (one entry without a pipeline), counted on a GPT built
    on the meta device, grouped as the optimizer groups them (llmtrain.model.mup.mup_param_groups).
    Stages take blocks as DeepSpeed's partition_method="type:Block" does when the stages divide the
    blocks (the config requires it): L / P blocks each, the embedding on the first stage, the head
    (and with tied embeddings the embedding module again) on the last."""
    from llmtrain.model.gpt import GPT
    from llmtrain.model.mup import mup_param_groups

    with torch.device("meta"):
        model = GPT(cfg.model, init=False)
    group_of = {}
    for gi, g in enumerate(mup_param_groups(model, cfg)):
        for p in g["params"]:
            group_of[id(p)] = gi
    pieces = model.pieces()  # embed (0), blocks (1..L), head (L + 1)
    P, L = cfg.parallel.pipeline_stages, cfg.model.n_layer
    per = L // P
    owned = [list(range(1 + s * per, 1 + (s + 1) * per)) for s in range(P)]
    owned[0].insert(0, 0)
    owned[-1].append(L + 1)
    if P > 1 and cfg.model.tie_embeddings:
        owned[-1].insert(0, 0)  # the tied output projection is the embedding module
    out = []
    for s, idx in enumerate(owned):
        groups: dict[int, list[int]] = {}
        largest = 0
        for i in idx:
            for p in pieces[i][1].parameters():
                groups.setdefault(group_of[id(p)], []).append(p.numel())
            for m in pieces[i][1].modules():
                largest = max(largest, sum(p.numel() for p in m.parameters(recurse=False)))
        out.append(StageParams([groups[k] for k in sorted(groups)], largest, max(max(g) for g in groups.values()),
                               sum(1 for i in idx if 1 <= i <= L), stage=s, n_stages=len(owned)))
    return out


def _align(n: int, to: int) -> int:
    return -(-n // to) * to


def flat_partition(group: list[int], dp: int) -> tuple[int, int]:
    """ZeRO-1/2: (flat group size padded to 2 x dp elements, this rank's partition) of one group."""
    flat = _align(sum(group), 2 * dp)
    return flat, flat // dp


def params_in_partition(group: list[int], dp: int, rank: int) -> int:
    """ZeRO-2: elements of the parameters that reach into ``rank``'s partition of the flat group,
    whole (DeepSpeed's grads_in_partition keeps their gradients whole)."""
    _, part = flat_partition(group, dp)
    lo, hi, start, total = part * rank, part * (rank + 1), 0, 0
    for n in group:
        if start < hi and start + n > lo:
            total += n
        start += n
    return total


def zero3_partition(n: int, dp: int) -> int:
    return -(-n // dp)


def gathered_params(sp: StageParams, lay: Layout) -> int:
    """ZeRO-3: parameters gathered whole at once. A parameter is released after its module ran
    unless it is used again within stage3_max_reuse_distance parameters (the backward pass uses it
    again after about twice the parameters behind it), up to stage3_max_live_parameters: with
    DeepSpeed's defaults (1e9 each) a model under 5e8 parameters stays gathered through the step."""
    return max(sp.largest_module, min(sp.numel, lay.max_live, lay.reuse_distance // 2))


def model_states(sp: StageParams, lay: Layout, rank: int = 0) -> States:
    """Bytes of model states on data-parallel rank ``rank`` holding ``sp``, by part (see the module
    doc). Part names: params16 (the parameters in the compute precision), grads16, grads32 (the
    fp32 gradients the step reads), master (fp32 master weights), moments (AdamW's two), and
    ZeRO-3's persistent, gathered (gathered_params) and gathered_grads (the gradient of the largest
    module, before its reduce-scatter); buckets (communication buffers)."""
    lp, acc, N = lay.lp, lay.acc, lay.dp
    numel = sp.numel
    st = States(accumulating=lay.gas > 1)
    opt = "host" if lay.offload_optimizer else "optimizer"
    if lay.zero == 0 and not lay.bf16_optimizer:
        st.add("params", "params16", lp * numel)
        st.add("grads", "grads16", lp * numel, "backward")
        if lp != 4:  # DeepSpeed's fp16 optimizer: fp32 master copies, fp32 gradients made at the step
            st.add("grads", "grads32", 4 * numel, "step")
            st.add("optimizer", "master", 4 * numel)
        st.add("optimizer", "moments", 8 * numel)
        st.add("buffers", "allreduce_flat", lp * min(numel, ALLREDUCE_BUCKET), "step")  # flattened for it
        return st
    flats = [flat_partition(g, N) for g in sp.groups]
    flat, part = sum(f for f, _ in flats), sum(p for _, p in flats)
    if lay.bf16_optimizer:  # ZeRO-1-like partitions of the optimizer, the gradients whole
        st.add("params", "params16", lp * flat)
        st.add("grads", "grads32", acc * flat)  # BF16_Optimizer's flat gradient accumulator, whole
        st.add(opt, "master", 4 * part)
        st.add(opt, "moments", 8 * part)
        return st
    if lay.zero in (1, 2):
        st.add("params", "params16", lp * flat)
        if lay.zero == 2 and acc > lp and not lay.offload_optimizer:
            # fp32 accumulation of bf16 on ZeRO-2: each reduced gradient lands in an fp32 partition buffer,
            # which the step reads as it is
            st.add("grads", "grads16", acc * part, "backward")
        else:
            if lay.zero == 1 or not lay.offload_optimizer:  # ZeRO-1: whole gradients; ZeRO-2: those in the partition
                st.add("grads", "grads16", (acc if lay.zero == 1 else lp) * (
                    numel if lay.zero == 1 else sum(params_in_partition(g, N, rank) for g in sp.groups)), "backward")
            else:  # ZeRO-2 offload: one parameter's gradient at a time on its way to the host
                st.add("grads", "grads16", lp * sp.largest_param, "backward")
            st.add("host" if lay.offload_optimizer else "grads", "grads32", 4 * part, "step")
        st.add(opt, "master", 4 * part)
        st.add(opt, "moments", 8 * part)
        if lay.contiguous_gradients and (lay.zero == 2 or (lay.zero == 1 and lay.stages > 1)):
            n_buffers = 2 if lay.overlap_comm and lay.zero == 2 else 1  # filled in turn
            st.add("buffers", "buckets", lp * lay.bucket(n_buffers * lay.reduce_bucket, numel), "backward")
        return st
    # ZeRO-3: every parameter padded to a multiple of the ranks and partitioned
    sizes = [n for g in sp.groups for n in g]
    part = sum(zero3_partition(n, N) for n in sizes)
    st.add("host" if lay.offload_params else "params", "params16", lp * part)
    if N > 1:  # on one rank the partition is the parameter: nothing is gathered
        st.add("params", "persistent", lp * sum(n for n in sizes if n <= lay.persistence_threshold))
        st.add("params", "gathered", lp * gathered_params(sp, lay))
    st.add("grads", "gathered_grads", lp * sp.largest_module, "backward")  # a gradient before its reduce-scatter
    st.add("host" if lay.offload_optimizer else "grads", "grads16", acc * part)  # allocated with the optimizer
    st.add("host" if lay.offload_optimizer else "grads", "grads32", 4 * part, "step")
    st.add(opt, "master", 4 * part)  # a copy even of fp32 partitions (measured: DeepSpeed 0.19, CPU)
    st.add(opt, "moments", 8 * part)
    if lay.contiguous_gradients:
        st.add("buffers", "buckets", lp * lay.bucket(lay.reduce_bucket, numel), "backward")
    if N > 1:
        st.add("buffers", "prefetch", lp * min(lay.prefetch_bucket, numel))
    return st


# ----------------------------------------------------------------------------- activations


def norm_bytes(cfg: Config, lp: int, device_type: str, dim: int) -> int:
    """Bytes per token one normalisation saves: LayerNorm its input and fp32 mean and 1/std; RMSNorm
    on CUDA (a fused kernel) its input and fp32 1/rms, on CPU (torch's composite form) the fp32
    input and the fp32 normalised input."""
    if cfg.model.norm == "rmsnorm":
        return 8 * dim + 4 if device_type != "cuda" else lp * dim + 4
    return lp * dim + 8


def block_bytes(cfg: Config, lp: int, device_type: str) -> tuple[int, int]:
    """(bytes per token, bytes per (query, key) pair of a window) that one block saves for its
    backward pass, for the model's options (see the module doc)."""
    m = cfg.model
    d, f, hd, H = m.d_model, m.ffn_dim, m.d_model // m.n_head, m.n_head
    kv = m.kv_heads * hd
    per = 2 * norm_bytes(cfg, lp, device_type, d)  # norm1 and norm2, each its input (the residual stream)
    if m.parallel_residual:  # both read the same residual
        per -= lp * d if m.norm == "layernorm" or device_type == "cuda" else (4 * d if lp == 4 else 0)
    per += lp * d  # norm1's output, the qkv projection's input
    per += lp * (d + 2 * kv)  # the fused qkv projection (q, k, v are views of it)
    if m.qk_norm:  # the normalised q and k (their inputs are views of the projection)
        per += lp * (d + kv) + (H + m.kv_heads) * (norm_bytes(cfg, lp, device_type, hd) - lp * hd)
    if m.parametrization == "mup":
        per += lp * d  # the scaled queries
    if m.pos_encoding == "rotary":
        per += lp * (d + kv)  # the rotated q and k
    per += lp * d + 4 * H  # attention's output and fp32 log-sum-exp
    if m.pos_encoding == "rotary" or m.qk_norm:
        per += lp * d  # the output's (B, T, d) copy: contiguous (B, H, T, hd) queries give a (B, H, T, hd) output
    per += lp * (d + (4 * f if m.mlp == "swiglu" else 2 * f))  # norm2's output; the MLP's hidden states
    if m.dropout > 0:
        per += 2 * d * dropout_mask_bytes(lp, device_type)  # the residual dropouts' masks
    pairs = 0
    if device_type != "cuda" and m.dropout > 0:  # CPU attention with dropout is unfused, in fp32: softmax,
        pairs += 12 * H  # the dropout mask, the dropped scores
    elif m.document_mask_token is not None and (device_type != "cuda" or m.dropout > 0):
        pairs += lp  # the dense document mask, as the additive mask each attention call makes of it
    return per, pairs


def dropout_mask_bytes(lp: int, device_type: str) -> int:
    """Bytes per element of a saved dropout mask: bool on CUDA, the input's dtype on CPU."""
    return 1 if device_type == "cuda" else lp


def in_flight_micro_batches(sp: StageParams, lay: Layout) -> int:
    """Micro-batches whose activations a stage holds at once: 1F1B keeps min(stages - stage, gas)."""
    return min(sp.n_stages - sp.stage, lay.gas) if sp.n_stages > 1 else 1


def activation_bytes(cfg: Config, lay: Layout, sp: StageParams, micro: int, checkpointing: bool,
                     device_type: str) -> int:
    """Peak activation memory of one rank holding ``sp`` for micro-batches of ``micro`` windows."""
    m, T, lp = cfg.model, cfg.train.seq_len, lay.act
    tokens = micro * T
    per, pairs = block_bytes(cfg, lp, device_type)
    block = tokens * per + micro * T * T * pairs
    stored_block = lp * tokens * m.d_model if checkpointing else block  # checkpointed: the block's input
    in_flight = in_flight_micro_batches(sp, lay)
    stored = in_flight * sp.n_blocks * stored_block
    if sp.first:  # the token ids the embedding saves, and its dropout's mask
        stored += in_flight * tokens * (8 + (m.d_model * dropout_mask_bytes(lp, device_type) if m.dropout else 0))
    peak = stored
    if sp.last:  # the start of the backward pass: the head's activations and the loss's peak
        head = tokens * (norm_bytes(cfg, lp, device_type, m.d_model) + lp * m.d_model * (2 if _mup(cfg) else 1))
        loss = (LOSS_BYTES_PER_LOGIT + (Z_LOSS_BYTES_PER_LOGIT if m.z_loss else 0)) * tokens * m.vocab_size
        peak += head + loss
    if sp.n_blocks:  # a block's backward: its gradients of hidden states and of its largest weight (recomputed
        hidden = (2 if m.mlp == "swiglu" else 1) * m.ffn_dim  # first when checkpointed)
        grads = lp * tokens * (m.d_model + hidden) + lp * m.d_model * max(hidden, m.d_model + 2 * m.kv_heads *
                                                                          (m.d_model // m.n_head))
        peak = max(peak, stored + grads + (block if checkpointing else 0))
    if lay.autocast:
        peak = autocast_peak(cfg, sp, peak, stored, tokens * in_flight, checkpointing)
    if lay.stages > 1:  # the pipeline's send and receive buffers of hidden states (fp32 under autocast)
        peak += 2 * max(2, in_flight) * (4 if lay.autocast else lp) * tokens * m.d_model
    return peak


def autocast_peak(cfg: Config, sp: StageParams, peak: int, stored: int, tokens: int, checkpointing: bool) -> int:
    """The activation peak under torch autocast (fp32 weights, bf16 compute), from the bf16 one:
    the residual stream stays fp32 (2 more bytes per element where a block saves it), and autocast
    keeps a bf16 copy of every weight a matrix product reads until the forward pass ends, each
    saved for the backward pass unless checkpointed (a checkpointed block casts its weights again
    when recomputed; the forward pass then peaks, every weight cast, in its last block's MLP or in
    the loss)."""
    m = cfg.model
    d, kv = m.d_model, m.kv_heads * (m.d_model // m.n_head)
    block_w = d * (d + 2 * kv) + d * d + (3 if m.mlp == "swiglu" else 2) * d * m.ffn_dim
    head_w = m.vocab_size * d if sp.last else 0
    residual = 2 * tokens * d * sp.n_blocks * (1 if checkpointing or m.parallel_residual else 2)
    if not checkpointing:
        return peak + residual + 2 * (sp.n_blocks * block_w + head_w)
    mlp = 2 * tokens * (2 * d + (3 if m.mlp == "swiglu" else 2) * m.ffn_dim) if sp.n_blocks else 0
    # the loss, computed inside the forward pass: bf16 logits, their fp32 copy and the saved log-softmax
    loss = LOGIT_FORWARD_BYTES * tokens * m.vocab_size if sp.last else 0
    forward = stored + residual + 2 * (sp.n_blocks * block_w + head_w) + max(mlp, loss)
    return max(peak + residual + 2 * (head_w + (block_w if sp.n_blocks else 0)), forward)


def _mup(cfg: Config) -> bool:
    return cfg.model.parametrization == "mup"


# ----------------------------------------------------------------------------- the plan


def device_budget(device_type: str, local_ranks: int) -> tuple[int, str]:
    """The memory of the visible accelerator, or on CPU this machine's RAM shared by its ranks."""
    if device_type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return int(props.total_memory), f"{props.name}"
    import psutil

    return psutil.virtual_memory().total // max(1, local_ranks), f"host RAM / {local_ranks} rank(s)"


def divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


def plan_memory(cfg: Config, ds_config: dict, world: int, budget: int | None = None,
                device_type: str | None = None, local_ranks: int | None = None) -> MemoryPlan:
    """The memory plan of ``cfg`` run with ``ds_config`` on ``world`` processes (see the module doc).
    ``budget``: bytes per accelerator (default: the visible device's; on CPU the RAM per rank)."""
    if cfg.model.vocab_size is None:
        raise ValueError("model.vocab_size must be set to plan memory (the data's tokenizer gives it)")
    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    lay = Layout.of(cfg, ds_config, world, device_type)
    source = "--gpu-memory"
    if budget is None:
        budget, source = device_budget(device_type, local_ranks or world)
    stages = stage_params(cfg)
    # ZeRO-2's gradient partition holds whole the parameters reaching into it: the fullest rank counts
    states = [max((model_states(sp, lay, r) for r in range(lay.dp if lay.zero == 2 else 1)), key=lambda s: s.total)
              for sp in stages]
    ckpt = cfg.train.activation_checkpointing

    def acts(micro: int, checkpointing: bool = ckpt) -> list[int]:
        return [activation_bytes(cfg, lay, sp, micro, checkpointing, device_type) for sp in stages]

    def fullest(micro: int, checkpointing: bool = ckpt) -> tuple[int, int]:
        """(stage, its activations) of the stage whose total is largest."""
        a = acts(micro, checkpointing)
        s = max(range(len(stages)), key=lambda i: states[i].peak_with(a[i]))
        return s, a[s]

    def total(micro: int) -> int:
        s, a = fullest(micro)
        return states[s].peak_with(a)

    top, act = fullest(lay.micro)
    fitting = [b for b in divisors(cfg.train.global_batch_size // max(1, lay.dp)) if total(b) <= budget]
    rows = [{"stage": sp.stage, "blocks": sp.n_blocks, "params": sp.numel,
             "in_flight": in_flight_micro_batches(sp, lay), "states_bytes": st.total, "activations_bytes": a,
             "total_bytes": st.peak_with(a)} for sp, st, a in zip(stages, states, acts(lay.micro))]
    notes = []
    if cfg.model.is_moe:
        notes.append("experts: an MoE block's activations are counted as the dense MLP's (the router, the "
                     "dispatch and the experts' hidden states are not modelled)")
    if cfg.model.is_moe and cfg.parallel.expert_parallel_size > 1:
        notes.append(f"expert parallelism (parallel.expert_parallel_size={cfg.parallel.expert_parallel_size}) is "
                     f"not modelled: every expert is counted on every rank, an upper bound")
    return MemoryPlan(lay, states[top], act, fullest(lay.micro, False)[1], fullest(lay.micro, True)[1], ckpt,
                      int(budget), source, max(fitting) if fitting else None, rows, notes)


def parse_bytes(text: str) -> int:
    """'80GB', '80GiB', '81920MiB', '8.5e10' → bytes (GB and GiB both as 1024^3, as GPUs are sold)."""
    t = text.strip().lower().replace(" ", "")
    for unit, mult in (("gib", GiB), ("gb", GiB), ("mib", 1024 ** 2), ("mb", 1024 ** 2), ("g", GiB), ("m", 1024 ** 2)):
        if t.endswith(unit):
            return int(float(t[: -len(unit)]) * mult)
    return int(float(t))
