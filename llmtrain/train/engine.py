"""Engine set-up: the model (GPT or its pipeline form; an MoE GPT laid out for expert
parallelism), AdamW and the LR schedule handed to deepspeed.initialize, and loading a
consolidated state dict into any layout."""
from __future__ import annotations

import torch

from llmtrain.config import Config
from llmtrain.core.errors import ConfigError


def enable_activation_checkpointing(blocks) -> None:
    """Recompute each block's activations in the backward pass instead of storing them, applied
    from outside the model (torch's composable checkpoint: forward hooks, parameter names and
    state-dict keys unchanged)."""
    from torch.distributed._composable import checkpoint

    for blk in blocks:
        checkpoint(blk)


def _no_match(cfg: Config, src: str) -> ConfigError:
    return ConfigError(f"checkpoint.init_from={cfg.checkpoint.init_from}: no matching weight for {src}; "
                       f"the file is from another model shape")


def build_partitioned(cfg: Config, ds_config: dict, state: dict | None):
    """ZeRO-3: the GPT built under ``deepspeed.zero.Init``, each module's parameters partitioned
    over the ranks as soon as the module is made, so no rank ever holds the whole model. Then
    each piece in turn (the embedding, one block, the head) is gathered, set on rank 0 (the
    position-seeded initialisation, or its tensors of the consolidated ``state``, which only
    rank 0 needs to hold) and scattered back into the partitions: the same weights as every
    other layout, with at most one piece whole at a time."""
    import deepspeed
    import torch.distributed as dist

    from llmtrain.model.gpt import GPT, piece_seed
    from llmtrain.train.dist import broadcast_object

    rank0 = dist.get_rank() == 0
    # every rank raises the same error, before the collectives of the build
    bad = broadcast_object(mismatched_weight(cfg, state) if rank0 and state is not None else None)
    if bad is not None:
        raise _no_match(cfg, bad)
    with deepspeed.zero.Init(config_dict_or_path=ds_config):
        model = GPT(cfg.model, seed=cfg.train.seed, init=False)
    for i, (prefix, piece) in enumerate(model.pieces()):
        params = dict(piece.named_parameters())
        with deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=0), torch.no_grad():
            if not rank0:
                continue
            if state is None:
                init_in_fp32(piece, cfg.model, piece_seed(cfg.train.seed, i))
                continue
            for name, p in params.items():
                p.copy_(state.pop(prefix + name))  # copied: rank 0 lets go of it
    return model


def init_in_fp32(piece, cfg, seed: int) -> None:
    """init_weights on fp32 stand-ins of ``piece``'s parameters, copied back into them: under
    bf16, zero.Init makes the parameters bf16, and a draw straight into bf16 differs from the fp32
    draw every other layout makes and then casts."""
    from llmtrain.model.gpt import init_weights

    params = [p for p in piece.parameters() if p.dtype != torch.float32]
    held = [p.data for p in params]
    for p in params:
        p.data = p.data.float()  # what init leaves alone (the norms' ones) keeps its value
    try:
        init_weights(piece, cfg, seed)
    finally:
        for p, h in zip(params, held):
            h.copy_(p.data)
            p.data = h


def mismatched_weight(cfg: Config, state: dict) -> str | None:
    """The first GPT weight that ``state`` lacks or holds in another shape (shapes from a model
    on the meta device, which allocates nothing); None when every weight matches."""
    from llmtrain.model.gpt import GPT

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in GPT(cfg.model, init=False).state_dict().items()}
    return next((k for k, s in shapes.items() if k not in state or state[k].shape != s), None)


def load_weights(model, state: dict, cfg: Config, pipeline: bool) -> None:
    """Copy a consolidated GPT state dict into the model (or this rank's pipeline stages)."""
    from llmtrain.model.pipeline import pipeline_key_to_gpt

    with torch.no_grad():
        for name, t in model.state_dict().items():
            src = pipeline_key_to_gpt(name, cfg.model.n_layer) if pipeline else name
            if src is None or name.endswith(("rope_cos", "rope_sin")):
                continue
            if src not in state or state[src].shape != t.shape:
                raise _no_match(cfg, src)
            t.copy_(state[src])


def build_engine(cfg: Config, ds_config: dict, total_steps: int, init_state: dict | None = None,
                 start_step: int = 0):
    """The model (GPT, or its pipeline form), AdamW with decoupled weight decay on matrices
    only, the LR schedule, all handed to deepspeed.initialize. ``init_state``: a consolidated
    GPT state dict to start from, at schedule position ``start_step``."""
    import deepspeed

    from llmtrain.train.ds_config import zero_stage
    from llmtrain.train.schedule import lr_multiplier

    pipeline = cfg.parallel.pipeline_stages > 1
    if zero_stage(ds_config) == 3:
        model = build_partitioned(cfg, ds_config, init_state)
        if cfg.train.activation_checkpointing:
            enable_activation_checkpointing(model.blocks)
    elif pipeline:
        from llmtrain.model.pipeline import gpt_pipeline

        model = gpt_pipeline(cfg.model, cfg.parallel.pipeline_stages, seed=cfg.train.seed,
                             activation_checkpoint_interval=1 if cfg.train.activation_checkpointing else 0)
        if init_state is not None:
            load_weights(model, init_state, cfg, pipeline)
    else:
        from llmtrain.model.gpt import GPT

        model = GPT(cfg.model, seed=cfg.train.seed)
        if init_state is not None:
            load_weights(model, init_state, cfg, pipeline)
        if cfg.model.is_moe:  # every MoE block: this rank's experts, the others by all-to-all
            from llmtrain.model.parallel_moe import apply_expert_parallel

            apply_expert_parallel(model, cfg.parallel.expert_parallel_size)
        if cfg.train.activation_checkpointing:
            enable_activation_checkpointing(model.blocks)
    from llmtrain.model.mup import mup_param_groups

    groups = mup_param_groups(model, cfg)  # decay / no-decay, and muP's per-role LR factors
    if cfg.model.is_moe:  # experts in groups of their own, reduced over the ranks that hold them
        from llmtrain.model.parallel_moe import split_expert_groups

        groups = split_expert_groups(groups)
    t = cfg.train
    # fused AdamW: one kernel over all parameters; on CPU ~5x faster than the per-tensor loop.
    # Where DeepSpeed checks no gradient overflow itself (no ZeRO and no DeepSpeed bf16/fp16: fp32,
    # or bf16 under autocast), the optimizer skips non-finite steps on its own (llmtrain/train/module.py).
    from llmtrain.train.module import SkipNonFiniteAdamW

    own_check = zero_stage(ds_config) == 0 and not any(ds_config.get(k, {}).get("enabled") for k in ("bf16", "fp16"))
    adamw = SkipNonFiniteAdamW if own_check else torch.optim.AdamW
    optimizer = adamw(groups, lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_multiplier(s, total_steps, t.schedule, t.warmup_steps, t.min_lr_ratio, t.decay_fraction),
    )
    if start_step:
        scheduler.last_epoch = start_step
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = base * scheduler.lr_lambdas[0](start_step)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
    if own_check:
        keep_clip_norm(engine, expert_parallel_group(cfg))
    if cfg.train.compile:
        engine.compile()
    return engine


def expert_parallel_group(cfg: Config):
    """The expert-parallel process group of an MoE model (None for a dense one)."""
    if not cfg.model.is_moe:
        return None
    from llmtrain.model.parallel_moe import expert_groups

    return expert_groups(cfg.parallel.expert_parallel_size)[0]


def keep_clip_norm(engine, ep_group=None) -> None:
    """fp32 without ZeRO: DeepSpeed clips with a global norm (across pipeline stages too) but
    discards it; keep it, so the logged gradient norm is the pre-clipping one on every layout.
    One replica holding the whole model (no pipeline, no experts): torch's foreach norm and scale
    (a few kernels instead of two per tensor; the gradients are the same on every data-parallel
    rank after their all-reduce, so no collective is needed). With experts (``ep_group``) the norm
    is our own: DeepSpeed's averages each rank's norm, which is not the norm of the whole gradient
    when the ranks hold different experts. Pipeline stages: DeepSpeed's, summed over the stages."""
    from deepspeed.runtime.utils import clip_grad_norm_

    params = list(engine.module.parameters())
    max_norm = engine.gradient_clipping()

    def clip() -> None:
        if ep_group is not None:
            norm = clip_grad_norm_experts(params, max_norm, ep_group)
        elif engine.mpu is None:
            norm = torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], max_norm, foreach=True)
        else:
            norm = clip_grad_norm_(parameters=params, max_norm=max_norm, mpu=engine.mpu)
        engine._global_grad_norm = engine.basic_optimizer.clip_norm = norm  # the optimizer's check reuses it

    engine.clip_fp32_gradients = clip


def clip_grad_norm_experts(params: list, max_norm: float, ep_group) -> torch.Tensor:
    """Clip reduced gradients by the norm of the whole model's gradient: the other parameters'
    (the same on every rank) and the experts' summed over the expert-parallel group, whose ranks
    hold different experts. Device-side; returns the norm before clipping."""
    from llmtrain.model.parallel_moe import is_expert_param
    from llmtrain.train.dist import accelerator_device

    device = accelerator_device()
    sq = torch.zeros(2, device=device)  # [other parameters, this rank's experts]
    for p in params:
        if p.grad is not None:
            sq[int(is_expert_param(p))] += p.grad.detach().float().pow(2).sum().to(device)
    experts = sq[1:].clone()
    torch.distributed.all_reduce(experts, group=ep_group)
    norm = (sq[0] + experts[0]).sqrt()
    if max_norm > 0:
        coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
        for p in params:
            if p.grad is not None:
                p.grad.mul_(coef.to(p.grad.device))
    return norm


def precision_in_use(engine) -> dict:
    """What DeepSpeed itself reports it computes, accumulates and reduces gradients in (env.json)."""
    model, accum = engine.get_data_types()
    return {"model_dtype": str(model).removeprefix("torch."), "grad_accum_dtype": str(accum).removeprefix("torch."),
            "grad_reduce_dtype": str(engine.communication_data_type).removeprefix("torch."),
            "autocast": str(engine.torch_autocast_dtype()).removeprefix("torch.") if engine.torch_autocast_enabled()
            else None, "optimizer": type(engine.optimizer).__name__}


def data_parallel_rank(engine, rank: int) -> int:
    grid = getattr(engine, "grid", None)
    return grid.get_data_parallel_rank() if grid is not None else rank
