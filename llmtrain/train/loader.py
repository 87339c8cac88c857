"""Batches prepared ahead of the step that uses them.

On an accelerator a background thread gathers each step's micro-batches (NumPy windows → int64
tensors, in pinned memory) while the device works on the previous step; the trainer copies them
with ``non_blocking=True``. On a CPU device the cores that would run that thread are the ones
computing the step, so the batch is built in line (``depth=0``), as nanoGPT's get_batch does.
What a step reads is a pure function of the step number (the sampler's global sample index),
so prefetching never changes the data and a resume at step s reads exactly what an
uninterrupted run would.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

import torch

from llmtrain.data.sampler import batch


@dataclass(frozen=True)
class BatchPlan:
    """Which global samples a rank reads: step s, micro-batch m → samples
    [s*global_batch + dp_rank*micro*gas + m*micro, ... + micro)."""

    global_batch: int
    micro: int
    gas: int
    dp_rank: int

    def start(self, step: int, m: int) -> int:
        return step * self.global_batch + self.dp_rank * self.micro * self.gas + m * self.micro


def _pin(t: torch.Tensor) -> torch.Tensor:
    from deepspeed.accelerator import get_accelerator

    acc = get_accelerator()
    return acc.pin_memory(t) if acc.device_name() != "cpu" else t


def host_micro_batches(samples, plan: BatchPlan, step: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for m in range(plan.gas):
        x, y = batch(samples, plan.start(step, m), plan.micro)
        out.append((_pin(x.contiguous()), _pin(y.contiguous())))
    return out


def to_device(micro_batches, device: torch.device):
    return [(x.to(device, non_blocking=True), y.to(device, non_blocking=True)) for x, y in micro_batches]


class PrefetchLoader:
    """Iterates the micro-batches of steps first_step, first_step+1, ... (each a list of gas
    (inputs, targets) pairs already on ``device``), built ``depth`` steps ahead in a thread
    (default: 2 on an accelerator; 0, in line, on a CPU device)."""

    def __init__(self, samples, plan: BatchPlan, first_step: int, device: torch.device, depth: int | None = None):
        self.samples, self.plan, self.device = samples, plan, device
        self.next_step = first_step
        depth = (0 if device.type == "cpu" else 2) if depth is None else depth
        self._q: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        self._thread = None
        if depth > 0:
            self._thread = threading.Thread(target=self._work, args=(first_step,), daemon=True, name="batch-prefetch")
            self._thread.start()

    def _work(self, step: int) -> None:
        try:
            while not self._stop.is_set():
                self._q.put((step, host_micro_batches(self.samples, self.plan, step)))  # blocks while full
                step += 1
        except BaseException as e:  # surfaced to the trainer on its next batch
            self._q.put((None, e))

    def __iter__(self):
        return self

    def __next__(self):
        if self._thread is None:
            item = host_micro_batches(self.samples, self.plan, self.next_step)
        else:
            step, item = self._q.get()
            if step is None:
                raise item
            assert step == self.next_step, (step, self.next_step)
        self.next_step += 1
        return to_device(item, self.device)

    def close(self) -> None:
        self._stop.set()
        # free the queue so that a blocked put returns and the thread sees the stop
        while self._thread is not None and self._thread.is_alive():
            try:
                self._q.get(timeout=0.05)
            except queue.Empty:
                pass
