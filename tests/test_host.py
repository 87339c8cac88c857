"""The host side of a training step: the loader (in line on CPU, a prefetch thread on an
accelerator: the same batches either way) and glibc's malloc keeping freed tensors' memory."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from llmtrain.train.loader import BatchPlan, PrefetchLoader, host_micro_batches


class Windows:
    """Samples as the sampler's ``take`` gives them: window g is g, g+1, ..., g+seq_len (so a
    batch's content names its samples)."""

    def __init__(self, seq_len: int = 8):
        self.seq_len = seq_len

    def take(self, positions):
        return [np.arange(g, g + self.seq_len + 1) for g in positions.tolist()], [None] * len(positions)


class Broken(Windows):
    def take(self, positions):
        if positions[0] >= 3 * 8:  # step 3 of a global batch of 8
            raise OSError("token file vanished")
        return super().take(positions)


@pytest.fixture
def windows():
    return Windows()


@pytest.mark.parametrize("depth", [0, 2])
def test_loader_gives_each_steps_batches_in_order(windows, depth):
    plan = BatchPlan(global_batch=8, micro=2, gas=2, dp_rank=1)
    loader = PrefetchLoader(windows, plan, first_step=5, device=torch.device("cpu"), depth=depth)
    try:
        for step in range(5, 9):
            got = next(loader)
            want = host_micro_batches(windows, plan, step)
            assert len(got) == plan.gas
            for m, ((x, y), (wx, wy)) in enumerate(zip(got, want)):
                assert torch.equal(x, wx) and torch.equal(y, wy)
                assert x[0, 0] == plan.start(step, m)  # step s, micro-batch m of data-parallel rank 1
    finally:
        loader.close()


def test_loader_on_cpu_builds_in_line_and_elsewhere_ahead(windows):
    plan = BatchPlan(global_batch=8, micro=4, gas=2, dp_rank=0)
    on_cpu = PrefetchLoader(windows, plan, 0, torch.device("cpu"))
    ahead = PrefetchLoader(windows, plan, 0, torch.device("cpu"), depth=2)
    try:
        assert on_cpu._thread is None  # the cores compute the step: no thread competing with them
        assert ahead._thread is not None and ahead._thread.is_alive()
    finally:
        on_cpu.close()
        ahead.close()
    assert not ahead._thread.is_alive()


@pytest.mark.parametrize("depth", [0, 2])
def test_loader_error_reaches_the_trainer_at_its_step(depth):
    samples = Broken()
    plan = BatchPlan(global_batch=8, micro=4, gas=2, dp_rank=0)
    loader = PrefetchLoader(samples, plan, 0, torch.device("cpu"), depth=depth)
    try:
        for _ in range(3):
            next(loader)
        with pytest.raises(OSError, match="token file vanished"):
            next(loader)
    finally:
        loader.close()


FAULTS = textwrap.dedent("""
    import resource, torch
    from llmtrain.train.dist import keep_freed_memory

    def faults_per_round(rounds=6, mib=64):
        n = mib * 2**20 // 4
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(rounds):
            t = torch.empty(n)
            t.fill_(1.0)  # touch every page
            del t
        return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / rounds

    faults_per_round()  # warm: the first round faults in any case
    default = faults_per_round()
    applied = keep_freed_memory()
    faults_per_round(rounds=16)  # glibc pads an aligned request past a freed block of the same size: the heap
    kept = faults_per_round()    # grows a few rounds, until freed neighbours merge into blocks that fit
    print(default, kept, applied)
""")


@pytest.mark.slow
def test_keep_freed_memory_stops_page_faults_on_tensors_made_every_step():
    """A 64 MiB tensor made and freed every step (the default run's logits) faults in all its
    16,384 pages each time under glibc's defaults, and none once freed memory is kept (after the
    first steps, which grow the heap to the run's working set)."""
    r = subprocess.run([sys.executable, "-c", FAULTS], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    default, kept, applied = r.stdout.split()
    if applied != "True":
        pytest.skip("not glibc: keep_freed_memory is a no-op here")
    pages = 64 * 2**20 // 4096
    assert float(default) > 0.9 * pages, (default, kept)
    assert float(kept) < 0.05 * pages, (default, kept)
