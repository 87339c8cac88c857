"""Training samples from token datasets, addressed by a global sample index.

A dataset's documents are one flat token stream (documents end with the end-of-document
token); sample j of it is the window tokens[j*T : j*T + T + 1] (inputs and shifted targets).
Each epoch visits every window once in a fresh order (a permutation seeded by seed and epoch).

Because the sample for global index g is a pure function of (g, seed), the data position of a
run is just the number of samples it has consumed: resuming at step s reads exactly the
samples an uninterrupted run would have read, and every rank computes its own share without
communication.
"""
from __future__ import annotations

import numpy as np


class TokenWindows:
    """Fixed-length windows over one dataset's token stream (one or several shards), shuffled
    per epoch. Windows never cross a shard boundary."""

    def __init__(self, dataset, seq_len: int, seed: int, shuffle: bool = True):
        """dataset: an llmtrain.data.indexed.IndexedDataset (anything with tokens, num_tokens,
        prefix), or a list of them (the shards of one split)."""
        shards = dataset if isinstance(dataset, (list, tuple)) else [dataset]
        self.shards = [d.tokens for d in shards]
        self.seq_len = seq_len
        self.seed = seed
        self.shuffle = shuffle
        counts = np.array([max(0, (d.num_tokens - 1) // seq_len) for d in shards], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(counts)])
        self.num_samples = int(self.starts[-1])
        self.tokens = self.shards[0]
        if self.num_samples < 1:
            raise ValueError(
                f"{shards[0].prefix}: {sum(d.num_tokens for d in shards)} tokens are fewer than one sample of "
                f"seq_len+1={seq_len + 1}; use more data or a shorter model.seq_len"
            )
        self._perm_epoch = -1
        self._perm = None

    def _order(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._perm = rng.permutation(self.num_samples) if self.shuffle else np.arange(self.num_samples)
            self._perm_epoch = epoch
        return self._perm

    def window_index(self, i: int) -> int:
        epoch, pos = divmod(i, self.num_samples)
        return int(self._order(epoch)[pos])

    def __getitem__(self, i: int) -> np.ndarray:
        w = self.window_index(i)
        shard = int(np.searchsorted(self.starts, w, side="right")) - 1
        start = (w - int(self.starts[shard])) * self.seq_len
        return self.shards[shard][start : start + self.seq_len + 1]


class BlendedSamples:
    """Several datasets mixed by weight; sample g comes from the dataset whose share so far is
    furthest below its target, which keeps every prefix of the stream close to the weights."""

    def __init__(self, sources: list[TokenWindows], weights: list[float]):
        if len(sources) != len(weights) or not sources:
            raise ValueError("need one weight per dataset")
        w = np.asarray(weights, dtype=np.float64)
        if (w <= 0).any():
            raise ValueError("blend weights must be > 0")
        self.sources = sources
        self.weights = w / w.sum()
        self._choice = np.zeros(0, dtype=np.int32)
        self._local = np.zeros(0, dtype=np.int64)

    def _extend(self, n: int) -> None:
        """Precompute the (dataset, index within dataset) of global samples [0, n)."""
        start = len(self._choice)
        if n <= start:
            return
        n = max(n, 2 * start, 1024)
        counts = np.bincount(self._choice, minlength=len(self.sources)).astype(np.float64)
        choice = np.empty(n - start, dtype=np.int32)
        local = np.empty(n - start, dtype=np.int64)
        for k, g in enumerate(range(start, n)):
            d = int(np.argmax(self.weights * (g + 1) - counts))
            choice[k] = d
            local[k] = counts[d]
            counts[d] += 1
        self._choice = np.concatenate([self._choice, choice])
        self._local = np.concatenate([self._local, local])

    def __getitem__(self, g: int) -> np.ndarray:
        if len(self.sources) == 1:
            return self.sources[0][g]
        self._extend(g + 1)
        return self.sources[self._choice[g]][int(self._local[g])]


def batch(samples, start: int, count: int):
    """Samples [start, start+count) as (inputs, targets) int64 tensors of shape (count, T)."""
    import torch

    rows = np.stack([samples[g] for g in range(start, start + count)]).astype(np.int64)
    t = torch.from_numpy(rows)
    return t[:, :-1], t[:, 1:]
