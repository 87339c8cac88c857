"""Where the units of a stage run, apart from what they do (data_prep/runner.py):

* `LocalExecutor`: in this process, or over ``workers`` local processes;
* Slurm arrays (`slurm.py`): each array task is one task of the runner, its index read from
  SLURM_ARRAY_TASK_ID; it runs its share with a `LocalExecutor`. ``data_prep/slurm/clean.sbatch``
  submits the arrays;
* `RayExecutor` (`ray.py`, the ``ray`` extra): every unit as a Ray task on a cluster, a local one
  when no address is given. The engine to take past one Slurm cluster.

An executor has one method, ``map(stage, units)``: run each unit through the stage's worker (made
once per process), yield the results as they finish. A unit writes its own files and its done
marker, so the executor changes where the work runs, never what it writes.
"""
from .local import LocalExecutor
from .ray import RayExecutor  # imports Ray only when it runs

EXECUTORS = ("local", "ray")


def make_executor(name: str, workers: int = 1, address: str | None = None):
    """The executor a command line asked for (``--executor``, ``--workers``, ``--ray-address``)."""
    if name == "local":
        return LocalExecutor(workers)
    if name == "ray":
        return RayExecutor(address=address, num_cpus=workers)
    raise ValueError(f"--executor {name!r} is not one of {', '.join(EXECUTORS)}")


def add_executor_args(parser, local: str, ray: str) -> None:
    """``--executor`` (``local``/``ray``, described by the command) and ``--ray-address``."""
    parser.add_argument("--executor", choices=EXECUTORS, default="local",
                        help=f"local: {local}; ray: {ray} (pip install 'llmtrain[ray]')")
    parser.add_argument("--ray-address", default=None,
                        help="with --executor ray: the cluster to join (default: $RAY_ADDRESS, else a local cluster "
                             "of --workers CPUs)")


__all__ = ["EXECUTORS", "LocalExecutor", "RayExecutor", "add_executor_args", "make_executor"]
