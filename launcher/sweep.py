"""Plan and run a scaling-law sweep: a model ladder x token budgets.

    python launcher/sweep.py --config configs/scaling/cpu_ladder.yaml --dry-run   # the plan as a table
    python launcher/sweep.py --config configs/scaling/cpu_ladder.yaml             # run it, one run after another
    python launcher/sweep.py --config configs/scaling/cpu_ladder.yaml --slurm     # write a Slurm array instead

With hparams.lr_grid: [1e-3, 3e-3, 1e-2] in the YAML every size and budget runs once per LR
(names end in _lr<value>); fit such a sweep with fit_scaling.py --best-of-duplicates.
With cooldown_prefix (a blend, or a mapping of labels to blends) the WSD cooldowns read another
mixture from the step they start (a data stage; names end in _cd-<label> for a mapping).

Runs go to SWEEP_DIR/<run name>/ (default SWEEP_DIR: runs/sweeps/<sweep name>). A finished run
(summary.json with status finished) is skipped, an interrupted one resumes from its latest
checkpoint, so rerunning the same command continues the sweep. Fit the result with
python launcher/fit_scaling.py SWEEP_DIR --method chinchilla --out SWEEP_DIR/fit
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from llmtrain.core.errors import ConfigError
from llmtrain.core.paths import REPO_ROOT
from llmtrain.scaling.memory import parse_bytes
from llmtrain.scaling.plan import format_table, load_sweep, plan, resolve, seq_len_and_model
from llmtrain.core.files import atomic_write_json, atomic_write_text


def vocab_size_for(sw: dict, base_model, base_cfg_path: str) -> int:
    """The padded vocabulary the runs will have (as the trainer pads it)."""
    if sw.get("vocab_size"):
        return int(sw["vocab_size"])
    if base_model.vocab_size:
        return base_model.vocab_size
    from llmtrain.config import load_config
    from llmtrain.data.dataset import padded_vocab, parse_blend, read_manifest, tokenizer_of, tokenizer_vocab_size

    cfg = load_config(base_cfg_path, [o for o in sw.get("overrides", []) if o.startswith("data.")])
    if cfg.data.prefix:
        _, prefixes = parse_blend(cfg.data.prefix)
        man, path = read_manifest(prefixes[0])
        v = tokenizer_vocab_size(cfg.data.tokenizer or tokenizer_of(man)[0], str(path))
    else:
        v = cfg.data.sample_vocab_size  # the bundled corpus' tokenizer has exactly this size
    return padded_vocab(v)


def memory_plans(runs, sw: dict, base_cfg: str, vocab: int, budget: int | None) -> list:
    """Each run's memory plan per rank (llmtrain/scaling/memory.py) on the sweep's processes and
    DeepSpeed config."""
    from llmtrain.config import load_config
    from llmtrain.scaling.memory import plan_memory
    from llmtrain.train.ds_config import build_ds_config, load_ds_json

    user, ds_path = load_ds_json(resolve(sw["deepspeed_config"], sw["_path"]))
    nproc, plans = int(sw["nproc"]), []
    for r in runs:
        cfg = load_config(base_cfg, r.overrides(sw))
        cfg.model.vocab_size = cfg.model.vocab_size or vocab
        ds = build_ds_config(cfg, user, ds_path, base_cfg, nproc // cfg.parallel.pipeline_stages)
        plans.append(plan_memory(cfg, ds, nproc, budget))
    return plans


def check_cooldown_data(sw: dict) -> None:
    """Every cooldown_prefix blend parses and names datasets that exist (ConfigError, one line), before
    any run starts; each run checks its tokenizer and the rest when it opens its data."""
    from llmtrain.data.dataset import parse_blend, read_manifest

    for label, blend in sw["_cooldowns"]:
        if blend:
            for prefix in parse_blend(blend, "cooldown_prefix" + (f".{label}" if label else ""))[1]:
                read_manifest(prefix)


def is_finished(run_dir: Path) -> bool:
    try:
        return json.loads((run_dir / "summary.json").read_text()).get("status") == "finished"
    except (FileNotFoundError, json.JSONDecodeError):
        return False


def pretrain_args(run, sw: dict, out: Path, base_cfg: str) -> list[str]:
    """launcher/pretrain.py's arguments for one run of the sweep."""
    ds = resolve(sw["deepspeed_config"], sw["_path"])
    args = ["--config", base_cfg, "--deepspeed_config", ds, "--run-dir", str(out / run.name)]
    args += run.overrides(sw)
    if run.init_from:
        args.append(f"checkpoint.init_from={out / run.init_from / 'checkpoints' / f'global_step{run.init_step}'}")
    return args


def command(run, sw: dict, out: Path, base_cfg: str) -> list[str]:
    script = str(REPO_ROOT / "launcher" / "pretrain.py")
    if int(sw["nproc"]) > 1:
        head = ["deepspeed", "--num_gpus", str(sw["nproc"]), script]
    else:
        head = [sys.executable, script]
    return head + pretrain_args(run, sw, out, base_cfg)


def write_slurm(runs, sw: dict, out: Path, base_cfg: str) -> None:
    """Two arrays of launcher/slurm/pretrain.sbatch (one run per task, one rank per GPU, requeued
    until its run finishes): trunks (and unbranched runs), then branches after them (afterok)."""
    slurm = out / "slurm"
    phase1 = [r for r in runs if not r.init_from]
    phase2 = [r for r in runs if r.init_from]
    for name, group in (("phase1", phase1), ("phase2", phase2)):
        lines = "".join(shlex.join(pretrain_args(r, sw, out, base_cfg)) + "\n" for r in group)
        atomic_write_text(slurm / f"{name}.txt", lines)
    nproc = int(sw["nproc"])
    sbatch = f"""#!/bin/bash
#SBATCH --job-name={sw['name']}
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node={nproc}
#SBATCH --cpus-per-task={8 * nproc}
#SBATCH --time=24:00:00
#SBATCH --signal=B:TERM@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output={slurm}/%x-%A_%a.out
# One sweep run per array task: line SLURM_ARRAY_TASK_ID (1-based) of $1 holds its
# launcher/pretrain.py arguments. The project's batch script runs it (one rank per GPU), passes
# the SIGTERM Slurm sends before the time limit on to the ranks, which checkpoint, and requeues
# the task until its run has finished; a finished run ends at once.
export LLMTRAIN_HOME={REPO_ROOT}
exec bash {REPO_ROOT}/launcher/slurm/pretrain.sbatch --args-file "$1"
"""
    atomic_write_text(slurm / "run.sbatch", sbatch)
    submit = f"""#!/bin/bash
# Submit the sweep: trunks first, then the cooldown branches once every trunk has finished.
# Arguments go to both sbatch calls (e.g. --partition=gpu, or --time=4:00:00).
set -euo pipefail
J1=$(sbatch --parsable --array=1-{len(phase1)} "$@" {slurm}/run.sbatch {slurm}/phase1.txt)
echo "phase 1: job $J1 ({len(phase1)} runs)"
"""
    if phase2:
        submit += (f"J2=$(sbatch --parsable --dependency=afterok:$J1 --array=1-{len(phase2)} \"$@\" "
                   f"{slurm}/run.sbatch {slurm}/phase2.txt)\n"
                   f"echo \"phase 2: job $J2 ({len(phase2)} cooldown branches)\"\n")
    atomic_write_text(slurm / "submit.sh", submit)
    os.chmod(slurm / "submit.sh", 0o755)
    print(f"wrote {slurm}/submit.sh ({len(phase1)} + {len(phase2)} runs); run it on the cluster's login node")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="sweep YAML (configs/scaling/*.yaml)")
    ap.add_argument("--out", default=None, help="sweep folder (default runs/sweeps/<name>)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    ap.add_argument("--slurm", action="store_true", help="write Slurm array scripts instead of running")
    ap.add_argument("--gpu-memory", default=None,
                    help="memory per GPU for the plan's memory columns, e.g. 80GiB (default: the visible device's)")
    args = ap.parse_args(argv)
    try:
        sw = load_sweep(args.config)
        check_cooldown_data(sw)
        seq_len, base_model, base_cfg = seq_len_and_model(sw)
        vocab = vocab_size_for(sw, base_model, base_cfg)
        runs = plan(sw, seq_len, vocab, base_model)
        memory = memory_plans(runs, sw, base_cfg, vocab, parse_bytes(args.gpu_memory) if args.gpu_memory else None)
    except (ConfigError, OSError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out or Path("runs") / "sweeps" / sw["name"]).resolve()
    from llmtrain.train.metrics import measure_matmul_flops

    rate = measure_matmul_flops(seconds=0.5)
    table = format_table(runs, seq_len, rate, float(sw["assumed_mfu"]), int(sw["nproc"]), memory)
    print(table)
    if args.dry_run:
        return 0
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "plan.json", {"sweep": {k: v for k, v in sw.items() if not k.startswith("_")},
                                          "config": str(Path(args.config).resolve()),
                                          "runs": [asdict(r) for r in runs]})
    atomic_write_text(out / "plan.md", table + "\n")
    if args.slurm:
        write_slurm(runs, sw, out, base_cfg)
        return 0
    t0 = time.time()
    for i, r in enumerate(runs, 1):
        rd = out / r.name
        if is_finished(rd):
            print(f"[{i}/{len(runs)}] {r.name}: finished, skipped", flush=True)
            continue
        print(f"[{i}/{len(runs)}] {r.name}: N={r.n_params:,} D={r.tokens:,} ({time.time() - t0:.0f}s into the sweep)",
              flush=True)
        rd.mkdir(parents=True, exist_ok=True)
        with open(rd / "train.log", "a") as log:
            rc = subprocess.run(command(r, sw, out, base_cfg), stdout=log, stderr=subprocess.STDOUT,
                                cwd=Path.cwd()).returncode
        if rc != 0:
            print(f"error: run {r.name} failed (exit {rc}); see {rd / 'train.log'}; rerun the same command to resume",
                  file=sys.stderr)
            return 1
    print(f"sweep done in {time.time() - t0:.0f}s: {out}")
    print(f"fit: python launcher/fit_scaling.py {out} --method chinchilla --out {out / 'fit'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
