"""Metrics sinks (metrics.jsonl + TensorBoard) and the device peak FLOP/s used for MFU."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from llmtrain.core.files import atomic_write_text

# Dense peak FLOP/s per device by (name fragment, precision). Sources: vendor datasheets
# (dense, no sparsity). The first fragment found in torch.cuda.get_device_name() wins.
GPU_PEAK_FLOPS = [
    ("H200", {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}),
    ("H100 PCIe", {"bf16": 756e12, "fp16": 756e12, "fp32": 51e12}),
    ("H100", {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}),
    ("A100", {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12}),
    ("L40S", {"bf16": 362e12, "fp16": 362e12, "fp32": 91.6e12}),
    ("A10", {"bf16": 125e12, "fp16": 125e12, "fp32": 31.2e12}),
    ("V100", {"bf16": 0.0, "fp16": 125e12, "fp32": 15.7e12}),
]


def measure_matmul_flops(n: int = 1024, seconds: float = 0.5, dtype=torch.float32) -> float:
    """This process's sustained matmul rate (FLOP/s) on square n x n matrices, with the
    torch threads it has now. Used as the CPU 'peak' for MFU."""
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    t0 = time.perf_counter()
    a @ b  # warm-up; a CPU without units for this dtype can take seconds per product
    if time.perf_counter() - t0 > seconds and n > 128:
        return measure_matmul_flops(n // 4, seconds, dtype)
    reps, t0 = 0, time.perf_counter()
    while True:
        a @ b
        reps += 1
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return 2.0 * n ** 3 * reps / dt


def peak_flops(device: torch.device, precision: str, configured: float | None) -> tuple[float, str]:
    """(peak FLOP/s, where it came from) for MFU."""
    if configured:
        return float(configured), "config train.peak_flops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for frag, table in GPU_PEAK_FLOPS:
            if frag in name and table.get(precision):
                return table[precision], f"datasheet {frag} {precision}"
        return 0.0, f"unknown GPU '{name}': set train.peak_flops for MFU"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    # best of three short measurements: on a shared machine a single one can catch a busy moment
    rate = max(measure_matmul_flops(dtype=dtype, seconds=0.3) for _ in range(3))
    return rate, f"measured {precision} matmul on this CPU at start (best of 3); set train.peak_flops to fix it"


class MetricsLogger:
    """Writes each record to RUN/metrics.jsonl (one JSON object a line, flushed) and its
    numeric fields to TensorBoard under train/ or valid/ by the record's split (a list of numbers
    as a histogram)."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, purge_step: int | None = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.fh = open(self.path, "a", buffering=1)
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb_dir = Path(run_dir) / "tb"
            # purge_step: on resume, TensorBoard hides events logged after the checkpoint
            self.tb = SummaryWriter(log_dir=str(self.tb_dir), purge_step=purge_step)

    def log(self, record: dict) -> None:
        self.fh.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():  # a list of numbers (per-expert loads): a histogram
                if isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v):
                    self.tb.add_histogram(f"{record.get('split', 'train')}/{k}", torch.tensor(v, dtype=torch.float64),
                                          record["step"])
            for tag, v in scalars(record).items():
                self.tb.add_scalar(tag, v, record["step"])

    def log_hparams(self, hparams: dict, final_metrics: dict) -> None:
        if self.tb is None:
            return
        from torch.utils.tensorboard.summary import hparams as hp_summary

        clean = {k: v for k, v in hparams.items() if isinstance(v, (int, float, str, bool))}
        metrics = {f"hparam/{k}": v for k, v in final_metrics.items() if isinstance(v, (int, float))}
        exp, ssi, sei = hp_summary(clean, metrics)
        w = self.tb._get_file_writer()
        w.add_summary(exp)
        w.add_summary(ssi)
        w.add_summary(sei)
        for k, v in metrics.items():
            self.tb.add_scalar(k, v, 0)

    def close(self) -> None:
        self.fh.close()
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()


def scalars(record: dict) -> dict[str, float]:
    """A record's numbers by the tag a sink shows them under: <split>/<key> (split: train unless
    the record names one), and <split>/<key>/<name> for each number of a mapping
    (tokens_by_source: train/tokens_by_source/<source>)."""
    split = record.get("split", "train")
    out = {}
    for k, v in record.items():
        if k in ("step", "split"):
            continue
        for tag, x in (v.items() if isinstance(v, dict) else [(None, v)]):
            if isinstance(x, (int, float)) and not isinstance(x, bool):
                out[f"{split}/{k}" + (f"/{tag}" if tag is not None else "")] = x
    return out


def memory_stats(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"mem_allocated_gb": torch.cuda.max_memory_allocated(device) / 2**30}
    try:
        import resource

        return {"mem_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    except Exception:  # pragma: no cover
        return {}


def host_info() -> dict:
    import platform

    return {"hostname": platform.node(), "cpu_count": os.cpu_count()}


def truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop records logged after the checkpoint's step, so the log reads as one run."""
    if not path.is_file():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
    atomic_write_text(path, "".join(ln + "\n" for ln in keep))
