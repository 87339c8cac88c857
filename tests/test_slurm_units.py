"""Fast checks without a scheduler: the rank variables a task of srun or mpirun gets, and which
checkpoints checkpoint.keep_last removes."""
from __future__ import annotations

from pathlib import Path

import pytest

from llmtrain.checkpoint.prune import prune_checkpoints
from llmtrain.core.errors import ConfigError
from llmtrain.train.dist import first_host, launcher_env, tasks_on_node

# what srun gives task 5 of a 2-node x 4-GPU step of job 123456 (values as Slurm 22.05 sets them)
SRUN_TASK = {
    "SLURM_JOB_ID": "123456", "SLURM_STEP_ID": "0", "SLURM_PROCID": "5", "SLURM_NTASKS": "8",
    "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1", "SLURM_NODEID": "1", "SLURM_STEP_TASKS_PER_NODE": "4(x2)",
    "SLURM_STEP_NODELIST": "gpu[017-018]", "SLURM_JOB_NODELIST": "gpu[017-018]",
}


def test_srun_tasks_map_to_torch_ranks():
    got = launcher_env(SRUN_TASK)
    assert got == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4",
                   "MASTER_ADDR": "gpu017", "MASTER_PORT": "24560"}
    # every task of the step derives the same address and port
    other = launcher_env({**SRUN_TASK, "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"})
    assert (other["MASTER_ADDR"], other["MASTER_PORT"]) == (got["MASTER_ADDR"], got["MASTER_PORT"])
    # an address or port the user exported wins
    assert launcher_env({**SRUN_TASK, "MASTER_ADDR": "ib-gpu017", "MASTER_PORT": "31000"})["MASTER_ADDR"] == "ib-gpu017"
    # uneven nodes: 3 tasks on the last node
    uneven = {**SRUN_TASK, "SLURM_STEP_TASKS_PER_NODE": "4,3", "SLURM_NODEID": "1"}
    assert launcher_env(uneven)["LOCAL_WORLD_SIZE"] == "3"


@pytest.mark.slow
def test_torch_launchers_and_the_batch_shell_are_left_alone():
    # deepspeed, torchrun and accelerate set RANK themselves (also when they run inside an srun task)
    assert launcher_env({**SRUN_TASK, "RANK": "0", "WORLD_SIZE": "2"}) == {}
    # python launcher/pretrain.py in the batch script itself (no srun): one process, not a task of a step
    batch = {k: v for k, v in SRUN_TASK.items() if k != "SLURM_STEP_ID"}
    assert launcher_env(batch) == {}
    assert launcher_env({}) == {}


def test_mpirun_ranks():
    ompi = {"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
            "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}
    with pytest.raises(ConfigError, match="MASTER_ADDR"):
        launcher_env(ompi)  # two nodes, nobody said where rank 0 is
    got = launcher_env({**ompi, "MASTER_ADDR": "node1"})
    assert got == {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                   "MASTER_ADDR": "node1", "MASTER_PORT": "29500"}
    # inside a Slurm allocation: the job's first node
    assert launcher_env({**ompi, "SLURM_JOB_NODELIST": "n[3-4]", "SLURM_JOB_ID": "77"})["MASTER_ADDR"] == "n3"
    one_node = {**ompi, "OMPI_COMM_WORLD_LOCAL_SIZE": "4"}
    assert launcher_env(one_node)["MASTER_ADDR"] == "127.0.0.1"


def test_slurm_host_lists():
    assert first_host("vm") == "vm"
    assert first_host("gpu[07-09,12],cpu1") == "gpu07"
    assert first_host("rack[2-3]-n[01-04]") == "rack2-n01"
    assert first_host("a1,b[1-2]") == "a1"
    assert tasks_on_node("8(x3),4", 3) == 4 and tasks_on_node("2", 0) == 2


def steps(ckpt: Path) -> list[str]:
    return sorted((p.name for p in ckpt.iterdir() if p.name.startswith("global_step")),
                  key=lambda n: int(n.replace("global_step", "")))


def test_keep_last_keeps_latest_and_the_save_steps(tmp_path):
    ckpt = tmp_path / "checkpoints"
    for s in (2, 4, 6, 8, 10, 12):
        (ckpt / f"global_step{s}").mkdir(parents=True)
        (ckpt / f"global_step{s}" / "mp_rank_00_model_states.pt").write_bytes(b"x")
    (ckpt / "latest").write_text("global_step10")  # 12: a save cut off before `latest` moved to it
    removed = prune_checkpoints(ckpt, keep_last=2, save_steps=[4], keep=[ckpt / "global_step2"])
    assert sorted(p.name for p in removed) == ["global_step6"]
    assert steps(ckpt) == ["global_step2", "global_step4", "global_step8", "global_step10", "global_step12"]
    (ckpt / "latest").write_text("global_step12")
    prune_checkpoints(ckpt, keep_last=1, save_steps=[4])
    assert steps(ckpt) == ["global_step4", "global_step12"]
    assert not list(ckpt.glob(".removing-*"))
    assert prune_checkpoints(ckpt, keep_last=0) == []  # 0: keep everything
