"""The project's Slurm batch script under a real Slurm (one node on this machine): a job whose
time limit is shorter than its run checkpoints, requeues itself and finishes with an
uninterrupted run's losses; a slow save outlives the signal; srun starts one rank per task; a
run that keeps failing stops after the limit, one line per failure."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from slurmutil import (SBATCH_SCRIPT, attempts, job, last_step, output, preempt, saved_step, sbatch, scancel, scontrol,
                       wait_for)
from trainutil import REPO, SMALL, run_deepspeed, train_losses

STEPS = 60
ZERO2 = ["--deepspeed_config", REPO / "ds_configs" / "zero2.json"]


def common(token_data: str) -> list:
    return [*ZERO2, f"data.prefix={token_data}", *SMALL, f"train.max_steps={STEPS}", "model.dropout=0.1"]


@pytest.fixture(scope="module")
def reference(token_data, tmp_path_factory):
    """The uninterrupted run, under the deepspeed launcher (2 ranks, ZeRO-2)."""
    run = tmp_path_factory.mktemp("reference") / "run"
    r = run_deepspeed(2, "--run-dir", run, *common(token_data))
    assert r.returncode == 0, r.stderr[-3000:]
    losses = train_losses(run)
    assert sorted(losses) == list(range(1, STEPS + 1))
    return run, losses


@pytest.mark.slow
def test_a_job_shorter_than_its_run_requeues_and_finishes_with_the_same_losses(slurm, token_data, reference,
                                                                               tmp_path):
    """sbatch --time=1 --signal=B:TERM@45: each attempt is stopped before its limit (by Slurm's
    own signal, or by the test's SIGTERM to the batch shell, as a preemption sends it), saves,
    requeues itself and resumes; after two such requeues the limit is raised and the run
    finishes with the uninterrupted run's losses, step by step. A finished run is not requeued."""
    run, out = tmp_path / "run", tmp_path / "job.out"
    job_id = sbatch(slurm, ["--time=1", "--signal=B:TERM@45", f"--output={out}"], SBATCH_SCRIPT,
                    ["--run-dir", run, *common(token_data)])

    def stop_attempt(n: int) -> None:
        """Wait for attempt n+1 to train past its checkpoint unless Slurm stops it first; stop it."""
        wait_for(lambda: len(attempts(run)) > n or last_step(run) >= saved_step(run) + 3, 300,
                 f"attempt {n + 1} to train ({out}: {output(out)[-2000:]})")
        if len(attempts(run)) == n:
            assert last_step(run) < STEPS, "the run finished before it could be preempted twice"
            preempt(slurm, job_id)
        wait_for(lambda: len(attempts(run)) > n, 300, f"attempt {n + 1} to end ({output(out)[-2000:]})")

    try:
        while sum(": requeued" in a for a in attempts(run)) < 2:
            stop_attempt(len(attempts(run)))
        scontrol(slurm, "update", f"JobId={job_id}", "TimeLimit=30")  # now let it finish
        wait_for(lambda: job(slurm, job_id)["JobState"] in ("COMPLETED", "FAILED", "TIMEOUT", "CANCELLED"), 600,
                 f"the job to end ({output(out)[-2000:]})")
    finally:
        scancel(slurm, job_id)
    log, text, state = attempts(run), output(out), job(slurm, job_id)
    assert state["JobState"] == "COMPLETED" and state["ExitCode"] == "0:0", (state, text[-3000:])
    assert log[-1].endswith(": finished") and sum(": requeued" in a for a in log) >= 2, log
    assert int(state["Restarts"]) == len(log) - 1, "every attempt but the last requeued the job, once"
    assert "Force Terminated" not in text and "Traceback" not in text, text[-3000:]
    for line in log[:-1]:  # every requeued attempt saved a checkpoint before its limit, and the next resumed it
        if ": requeued" in line:
            tag = line.split(" -> ")[1].split(":")[0]
            assert f"resumed from {run / 'checkpoints' / tag}" in text, tag
    ref = reference[1]
    got = train_losses(run)
    assert sorted(got) == list(range(1, STEPS + 1)), "metrics.jsonl reads as one run"
    for step in ref:
        assert got[step] == pytest.approx(ref[step], abs=1e-6), step

    # the same job again on the finished run: says so and is not requeued
    again = sbatch(slurm, [f"--output={tmp_path / 'again.out'}"], SBATCH_SCRIPT,
                   ["--run-dir", run, *common(token_data)])
    wait_for(lambda: job(slurm, again)["JobState"] not in ("PENDING", "RUNNING", "REQUEUED", "COMPLETING"), 300,
             "the job on the finished run to end")
    state = job(slurm, again)
    assert state["JobState"] == "COMPLETED" and state["Restarts"] == "0", state
    assert "already finished" in output(tmp_path / "again.out")
    assert attempts(run)[-1].endswith(": finished") and len(attempts(run)) == len(log) + 1


@pytest.mark.slow
def test_a_save_slower_than_the_signal_lead_is_waited_for(slurm, token_data, tmp_path):
    """Slurm's own time-limit signal (--signal=B:TERM@45 of a 1-minute job) while every save
    takes 20 s longer (as a big model's on a slow shared filesystem): the batch script keeps the
    ranks' step alive until each rank has saved, then requeues; the requeued job resumes from
    that checkpoint at the next step of the data. A preemption's SIGTERM during the save is not
    passed on again."""
    run, out = tmp_path / "run", tmp_path / "job.out"
    job_id = sbatch(slurm, ["--time=1", "--signal=B:TERM@45", f"--output={out}"], SBATCH_SCRIPT,
                    ["--run-dir", run, *ZERO2, f"data.prefix={token_data}", *SMALL, "train.max_steps=100000"],
                    extra_env="LLMTRAIN_TEST_SAVE_SECONDS=20")
    try:
        wait_for(lambda: "received SIGTERM: saving a checkpoint" in output(out), 400,
                 f"the time-limit signal ({output(out)[-3000:]})")
        preempt(slurm, job_id)  # a preemption during the save, on top of the time-limit signal
        line = wait_for(lambda: next((a for a in attempts(run) if ": requeued" in a), None), 400,
                        f"a checkpoint before the time limit ({output(out)[-3000:]})")
        tag = line.split(" -> ")[1].split(":")[0]
        step = int(tag.replace("global_step", ""))
        wait_for(lambda: last_step(run) > step, 300, f"the requeued job to train ({output(out)[-3000:]})")
    finally:
        scancel(slurm, job_id)
    text = output(out)
    assert re.search(rf"received SIGTERM: saving a checkpoint at step {step} and exiting", text), text[-3000:]
    assert "the ranks exited (srun status 0)" in text and "Force Terminated" not in text, text[-3000:]
    first = text.split("requeueing job")[0]  # the first attempt's part
    assert first.count("passing it to the tasks") == 1 and "SIGTERM again; the tasks have it already" in first, \
        first[-3000:]
    folder = run / "checkpoints" / tag
    assert sorted(p.name for p in folder.iterdir()) == [
        "layout.json", "layout_free", "mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    assert sorted(p.name for p in (folder / "layout_free").iterdir()) == [
        "client.pt", "rank00000.safetensors", "rank00001.safetensors"]
    assert f"resumed from {folder} at step {step}" in text
    assert step + 1 in train_losses(run), "the resumed run goes on at the next step"


@pytest.mark.slow
def test_srun_one_task_per_rank_gives_the_deepspeed_launchers_losses(slurm, token_data, reference, tmp_path):
    """srun -n 2 python launcher/pretrain.py: each task finds its rank, the world size and the
    first node's address in Slurm's variables."""
    run = tmp_path / "run"
    r = subprocess.run(["srun", "-n", "2", "--cpus-per-task=1", "python", str(REPO / "launcher" / "pretrain.py"),
                        "--run-dir", str(run), *map(str, common(token_data))], cwd=REPO, env=slurm,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got, ref = train_losses(run), reference[1]
    assert sorted(got) == sorted(ref)
    for step in ref:
        assert got[step] == pytest.approx(ref[step], abs=1e-6), step


@pytest.mark.slow
def test_a_run_that_keeps_failing_is_not_requeued_forever(slurm, token_data, reference, tmp_path):
    """A checkpoint that cannot be read (a rank's optimizer shard cut short): each attempt fails
    with one line naming the traceback's file in the run folder; after LLMTRAIN_REQUEUE_LIMIT (1
    here) attempts in a row without a new checkpoint the job stops with one line naming it."""
    run, out = tmp_path / "run", tmp_path / "job.out"
    shutil.copytree(reference[0], run)
    (run / "summary.json").unlink()
    shard = run / "checkpoints" / f"global_step{STEPS}" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    shard.write_bytes(shard.read_bytes()[:200])
    job_id = sbatch(slurm, [f"--output={out}"], SBATCH_SCRIPT,
                    ["--run-dir", run, *common(token_data)[:-2], f"train.max_steps={STEPS + 5}", "model.dropout=0.1"],
                    extra_env="LLMTRAIN_REQUEUE_LIMIT=1")
    try:
        wait_for(lambda: job(slurm, job_id)["JobState"] in ("COMPLETED", "FAILED", "CANCELLED"), 400,
                 f"the job to end ({output(out)[-3000:]})")
    finally:
        scancel(slurm, job_id)
    state, text = job(slurm, job_id), output(out)
    assert state["JobState"] == "FAILED" and state["Restarts"] == "1", (state, text[-3000:])
    errors = [ln for ln in text.splitlines() if ln.startswith("error:")]
    assert len(errors) == 3, text[-4000:]  # one per attempt, then the limit
    assert "Traceback" not in text
    for ln in errors[:2]:
        assert re.match(r"error: rank \d failed: ", ln), ln
        log = ln.split("(traceback: ")[1].split(";")[0]
        assert log.startswith(str(run / "errors")) and "Traceback" in open(log).read()
    assert errors[2].startswith(f"error: run {run} saved nothing new in 2 attempts in a row "
                                f"(LLMTRAIN_REQUEUE_LIMIT=1)"), errors[2]
    assert [a.split(": ", 1)[1].split(" -> ")[1].split(": ", 1)[1] for a in attempts(run)] == [
        "nothing new saved (1 in a row)", "nothing new saved (2 in a row): stopped at LLMTRAIN_REQUEUE_LIMIT=1"]


def unzstd(path) -> bytes:
    import zstandard

    with open(path, "rb") as fh:
        return zstandard.ZstdDecompressor().stream_reader(fh).read()


@pytest.mark.slow
def test_clean_stages_as_slurm_arrays_and_a_preempted_task_resumes(slurm, tmp_path):
    """bash data_prep/slurm/clean.sbatch IN OUT: the four stages as dependent arrays. The filter
    task is preempted once it has finished one of its two inputs: it requeues itself, skips that
    input and does the other; the output is what one local clean.py run writes."""
    import gzip
    import json

    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(REPO / "data" / "sample" / "web.warc.gz", src / "a_web.warc.gz")
    with gzip.open(REPO / "data" / "sample" / "corpus.jsonl.gz", "rt") as fin:
        (src / "b_docs.jsonl").write_text("".join(next(fin) for _ in range(40)))
    local, out = tmp_path / "local", tmp_path / "slurm"
    r = subprocess.run(["python", str(REPO / "data_prep" / "clean.py"), str(src), "--output", str(local),
                        "--workers", "1"], cwd=tmp_path, env=slurm, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]

    e = {**slurm, "FILTER_TASKS": "1", "DEDUP_TASKS": "1", "WRITE_TASKS": "1", "CPUS": "1"}
    r = subprocess.run(["bash", str(REPO / "data_prep" / "slurm" / "clean.sbatch"), str(src), str(out)],
                       cwd=tmp_path, env=e, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    jobs = re.search(r"filter (\d+) -> buckets (\d+) -> clusters (\d+) -> write (\d+)", r.stdout).groups()
    filter_task = f"{jobs[0]}_0"
    done = out / "work" / "filter"
    try:
        wait_for(lambda: len(list(done.glob("*.done"))) >= 1, 300, "the filter task's first input", every=0.05)
        preempt(slurm, filter_task)
        wait_for(lambda: all(job(slurm, f"{j}_0").get("JobState") == "COMPLETED" for j in jobs), 600,
                 f"the four stages ({[output(f)[-1500:] for f in (tmp_path / 'logs').glob('*')]})")
    finally:
        for j in jobs:
            scancel(slurm, j)
    log = (out / "slurm" / "clean-filter-0.log").read_text().splitlines()
    assert [ln.split(": ")[-1] for ln in log] == ["requeued", "finished"], log
    text = output(next((tmp_path / "logs").glob(f"clean-clean-filter-{jobs[0]}_0.out")))
    assert re.search(r"\b1 skipped", text), text[-3000:]  # the requeued task skipped the input it had done
    assert sorted(p.name for p in (out / "data").iterdir()) == sorted(p.name for p in (local / "data").iterdir())
    for f in (local / "data").iterdir():  # the same documents, byte for byte
        assert unzstd(out / "data" / f.name) == unzstd(f), f.name

    def stats(folder):
        s = json.loads((folder / "stats.json").read_text())
        return s["inputs"], s["documents_out"], s["characters_out"]

    assert stats(out) == stats(local)
