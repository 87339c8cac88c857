"""Training samples from token datasets, addressed by a global sample index.

A dataset's documents are one flat token stream (documents end with the end-of-document
token); sample j of it is the window tokens[j*T : j*T + T + 1] (inputs and shifted targets).
Each epoch visits every window once in a fresh order (a permutation seeded by seed and epoch).

Because the sample for global index g is a pure function of (g, seed), the data position of a
run is just the number of samples it has consumed: resuming at step s reads exactly the
samples an uninterrupted run would have read, and every rank computes its own share without
communication.

Prompt/response data (tokenize_corpus.py --format prompt-response) also has a loss mask: one
uint8 per token (1: the token counts in the loss). The windows of the mask are the same as the
windows of the tokens, and `batch` sets a target to IGNORE_INDEX (-100, which the model's loss
skips) where the mask of that target token is 0.
"""
from __future__ import annotations

import numpy as np

IGNORE_INDEX = -100  # a target the loss skips (torch.nn.functional.cross_entropy's ignore_index)


class TokenWindows:
    """Fixed-length windows over one dataset's token stream (one or several shards), shuffled
    per epoch. Windows never cross a shard boundary."""

    def __init__(self, dataset, seq_len: int, seed: int, shuffle: bool = True, masks=None):
        """dataset: an llmtrain.data.indexed.IndexedDataset (anything with tokens, num_tokens,
        prefix), or a list of them (the shards of one split). masks: None, or one loss mask per
        shard (an IndexedDataset of uint8, or an array) with exactly its shard's token count."""
        shards = dataset if isinstance(dataset, (list, tuple)) else [dataset]
        self.shards = [d.tokens for d in shards]
        self.masks = None
        if masks is not None:
            masks = masks if isinstance(masks, (list, tuple)) else [masks]
            self.masks = [getattr(m, "tokens", m) for m in masks]
            if len(self.masks) != len(self.shards) or any(len(m) != len(t) for m, t in zip(self.masks, self.shards)):
                raise ValueError(f"{shards[0].prefix}: the loss masks do not match the token shards one to one")
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

    def _locate(self, i: int) -> tuple[int, int]:
        w = self.window_index(i)
        shard = int(np.searchsorted(self.starts, w, side="right")) - 1
        return shard, (w - int(self.starts[shard])) * self.seq_len

    def __getitem__(self, i: int) -> np.ndarray:
        shard, start = self._locate(i)
        return self.shards[shard][start : start + self.seq_len + 1]

    def loss_mask(self, i: int) -> np.ndarray | None:
        """The loss mask of window i (aligned with ``self[i]``); None when the data has none."""
        if self.masks is None:
            return None
        shard, start = self._locate(i)
        return self.masks[shard][start : start + self.seq_len + 1]


class BlendedSamples:
    """Several datasets mixed by weight. Sample k of dataset d is due at time (k+1)/w_d; the
    blend reads the samples of all datasets in order of that time (ties: the dataset listed
    first). Every prefix of n samples then holds count_d with -1 < count_d - n*w_d <= K*w_d for
    K datasets: within one sample of the share for two equal weights, a few samples at most.

    The order is built with NumPy (one stable sort, no Python loop per sample) for the samples a
    run needs, once: ``prepare(n, cache_dir)`` stores it as .npy files beside the run and maps
    them back on a resume. Any prefix of the order is the same whatever n it was built for."""

    def __init__(self, sources: list[TokenWindows], weights: list[float]):
        if len(sources) != len(weights) or not sources:
            raise ValueError("need one weight per dataset")
        w = np.asarray(weights, dtype=np.float64)
        if (w <= 0).any():
            raise ValueError("blend weights must be > 0")
        self.sources = sources
        self.weights = w / w.sum()
        self._choice = np.zeros(0, dtype=np.uint16)
        self._local = np.zeros(0, dtype=np.int64)

    def order(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(dataset of each global sample in [0, n), index of that sample within its dataset)."""
        keys, blocks = [], [0]
        for wd in self.weights:
            k = int(np.ceil(n * wd)) + 1  # more than any prefix of length n can hold
            keys.append(np.arange(1, k + 1, dtype=np.float64) / wd)
            blocks.append(blocks[-1] + k)
        flat = np.argsort(np.concatenate(keys), kind="stable")[:n]
        choice = (np.searchsorted(np.asarray(blocks), flat, side="right") - 1).astype(np.uint16)
        local = flat - np.asarray(blocks, dtype=np.int64)[choice]
        return choice, local

    def _cache_key(self, n: int) -> str:
        import hashlib

        return hashlib.sha256(self.weights.tobytes() + str(n).encode()).hexdigest()[:16]

    def prepare(self, n: int, cache_dir=None) -> None:
        """Make samples [0, n) addressable: build their order, or load it from ``cache_dir``
        (written there through a temporary name on first use)."""
        if len(self.sources) == 1 or n <= len(self._choice):
            return
        if cache_dir is None:
            self._choice, self._local = self.order(n)
            return
        from pathlib import Path

        path = Path(cache_dir) / f"blend_order_{self._cache_key(n)}.npz"
        if path.is_file():
            with np.load(path) as z:
                self._choice, self._local = z["choice"], z["local"]
            return
        self._choice, self._local = self.order(n)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{__import__('os').getpid()}.tmp.npz")
        np.savez(tmp, choice=self._choice, local=self._local)
        tmp.replace(path)

    def __getitem__(self, g: int) -> np.ndarray:
        if len(self.sources) == 1:
            return self.sources[0][g]
        if g >= len(self._choice):  # past what was prepared (e.g. a later max_steps): grow
            self._choice, self._local = self.order(max(2 * g + 2, 1024))
        return self.sources[int(self._choice[g])][int(self._local[g])]

    def loss_mask(self, g: int) -> np.ndarray | None:
        if len(self.sources) == 1:
            return self.sources[0].loss_mask(g)
        if g >= len(self._choice):
            self._choice, self._local = self.order(max(2 * g + 2, 1024))
        return self.sources[int(self._choice[g])].loss_mask(int(self._local[g]))


def batch(samples, start: int, count: int):
    """Samples [start, start+count) as (inputs, targets) int64 tensors of shape (count, T).
    Where the samples have a loss mask, a target whose mask is 0 is IGNORE_INDEX."""
    import torch

    rows = np.stack([samples[g] for g in range(start, start + count)]).astype(np.int64)
    get_mask = getattr(samples, "loss_mask", None)
    if get_mask is not None:
        masks = [get_mask(g) for g in range(start, start + count)]
        if any(m is not None for m in masks):  # a blend may mix masked and unmasked datasets
            keep = np.stack([np.ones(rows.shape[1], bool) if m is None else np.asarray(m) != 0 for m in masks])
            targets = np.where(keep[:, 1:], rows[:, 1:], IGNORE_INDEX)
            return torch.from_numpy(rows[:, :-1]), torch.from_numpy(targets)
    t = torch.from_numpy(rows)
    return t[:, :-1], t[:, 1:]
