"""Run under ``deepspeed --num_gpus 2`` by tests/test_memory.py: builds the trainer's real engines
(llmtrain.train.engine.build_engine) for several layouts, runs one step each, and writes what
DeepSpeed actually allocated on this rank, by part, in bytes, to OUT/rank<R>.json:

    python tests/memory_partitions.py OUT CASES_JSON

CASES_JSON: [{"name", "overrides": [...], "ds": {...DeepSpeed JSON...}}, ...]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def storages(tensors) -> int:
    """Bytes of the distinct storages under ``tensors`` (views of one buffer count once)."""
    seen = {}
    for t in tensors:
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


def moments(opt) -> int:
    return sum(nbytes(v for k, v in st.items() if k in ("exp_avg", "exp_avg_sq")) for st in opt.state.values())


def dense_parts(engine, zero: int) -> dict:
    """Bytes DeepSpeed holds after one backward (gradients) and one step (optimizer states)."""
    g = torch.Generator().manual_seed(0)
    vocab, T = engine.module.cfg.vocab_size, 16
    x = torch.randint(0, vocab, (2, T + 1), generator=g)
    opt, module = engine.optimizer, engine.module
    parts = {}
    real_step = opt.step

    bf16_opt = hasattr(opt, "fp32_groups_gradients_flat")  # DeepSpeed's BF16_Optimizer (ZeRO-1 bf16, fp32 accumulation)

    def step(*args, **kwargs):  # the gradients as the optimizer's step finds them
        if bf16_opt:
            parts["grads32"] = nbytes(opt.fp32_groups_gradients_flat)
        elif zero == 0:
            parts["grads16"] = nbytes(p.grad for p in module.parameters() if p.grad is not None)
        elif zero in (1, 2):  # the buffers under the partition's gradients (ZeRO-1: whole gradients)
            parts["grads16"] = storages(t for ts in opt.averaged_gradients.values() for t in ts)
        else:
            parts["grads16"] = nbytes([opt.grad_partitions_flat_buffer])
        return real_step(*args, **kwargs)

    opt.step = step
    engine.backward(engine(x[:, :-1], x[:, 1:]))
    engine.step()
    if bf16_opt:
        parts["params16"] = nbytes(opt.bf16_groups_flat)
        parts["master"] = nbytes(opt.fp32_groups_flat_partition)
        parts["moments"] = moments(opt.optimizer)
    elif zero == 0:
        parts["params16"] = nbytes(module.parameters())
    elif zero in (1, 2):
        parts["params16"] = nbytes(opt.bit16_groups_flat)
    else:
        parts["params16"] = sum(p.ds_tensor.numel() * p.ds_tensor.element_size() for p in module.parameters())
        parts["persistent"] = sum(p.ds_numel * p.ds_tensor.element_size() for p in module.parameters() if p.ds_persist)
    if bf16_opt:
        pass
    elif zero == 0:
        basic = getattr(opt, "optimizer", opt)
        parts["moments"] = moments(basic)
        if hasattr(opt, "fp32_groups"):  # DeepSpeed's fp16/bf16 optimizer without ZeRO
            parts["master"] = nbytes(p for group in opt.fp32_groups for p in group)
    elif zero in (1, 2):
        parts["master"] = nbytes(opt.single_partition_of_fp32_groups)
        parts["moments"] = moments(opt.optimizer)
    else:
        flat16 = {t.data_ptr() for t in opt.fp16_partitioned_groups_flat}
        parts["master"] = nbytes(t for t in opt.fp32_partitioned_groups_flat if t.data_ptr() not in flat16)
        parts["moments"] = moments(opt.optimizer)
    return {k: v for k, v in parts.items() if v}


def pipeline_parts(engine, vocab: int) -> dict:
    g = torch.Generator().manual_seed(0)
    batches = iter([(x[:, :-1], x[:, 1:]) for x in [torch.randint(0, vocab, (engine.train_micro_batch_size_per_gpu(),
                                                                             17), generator=g)
                                                    for _ in range(engine.gradient_accumulation_steps())]])
    opt, parts = engine.optimizer, {}
    if not hasattr(opt, "optimizer"):  # no DeepSpeed wrapper (fp32, or bf16 under autocast): the gradients at the step
        real_step = opt.step

        def step(*args, **kwargs):
            parts["grads16"] = nbytes(p.grad for p in engine.module.parameters() if p.grad is not None)
            return real_step(*args, **kwargs)

        opt.step = step
    engine.train_batch(batches)
    if not hasattr(opt, "optimizer"):
        parts.update(params16=nbytes(engine.module.parameters()), moments=moments(opt))
    else:
        parts["params16"] = nbytes(opt.bit16_groups_flat if hasattr(opt, "bit16_groups_flat") else
                                   opt.bf16_groups_flat)
        parts["moments"] = moments(opt.optimizer)
        parts["master"] = nbytes(getattr(opt, "single_partition_of_fp32_groups", None) or
                                 opt.fp32_groups_flat_partition)
        if hasattr(opt, "fp32_groups_gradients_flat"):
            parts["grads32"] = nbytes(opt.fp32_groups_gradients_flat)
    parts["stage_params"] = sum(p.numel() for p in engine.module.parameters())
    return parts


def main() -> int:
    import torch.distributed as dist

    from llmtrain.config import load_config
    from llmtrain.train.dist import init_distributed
    from llmtrain.train.ds_config import build_ds_config
    from llmtrain.train.engine import build_engine

    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]  # the deepspeed launcher adds it
    out, cases = Path(args[0]), json.loads(Path(args[1]).read_text())
    rank, world, _, _ = init_distributed()
    results = {}
    # a pipeline engine leaves DeepSpeed's model-parallel state behind: build the dense ones first
    cases.sort(key=lambda c: any(o.startswith("parallel.pipeline_stages=") for o in c["overrides"]))
    for case in cases:
        cfg = load_config(None, case["overrides"])
        stages = cfg.parallel.pipeline_stages
        ds = build_ds_config(cfg, case["ds"], "case", "case", world // stages)
        engine = build_engine(cfg, ds, total_steps=10)
        zero = int(ds["zero_optimization"]["stage"])
        results[case["name"]] = (pipeline_parts(engine, cfg.model.vocab_size) if stages > 1
                                 else dense_parts(engine, zero))
        del engine
        dist.barrier()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
