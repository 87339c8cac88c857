"""The process group and the few collectives the trainer itself issues.

Device discipline: every tensor handed to a collective lives on the accelerator's current
device (``deepspeed.accelerator.get_accelerator()``): NCCL serves only GPU tensors and gloo on
CPU would not complain about a CPU tensor on a GPU run. There is no world-size-1 short cut: one
process runs the same collectives as many, so a single-GPU check exercises the real path.
"""
from __future__ import annotations

import datetime
import os
import re
from collections.abc import Mapping

import torch

from llmtrain.core.errors import ConfigError
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


def first_host(nodelist: str) -> str:
    """The first host of a Slurm host list: "gpu[07-09,12],cpu1" -> "gpu07"."""
    depth, end = 0, len(nodelist)
    for i, ch in enumerate(nodelist):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            end = i
            break
    return re.sub(r"\[([^],-]+)[^]]*\]", r"\1", nodelist[:end].strip())


def tasks_on_node(tasks_per_node: str, node: int) -> int:
    """Slurm's SLURM_STEP_TASKS_PER_NODE ("4(x2),3": 4 tasks on nodes 0 and 1, 3 on node 2) for one node."""
    counts = []
    for part in tasks_per_node.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if not m:
            raise ValueError(f"cannot read the tasks per node {tasks_per_node!r}")
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    return counts[node]


def slurm_port(job_id: str, step_id: str) -> int:
    """A port every task of one Slurm job step derives alike (below Linux's ephemeral range), so
    no task has to tell the others; concurrent jobs on a node differ unless their ids match mod 1000."""
    step = int(step_id) if step_id.isdigit() else 0
    return 20000 + (int(job_id) % 1000) * 10 + step % 10


def launcher_env(env: Mapping[str, str]) -> dict[str, str]:
    """The torch.distributed variables (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT) of a process started one per GPU by srun or by Open MPI's mpirun, from their own
    variables; {} when a torch-style launcher (deepspeed, torchrun, accelerate) already set RANK or
    nothing launched it. MASTER_ADDR and MASTER_PORT already set are kept. Under srun, MASTER_ADDR
    is the step's first node and MASTER_PORT comes from the job id, so every task agrees. Under
    mpirun outside Slurm across nodes, export MASTER_ADDR yourself (mpirun -x MASTER_ADDR=host)."""
    if "RANK" in env:
        return {}
    if "SLURM_STEP_ID" in env and "SLURM_PROCID" in env:  # a task of an srun step (not the batch shell)
        node = int(env.get("SLURM_NODEID", "0"))
        out = {"RANK": env["SLURM_PROCID"], "WORLD_SIZE": env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1")),
               "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
               "LOCAL_WORLD_SIZE": str(tasks_on_node(env.get("SLURM_STEP_TASKS_PER_NODE", "1"), node)),
               "MASTER_ADDR": first_host(env.get("SLURM_STEP_NODELIST", env.get("SLURM_JOB_NODELIST", "127.0.0.1"))),
               "MASTER_PORT": str(slurm_port(env.get("SLURM_JOB_ID", "0"), env["SLURM_STEP_ID"]))}
    elif "OMPI_COMM_WORLD_RANK" in env:
        world, local_size = env.get("OMPI_COMM_WORLD_SIZE", "1"), env.get("OMPI_COMM_WORLD_LOCAL_SIZE", "1")
        if "SLURM_JOB_NODELIST" in env:
            addr, port = first_host(env["SLURM_JOB_NODELIST"]), str(slurm_port(env.get("SLURM_JOB_ID", "0"), "9"))
        elif world == local_size:
            addr, port = "127.0.0.1", "29500"
        elif "MASTER_ADDR" in env:
            addr, port = env["MASTER_ADDR"], env.get("MASTER_PORT", "29500")
        else:
            raise ConfigError("mpirun across nodes: export the first node's address to every rank "
                              "(mpirun -x MASTER_ADDR=<first host> -x MASTER_PORT=29500 ...)")
        out = {"RANK": env["OMPI_COMM_WORLD_RANK"], "WORLD_SIZE": world,
               "LOCAL_RANK": env.get("OMPI_COMM_WORLD_LOCAL_RANK", "0"), "LOCAL_WORLD_SIZE": local_size,
               "MASTER_ADDR": addr, "MASTER_PORT": port}
    else:
        return {}
    for key in ("MASTER_ADDR", "MASTER_PORT"):
        if env.get(key):
            out[key] = env[key]
    return out


def apply_launcher_env() -> None:
    """Set the variables of ``launcher_env`` in this process (before anything reads RANK)."""
    os.environ.update(launcher_env(os.environ))


def init_distributed() -> tuple[int, int, int, torch.device]:
    """(rank, world, local rank, device): torch.distributed through DeepSpeed (nccl on GPUs,
    gloo on CPU), under the deepspeed launcher, torchrun, accelerate, srun or mpirun (one task
    per GPU), or as a plain process."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    apply_launcher_env()
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


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEEP_BYTES = 1 << 30


def keep_freed_memory() -> bool:
    """CPU: let glibc's malloc keep the memory of freed tensors for the next step.

    glibc gives every block above its mmap threshold (adaptive, 32 MiB at most) pages of its own
    and hands them back to the kernel on free, so each tensor that big a step makes and frees (the
    logits, their softmax and gradient: micro x window x vocab x 4 bytes, 64 MiB on the default
    run) faults in and zeroes every page again, every step. Both thresholds at 1 GiB serve such
    blocks from the heap and keep freed pages, as jemalloc and tcmalloc (which PyTorch's CPU
    tuning guide preloads) do: the process holds on to its peak instead of returning memory
    between steps. Measured: the default run 1.3x as fast (benchmarks/BENCHMARKS.md). Returns
    whether it applied (glibc only; elsewhere a no-op)."""
    import ctypes

    try:
        os.confstr("CS_GNU_LIBC_VERSION")
        libc = ctypes.CDLL("libc.so.6")
    except (ValueError, OSError, AttributeError):  # not glibc
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, KEEP_BYTES)) and bool(libc.mallopt(M_TRIM_THRESHOLD, KEEP_BYTES))


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
