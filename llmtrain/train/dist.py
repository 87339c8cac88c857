"""The process group and the few collectives the trainer itself issues.

Device discipline: every tensor handed to a collective lives on the accelerator's current
device (``deepspeed.accelerator.get_accelerator()``): NCCL serves only GPU tensors and gloo on
CPU would not complain about a CPU tensor on a GPU run. There is no world-size-1 short cut: one
process runs the same collectives as many, so a single-GPU check exercises the real path.
"""
from __future__ import annotations

import datetime
import os

import torch

from llmtrain.core.tasks import free_port


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def accelerator_device() -> torch.device:
    from deepspeed.accelerator import get_accelerator

    return torch.device(get_accelerator().current_device_name())


def skip_cpu_inference_comm_build() -> None:
    """DeepSpeed's CPU accelerator JIT-compiles a shared-memory all-reduce at start (behind a
    file lock shared by every DeepSpeed process on the machine). Only its inference all-reduce
    uses it, never training, so the trainer marks it unavailable instead of waiting for a build."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() != "cpu":
        return
    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None:
        deepspeed.ops.__compatible_ops__[builder.NAME] = False


def init_distributed() -> tuple[int, int, int, torch.device]:
    """(rank, world, local rank, device): torch.distributed through DeepSpeed (nccl on GPUs,
    gloo on CPU), under the deepspeed launcher, torchrun, accelerate or as a plain process."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(free_port())
    acc = get_accelerator()
    local_rank = env_int("LOCAL_RANK", 0)
    if acc.device_name() != "cpu":
        acc.set_device(local_rank)
    skip_cpu_inference_comm_build()
    deepspeed.init_distributed(dist_backend=acc.communication_backend_name(),
                               timeout=datetime.timedelta(minutes=30))
    return torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank, accelerator_device()


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


def all_reduce(t: torch.Tensor, op: str = "sum", group=None) -> torch.Tensor:
    """In-place all-reduce of an accelerator tensor (no host sync: the caller reads it when it
    needs the value)."""
    import torch.distributed as dist

    assert t.device.type == accelerator_device().type, f"collective on a {t.device} tensor"
    dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op], group=group)
    return t


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any rank (one small all-reduce)."""
    t = torch.tensor([1.0 if flag else 0.0], device=accelerator_device())
    return bool(all_reduce(t, "max").item())


def broadcast_object(obj, src: int = 0):
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src, device=accelerator_device())
    return box[0]
