"""Pair packing invariants: every token once, contiguous segments, restarting positions,
consistent pair slots, fixed shapes, hand-computed efficiency, and the errors."""
import numpy as np
import pytest

from pojax.data import packing


def random_pairs(n, seed=0, max_prompt=12, max_completion=10):
    rng = np.random.default_rng(seed)
    return [(rng.integers(3, 50, rng.integers(0, max_prompt + 1)).tolist(),
             rng.integers(3, 50, rng.integers(1, max_completion + 1)).tolist(),
             rng.integers(3, 50, rng.integers(1, max_completion + 1)).tolist()) for _ in range(n)]


def unpack(batch):
    """{pair index: (prompt, chosen, rejected)} read back from a packed batch via its pair slots."""
    out = {}
    for k in np.flatnonzero(batch["pair_mask"]):
        r = batch["pair_row"][k]
        parts = []
        for side in ("chosen", "rejected"):
            seg = batch["segment_ids"][r] == batch[f"pair_{side}"][k]
            ids, comp = batch["input_ids"][r][seg], batch["completion_mask"][r][seg]
            parts.append((ids[~comp].tolist(), ids[comp].tolist()))
        assert parts[0][0] == parts[1][0]  # the same prompt before both completions
        out[int(batch["pair_index"][k])] = (parts[0][0], parts[0][1], parts[1][1])
    return out


def check_layout(batch, num_rows, row_length, max_segments, pad_id):
    slots = num_rows * (max_segments // 2)
    for k in packing.ROW_KEYS:
        assert batch[k].shape == (num_rows, row_length), k
    for k in packing.PAIR_KEYS:
        assert batch[k].shape == (slots,), k
    assert batch["input_ids"].dtype == np.int32 and batch["completion_mask"].dtype == bool
    for r in range(num_rows):
        seg, pos = batch["segment_ids"][r], batch["positions"][r]
        used = seg > 0
        n = used.sum()
        assert used[:n].all() and not used[n:].any()  # segments first, padding at the end
        assert np.all(batch["input_ids"][r][~used] == pad_id) and not batch["completion_mask"][r][~used].any()
        assert np.all(pos[~used] == 0)
        ids = seg[:n]
        assert np.all(np.diff(ids) >= 0) and (n == 0 or (ids[0] == 1 and np.all(np.diff(ids) <= 1)))  # 1, 2, ... contiguous
        assert ids.max(initial=0) <= max_segments
        for s in np.unique(ids):
            assert pos[seg == s].tolist() == list(range((seg == s).sum()))  # positions restart at 0
            comp = batch["completion_mask"][r][seg == s]
            first = np.argmax(comp)
            assert comp[first:].all() and not comp[:first].any()  # prompt, then completion, one each
    present = batch["pair_mask"]
    # Every used segment belongs to exactly one present pair slot; chosen then rejected, adjacent.
    owned = {(int(r), int(s)) for k in np.flatnonzero(present)
             for r, s in [(batch["pair_row"][k], batch["pair_chosen"][k]), (batch["pair_row"][k], batch["pair_rejected"][k])]}
    assert len(owned) == 2 * present.sum()
    assert owned == {(r, int(s)) for r in range(num_rows) for s in np.unique(batch["segment_ids"][r]) if s}
    assert np.all(batch["pair_rejected"][present] == batch["pair_chosen"][present] + 1)
    assert not present[np.argmin(present):].any() if not present.all() else True  # present slots first
    for k in ("pair_row", "pair_chosen", "pair_rejected"):
        assert np.all(batch[k][~present] == 0)
    assert np.all(batch["pair_index"][~present] == -1)


def test_every_token_of_every_pair_appears_exactly_once():
    pairs = random_pairs(60)
    batches, eff = packing.pack_dataset(pairs, num_rows=3, row_length=48, max_segments=6, pad_id=0, window_batches=2)
    seen = {}
    for b in batches:
        check_layout(b, 3, 48, 6, 0)
        got = unpack(b)
        assert not set(got) & set(seen)
        seen.update(got)
    assert seen == {i: tuple(p) for i, p in enumerate(pairs)}
    total = sum(packing.pair_length(p) for p in pairs)
    assert eff == pytest.approx(total / (len(batches) * 3 * 48))
    assert sum(int(b["segment_ids"].astype(bool).sum()) for b in batches) == total
    counts = [int(b["pair_mask"].sum()) for b in batches]
    assert sum(counts) == 60 and min(counts) >= 1 and max(counts) <= 9


def test_pack_pairs_slot_k_holds_pair_k_and_efficiency_by_hand():
    pairs = [([1, 2], [3], [4, 5]), ([6], [7, 8, 9], [10]), ([11, 12, 13], [14, 15], [16])]
    # packed lengths: 2*2+1+2 = 7, 2*1+3+1 = 6, 2*3+2+1 = 9; rows of 16 tokens, 2 pairs per row
    b = packing.pack_pairs(pairs, num_rows=2, row_length=16, max_segments=4, pad_id=99)
    check_layout(b, 2, 16, 4, 99)
    assert b["pair_mask"].tolist() == [True, True, True, False]
    assert b["pair_index"].tolist() == [0, 1, 2, -1]
    # first-fit decreasing: 9 opens row 0, 7 fits beside it (16), 6 opens row 1
    assert b["pair_row"].tolist()[:3] == [0, 1, 0]
    assert b["input_ids"][0].tolist() == [1, 2, 3, 1, 2, 4, 5, 11, 12, 13, 14, 15, 11, 12, 13, 16]
    assert b["segment_ids"][0].tolist() == [1] * 3 + [2] * 4 + [3] * 5 + [4] * 4
    assert b["positions"][1].tolist() == [0, 1, 2, 3, 0, 1] + [0] * 10
    assert b["completion_mask"][1].tolist() == [0, 1, 1, 1, 0, 1] + [0] * 10
    assert (b["pair_chosen"][:3].tolist(), b["pair_rejected"][:3].tolist()) == ([1, 1, 3], [2, 2, 4])
    assert packing.packing_efficiency(b) == (7 + 6 + 9) / (2 * 16)
    assert unpack(b) == dict(enumerate(pairs))


def test_first_fit_decreasing_respects_capacity_and_pairs_per_row():
    lengths = [5, 9, 3, 3, 3, 7, 1]
    rows = packing.first_fit_decreasing(lengths, row_length=10, pairs_per_row=2)
    assert sorted(i for r in rows for i in r) == list(range(7))
    assert all(sum(lengths[i] for i in r) <= 10 and len(r) <= 2 for r in rows)
    # longest first: 9 | 7 | 5 open rows; 3 joins the 7, 3 the 5, 3 opens a row; 1 fills the 9's
    assert rows == [[1, 6], [2, 5], [0, 3], [4]]


def test_too_long_pair_is_named():
    pairs = random_pairs(5, max_prompt=4, max_completion=4) + [([1] * 10, [2] * 5, [3] * 4)]
    msg = r"pair 5 needs 29 tokens \(2 x prompt 10 \+ chosen 5 \+ rejected 4\), more than the packed row length 28"
    with pytest.raises(packing.PackingError, match=msg):
        list(packing.packed_batches(pairs, num_rows=2, row_length=28, max_segments=4))
    with pytest.raises(packing.PackingError, match="pair 1: empty rejected completion"):
        packing.pack_pairs([([1], [2], [3]), ([1], [2], [])], num_rows=1, row_length=8, max_segments=4)


def test_pack_pairs_refuses_pairs_that_do_not_fit_the_batch():
    pairs = [([1] * 3, [2] * 3, [3] * 3)] * 3  # 12 tokens each
    with pytest.raises(packing.PackingError, match=r"3 pairs \(36 tokens\) need 3 rows of 20, more than the 1 of a batch"):
        packing.pack_pairs(pairs[:3], num_rows=1, row_length=20, max_segments=6)
    with pytest.raises(packing.PackingError, match="3 pairs do not fit in 2 pair slots"):
        packing.pack_pairs(pairs, num_rows=1, row_length=48, max_segments=4)
    with pytest.raises(packing.PackingError, match="a pair needs 2 segments"):
        packing.pack_pairs(pairs[:1], num_rows=1, row_length=40, max_segments=1)


def test_fixed_shapes_and_remainder():
    pairs = random_pairs(23, seed=3)
    kw = dict(num_rows=2, row_length=48, max_segments=4, window_batches=1)
    full = list(packing.packed_batches(pairs, **kw))
    dropped = list(packing.packed_batches(pairs, drop_remainder=True, **kw))
    shapes = {tuple((k, v.shape) for k, v in b.items()) for b in full}
    assert len(shapes) == 1  # one compiled program for every batch
    assert len(dropped) == len(full) - 1 and all(b["pair_mask"].sum() for b in full)
    assert [b["pair_index"].tolist() for b in dropped] == [b["pair_index"].tolist() for b in full[:-1]]


def test_extras_follow_their_pairs():
    pairs = random_pairs(10, seed=4)
    ref = np.arange(10, dtype=np.float32) * 1.5
    for b in packing.packed_batches(pairs, num_rows=2, row_length=48, max_segments=4, extras={"ref_chosen": ref}):
        present = b["pair_mask"]
        assert b["ref_chosen"].dtype == np.float32
        np.testing.assert_array_equal(b["ref_chosen"][present], ref[b["pair_index"][present]])
        assert np.all(b["ref_chosen"][~present] == 0)


def test_pairs_from_encoded_arrays():
    arrays = {"chosen_ids": np.array([[5, 6, 7, 8, 0], [9, 10, 11, 0, 0]]),
              "chosen_mask": np.array([[0, 0, 1, 1, 0], [0, 1, 1, 0, 0]], bool),
              "rejected_ids": np.array([[5, 6, 12, 0, 0], [9, 13, 14, 15, 16]]),
              "rejected_mask": np.array([[0, 0, 1, 0, 0], [0, 1, 1, 1, 1]], bool)}
    assert packing.pairs_from_arrays(arrays) == [([5, 6], [7, 8], [12]), ([9], [10, 11], [13, 14, 15, 16])]
    arrays["rejected_ids"] = arrays["rejected_ids"].copy()
    arrays["rejected_ids"][1, 0] = 1
    with pytest.raises(packing.PackingError, match="pair 1: chosen and rejected rows have different prompts"):
        packing.pairs_from_arrays(arrays)
