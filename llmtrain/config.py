"""One typed config tree for a run: YAML file + dotted overrides, validated once.

Sections: model, data, train, parallel, checkpoint, log. Unknown keys are errors naming the
key and the file. ``load_config(path, overrides)`` returns a validated ``Config``.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any, Optional

import yaml

from llmtrain.core.errors import ConfigError
from llmtrain.core.paths import REPO_ROOT
from llmtrain.core.yamlconf import apply_overrides, apply_updates, read_yaml

DEFAULT_CONFIG = REPO_ROOT / "configs" / "tiny.yaml"


@dataclass
class ModelConfig:
    n_layer: int = 4
    d_model: int = 128
    n_head: int = 4
    seq_len: int = 256
    vocab_size: Optional[int] = None  # None: taken from the tokenizer
    pos_encoding: str = "learned"  # learned | rotary | sinusoidal (the fixed sin/cos table, no parameters)
    rope_theta: float = 10000.0
    norm: str = "layernorm"  # layernorm | rmsnorm
    norm_eps: float = 1e-5
    mlp: str = "gelu"  # gelu | swiglu
    d_ff: Optional[int] = None  # None: 4*d_model for gelu, 8/3*d_model (rounded up to 64) for swiglu
    tie_embeddings: bool = True
    dropout: float = 0.0
    bias: bool = False
    init_std: float = 0.02
    n_kv_head: Optional[int] = None  # key/value heads; None: n_head; 1: multi-query; between: grouped-query
    rotary_pct: float = 1.0  # fraction of each head's dimensions rotated (GPT-NeoX/Pythia: 0.25)
    rope_scaling: Optional[str] = None  # None | llama3 (Llama 3.1's long-context frequency scaling)
    rope_scaling_factor: float = 8.0  # llama3 scaling: factor, low/high frequency factors, original context
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_seq_len: int = 8192
    parallel_residual: bool = False  # GPT-NeoX/Pythia: x + attn(norm1(x)) + mlp(norm2(x))
    qk_norm: bool = False  # normalise each head's queries and keys (model.norm's kind) before attention
    z_loss: float = 0.0  # coefficient of mean(logsumexp(logits)^2) added to the training loss (PaLM: 1e-4)
    gelu: str = "tanh"  # tanh | exact: the GELU form of the gelu MLP (GPT-NeoX/Pythia use exact)
    # standard | mup (Tensor Programs V; llmtrain/model/mup.py): init, per-layer Adam LR and the
    # output multiplier scale with d_model relative to mup_base_width, where they equal standard
    parametrization: str = "standard"
    mup_base_width: Optional[int] = None  # muP: the d_model the hyperparameters were tuned at
    mup_base_head_dim: Optional[int] = None  # muP: head size at the base width; None: mup_base_width / n_head
    # attention stays inside the documents this token ends, positions restart after it; set by the
    # trainer to the data's end-of-document id when data.document_mask is true (None: no masking)
    document_mask_token: Optional[int] = None
    # Mixture of Experts (llmtrain/model/moe.py); moe_experts 0: every block has a dense MLP
    moe_experts: int = 0  # routed experts of each MoE layer
    moe_top_k: int = 2  # experts each token goes to
    moe_d_ff: Optional[int] = None  # width of one expert; None: ffn_dim / moe_granularity
    moe_granularity: int = 1  # fine-grained experts (Krajewski et al.'s G): expert width = ffn_dim / G
    moe_shared_experts: int = 0  # experts every token goes through (one MLP of moe_shared_experts x expert width)
    moe_shared_gate: bool = False  # Qwen2-MoE: the shared experts' output times sigmoid(w . x)
    moe_every: int = 1  # block i is an MoE block when (i + 1) % moe_every == 0 (Qwen's decoder_sparse_step)
    moe_norm_topk: bool = True  # the chosen experts' router probabilities renormalised to sum to 1 (Mixtral)
    moe_aux_loss: float = 0.01  # coefficient of the load-balancing loss (Switch Transformer)
    moe_z_loss: float = 0.001  # coefficient of the router z-loss (ST-MoE)
    # None: dropless; c: in training each expert takes at most ceil(c * top_k * tokens / experts) of a
    # micro-batch's tokens (highest router probability first), the rest of its assignments are dropped
    moe_capacity_factor: Optional[float] = None

    @property
    def is_moe(self) -> bool:
        return self.moe_experts > 0

    @property
    def expert_dim(self) -> int:
        """Hidden width of one routed expert (and of each shared expert)."""
        return self.moe_d_ff if self.moe_d_ff is not None else self.ffn_dim // self.moe_granularity

    def is_moe_layer(self, i: int) -> bool:
        return self.is_moe and (i + 1) % self.moe_every == 0

    @property
    def kv_heads(self) -> int:
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    def validate(self, where: str) -> None:
        _choice(where, "model.pos_encoding", self.pos_encoding, ("learned", "rotary", "sinusoidal"))
        _choice(where, "model.norm", self.norm, ("layernorm", "rmsnorm"))
        _choice(where, "model.mlp", self.mlp, ("gelu", "swiglu"))
        _choice(where, "model.gelu", self.gelu, ("tanh", "exact"))
        if self.rope_scaling is not None:
            _choice(where, "model.rope_scaling", self.rope_scaling, ("llama3",))
        if self.n_kv_head is not None and (self.n_kv_head <= 0 or self.n_head % self.n_kv_head):
            raise ConfigError(f"{where}: model.n_kv_head={self.n_kv_head} must be > 0 and divide model.n_head="
                              f"{self.n_head} (1: multi-query; n_head: plain multi-head)")
        if not 0.0 < self.rotary_pct <= 1.0:
            raise ConfigError(f"{where}: model.rotary_pct must be in (0, 1] (got {self.rotary_pct})")
        if self.pos_encoding != "rotary" and (self.rotary_pct != 1.0 or self.rope_scaling):
            raise ConfigError(f"{where}: model.rotary_pct and model.rope_scaling apply only with "
                              f"model.pos_encoding=rotary (got {self.pos_encoding})")
        if self.pos_encoding == "sinusoidal" and self.d_model % 2:
            raise ConfigError(f"{where}: sinusoidal positions need an even model.d_model (got {self.d_model})")
        if self.document_mask_token is not None and self.document_mask_token < 0:
            raise ConfigError(f"{where}: model.document_mask_token must be a token id >= 0 (got "
                              f"{self.document_mask_token}); set data.document_mask=true to take the data's own")
        if self.z_loss < 0:
            raise ConfigError(f"{where}: model.z_loss must be >= 0 (got {self.z_loss}; PaLM uses 1e-4)")
        for k in ("n_layer", "d_model", "n_head", "seq_len"):
            if getattr(self, k) <= 0:
                raise ConfigError(f"{where}: model.{k} must be > 0 (got {getattr(self, k)})")
        if self.d_model % self.n_head:
            raise ConfigError(f"{where}: model.d_model={self.d_model} is not divisible by model.n_head={self.n_head}")
        if self.pos_encoding == "rotary" and (self.d_model // self.n_head) % 2:
            raise ConfigError(f"{where}: rotary embeddings need an even head size "
                              f"(d_model/n_head = {self.d_model // self.n_head})")
        if self.pos_encoding == "rotary" and (self.rotary_dim <= 0 or self.rotary_dim % 2):
            raise ConfigError(f"{where}: model.rotary_pct={self.rotary_pct} rotates {self.rotary_dim} of each head's "
                              f"{self.d_model // self.n_head} dimensions; it must be an even number > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{where}: model.dropout must be in [0, 1) (got {self.dropout})")
        _choice(where, "model.parametrization", self.parametrization, ("standard", "mup"))
        if self.parametrization == "mup" and self.mup_base_width is None:
            raise ConfigError(f"{where}: model.parametrization=mup needs model.mup_base_width, the d_model the "
                              f"hyperparameters were tuned at (e.g. model.mup_base_width=128)")
        if self.parametrization != "mup" and (self.mup_base_width is not None or self.mup_base_head_dim is not None):
            raise ConfigError(f"{where}: model.mup_base_width and model.mup_base_head_dim apply only with "
                              f"model.parametrization=mup (got {self.parametrization}); remove them or set it")
        for k in ("mup_base_width", "mup_base_head_dim"):
            if getattr(self, k) is not None and getattr(self, k) <= 0:
                raise ConfigError(f"{where}: model.{k} must be > 0 (got {getattr(self, k)})")
        self.validate_moe(where)

    def validate_moe(self, where: str) -> None:
        if self.moe_experts < 0:
            raise ConfigError(f"{where}: model.moe_experts must be >= 0 (got {self.moe_experts}; 0: dense)")
        if not self.is_moe:
            unused = [k for k, default in (("moe_d_ff", None), ("moe_granularity", 1), ("moe_shared_experts", 0),
                                           ("moe_shared_gate", False), ("moe_every", 1),
                                           ("moe_capacity_factor", None)) if getattr(self, k) != default]
            if unused:
                raise ConfigError(f"{where}: model.{unused[0]} applies only with model.moe_experts > 0; set "
                                  f"model.moe_experts or remove it")
            return
        if not 1 <= self.moe_top_k <= self.moe_experts:
            raise ConfigError(f"{where}: model.moe_top_k={self.moe_top_k} must be in [1, model.moe_experts="
                              f"{self.moe_experts}]")
        if self.moe_d_ff is not None and self.moe_granularity != 1:
            raise ConfigError(f"{where}: set model.moe_d_ff or model.moe_granularity, not both (moe_d_ff="
                              f"{self.moe_d_ff} is the expert width; granularity G gives ffn_dim / G)")
        if self.moe_granularity < 1 or self.ffn_dim % self.moe_granularity:
            raise ConfigError(f"{where}: model.moe_granularity={self.moe_granularity} must be >= 1 and divide the "
                              f"MLP width {self.ffn_dim}")
        if self.expert_dim <= 0:
            raise ConfigError(f"{where}: model.moe_d_ff must be > 0 (got {self.moe_d_ff})")
        if self.moe_shared_experts < 0:
            raise ConfigError(f"{where}: model.moe_shared_experts must be >= 0 (got {self.moe_shared_experts})")
        if self.moe_shared_gate and not self.moe_shared_experts:
            raise ConfigError(f"{where}: model.moe_shared_gate=true needs model.moe_shared_experts > 0")
        if not 1 <= self.moe_every <= self.n_layer:
            raise ConfigError(f"{where}: model.moe_every={self.moe_every} must be in [1, model.n_layer="
                              f"{self.n_layer}] (1: every block is MoE; 2: every second)")
        for k in ("moe_aux_loss", "moe_z_loss"):
            if getattr(self, k) < 0:
                raise ConfigError(f"{where}: model.{k} must be >= 0 (got {getattr(self, k)})")
        if self.moe_capacity_factor is not None and not self.moe_capacity_factor > 0:
            raise ConfigError(f"{where}: model.moe_capacity_factor must be > 0, or null for dropless routing (got "
                              f"{self.moe_capacity_factor})")
        if self.bias:
            raise ConfigError(f"{where}: model.bias=true with model.moe_experts > 0: experts have no biases here; "
                              f"set model.bias=false")
        if self.parametrization == "mup":
            raise ConfigError(f"{where}: model.parametrization=mup is not supported with model.moe_experts > 0 (no "
                              f"muP rule for routers and experts here); use the standard parametrization")

    @property
    def rotary_dim(self) -> int:
        """Dimensions of each head that rotary rotates (GPT-NeoX: int(head_dim * rotary_pct))."""
        return int((self.d_model // self.n_head) * self.rotary_pct)

    @property
    def ffn_dim(self) -> int:
        if self.d_ff is not None:
            return self.d_ff
        if self.mlp == "swiglu":
            return 64 * ((int(8 * self.d_model / 3) + 63) // 64)
        return 4 * self.d_model


@dataclass
class StageConfig:
    """One data stage: from ``at`` on, the run reads the blend ``prefix`` (data.prefix's notation)."""

    at: Optional[float] = None  # a fraction of the run's steps in (0, 1), or a step (an integer >= 1)
    prefix: Optional[str] = None


@dataclass
class DataConfig:
    # PREFIX as given to data_prep/tokenize_corpus.py: PREFIX_train.{bin,idx},
    # PREFIX_valid.{bin,idx} and PREFIX_manifest.json. None: the bundled sample corpus,
    # prepared on first use in the user cache ($LLMTRAIN_CACHE, else ~/.cache/llmtrain).
    # Or a blend in Megatron's notation: "0.7 PREFIX_A 0.3 PREFIX_B".
    prefix: Optional[str] = None
    # Mixtures that change during the run: [{at: 0.8, prefix: "0.3 A 0.7 B"}, ...]; each stage's
    # blend applies from its point on, data.prefix before the first (a stage at 0 is data.prefix).
    stages: list[StageConfig] = field(default_factory=list)
    tokenizer: Optional[str] = None  # tokenizer.json; None: the one named in the manifest
    # Preparing the bundled corpus (used only when prefix is None):
    sample_vocab_size: int = 4096
    valid_fraction: float = 0.02
    # Packed sequences: attention never crosses an end-of-document token and positions restart
    # after it (flex attention on GPU). Off by default, so runs stay comparable with earlier fits.
    document_mask: bool = False


@dataclass
class TrainConfig:
    # tokens per training (and evaluation) window; None: the model's positions, model.seq_len. Shorter
    # windows train a long-context model (Llama 3.1: 131072 positions) at 2048 or 4096 tokens
    seq_len: Optional[int] = None
    max_steps: int = 300
    max_tokens: Optional[int] = None  # stop at this many training tokens (whichever comes first)
    global_batch_size: int = 16  # sequences per optimizer step, over all data-parallel ranks
    micro_batch_size: Optional[int] = None  # sequences per rank per forward; None: as large as fits the global batch
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    schedule: str = "cosine"  # cosine | wsd | constant
    warmup_steps: int = 30
    decay_fraction: float = 0.2  # WSD: the last fraction of steps cools down (1 - sqrt)
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    precision: str = "fp32"  # fp32 | bf16 | fp16
    # Under bf16: the dtype gradients are accumulated in over micro-batches and reduced in across
    # data-parallel ranks. fp32 (default) on every layout; bf16 halves that memory and traffic at a
    # cost in precision (DeepSpeed's own default).
    grad_accum_dtype: str = "fp32"  # fp32 | bf16
    grad_reduce_dtype: str = "fp32"  # fp32 | bf16
    seed: int = 1234
    eval_interval: int = 100
    eval_batches: int = 8
    log_interval: int = 10
    max_bad_steps: int = 5  # non-finite losses in a row before the run stops
    peak_flops: Optional[float] = None  # per device, for MFU; None: known GPU table or measured on CPU
    activation_checkpointing: bool = False
    compile: bool = False  # torch.compile the model through DeepSpeed (engine.compile)
    threads: Optional[int] = None  # CPU: torch threads per rank; None: cores / ranks on the node
    # CPU: glibc's malloc keeps freed tensors' memory for the next step instead of unmapping and faulting it in again
    # (train/dist.py keep_freed_memory; ~1.3x on the default run); false: glibc's defaults
    keep_freed_memory: bool = True
    profile_steps: list[int] = field(default_factory=list)  # [a, b]: torch.profiler trace of steps a..b-1
    # multiple-choice JSONL files ({"context", "choices", "label"} a line) scored at each evaluation (acc, acc_norm)
    eval_tasks: list[str] = field(default_factory=list)
    # lm-evaluation-harness tasks scored at each evaluation (the harness extra: pip install -e '.[harness]'), found
    # in the folders of task YAMLs of harness_include_path, else among lm-eval's own; logged as "split": "harness:TASK"
    harness_tasks: list[str] = field(default_factory=list)
    harness_include_path: list[str] = field(default_factory=list)

    def validate(self, where: str) -> None:
        _choice(where, "train.schedule", self.schedule, ("cosine", "wsd", "constant"))
        _choice(where, "train.precision", self.precision, ("fp32", "bf16", "fp16"))
        for key in ("grad_accum_dtype", "grad_reduce_dtype"):
            _choice(where, f"train.{key}", getattr(self, key), ("fp32", "bf16"))
            if getattr(self, key) == "bf16" and self.precision != "bf16":
                raise ConfigError(f"{where}: train.{key}=bf16 needs train.precision=bf16 (got {self.precision}); "
                                  f"remove it or set train.precision=bf16")
        if self.max_steps <= 0:
            raise ConfigError(f"{where}: train.max_steps must be > 0 (got {self.max_steps})")
        if self.global_batch_size <= 0:
            raise ConfigError(f"{where}: train.global_batch_size must be > 0")
        if self.warmup_steps < 0:
            raise ConfigError(f"{where}: train.warmup_steps must be >= 0")
        if not 0.0 <= self.decay_fraction <= 1.0:
            raise ConfigError(f"{where}: train.decay_fraction must be in [0, 1]")
        first_last = self.profile_steps
        if first_last and (len(first_last) != 2 or not 0 <= first_last[0] < first_last[1]):
            raise ConfigError(f"{where}: train.profile_steps={self.profile_steps} must be [first, last] with "
                              f"0 <= first < last, e.g. [10, 13]")


@dataclass
class ParallelConfig:
    pipeline_stages: int = 1
    # ranks that share one copy of the experts, each holding model.moe_experts / expert_parallel_size
    # of them (tokens travel by all-to-all); the other ranks are data-parallel replicas of that group
    expert_parallel_size: int = 1


@dataclass
class CheckpointConfig:
    interval: int = 0  # steps between checkpoints; 0: none by steps
    # wall-clock minutes between checkpoints (rank 0's clock; every rank saves the same step); 0: none by time
    interval_minutes: float = 60.0
    # keep only the newest N checkpoints (0: keep all); `latest` and the save_steps ones are always kept
    keep_last: int = 0
    save_steps: list[int] = field(default_factory=list)  # extra steps to checkpoint at (WSD branch points)
    resume: bool = True  # resume from RUN_DIR/checkpoints/latest when present
    save_final: bool = True
    # Start from another run's checkpoint folder (.../checkpoints/global_stepN): weights,
    # optimizer, schedule position, RNG and data position; used for WSD cooldown branches.
    init_from: Optional[str] = None
    # With init_from a consolidated file or an imported model: the step to start at (its
    # schedule position; 0 for fine-tuning); None: the step the file records.
    init_step: Optional[int] = None
    # A resume refuses a changed data.prefix, train.global_batch_size or train.seed, or a changed
    # data stage before its checkpoint (the data position would no longer be exact); true accepts
    # the change and goes on from the step.
    allow_data_change: bool = False
    # Beside each DeepSpeed checkpoint, the layout-free state (fp32 weights, Adam moments and step
    # by parameter name; checkpoint/layout_free.py): a relaunch on another number of ranks, ZeRO
    # stage or pipeline layout resumes from it. Off: only the same layout can resume.
    layout_free: bool = True

    def validate(self, where: str) -> None:
        if self.interval < 0 or self.interval_minutes < 0 or self.keep_last < 0:
            raise ConfigError(f"{where}: checkpoint.interval, checkpoint.interval_minutes and checkpoint.keep_last "
                              f"must be >= 0 (0 turns each off)")


@dataclass
class LogConfig:
    tensorboard: bool = True
    name: Optional[str] = None  # run name; default: config file stem
    wandb: bool = False  # also log to Weights & Biases (pip install wandb; WANDB_MODE=offline works offline)
    wandb_project: Optional[str] = None  # default: llmtrain


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def validate(self, where: str = "config") -> Config:
        self.model.validate(where)
        self.train.validate(where)
        self.resolve_window(where)
        self.checkpoint.validate(where)
        self._validate_stages(where)
        if self.parallel.pipeline_stages < 1:
            raise ConfigError(f"{where}: parallel.pipeline_stages must be >= 1")
        ep = self.parallel.expert_parallel_size
        if ep < 1:
            raise ConfigError(f"{where}: parallel.expert_parallel_size must be >= 1 (got {ep})")
        if ep > 1 and not self.model.is_moe:
            raise ConfigError(f"{where}: parallel.expert_parallel_size={ep} needs experts (model.moe_experts > 0)")
        if self.model.is_moe and self.model.moe_experts % ep:
            raise ConfigError(f"{where}: parallel.expert_parallel_size={ep} does not divide model.moe_experts="
                              f"{self.model.moe_experts}; each rank of the group holds the same number of experts")
        if self.model.is_moe and self.parallel.pipeline_stages > 1:
            raise ConfigError(f"{where}: model.moe_experts > 0 with parallel.pipeline_stages="
                              f"{self.parallel.pipeline_stages}: the pipeline carries no router losses between "
                              f"stages; use data and expert parallelism (parallel.expert_parallel_size)")
        if self.model.n_layer % self.parallel.pipeline_stages:
            raise ConfigError(
                f"{where}: model.n_layer={self.model.n_layer} is not divisible by parallel.pipeline_stages="
                f"{self.parallel.pipeline_stages}; pick a stage count that divides the layers"
            )
        return self

    def resolve_window(self, where: str) -> None:
        """train.seq_len, the window trained and evaluated: the model's positions unless set, and
        never longer than them."""
        if self.train.seq_len is None:
            self.train.seq_len = self.model.seq_len
        if self.train.seq_len <= 0:
            raise ConfigError(f"{where}: train.seq_len must be > 0 (got {self.train.seq_len})")
        if self.train.seq_len > self.model.seq_len:
            raise ConfigError(f"{where}: train.seq_len={self.train.seq_len} is longer than the model's "
                              f"{self.model.seq_len} positions (model.seq_len); use train.seq_len<="
                              f"{self.model.seq_len}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def total_steps(self) -> int:
        """train.max_steps, or fewer when train.max_tokens is reached first."""
        steps = self.train.max_steps
        if self.train.max_tokens:
            window = self.train.seq_len or self.model.seq_len  # the window trained (resolve_window)
            steps = min(steps, math.ceil(self.train.max_tokens / (self.train.global_batch_size * window)))
        return steps

    def stage_steps(self) -> list[int]:
        """The step each of data.stages starts at: ``at`` itself, or for a fraction f of a run of T
        steps T - round((1 - f)·T), so that f = 1 - train.decay_fraction starts with the WSD cooldown."""
        total = self.total_steps()
        return [int(st.at) if st.at >= 1 else total - round((1.0 - st.at) * total) for st in self.data.stages]

    def _validate_stages(self, where: str) -> None:
        """data.stages: each {at, prefix}, at a fraction in (0, 1) or a whole step, in increasing
        order inside the run; a first stage at 0 is the run's first blend (it becomes data.prefix)."""
        stages = self.data.stages
        for i, st in enumerate(stages):
            key = f"data.stages[{i}]"
            if not st.prefix or not str(st.prefix).strip():
                raise ConfigError(f"{where}: {key}.prefix is missing; give the blend the stage reads, e.g. "
                                  f"{{at: 0.8, prefix: '0.3 tok/web 0.7 tok/books'}}")
            if st.at is None or not math.isfinite(st.at) or st.at < 0:
                raise ConfigError(f"{where}: {key}.at={st.at} must be a fraction of the run in (0, 1) or a step >= 1 "
                                  f"(e.g. at: 0.8 or at: 800)")
            if st.at >= 1 and not float(st.at).is_integer():
                raise ConfigError(f"{where}: {key}.at={st.at:g} is neither a fraction in (0, 1) nor a whole step; "
                                  f"write a fraction below 1 or an integer step")
            if st.at == 0 and i > 0:
                raise ConfigError(f"{where}: {key}.at=0: only the first stage can start at 0; list the stages in order")
        shift = 0  # the index the user wrote, once a stage at 0 became data.prefix
        if stages and stages[0].at == 0:
            first, shift = stages.pop(0), 1
            if self.data.prefix is not None and self.data.prefix.split() != first.prefix.split():
                raise ConfigError(f"{where}: data.stages[0] (at 0) reads '{first.prefix}' but data.prefix is "
                                  f"'{self.data.prefix}': the stage at 0 is the run's first blend; remove one of them")
            self.data.prefix = first.prefix
        total, prev = self.total_steps(), 0
        for i, (st, step) in enumerate(zip(stages, self.stage_steps())):
            key = f"data.stages[{i + shift}].at={st.at:g}"
            if step <= 0:
                raise ConfigError(f"{where}: {key} is step {step} of a {total}-step run; a later stage starts at "
                                  f"step 1 or after (data.prefix is the blend from step 0): give a step")
            if step <= prev:
                raise ConfigError(f"{where}: {key} starts at step {step}, not after the stage before it (step "
                                  f"{prev}); list the stages in order, each later than the one before")
            if step >= total:
                raise ConfigError(f"{where}: {key} starts at step {step}, but the run ends at step {total} "
                                  f"(train.max_steps / train.max_tokens); start it earlier or remove it")
            prev = step


def _choice(where: str, key: str, value: Any, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{where}: {key}={value!r} is not one of {', '.join(choices)}")


def load_config(path: Optional[str | os.PathLike] = None, overrides: list[str] = (),
                before_validate: Optional[Callable[[Config], None]] = None) -> Config:
    """YAML file (default configs/tiny.yaml) + ``section.key=value`` overrides → validated Config.
    ``before_validate`` may fill in sections first (the model of a transformers folder), so that
    what validation resolves from them (train.seq_len) sees them."""
    path = Path(path) if path else DEFAULT_CONFIG
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections (model, data, train, ...)")
    cfg = Config()
    apply_updates(cfg, raw, "", str(path))
    apply_overrides(cfg, overrides)
    if cfg.log.name is None:
        cfg.log.name = path.stem
    if before_validate is not None:
        before_validate(cfg)
    return cfg.validate(str(path))


def dump_config(cfg: Config, path: str | os.PathLike) -> None:
    from llmtrain.core.files import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
