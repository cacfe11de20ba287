"""Pack chosen/rejected pairs into fixed-shape rows [R, L] with segment ids and positions.

Input: one ``(prompt_ids, chosen_ids, rejected_ids)`` triple of token-id lists per pair (from
``pojax.data.tokenize.pair_token_lists``, already truncated; or ``pairs_from_arrays`` for the
fixed-width arrays of ``tokenize.encode`` and the gym). Lists rather than padded arrays: the
packer needs each piece's true length, and lists carry it without a mask convention.

Each pair becomes two segments (documents) of the same row, side by side:

    row r:  [prompt chosen][prompt rejected][prompt' chosen'][prompt' rejected'] ... pad pad
    segment  1 1 1 1 1 1    2 2 2 2 2 2 2    3 3 3 3 3 3      4 4 4 4 4 4 4         0   0
    position 0 1 2 3 4 5    0 1 2 3 4 5 6    0 1 2 ...        0 1 2 ...             0   0

so a pair of prompt p, chosen c and rejected r takes 2|p| + |c| + |r| tokens (the prompt is
computed twice, as in the unpacked [chosen; rejected] forward). The causal LM sees segment ids
(attention stays inside a segment) and positions that restart at 0, so every segment's
log-likelihood equals that of the sequence alone. Pairs never split across rows.

A packed batch (``pack_pairs``) is a dict of numpy arrays with FIXED shapes for jit, R rows of L
tokens, at most S segments per row, hence at most P = R · (S // 2) pairs:

  input_ids        [R, L] int32   pad_id on padding
  segment_ids      [R, L] int32   1..S within each row, 0 = padding
  positions        [R, L] int32   restart at 0 in each segment; 0 on padding
  completion_mask  [R, L] bool    the completion tokens (chosen or rejected), not the prompts
  pair_row         [P] int32      row of each pair slot
  pair_chosen      [P] int32      segment id (1..S) of the pair's prompt + chosen
  pair_rejected    [P] int32      segment id of its prompt + rejected
  pair_mask        [P] bool       True for the slots that hold a pair; empty slots are 0 above
  pair_index       [P] int32      the pair's index in the caller's list (-1 for empty slots)
  <extra>          [P] float32    optional per-pair values (e.g. precomputed ref_chosen /
                                  ref_rejected), 0 in empty slots

Slot k holds the k-th pair given to ``pack_pairs``; empty slots come last. The number of pairs
per batch varies with their lengths (from about R · L / longest pair to P), so the objective
(``pojax.objectives.packed``) averages the loss over the present pairs with ``pair_mask``.

Packing is first-fit decreasing: pairs sorted by length (longest first), each placed in the
first row with room for its tokens and two more segments. ``packed_batches`` runs it over a
window of pairs at a time and hands out full batches of R rows. Pure numpy.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np

Pair = tuple[Sequence[int], Sequence[int], Sequence[int]]  # (prompt ids, chosen ids, rejected ids)

ROW_KEYS = ("input_ids", "segment_ids", "positions", "completion_mask")
PAIR_KEYS = ("pair_row", "pair_chosen", "pair_rejected", "pair_mask", "pair_index")


class PackingError(ValueError):
    """A pair that cannot be packed (too long for a row), or a batch that does not fit."""


def pair_length(pair: Pair) -> int:
    """Tokens a packed pair takes: 2·|prompt| + |chosen| + |rejected|."""
    prompt, chosen, rejected = pair
    return 2 * len(prompt) + len(chosen) + len(rejected)


def check_pairs(pairs: Sequence[Pair], row_length: int) -> list[int]:
    """The packed length of every pair; raises PackingError naming (by its index in ``pairs``)
    the first that is longer than a row or has an empty completion."""
    lengths = []
    for i, pair in enumerate(pairs):
        prompt, chosen, rejected = pair
        n = pair_length(pair)
        if not len(chosen) or not len(rejected):
            raise PackingError(f"pair {i}: empty {'chosen' if not len(chosen) else 'rejected'} completion")
        if n > row_length:
            raise PackingError(
                f"pair {i} needs {n} tokens (2 x prompt {len(prompt)} + chosen {len(chosen)} + "
                f"rejected {len(rejected)}), more than the packed row length {row_length}; truncate it "
                "(data.max_prompt_length, data.max_completion_length) or raise the row length")
        lengths.append(n)
    return lengths


def first_fit_decreasing(lengths: Sequence[int], *, row_length: int, pairs_per_row: int) -> list[list[int]]:
    """Bin packing of pairs into rows: longest first, each into the first row with room.

    Args:
      lengths: packed length of each pair (``pair_length``), each ≤ row_length.
      row_length: L, tokens per row.
      pairs_per_row: at most this many pairs in a row (S // 2).

    Returns:
      Rows in the order they were opened, each the sorted indices of its pairs. Rows opened
      later hold the shorter pairs and tend to be the emptier ones.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        for j, room in enumerate(free):
            if room >= lengths[i] and len(rows[j]) < pairs_per_row:
                rows[j].append(i)
                free[j] -= lengths[i]
                break
        else:
            rows.append([i])
            free.append(row_length - lengths[i])
    return [sorted(r) for r in rows]


def _empty_batch(num_rows: int, row_length: int, num_slots: int, pad_id: int, extras) -> dict:
    batch = {
        "input_ids": np.full((num_rows, row_length), pad_id, np.int32),
        "segment_ids": np.zeros((num_rows, row_length), np.int32),
        "positions": np.zeros((num_rows, row_length), np.int32),
        "completion_mask": np.zeros((num_rows, row_length), bool),
        "pair_row": np.zeros(num_slots, np.int32),
        "pair_chosen": np.zeros(num_slots, np.int32),
        "pair_rejected": np.zeros(num_slots, np.int32),
        "pair_mask": np.zeros(num_slots, bool),
        "pair_index": np.full(num_slots, -1, np.int32),
    }
    for name in extras:
        batch[name] = np.zeros(num_slots, np.float32)
    return batch


def _fill(batch: dict, rows: list[list[int]], pairs: Sequence[Pair], indices: Sequence[int], extras) -> None:
    """Writes the pairs into the batch: pair k (of ``pairs``) goes to slot k."""
    for r, members in enumerate(rows):
        t, seg = 0, 0
        for k in members:
            prompt, *completions = pairs[k]
            for side, completion in zip(("pair_chosen", "pair_rejected"), completions):
                seg += 1
                n_p, n = len(prompt), len(prompt) + len(completion)
                batch["input_ids"][r, t:t + n_p] = prompt
                batch["input_ids"][r, t + n_p:t + n] = completion
                batch["segment_ids"][r, t:t + n] = seg
                batch["positions"][r, t:t + n] = np.arange(n)
                batch["completion_mask"][r, t + n_p:t + n] = True
                batch[side][k] = seg
                t += n
            batch["pair_row"][k] = r
            batch["pair_mask"][k] = True
            batch["pair_index"][k] = indices[k]
            for name, values in extras.items():
                batch[name][k] = values[indices[k]]


def pack_pairs(pairs: Sequence[Pair], *, num_rows: int, row_length: int, max_segments: int, pad_id: int = 0,
               extras: Mapping[str, Sequence[float]] | None = None, indices: Sequence[int] | None = None) -> dict:
    """One packed batch of fixed shape holding all of ``pairs`` (layout in the module docstring).

    Args:
      pairs: (prompt ids, chosen ids, rejected ids) per pair; at most num_rows · (max_segments // 2).
      num_rows: R.
      row_length: L.
      max_segments: S, the segments a row may hold (2 per pair); fixes P = R · (S // 2).
      pad_id: token id of padding positions.
      extras: optional per-pair float values to carry as [P] arrays (e.g. ref_chosen and
        ref_rejected of reference.mode="precomputed"), indexed like ``indices``.
      indices: each pair's index in the caller's dataset (default 0..n-1), stored in
        ``pair_index`` and used to look up ``extras``.

    Raises:
      PackingError: a pair longer than a row (named by its index), or pairs that need more
        than ``num_rows`` rows.
    """
    if max_segments < 2:
        raise PackingError(f"max_segments={max_segments}: a pair needs 2 segments")
    extras = dict(extras or {})
    indices = list(range(len(pairs))) if indices is None else list(indices)
    slots = num_rows * (max_segments // 2)
    if len(pairs) > slots:
        raise PackingError(f"{len(pairs)} pairs do not fit in {slots} pair slots ({num_rows} rows x "
                           f"{max_segments // 2} pairs)")
    lengths = check_pairs(pairs, row_length)
    rows = first_fit_decreasing(lengths, row_length=row_length, pairs_per_row=max_segments // 2)
    if len(rows) > num_rows:
        raise PackingError(f"{len(pairs)} pairs ({sum(lengths)} tokens) need {len(rows)} rows of {row_length}, "
                           f"more than the {num_rows} of a batch")
    batch = _empty_batch(num_rows, row_length, slots, pad_id, extras)
    _fill(batch, rows, pairs, indices, extras)
    return batch


def packed_batches(pairs: Sequence[Pair], *, num_rows: int, row_length: int, max_segments: int, pad_id: int = 0,
                   extras: Mapping[str, Sequence[float]] | None = None, window_batches: int = 4,
                   drop_remainder: bool = False) -> Iterator[dict]:
    """A dataset of pairs as packed batches of ``num_rows`` rows each (see ``pack_pairs``).

    Pairs are taken in order, ``window_batches`` batches' worth of pair slots at a time, packed
    first-fit decreasing into rows, and the rows handed out R at a time; the pairs of a last,
    incomplete group of rows go back to the next window. Every pair lands in exactly one batch;
    order is kept between windows, not inside one. The number of pairs per batch varies (the
    long ones fill rows sooner), so losses are means over ``pair_mask``. The last batch may be
    partly empty (``drop_remainder`` drops it).

    Args:
      pairs, num_rows, row_length, max_segments, pad_id, extras: as in ``pack_pairs``; extras
        are indexed by position in ``pairs``.
      window_batches: pairs sorted together = window_batches · R · (S // 2); larger packs
        tighter and shuffles more.
      drop_remainder: drop the final, not-full group of rows.

    Raises:
      PackingError: a pair longer than a row, named by its index in ``pairs``.
    """
    if max_segments < 2:
        raise PackingError(f"max_segments={max_segments}: a pair needs 2 segments")
    lengths = check_pairs(pairs, row_length)
    per_row = max_segments // 2
    window = max(1, window_batches) * num_rows * per_row
    extras = dict(extras or {})
    buffer: list[int] = []
    position = 0
    while position < len(pairs) or buffer:
        take = min(window - len(buffer), len(pairs) - position)
        buffer += range(position, position + take)
        position += take
        last = position == len(pairs)
        rows = first_fit_decreasing([lengths[i] for i in buffer], row_length=row_length, pairs_per_row=per_row)
        full = len(rows) // num_rows
        groups = [rows[g * num_rows:(g + 1) * num_rows] for g in range(full)]
        rest = [buffer[k] for row in rows[full * num_rows:] for k in row]
        if last and rest and not drop_remainder:
            groups.append(rows[full * num_rows:])
            rest = []
        for group in groups:
            # The window's row layout is kept as is (FFD re-run on a subset could need more rows).
            members = sorted(buffer[k] for row in group for k in row)
            slot = {index: k for k, index in enumerate(members)}
            batch = _empty_batch(num_rows, row_length, num_rows * per_row, pad_id, extras)
            _fill(batch, [[slot[buffer[k]] for k in row] for row in group], [pairs[i] for i in members], members, extras)
            yield batch
        buffer = sorted(rest)
        if last and (drop_remainder or not buffer):
            return


def packing_efficiency(batches: Mapping[str, np.ndarray] | Iterable[Mapping[str, np.ndarray]]) -> float:
    """Non-padding tokens / (R · L), over one packed batch or all of several. Prompts count
    twice (they are computed twice, once per segment)."""
    if isinstance(batches, Mapping):
        batches = [batches]
    used = total = 0
    for b in batches:
        used += int(np.count_nonzero(b["segment_ids"]))
        total += b["segment_ids"].size
    return used / max(total, 1)


def pack_dataset(pairs: Sequence[Pair], *, num_rows: int, row_length: int, max_segments: int, pad_id: int = 0,
                 extras: Mapping[str, Sequence[float]] | None = None, window_batches: int = 4,
                 drop_remainder: bool = False) -> tuple[list[dict], float]:
    """All packed batches of a dataset (``packed_batches``) and their packing efficiency."""
    batches = list(packed_batches(pairs, num_rows=num_rows, row_length=row_length, max_segments=max_segments,
                                  pad_id=pad_id, extras=extras, window_batches=window_batches,
                                  drop_remainder=drop_remainder))
    return batches, packing_efficiency(batches)


def pairs_from_arrays(arrays: Mapping[str, np.ndarray]) -> list[Pair]:
    """Pairs of the fixed-width paired arrays (``tokenize.encode(rows, "paired")``, the gym):
    chosen_ids / rejected_ids [N, T] with chosen_mask / rejected_mask [N, T] bool. The prompt is
    everything before a row's first completion token (chosen and rejected must agree on it);
    the completion is its contiguous masked span; padding after it is dropped."""
    pairs = []
    for i in range(len(arrays["chosen_ids"])):
        parts = []
        for side in ("chosen", "rejected"):
            ids, mask = np.asarray(arrays[f"{side}_ids"][i]), np.asarray(arrays[f"{side}_mask"][i], bool)
            where = np.flatnonzero(mask)
            if not where.size:
                raise PackingError(f"pair {i}: empty {side} completion")
            start, end = where[0], where[-1] + 1
            if not mask[start:end].all():
                raise PackingError(f"pair {i}: the {side} completion mask is not contiguous")
            parts.append((ids[:start].tolist(), ids[start:end].tolist()))
        (prompt, chosen), (prompt_r, rejected) = parts
        if prompt != prompt_r:
            raise PackingError(f"pair {i}: chosen and rejected rows have different prompts")
        pairs.append((prompt, chosen, rejected))
    return pairs
