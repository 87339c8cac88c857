"""launcher/pretrain.py with a record of the samples each rank trains on (for tests/test_stages.py).

Every step's micro-batches, as the trainer's loader hands them to the train module, are appended
to ``$SAMPLE_PROBE.rank<R>`` as one JSON line: {"step": s, "rows": [a digest of each row's input
tokens]}. Nothing else changes: the real loader computes the batches, the real run trains on them.
"""
import hashlib
import json
import os
import runpy
import sys
from pathlib import Path

from llmtrain.train import trainer


def digest(row) -> str:
    return hashlib.sha1(row.cpu().numpy().astype("int64").tobytes()).hexdigest()[:16]


class RecordingLoader(trainer.PrefetchLoader):
    def __next__(self):
        step = self.next_step
        micro_batches = super().__next__()
        rows = [digest(r) for x, _ in micro_batches for r in x]
        with open(f"{os.environ['SAMPLE_PROBE']}.rank{os.environ.get('RANK', '0')}", "a") as f:
            f.write(json.dumps({"step": step, "rows": rows}) + "\n")
        return micro_batches


trainer.PrefetchLoader = RecordingLoader
sys.argv[0] = str(Path(__file__).resolve().parents[1] / "launcher" / "pretrain.py")
runpy.run_path(sys.argv[0], run_name="__main__")
