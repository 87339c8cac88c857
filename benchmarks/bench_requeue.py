"""From a preemption signal to the requeued job's first step, under a real Slurm.

    python benchmarks/bench_requeue.py [--rounds 3] [--ranks 2] [--json out.json]

For each model (the default tiny model; a 113M-parameter one), each round: submit
launcher/slurm/pretrain.sbatch on a fresh run folder (ranks on this CPU machine as the README
says: --gpus-per-node=0, SLURM_GPUS_ON_NODE), wait until it has trained a few steps, send the
batch script SIGTERM (scancel --signal=TERM --batch: the path of --signal=B:TERM@N before a time
limit) and time:

    saved      the signal -> checkpoints/latest names the new checkpoint (every rank has saved);
               the ranks finish the step they are in and one more (the stop flag travels with a
               step's all-reduce and is read a step later), then save
    save       of that: from the checkpoint's folder appearing to `latest` (the save itself)
    restarted  the signal -> the requeued job starts again (Slurm's StartTime, whole seconds;
               includes Slurm's wait before a requeued job may start: cred_expire, 10 s on the
               test cluster, 120 s by default)
    first step the signal -> the requeued job logs its first new step (process start, imports,
               loading the checkpoint, one step)

Needs the test cluster (tests/slurm/start_slurm.sh, started here when it is not running; root).
Rounds alternate the models; medians are reported.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from benchutil import cpu_description  # noqa: E402

MODELS = {
    "default (configs/tiny.yaml)": ["train.log_interval=1", "train.eval_interval=0"],
    "16L d768 (113M)": ["model.n_layer=16", "model.d_model=768", "model.n_head=12", "model.seq_len=64",
                        "train.global_batch_size=2", "train.log_interval=1", "train.eval_interval=0",
                        "train.warmup_steps=2"],
}
STEPS_BEFORE = {"default (configs/tiny.yaml)": 20, "16L d768 (113M)": 2}


def sh(cmd: list[str], env: dict, timeout: float = 60) -> str:
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)}: {r.stderr.strip()}")
    return r.stdout


def steps_logged(run: Path) -> list[int]:
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(ln)["step"] for ln in lines if ln.strip().endswith("}") and "loss" in ln]


def latest(run: Path) -> str | None:
    try:
        return (run / "checkpoints" / "latest").read_text().strip()
    except FileNotFoundError:
        return None


def wait(pred, timeout: float, what: str, every: float = 0.05):
    t0 = time.time()
    while time.time() - t0 < timeout:
        got = pred()
        if got:
            return got
        time.sleep(every)
    raise SystemExit(f"error: timed out waiting for {what}")


def job_field(env: dict, job: str, key: str) -> str:
    out = sh(["scontrol", "show", "job", "-o", job], env)
    return next(t.split("=", 1)[1] for t in out.split() if t.startswith(key + "="))


def one_round(env: dict, model: str, ranks: int, work: Path) -> dict:
    run = work / "run"
    shutil.rmtree(run, ignore_errors=True)
    out = work / "job.out"
    job = sh(["sbatch", "--parsable", "--nodes=1", "--gpus-per-node=0", f"--cpus-per-task={max(1, 4 // ranks)}",
              f"--export=ALL,SLURM_GPUS_ON_NODE={ranks}", f"--output={out}",
              str(REPO / "launcher/slurm/pretrain.sbatch"), "--run-dir", str(run), "train.max_steps=100000",
              *MODELS[model]], env).strip()
    try:
        wait(lambda: len(steps_logged(run)) >= STEPS_BEFORE[model], 1800, f"{model} to train")
        first_start = job_field(env, job, "StartTime")
        t0 = time.time()
        sh(["scancel", "--signal=TERM", "--batch", job], env)
        folder = wait(lambda: next((run / "checkpoints").glob("global_step*"), None), 1800, "the save to begin")
        began = time.time()
        tag = wait(lambda: latest(run), 1800, "the checkpoint")
        saved = (run / "checkpoints" / "latest").stat().st_mtime - t0
        save = (run / "checkpoints" / "latest").stat().st_mtime - began
        assert folder.name == tag, (folder, tag)
        step = int(tag.replace("global_step", ""))
        wait(lambda: max(steps_logged(run), default=0) > step, 1800, "the requeued job's first step")
        first = time.time() - t0
        restart = wait(lambda: (s := job_field(env, job, "StartTime")) != first_start and s, 60, "StartTime")
        restarted = datetime.fromisoformat(restart).timestamp() - t0
        size = sum(f.stat().st_size for f in (run / "checkpoints" / tag).iterdir())
    finally:
        subprocess.run(["scancel", "--full", "--signal=KILL", job], env=env, capture_output=True)
        subprocess.run(["scancel", job], env=env, capture_output=True)
    return {"saved_s": saved, "save_s": save, "restarted_s": restarted, "first_step_s": first,
            "checkpoint_bytes": size, "stopped_at_step": step}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    r = subprocess.run(["bash", str(REPO / "tests/slurm/start_slurm.sh")], capture_output=True, text=True)
    if r.returncode != 0:
        print(f"error: {r.stderr.strip()}", file=sys.stderr)
        return 2
    env = {**os.environ, "SLURM_CONF": r.stdout.strip().split("=", 1)[1], "DS_ACCELERATOR": "cpu",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    results: dict[str, list[dict]] = {m: [] for m in MODELS}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            for model in (list(MODELS) if i % 2 == 0 else list(MODELS)[::-1]):
                res = one_round(env, model, args.ranks, Path(tmp))
                results[model].append(res)
                print(f"round {i + 1} {model}: " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                                                            for k, v in res.items()), flush=True)
    load = os.getloadavg()[0]
    print(f"\n{cpu_description()}; {args.ranks} ranks; load average {load:.1f}; medians of {args.rounds} rounds")
    print("| model | checkpoint | signal -> saved (the save itself) | signal -> job restarted | "
          "signal -> first step (restart -> first step) |")
    print("|---|---|---|---|---|")
    summary = {}
    for model, rs in results.items():
        med = {k: statistics.median(x[k] for x in rs) for k in ("saved_s", "save_s", "restarted_s", "first_step_s",
                                                                 "checkpoint_bytes")}
        med["restart_to_first_step_s"] = statistics.median(x["first_step_s"] - x["restarted_s"] for x in rs)
        summary[model] = {"rounds": rs, "median": med}
        save = max(med["save_s"], 0.0)  # a save shorter than the polling can read a hair below 0
        print(f"| {model} | {med['checkpoint_bytes'] / 1e6:,.0f} MB | {med['saved_s']:.1f} s ({save:.1f} s) | "
              f"{med['restarted_s']:.0f} s | {med['first_step_s']:.1f} s ({med['restart_to_first_step_s']:.1f} s) |")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": cpu_description(), "ranks": args.ranks, "load": load,
                                               "results": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
