"""The grain pipeline shuffles per epoch and splits each global batch across hosts; held-out
splits; KTO's mismatched rows."""
import numpy as np
import pytest

from pojax.data.pipeline import ArraySource, label_subsample, make_dataset, make_iterator, split_eval
from pojax.data.tokenize import mismatched


def test_unpaired_mismatched_rows_pair_each_prompt_with_the_previous_completion():
    ids, mask = np.array([[1, 5, 6], [2, 7, 8]]), np.array([[0, 1, 1], [0, 1, 1]], bool)
    kl_ids, kl_mask = mismatched(ids, mask)
    np.testing.assert_array_equal(kl_ids[:, 0], ids[:, 0])
    np.testing.assert_array_equal(kl_ids[:, 1:], np.roll(ids[:, 1:], 1, axis=0))
    np.testing.assert_array_equal(kl_mask, mask)


def test_split_eval():
    train, held = split_eval({"x": np.arange(10)}, 3)
    assert list(held["x"]) == [7, 8, 9] and len(train["x"]) == 7
    assert split_eval({"x": np.arange(4)}, 3)[1] is None


# --- grain pipeline (make_dataset) -------------------------------------------------------------
N = 12  # examples in the toy source


def _rows(n=N):
    return {"x": np.arange(n, dtype=np.int32), "tokens": np.arange(n * 3, dtype=np.int32).reshape(n, 3)}


def _xs(ds, steps):
    return np.stack([ds[s]["x"] for s in range(steps)])


class DictItemSource:
    """A data source whose items are dicts (like a TFDS array_record source after parsing)."""

    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows["x"])

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.rows.items()}


def test_same_seed_same_stream_other_seed_other_order():
    a = _xs(make_dataset(_rows(), batch_size=4, seed=1, shard_index=0, shard_count=1), 9)
    b = _xs(make_dataset(_rows(), batch_size=4, seed=1, shard_index=0, shard_count=1), 9)
    c = _xs(make_dataset(_rows(), batch_size=4, seed=2, shard_index=0, shard_count=1), 9)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("batch_size", [4, 5])  # 5 does not divide 12: batches straddle epochs
def test_every_example_once_per_epoch_and_epochs_reshuffled(batch_size):
    ds = make_dataset(_rows(), batch_size=batch_size, seed=7, shard_index=0, shard_count=1)
    stream = _xs(ds, 3 * N // batch_size + 1).reshape(-1)
    epochs = [stream[e * N:(e + 1) * N] for e in range(3)]
    for e in epochs:
        np.testing.assert_array_equal(np.sort(e), np.arange(N))
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    assert not np.array_equal(epochs[0], np.arange(N))  # shuffled


def test_no_shuffle_reads_in_order():
    ds = make_dataset(_rows(), batch_size=5, seed=0, shuffle=False, shard_index=0, shard_count=1)
    np.testing.assert_array_equal(_xs(ds, 3).reshape(-1), np.arange(15) % N)


def test_hosts_split_the_global_batch():
    steps = 2 * N // 4  # two epochs
    glob = make_dataset(_rows(), batch_size=4, seed=3, shard_index=0, shard_count=1)
    hosts = [make_dataset(_rows(), batch_size=4, seed=3, shard_index=h, shard_count=2) for h in range(2)]
    for s in range(steps):
        parts = [hosts[h][s] for h in range(2)]
        assert parts[0]["x"].shape == (2,) and parts[0]["tokens"].shape == (2, 3)
        assert not set(parts[0]["x"]) & set(parts[1]["x"])
        for k in ("x", "tokens"):
            np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), glob[s][k])
    for h in range(2):  # the iterator reads what random access gives
        it = make_iterator(hosts[h])
        for s in range(steps):
            np.testing.assert_array_equal(next(it)["x"], hosts[h][s]["x"])
    epoch = np.concatenate([hosts[h][s]["x"] for s in range(N // 4) for h in range(2)])
    np.testing.assert_array_equal(np.sort(epoch), np.arange(N))


def test_finite_epochs_give_whole_global_batches_on_every_host():
    hosts = [make_dataset(_rows(), batch_size=8, seed=0, num_epochs=2, shard_index=h, shard_count=2)
             for h in range(2)]
    assert [len(d) for d in hosts] == [3, 3]  # 24 examples // 8
    assert [len(list(make_iterator(d))) for d in hosts] == [3, 3]
    one = make_dataset(_rows(), batch_size=5, seed=0, num_epochs=1, drop_remainder=False, shard_index=0,
                       shard_count=1)
    assert [len(b["x"]) for b in make_iterator(one)] == [5, 5, 2]


def test_dict_of_arrays_and_dict_item_source_and_transform():
    rows = _rows()
    kw = dict(batch_size=4, seed=5, shard_index=0, shard_count=1)
    a, b = make_dataset(rows, **kw), make_dataset(DictItemSource(rows), **kw)
    double = make_dataset(DictItemSource(rows), transform=lambda ex: dict(ex, y=ex["x"] * 2), **kw)
    for s in range(4):
        for k in ("x", "tokens"):
            np.testing.assert_array_equal(a[s][k], b[s][k])
        np.testing.assert_array_equal(double[s]["y"], 2 * a[s]["x"])
    assert a[0]["x"].dtype == np.int32 and a[0]["tokens"].dtype == np.int32


def test_make_dataset_errors():
    with pytest.raises(ValueError, match="batch_size=5 must be a positive multiple of shard_count=2"):
        make_dataset(_rows(), batch_size=5, seed=0, shard_index=0, shard_count=2)
    with pytest.raises(ValueError, match=r"shard_index=2 is not in \[0, shard_count=2\)"):
        make_dataset(_rows(), batch_size=4, seed=0, shard_index=2, shard_count=2)
    with pytest.raises(ValueError, match="drop_remainder=False would give the hosts different numbers"):
        make_dataset(_rows(), batch_size=4, seed=0, num_epochs=1, drop_remainder=False, shard_index=0,
                     shard_count=2)
    with pytest.raises(ValueError, match="ArraySource needs equal-length arrays"):
        ArraySource({"a": np.zeros(3), "b": np.zeros(4)})
    with pytest.raises(ValueError, match="the source is empty"):
        make_dataset({"x": np.zeros(0)}, batch_size=2, seed=0, shard_index=0, shard_count=1)


def authors_subsample(labels, n_d, n_u, seed):
    """The ELBO-KTO authors' --n_D / --n_U row selection (train.py's main, commit 80dc31e), re-
    written: the global ``random`` seeded once, a sample of the desirable indices, then of the
    undesirable ones, at least one of a label whose fraction is > 0, the union in row order."""
    import random

    if n_d >= 1.0 and n_u >= 1.0:
        return list(range(len(labels)))
    random.seed(seed)
    pos = [i for i, y in enumerate(labels) if y]
    neg = [i for i, y in enumerate(labels) if not y]
    k_pos, k_neg = int(len(pos) * n_d), int(len(neg) * n_u)
    k_pos = 1 if pos and k_pos == 0 and n_d > 0 else k_pos
    k_neg = 1 if neg and k_neg == 0 and n_u > 0 else k_neg
    chosen = (random.sample(pos, min(k_pos, len(pos))) if k_pos > 0 else []) + \
             (random.sample(neg, min(k_neg, len(neg))) if k_neg > 0 else [])
    return sorted(chosen)


@pytest.mark.parametrize("n_d, n_u, seed", [(0.1, 1.0, 42), (1.0, 0.25, 42), (0.5, 0.5, 7), (0.0, 0.3, 42),
                                             (0.001, 1.0, 3), (1.0, 1.0, 42)])
def test_label_subsample_keeps_the_authors_rows(n_d, n_u, seed):
    labels = np.random.default_rng(0).random(203) < 0.6
    got = label_subsample(labels, n_d, n_u, seed)
    assert got.dtype == np.int64 and got.tolist() == authors_subsample(labels.tolist(), n_d, n_u, seed)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    want_pos = max(int(n_pos * n_d), 1 if n_d > 0 else 0)
    want_neg = max(int(n_neg * n_u), 1 if n_u > 0 else 0)
    assert int(labels[got].sum()) == want_pos and int((~labels[got]).sum()) == want_neg
    assert np.all(np.diff(got) > 0)  # row order kept, no repeats


def test_label_subsample_errors():
    with pytest.raises(ValueError, match="desirable_fraction must be in \\[0, 1\\], got 1.5"):
        label_subsample(np.ones(3, bool), 1.5, 1.0, 0)
    with pytest.raises(ValueError, match="cannot both be 0"):
        label_subsample(np.ones(3, bool), 0.0, 0.0, 0)
