"""Training samples: per-epoch shuffle without repeats, determinism, shards and blending."""
import numpy as np
import pytest

from llmtrain.data.indexed import IndexedDataset, IndexedDatasetWriter
from llmtrain.data.sampler import BlendedSamples, TokenWindows, WindowPermutation, batch


def make(tmp_path, name, docs, dtype=np.uint16):
    with IndexedDatasetWriter(tmp_path / name, dtype) as w:
        for d in docs:
            w.add_document(np.asarray(d))
    return IndexedDataset(tmp_path / name)


def test_each_window_once_per_epoch_and_new_order_each_epoch(tmp_path):
    ds = make(tmp_path, "a", [np.arange(i * 100, i * 100 + 97) for i in range(10)])
    w = TokenWindows(ds, seq_len=8, seed=3)
    n = w.num_samples
    assert n == (ds.num_tokens - 1) // 8
    e0 = [w.window_index(i) for i in range(n)]
    e1 = [w.window_index(n + i) for i in range(n)]
    assert sorted(e0) == list(range(n)) == sorted(e1)
    assert e0 != e1
    # a sample is the window and its next token: inputs and shifted targets
    s = w[5]
    start = w.window_index(5) * 8
    assert np.array_equal(s, ds.tokens[start : start + 9])
    # a fresh object with the same seed gives the same stream (what resume relies on)
    w2 = TokenWindows(ds, seq_len=8, seed=3)
    assert all(np.array_equal(w[i], w2[i]) for i in range(0, 3 * n, 7))
    x, y = batch(w, 4, 3)
    assert x.shape == (3, 8) and np.array_equal(x[:, 1:].numpy(), y[:, :-1].numpy())


def test_shards_are_one_split_and_windows_stay_inside_a_shard(tmp_path):
    a = make(tmp_path, "s0", [np.full(50, 1)])
    b = make(tmp_path, "s1", [np.full(30, 2)])
    w = TokenWindows([a, b], seq_len=8, seed=0)
    assert w.num_samples == (50 - 1) // 8 + (30 - 1) // 8
    seen = [w[i] for i in range(w.num_samples)]
    assert all(len(set(s.tolist())) == 1 for s in seen)  # never mixes the two shards
    assert sum(s[0] == 2 for s in seen) == 3


def test_blend_follows_weights_in_every_prefix(tmp_path):
    a = TokenWindows(make(tmp_path, "a", [np.full(801, 1)]), 8, seed=0)
    b = TokenWindows(make(tmp_path, "b", [np.full(801, 2)]), 8, seed=0)
    blend = BlendedSamples([a, b], [0.7, 0.3])
    picks = np.array([blend[g][0] for g in range(1000)])
    for n in (10, 100, 1000):
        share = (picks[:n] == 1).mean()
        assert abs(share - 0.7) <= 1.0 / n + 1e-9, (n, share)
    # each source is read in its own order, without skipping: dataset a's k-th pick is a[k]
    firsts = [g for g in range(20) if picks[g] == 1]
    assert blend.order(20)[1][firsts].tolist() == list(range(len(firsts)))


def test_bad_blend_weights():
    with pytest.raises(ValueError):
        BlendedSamples([object()], [0.0])


def test_blend_order_bound_and_prefix_stability():
    """Every prefix of n samples holds each of K datasets within (-1, K*w_d] samples of n*w_d, and
    the order for n samples is a prefix of the order for more."""
    rng = np.random.default_rng(0)
    w = rng.random(10) + 0.05
    blend = BlendedSamples([object()] * 10, list(w))
    choice, local = blend.order(5000)
    counts = np.cumsum(np.eye(10, dtype=np.int64)[choice], axis=0)  # (n, K): count of each in the prefix
    expected = np.arange(1, 5001)[:, None] * blend.weights[None, :]
    dev = counts - expected
    assert (dev > -1).all() and (dev <= 10 * blend.weights[None, :] + 1e-9).all()
    c2, l2 = blend.order(1234)
    assert np.array_equal(c2, choice[:1234]) and np.array_equal(l2, local[:1234])
    for d in range(10):  # each dataset is read in its own order, without skipping
        assert np.array_equal(local[choice == d], np.arange((choice == d).sum()))


def test_window_permutation_is_a_seeded_bijection_that_scatters():
    for n in (1, 2, 3, 5, 16, 17, 1000, 4097):
        assert sorted(WindowPermutation(n, (3, 0))(np.arange(n)).tolist()) == list(range(n)), n
    n = 10_000
    a, b, c = (WindowPermutation(n, key)(np.arange(n)) for key in ((3, 0), (3, 1), (4, 0)))
    assert np.array_equal(a, WindowPermutation(n, (3, 0))(np.arange(n)))  # a pure function of the key
    assert (a != b).mean() > 0.99 and (a != c).mean() > 0.99  # another epoch or seed: another order
    assert abs(np.corrcoef(np.arange(n), a)[0, 1]) < 0.05  # no trace of the input order
    assert np.abs(np.diff(a)).mean() > n / 5  # neighbours are scattered (uniform: n/3)
    # any index of a huge range, in O(1) memory: a trillion windows, the last one
    big = WindowPermutation(10**12, (1, 2))
    assert 0 <= int(big(10**12 - 1)[0]) < 10**12


def old_blend_order(weights, n):
    """The blend order before it was computed per stretch (every due time from 0 sorted at once):
    what runs made before that read; the new code must place every sample the same."""
    keys, blocks = [], [0]
    for wd in weights:
        k = int(np.ceil(n * wd)) + 1
        keys.append(np.arange(1, k + 1, dtype=np.float64) / wd)
        blocks.append(blocks[-1] + k)
    flat = np.argsort(np.concatenate(keys), kind="stable")[:n]
    choice = np.searchsorted(np.asarray(blocks), flat, side="right") - 1
    return choice, flat - np.asarray(blocks, dtype=np.int64)[choice]


@pytest.mark.parametrize("weights", [[0.7, 0.3], [1, 1, 1], [0.5, 0.3, 0.2], list(np.linspace(0.05, 1, 10))])
def test_any_stretch_of_the_blend_is_the_order_of_earlier_runs(weights):
    blend = BlendedSamples([object()] * len(weights), weights)
    choice, local = old_blend_order(blend.weights, 20_000)
    rng = np.random.default_rng(1)
    for start, n in [(0, 20_000), *((int(rng.integers(0, 19_900)), int(rng.integers(1, 100))) for _ in range(30))]:
        c, loc = blend.order(n, start)
        assert np.array_equal(c, choice[start:start + n]) and np.array_equal(loc, local[start:start + n]), (start, n)
    far, n = 10**12, 64  # far into a run: the same counts as the shares, without building anything before it
    c, loc = blend.order(n, far)
    for d in np.unique(c):
        mine = loc[c == d]
        assert abs(mine[0] - far * blend.weights[d]) <= len(weights) + 1
        assert np.array_equal(mine, np.arange(mine[0], mine[0] + len(mine)))  # read in order, none skipped
