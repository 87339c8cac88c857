"""Training samples from token datasets, addressed by a global sample index.

A dataset's documents are one flat token stream (documents end with the end-of-document
token); window j of it is tokens[j*T : j*T + T + 1] (inputs and shifted targets). Each epoch
visits every window once in a fresh order: a seeded permutation of the window indices
(``WindowPermutation``), computed for the samples asked for, never stored.

Several datasets are mixed by ``BlendedSamples``; a mixture that changes during the run (data
stages) is ``StagedSamples``, one blend per stage.

Because the sample for global index g is a pure function of (g, seed, stages), the data position of a
run is just the number of samples it has consumed: resuming at step s reads exactly the
samples an uninterrupted run would have read, and every rank computes its own share without
communication. Nothing is built at start-up and nothing grows with the corpus: a rank's memory
for the order is a few round keys, whatever the number of windows or steps.

Prompt/response data (tokenize_corpus.py --format prompt-response) also has a loss mask: one
uint8 per token (1: the token counts in the loss). The windows of the mask are the same as the
windows of the tokens, and `batch` sets a target to IGNORE_INDEX (-100, which the model's loss
skips) where the mask of that target token is 0.
"""
from __future__ import annotations

import numpy as np

IGNORE_INDEX = -100  # a target the loss skips (torch.nn.functional.cross_entropy's ignore_index)

# The version of the order in which a dataset's windows are read. A run read in another order
# cannot resume bit for bit: llmtrain.checkpoint.ds.check_resume_compatible refuses it (the run
# folder's data_manifest.json records this number). 1 (unrecorded): a full NumPy permutation
# per epoch, built on every rank; 2: WindowPermutation.
SAMPLE_ORDER = 2

def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 (wrapping arithmetic): every output bit depends on every input bit."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class WindowPermutation:
    """A seeded bijection of [0, n) evaluated per index in O(1) memory: a balanced Feistel
    network over the 2h-bit integers (the smallest 4^h >= n, so fewer than 4n of them), with
    cycle-walking (an index mapped past n is mapped again until it lands inside; the cycle of an
    index below n returns below n, so this is a bijection of [0, n), on average under 4 rounds
    of walking). The round keys come from ``key`` (e.g. (seed, epoch))."""

    ROUNDS = 6

    def __init__(self, n: int, key):
        if n < 1:
            raise ValueError(f"a permutation of {n} items")
        self.n = int(n)
        self.half = max(1, ((self.n - 1).bit_length() + 1) // 2)
        self.mask = np.uint64((1 << self.half) - 1)
        self.keys = np.random.SeedSequence(list(key)).generate_state(self.ROUNDS, dtype=np.uint64)

    def _feistel(self, x: np.ndarray) -> np.ndarray:
        h = np.uint64(self.half)
        left, right = x >> h, x & self.mask
        for k in self.keys:
            left, right = right, left ^ (_mix(right ^ k) & self.mask)
        return (left << h) | right

    def __call__(self, i) -> np.ndarray:
        """The images of the indices ``i`` (an int or an array of ints in [0, n)), as int64."""
        x = np.atleast_1d(np.asarray(i, dtype=np.uint64))
        y = self._feistel(x)
        out = y >= np.uint64(self.n)
        while out.any():
            y[out] = self._feistel(y[out])
            out = y >= np.uint64(self.n)
        return y.astype(np.int64)


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
                f"seq_len+1={seq_len + 1}; use more data or a shorter train.seq_len"
            )
        self._perm: WindowPermutation | None = None
        self._perm_epoch = -1

    def _permutation(self, epoch: int) -> WindowPermutation:
        if epoch != self._perm_epoch:
            self._perm, self._perm_epoch = WindowPermutation(self.num_samples, (self.seed, epoch)), epoch
        return self._perm

    def window_indices(self, positions) -> np.ndarray:
        """The window each sample position reads (positions past one epoch start the next, in a new order)."""
        epoch, within = np.divmod(np.atleast_1d(np.asarray(positions, dtype=np.int64)), self.num_samples)
        if not self.shuffle:
            return within
        out = np.empty_like(within)
        for e in np.unique(epoch):
            sel = epoch == e
            out[sel] = self._permutation(int(e))(within[sel])
        return out

    def window_index(self, i: int) -> int:
        return int(self.window_indices(i)[0])

    def take(self, positions) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
        """The samples at ``positions`` and their loss masks (None each when the data has none)."""
        w = self.window_indices(positions)
        shard = np.searchsorted(self.starts, w, side="right") - 1
        start = (w - self.starts[shard]) * self.seq_len
        T1 = self.seq_len + 1
        rows = [self.shards[s][a:a + T1] for s, a in zip(shard.tolist(), start.tolist())]
        if self.masks is None:
            return rows, [None] * len(rows)
        return rows, [self.masks[s][a:a + T1] for s, a in zip(shard.tolist(), start.tolist())]

    def __getitem__(self, i: int) -> np.ndarray:
        return self.take(i)[0][0]

    def loss_mask(self, i: int) -> np.ndarray | None:
        """The loss mask of window i (aligned with ``self[i]``); None when the data has none."""
        return self.take(i)[1][0]


def _due_before(t: float, w: np.float64) -> int:
    """How many samples of a dataset of weight w are due before time t: the j >= 1 with
    fl(j / w) < t (the very float the order sorts by; the estimate floor(t w) moves by a step at
    most for rounding)."""
    if t <= 0:
        return 0
    j = int(np.floor(t * w))
    while np.float64(j + 1) / w < t:
        j += 1
    while j >= 1 and np.float64(j) / w >= t:
        j -= 1
    return j


class BlendedSamples:
    """Several datasets mixed by weight. Sample k of dataset d is due at time (k+1)/w_d; the
    blend reads the samples of all datasets in order of that time (ties: the dataset listed
    first). Every prefix of n samples then holds count_d with -1 < count_d - n*w_d <= K*w_d for
    K datasets: within one sample of the share for two equal weights, a few samples at most.

    Any stretch of the order is computed on its own, from its start position, in time and memory
    proportional to its length (``order(n, start)``): nothing is built or stored per run.

    ``offsets``: where each dataset's stream starts (its k-th sample in this blend is sample
    offsets[d] + k of its TokenWindows): a data stage continues the streams its earlier stages read."""

    def __init__(self, sources: list[TokenWindows], weights: list[float], offsets=None):
        if len(sources) != len(weights) or not sources:
            raise ValueError("need one weight per dataset")
        w = np.asarray(weights, dtype=np.float64)
        if (w <= 0).any():
            raise ValueError("blend weights must be > 0")
        self.sources = sources
        self.weights = w / w.sum()
        self.offsets = np.zeros(len(sources), dtype=np.int64) if offsets is None else np.asarray(offsets, np.int64)

    def _window(self, start: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lo, hi, sorted): the samples due before t_lo = start - K - 1 (fewer than ``start``, and all
        of them come first), those due before t_hi = start + n + 2K + 2 (at least start + n in all),
        and the due times in between sorted (stable, datasets in order: the ties as listed), which
        place [start, start+n) exactly as sorting every due time from 0 would."""
        K = len(self.weights)
        t_lo, t_hi = float(start - K - 1), float(start + n + 2 * K + 2)
        lo = np.array([_due_before(t_lo, wd) for wd in self.weights], dtype=np.int64)
        hi = np.array([_due_before(t_hi, wd) for wd in self.weights], dtype=np.int64)
        due = np.concatenate([np.arange(a + 1, b + 1, dtype=np.float64) / wd for a, b, wd in zip(lo, hi, self.weights)])
        return lo, hi, np.argsort(due, kind="stable")

    def order(self, n: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(dataset, index of the sample within that dataset) of the global samples [start, start+n)."""
        lo, hi, ordered = self._window(start, n)
        picked = ordered[start - int(lo.sum()):][:n]
        if len(picked) != n:
            raise AssertionError(f"blend window too short at {start} (+{n})")
        blocks = np.concatenate([[0], np.cumsum(hi - lo)])
        choice = (np.searchsorted(blocks, picked, side="right") - 1).astype(np.uint16)
        return choice, picked - blocks[choice] + lo[choice]

    def counts(self, n: int) -> np.ndarray:
        """How many samples of each dataset the first ``n`` samples of the blend hold (int64, one per
        dataset), in time and memory independent of n."""
        if len(self.weights) == 1:
            return np.array([n], dtype=np.int64)
        lo, hi, ordered = self._window(n, 0)
        first = ordered[:n - int(lo.sum())]
        blocks = np.concatenate([[0], np.cumsum(hi - lo)])
        return lo + np.bincount(np.searchsorted(blocks, first, side="right") - 1, minlength=len(lo))

    def take(self, positions) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
        """The samples at global ``positions`` and their loss masks (as TokenWindows.take)."""
        pos = np.atleast_1d(np.asarray(positions, dtype=np.int64))
        if len(self.sources) == 1:
            return self.sources[0].take(pos + self.offsets[0])
        first = int(pos.min())
        choice, local = self.order(int(pos.max()) - first + 1, first)
        choice, local = choice[pos - first], local[pos - first]
        rows: list = [None] * len(pos)
        masks: list = [None] * len(pos)
        for d in np.unique(choice):
            at = np.flatnonzero(choice == d)
            r, m = self.sources[int(d)].take(local[at] + self.offsets[d])
            for i, a in enumerate(at.tolist()):
                rows[a], masks[a] = r[i], m[i]
        return rows, masks

    def __getitem__(self, g: int) -> np.ndarray:
        return self.take(g)[0][0]

    def loss_mask(self, g: int) -> np.ndarray | None:
        return self.take(g)[1][0]


class StagedSamples:
    """The training samples of a run whose mixture changes (data.stages): stage s reads its own
    blend from global sample ``start_s`` on, addressed by the position within the stage
    (g - start_s), so the sample at g is a pure function of (g, seed, stages) and every stage keeps
    the blend's bound on the counts per dataset, counted from the stage's start.

    A dataset read in several stages continues its stream where the earlier stages left it (its
    epoch and shuffled order go on; no window is read twice within an epoch across a boundary),
    rather than starting its epoch again: the offsets are the exact counts the earlier stages read
    (``BlendedSamples.counts``), computed once here. One stage from 0 is the plain blend."""

    def __init__(self, sources: list[TokenWindows], stages: list[tuple[int, list[int], list[float]]]):
        """sources: every dataset of the run; stages: (first global sample, indices into sources,
        weights), the first from 0, in increasing order."""
        starts = [s for s, _, _ in stages]
        if not stages or starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])):
            raise ValueError(f"stages must start at 0 and increase (got {starts})")
        self.sources = sources
        self.starts = np.asarray(starts, dtype=np.int64)
        self.ids = [np.asarray(ids, dtype=np.int64) for _, ids, _ in stages]
        self.blends: list[BlendedSamples] = []
        used = np.zeros(len(sources), dtype=np.int64)  # samples of each dataset read before the stage
        self._before = []
        for k, (start, ids, weights) in enumerate(stages):
            if len(set(ids)) != len(ids):
                raise ValueError(f"stage {k} lists a dataset twice")
            self._before.append(used.copy())
            blend = BlendedSamples([sources[i] for i in ids], weights, offsets=used[self.ids[k]])
            self.blends.append(blend)
            if k + 1 < len(stages):
                used[self.ids[k]] += blend.counts(starts[k + 1] - start)

    def stage_of(self, g) -> np.ndarray:
        """The stage each global sample position belongs to."""
        return np.searchsorted(self.starts, np.atleast_1d(np.asarray(g, dtype=np.int64)), side="right") - 1

    def counts(self, n: int) -> np.ndarray:
        """How many samples of each dataset (of ``sources``) the first ``n`` samples of the run hold."""
        if n <= 0:
            return np.zeros(len(self.sources), dtype=np.int64)
        k = int(self.stage_of(n - 1)[0])
        out = self._before[k].copy()
        out[self.ids[k]] += self.blends[k].counts(n - int(self.starts[k]))
        return out

    def take(self, positions) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
        """The samples at global ``positions`` and their loss masks (as TokenWindows.take)."""
        pos = np.atleast_1d(np.asarray(positions, dtype=np.int64))
        stage = self.stage_of(pos)
        if (stage == stage[0]).all():
            return self.blends[int(stage[0])].take(pos - self.starts[stage[0]])
        rows: list = [None] * len(pos)
        masks: list = [None] * len(pos)
        for k in np.unique(stage):
            at = np.flatnonzero(stage == k)
            r, m = self.blends[int(k)].take(pos[at] - self.starts[k])
            for i, a in enumerate(at.tolist()):
                rows[a], masks[a] = r[i], m[i]
        return rows, masks

    def __getitem__(self, g: int) -> np.ndarray:
        return self.take(g)[0][0]


def batch(samples, start: int, count: int):
    """Samples [start, start+count) as (inputs, targets) int64 tensors of shape (count, T).
    Where the samples have a loss mask, a target whose mask is 0 is IGNORE_INDEX."""
    import torch

    windows, masks = samples.take(np.arange(start, start + count))
    rows = np.stack(windows).astype(np.int64)
    if any(m is not None for m in masks):  # a blend may mix masked and unmasked datasets
        keep = np.stack([np.ones(rows.shape[1], bool) if m is None else np.asarray(m) != 0 for m in masks])
        targets = np.where(keep[:, 1:], rows[:, 1:], IGNORE_INDEX)
        return torch.from_numpy(rows[:, :-1]), torch.from_numpy(targets)
    t = torch.from_numpy(rows)
    return t[:, :-1], t[:, 1:]
