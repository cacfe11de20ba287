"""Training batches: a grain pipeline with a checkpointable iterator.

``make_dataset(source, ...)`` builds the grain pipeline for any random-access source (a dict of
equal-length arrays, or a grain / TFDS array_record data source whose items are dicts):

    source → seed → shuffle (re-shuffled each epoch) → repeat → map(transform)
           → batch(B / H) → [h::H]

The global stream is the shuffled, repeated sequence of examples; the global batch of step s is
its examples [s·B, (s+1)·B), and host h of H reads the slice [s·B + h·B/H, s·B + (h+1)·B/H).
So the global batch of step s is the concatenation, in host order, of the host batches of step s,
and it does not depend on H. The result is a ``grain.MapDataset``: ``ds[s]`` is the host batch of
step s (random access); ``make_iterator(ds)`` iterates it with prefetching,
and the iterator's state (``iterator_state`` / ``restore_iterator``, or grain's orbax handler
``grain.checkpoint.CheckpointSave`` / ``CheckpointRestore``) goes into the training checkpoint.
"""
from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import grain
import jax
import numpy as np


def split_eval(rows: dict, n_eval: int) -> tuple[dict, dict | None]:
    """(train rows, the last ``n_eval`` rows held out), or (rows, None) when too few rows."""
    n = len(next(iter(rows.values())))
    if n_eval <= 0 or n <= 2 * n_eval:
        return rows, None
    return {k: v[:-n_eval] for k, v in rows.items()}, {k: v[-n_eval:] for k, v in rows.items()}


def label_subsample(label_N, desirable_fraction: float, undesirable_fraction: float, seed: int) -> np.ndarray:
    """Indices of the unpaired rows kept when only a fraction of each label is trained on: the
    ELBO-KTO authors' ``--n_D`` / ``--n_U`` (their train.py, after the rows without a response
    are dropped, before training), here in the authors' own order of draws so that the same rows
    in the same order give the same subset.

    Of the N_D desirable rows ⌊N_D · desirable_fraction⌋ are kept (at least 1 when the fraction
    is > 0 and N_D > 0), likewise the undesirable ones; the kept rows of each label are a uniform
    sample without replacement, drawn by one ``random.Random(seed)`` (Python's Mersenne Twister,
    ``sample`` of the desirable indices first, then of the undesirable ones, each list in row
    order), so ``seed`` = their ``--sample_seed`` (42) reproduces their subset.

    Args:
      label_N: [N] bool, True for a desirable row.
      desirable_fraction, undesirable_fraction: in [0, 1], not both 0; 1 keeps every row of
        that label.
      seed: the sampling seed.
    Returns:
      [M] int64, the kept row indices in increasing order (row order is preserved).
    Raises:
      ValueError: a fraction outside [0, 1], or both 0.
    """
    for name, f in (("desirable_fraction", desirable_fraction), ("undesirable_fraction", undesirable_fraction)):
        if not 0.0 <= f <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {f}")
    if desirable_fraction == 0.0 and undesirable_fraction == 0.0:
        raise ValueError("desirable_fraction and undesirable_fraction cannot both be 0: no row would be left")
    label = np.asarray(label_N, bool)
    if desirable_fraction == 1.0 and undesirable_fraction == 1.0:
        return np.arange(len(label), dtype=np.int64)
    rng = random.Random(seed)  # the authors' generator (not numpy's), for their exact subset
    kept = []
    for idx, f in ((np.flatnonzero(label), desirable_fraction), (np.flatnonzero(~label), undesirable_fraction)):
        n = int(len(idx) * f)
        if n == 0 and f > 0 and len(idx):
            n = 1
        kept += rng.sample(idx.tolist(), n) if n else []
    return np.asarray(sorted(kept), np.int64)


def curriculum_order(score_gap_N, seed: int) -> np.ndarray:
    """Curry-DPO's curriculum (Pattnaik et al., arXiv 2403.07230): example indices easy → hard,
    i.e. by descending score gap g = score(chosen) − score(rejected) (a large gap is an easy
    pair), ties in a random order fixed by ``seed``.

    Args:
      score_gap_N: [N] numbers g.
      seed: the tie-break seed.
    Returns:
      [N] int64, a permutation of 0..N-1 with g non-increasing along it.
    """
    gap = np.asarray(score_gap_N, np.float64)
    if gap.ndim != 1 or not np.isfinite(gap).all():
        raise ValueError(f"curriculum_order needs a finite [N] score gap, got shape {gap.shape}")
    perm = np.random.default_rng([seed, 8]).permutation(len(gap))
    return perm[np.argsort(-gap[perm], kind="stable")]


class ArraySource:
    """A dict of equal-length arrays as a random-access source: ``src[i]`` = {key: array[i]}."""

    def __init__(self, arrays: dict):
        lengths = {k: len(v) for k, v in arrays.items()}
        if not lengths or len(set(lengths.values())) != 1:
            raise ValueError(f"ArraySource needs equal-length arrays, got lengths {lengths}")
        self.arrays = arrays
        self.length = next(iter(lengths.values()))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        return {k: v[index] for k, v in self.arrays.items()}


def make_dataset(source, *, batch_size: int, seed: int, shuffle: bool = True, num_epochs: int | None = None,
                 shard_index: int | None = None, shard_count: int | None = None,
                 transform: Callable[[dict], dict] | None = None, drop_remainder: bool = True) -> grain.MapDataset:
    """The batches of one host, as a ``grain.MapDataset`` (``ds[s]`` is the host batch of step s).

    Args:
      source: a dict of equal-length arrays (wrapped in ``ArraySource``) or any random-access
        source with ``__len__`` and ``__getitem__`` whose items are dicts (e.g. a TFDS
        array_record data source, ``grain.sources.ArrayRecordDataSource`` + a parsing transform).
      batch_size: the global batch size B, in examples, summed over hosts; a multiple of
        ``shard_count``.
      seed: shuffle seed, an integer in [0, 2**32). Epoch e is shuffled with a seed derived from
        (seed, e), so every epoch has its own order and the same seed gives the same stream.
      shuffle: False reads the source in order, every epoch.
      num_epochs: passes over the source; None repeats forever (the dataset's length is then
        ``sys.maxsize // (B / H)``). Batches run across epoch boundaries.
      shard_index, shard_count: this host h and the number of hosts H (default:
        ``jax.process_index()``, ``jax.process_count()``). Host h gets B/H examples per step,
        the slice [h·B/H, (h+1)·B/H) of the global batch; hosts are disjoint and together read
        the global batch, whatever H is.
      transform: per-example function dict -> dict (or a ``grain.transforms.Map``), applied on
        the host that reads the example, before batching (tokenization, packing of one row, ...).
      drop_remainder: with finite ``num_epochs``, drop the last partial global batch so that
        every host runs the same number of steps. False keeps it and is allowed on one host only.

    Returns:
      ``grain.MapDataset`` of dicts of numpy arrays shaped [B/H, ...] (the example's dtypes).
    """
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index={shard_index} is not in [0, shard_count={shard_count})")
    if batch_size <= 0 or batch_size % shard_count:
        raise ValueError(f"batch_size={batch_size} must be a positive multiple of shard_count={shard_count}")
    if not drop_remainder and shard_count > 1 and num_epochs is not None:
        raise ValueError("drop_remainder=False would give the hosts different numbers of steps; "
                         "use drop_remainder=True with shard_count > 1")
    if isinstance(source, dict):
        source = ArraySource(source)
    if len(source) == 0:
        raise ValueError("make_dataset: the source is empty")
    ds = grain.MapDataset.source(source).seed(seed)
    if shuffle:
        ds = ds.shuffle()  # seed derived from ds.seed(seed); grain folds the epoch into it
    ds = ds.repeat(num_epochs)
    if num_epochs is not None and drop_remainder:
        ds = ds[: len(ds) // batch_size * batch_size]  # whole global batches only
    if transform is not None:
        ds = ds.map(transform)
    host_batch = batch_size // shard_count
    # Consecutive host-sized pieces of the stream; global step s is pieces s·H ... s·H + H - 1,
    # so host h takes every H-th piece. MapDataset is lazy: a host reads only its own examples.
    ds = ds.batch(host_batch, drop_remainder=drop_remainder)
    return ds[shard_index::shard_count]


def make_iterator(dataset: grain.MapDataset, *, num_threads: int = 4,
                  prefetch_batches: int = 8) -> grain.DatasetIterator:
    """A prefetching iterator over ``dataset`` (batches built by ``num_threads`` threads, up to
    ``prefetch_batches`` ahead). Its state counts the batches returned, not the prefetched ones,
    so a checkpoint taken at any time restores to the next unreturned batch."""
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_batches)
    return iter(dataset.to_iter_dataset(options))


def iterator_state(iterator: grain.DatasetIterator) -> dict[str, Any]:
    """The iterator's position as a JSON-able dict (for ``ocp.args.JsonSave``); for the pipeline
    of ``make_dataset`` it is ``{"next_index": number of batches returned}``."""
    state = iterator.get_state()
    json.dumps(state)  # raises TypeError now, not at checkpoint time, if a stage is not JSON-able
    return state


def restore_iterator(iterator: grain.DatasetIterator, state: dict[str, Any]) -> grain.DatasetIterator:
    """Moves ``iterator`` (built by the same pipeline code) to ``state`` and returns it."""
    iterator.set_state(state)
    return iterator
